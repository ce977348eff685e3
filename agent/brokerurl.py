"""Broker URLs: the one parser that the publisher, the config loader and ``doctor`` share.

A broker URL is ``mqtt://host[:port]`` or ``mqtts://host[:port]`` (default ports 1883 and
8883); ``host`` is a DNS name, an IPv4 address or a bracketed IPv6 address. Credentials,
paths and queries are refused: the URL is logged on every outage, and credentials belong in
``broker.username`` / ``broker.password_file``. Anything refused raises :class:`ValueError`
whose message starts with ``broker url`` and quotes the URL.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["DEFAULT_PORTS", "BrokerAddress", "effective_require_tls", "parse_broker_url",
           "plain_needs_tls"]

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}

_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,62}(\.[A-Za-z0-9_][A-Za-z0-9_-]{0,62})*\.?$")
_PORT_RE = re.compile(r"^[0-9]{1,5}$")


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    """A parsed broker URL."""

    url: str
    scheme: str  # "mqtt" or "mqtts"
    host: str  # without brackets for IPv6
    port: int

    @property
    def tls(self) -> bool:
        return self.scheme == "mqtts"

    @property
    def loopback(self) -> bool:
        """The broker is on this machine (``localhost``, 127.0.0.0/8, ``::1``): what is sent
        to it never crosses a network."""
        if self.host in ("localhost", "localhost."):
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def parse_broker_url(url: str) -> BrokerAddress:
    """Parse ``url`` or raise :class:`ValueError` saying what is wrong with it."""
    if not isinstance(url, str):
        raise ValueError(f"broker url {url!r}: expected a string mqtt://host:port")
    if any(c.isspace() or not c.isprintable() for c in url):
        # urlsplit silently drops tabs and newlines; a URL with them is a typo.
        raise ValueError(f"broker url {url!r}: contains whitespace or control characters")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ValueError(f"broker url {url!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ValueError(f"broker url {url!r}: scheme must be mqtt:// or mqtts://, not {scheme!r}")
    if "@" in parts.netloc:
        # The URL is logged on every outage; credentials go in username/password.
        raise ValueError(f"broker url {url!r}: put credentials in username/password, not the url")
    if parts.path not in ("", "/") or parts.query or parts.fragment or url.rstrip("/").endswith(
            ("?", "#")):
        raise ValueError(f"broker url {url!r}: unexpected path or query after host:port")
    netloc = parts.netloc
    if netloc.startswith("["):
        host_text, _, rest = netloc[1:].partition("]")
        try:
            ipaddress.IPv6Address(host_text)
        except ValueError:
            raise ValueError(f"broker url {url!r}: bad IPv6 address [{host_text}]") from None
        host = host_text
        if rest and not rest.startswith(":"):
            raise ValueError(f"broker url {url!r}: unexpected text after [{host_text}]")
        port_text = rest[1:]
    else:
        host, _, port_text = netloc.partition(":")
        if not host:
            raise ValueError(f"broker url {url!r}: no host (expected {scheme}://host:port)")
        if not _HOSTNAME_RE.match(host) or len(host) > 253:
            raise ValueError(f"broker url {url!r}: bad host {host!r} (expected a DNS name or "
                             "an IP address; IPv6 in brackets)")
    if port_text:
        if not _PORT_RE.match(port_text) or not 0 < int(port_text) <= 65535:
            raise ValueError(f"broker url {url!r}: bad port {port_text!r} (expected 1..65535)")
        port = int(port_text)
    else:
        port = DEFAULT_PORTS[scheme]
    return BrokerAddress(url=url, scheme=scheme, host=host.lower(), port=port)


def plain_needs_tls(address: BrokerAddress, username: str | None) -> bool:
    """The default of ``broker.require_tls`` for one broker: a plain ``mqtt://`` URL is
    refused when credentials are configured (a username), unless the broker is on this
    machine (loopback), where the password never crosses a network."""
    return bool(username) and not address.loopback


def effective_require_tls(username: str | None, urls: tuple[str, ...] | list[str]) -> bool:
    """What an unset ``broker.require_tls`` comes to, printed so that the printed config
    accepts exactly the same URLs: true when there are credentials and every URL is
    ``mqtts://`` (``urls`` must already parse)."""
    return bool(username) and all(parse_broker_url(u).tls for u in urls)
