"""What an install needs: the files shipped with the package, and a starter config.

The wheel carries the example configs, the systemd unit, the udev rules and the Mosquitto
config and ACL templates as package data under ``venue_agent_data/config/``, and the docs
(with the AsyncAPI document and the JSON Schemas) under ``venue_agent_data/docs/``; in the
source tree they are ``config/`` and ``docs/``. :func:`data_dir` finds either, so the same
code works from a wheel, an editable install and a checkout.

``python -m agent.install`` prints the directory of the shipped config files (or, with a
file name, that file's path), for install scripts::

    sudo install -m 0644 "$(/opt/venue-agent/bin/python -m agent.install venue-agent.service)" \\
        /etc/systemd/system/
"""

from __future__ import annotations

import importlib.resources
import json
import sys
from pathlib import Path

from agent.config import DEFAULT_BROKER_URL, StorageConfig
from firmware_bridge.protocols import PROTOCOL_NAMES

DATA_PACKAGE = "venue_agent_data"
# A file each shipped directory always holds: found, it gives the directory's real path.
_MARKERS = {"config": "venue-agent.service", "docs": "mqtt.md"}

UNIT_FILE = "venue-agent.service"
UDEV_RULES = "99-venue-readers.rules"
EXAMPLE_CONFIG = "example-venue.toml"
MOSQUITTO_FILES = ("mosquitto.conf", "mosquitto.acl")


def data_dir(name: str) -> Path:
    """The directory of the shipped ``config`` or ``docs`` files.

    From an installed wheel via :mod:`importlib.resources` (``venue_agent_data.<name>``);
    from a source checkout or an editable install, the checkout's own directory. Raises
    FileNotFoundError when neither is there (a broken install)."""
    marker = _MARKERS[name]
    try:
        probe = importlib.resources.files(f"{DATA_PACKAGE}.{name}").joinpath(marker)
        if isinstance(probe, Path) and probe.is_file():
            return probe.parent
    except (ModuleNotFoundError, NotADirectoryError):
        # Not installed from a wheel; an editable install's namespace path is not a
        # directory importlib.resources can list.
        pass
    checkout = Path(__file__).resolve().parents[1] / name
    if (checkout / marker).is_file():
        return checkout
    raise FileNotFoundError(f"venue-agent's shipped {name} files are missing: reinstall "
                            f"the package ({DATA_PACKAGE}/{name}/{marker} not found)")


def shipped_file(name: str) -> Path:
    """The path of one shipped config file (``venue-agent.service``, ...)."""
    p = data_dir("config") / name
    if not p.is_file():
        raise FileNotFoundError(f"{p}: not shipped with venue-agent")
    return p


def _toml_str(s: str) -> str:
    return json.dumps(s)  # a JSON string is a TOML basic string


def starter_config(venue: str, gateway: str, broker_url: str = DEFAULT_BROKER_URL) -> str:
    """A starter gateway config: ``venue`` and ``gateway`` ids, one queue zone with an entry
    and an exit reader on udev names, every other key at its default. ``check-config``
    accepts it as it is; edit the zones and readers to the venue's."""
    try:
        example = str(shipped_file(EXAMPLE_CONFIG))
    except FileNotFoundError:
        example = f"config/{EXAMPLE_CONFIG} in the source"
    protocols = " | ".join(PROTOCOL_NAMES)
    def line(text: str, comment: str = "") -> str:
        return f"{text:<36} # {comment}" if comment else text

    readers = []
    for role in ("entry", "exit"):
        rid = f"queue-1-{role}"
        readers.append("\n".join((
            "[[readers]]", line(f'id = "{rid}"'),
            line('protocol = "em4100"', protocols),
            line(f'port = "/dev/venue-reader-{rid}"', f"a stable udev name ({UDEV_RULES})"),
            line('zone = "queue-1"'), line(f'role = "{role}"', "entry | exit | presence"))))
    readers_text = "\n\n".join(readers)
    return f"""\
# Gateway {gateway} of venue {venue}: a starter config written by `venue-agent init`.
# `venue-agent check-config THIS_FILE` prints it with every default filled in;
# `venue-agent doctor --config THIS_FILE` checks the readers, storage and broker.
# Every key: docs/operations.md, "Config reference". A fuller example:
#   {example}
# Ids (venue, gateway, zones, readers, teams) become MQTT topic levels: 1..64 of [a-z0-9-].

[venue]
id = {_toml_str(venue)}
# name = "Park East"

[gateway]
id = {_toml_str(gateway)}

[broker]
url = {_toml_str(broker_url)}        # mqtts://host:8883 for TLS
# username = "{gateway}"
# password_file = "/etc/venue-agent/broker.password"   # readable by the venue-agent user only
# ca_file = "/etc/venue-agent/venue-ca.crt"            # a private CA for mqtts://

[storage]
path = {_toml_str(StorageConfig().path)}

# One ride queue with an entry and an exit reader: rename it, add zones and readers.
[[zones]]
id = "queue-1"
name = "Queue 1"
kind = "queue"                       # queue | area
capacity = 200
team = "operations"                  # staff alerts go to venue/{venue}/dispatch/<team>

{readers_text}
"""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        print(shipped_file(args[0]) if args else data_dir("config"))
    except FileNotFoundError as e:
        print(f"venue-agent: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
