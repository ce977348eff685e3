"""The broker URL parser that the publisher, the config loader and doctor share."""

from __future__ import annotations

import pytest

from agent.brokerurl import parse_broker_url


@pytest.mark.parametrize(("url", "host", "port", "tls"), [
    ("mqtt://127.0.0.1:1883", "127.0.0.1", 1883, False),
    ("mqtt://broker.example", "broker.example", 1883, False),
    ("mqtts://Broker.Example:8884/", "broker.example", 8884, True),
    ("MQTTS://b", "b", 8883, True),
    ("mqtt://[::1]:1884", "::1", 1884, False),
    ("mqtt://[fe80::1]", "fe80::1", 1883, False),
    ("mqtt://mosquitto_1:1883", "mosquitto_1", 1883, False),
])
def test_good_urls(url: str, host: str, port: int, tls: bool) -> None:
    a = parse_broker_url(url)
    assert (a.host, a.port, a.tls) == (host, port, tls)


@pytest.mark.parametrize(("url", "message"), [
    ("mqtt://h:99999", "bad port"),
    ("mqtt://h:0", "bad port"),
    ("mqtt://h:-1", "bad port"),
    ("mqtt://h:+1", "bad port"),
    ("mqtt://h:１８８３", "bad port"),
    ("mqtt://h:x", "bad port"),
    ("mqtt://u@h", "credentials"),
    ("mqtt://u:p@h:1883", "credentials"),
    ("mqtt://@h", "credentials"),
    ("mqtt://h h:1883", "whitespace"),
    ("mqtt://h\n:1883", "whitespace"),
    ("mqtt://h/x", "path"),
    ("mqtt://h?x=1", "path"),
    ("mqtt://h#", "path"),
    ("http://h", "scheme"),
    ("h:1883", "scheme"),
    ("", "scheme"),
    ("mqtt://", "no host"),
    ("mqtt://:1883", "no host"),
    ("mqtt://[::1", "IPv6"),
    ("mqtt://[zz]:1", "IPv6"),
    ("mqtt://[::1]x", "after"),
    ("mqtt://a..b", "bad host"),
    ("mqtt://hé", "bad host"),
    ("mqtt://h:1:2", "bad port"),
])
def test_bad_urls_raise_value_error_naming_the_url(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as e:
        parse_broker_url(url)
    assert str(e.value).startswith(f"broker url {url!r}")
