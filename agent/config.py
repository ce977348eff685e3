"""The gateway config: a TOML file loaded into typed, frozen dataclasses.

Only the keys of DESIGN.md's minimal example are required; everything else has a
venue-typical default. Every error names the file, the key and what was expected, so an
installer can fix a config without reading code. ``venue-agent check-config F`` prints the
effective config (defaults filled in) with :func:`to_toml`.

Units: every ``*_s`` key is seconds, ``*_pct`` is a fraction of capacity in percent,
``*_dbm`` is dBm.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

PROTOCOLS = ("em4100", "uhf-m100", "pn532", "ble")
ROLES = ("entry", "exit", "presence")
ZONE_KINDS = ("queue", "area")
BLE_IDENTITIES = ("ibeacon", "ibeacon-uuid-major", "eddystone-uid", "altbeacon", "wristband",
                  "address")
MQTT_PROTOCOLS = ("auto", "5", "3.1.1")
LOG_LEVELS = ("debug", "info", "warning", "error")

# Ids end up in MQTT topic levels: no wildcards, no separators, nothing a shell trips on.
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_BROKER_RE = re.compile(r"^(mqtt|mqtts)://[^/\s:]+(:\d{1,5})?/?$")


class ConfigError(ValueError):
    """A config that cannot run. ``str()`` names the file, the key and what was expected."""

    def __init__(self, file: str, key: str, expected: str, got: object = None) -> None:
        self.file, self.key, self.expected = file, key, expected
        where = f"{file}: {key}" if key else file
        msg = f"{where}: expected {expected}"
        if got is not None:
            msg += f", got {got!r}"
        super().__init__(msg)


@dataclass(frozen=True)
class VenueConfig:
    id: str
    name: str = ""


@dataclass(frozen=True)
class GatewayConfig:
    id: str
    tick_s: float = 1.0
    health_interval_s: float = 10.0
    log_level: str = "info"


@dataclass(frozen=True)
class BrokerConfig:
    url: str = "mqtt://127.0.0.1:1883"
    client_id: str = ""  # empty: "venue-agent-<venue>-<gateway>"
    username: str = ""
    password_file: str = ""  # a file holding the password, so the config can be world-readable
    ca_file: str = ""  # for mqtts:// with a private CA; empty: the system trust store
    protocol: str = "auto"  # "auto" tries MQTT 5 and falls back to 3.1.1
    keepalive_s: int = 30
    nudge_expiry_s: int = 300  # MQTT 5 message expiry of guest nudges


@dataclass(frozen=True)
class StorageConfig:
    path: str = "/var/lib/venue-agent/agent.db"
    key_path: str = ""  # pseudonym key; empty: "pseudonym.key" beside the database
    numba_cache_dir: str = ""  # empty: "numba-cache" beside the database


@dataclass(frozen=True)
class WristbandConfig:
    """A wristband's manufacturer-data layout: its id is ``id_length`` bytes at ``id_offset``
    of the data bleak reports under ``company_id`` (company id already stripped)."""

    name: str
    company_id: int
    id_offset: int = 0
    id_length: int = 6


@dataclass(frozen=True)
class ReaderConfig:
    id: str
    protocol: str
    zone: str
    role: str = "presence"
    port: str = ""  # any pyserial URL; unused for BLE
    baudrate: int = 0  # 0: the protocol's default
    poll_interval_s: float = 0.2  # command/response readers (UHF single inventory, PN532)
    adapter: str = ""  # BLE: "hci0"; empty: the system default
    identity: str = "ibeacon"  # BLE: which identifier a wristband is tracked by
    wristbands: tuple[WristbandConfig, ...] = ()


@dataclass(frozen=True)
class ZoneConfig:
    id: str
    kind: str
    capacity: int = 0  # 0: unknown (zone_crowded never fires)
    name: str = ""  # shown to staff and guests; empty: the id
    team: str = "operations"  # dispatch topic level for this zone's staff alerts
    absence_timeout_s: float = 0.0  # 0: kind default (queue 5400, area 120)
    queue_long_wait_s: float = 1800.0  # queue_long opens at this wait...
    queue_long_clear_s: float = 0.0  # ...and resolves below this (0: 80 % of the open level)
    wait_short_s: float = 600.0  # wait_short nudge below this wait (0: no nudges)
    crowded_pct: float = 90.0  # zone_crowded at this share of capacity
    dwell_long_s: float = 3600.0  # dwell_long when the p90 dwell exceeds this (area zones)

    @property
    def display_name(self) -> str:
        return self.name or self.id

    @property
    def timeout_s(self) -> float:
        if self.absence_timeout_s > 0:
            return self.absence_timeout_s
        return 5400.0 if self.kind == "queue" else 120.0

    @property
    def clear_wait_s(self) -> float:
        return self.queue_long_clear_s or 0.8 * self.queue_long_wait_s


@dataclass(frozen=True)
class MomentsConfig:
    hold_s: float = 60.0  # a condition must hold this long before a moment opens or resolves
    cooldown_s: float = 300.0  # after a resolve, the same moment stays quiet this long
    update_interval_s: float = 60.0  # an open moment is re-published at most this often...
    update_change_pct: float = 10.0  # ...when its value moved by this much
    forecast_horizon_s: float = 900.0  # queue_rising looks this far ahead
    reader_down_after_s: float = 30.0  # a reader offline this long opens reader_down
    reader_team: str = "technical"  # dispatch topic level for reader_down alerts


@dataclass(frozen=True)
class EstimationConfig:
    """Tuning of the kernels (see kernels/README.md). The defaults suit rides with waits of
    minutes to an hour; the demo venue, whose waits are seconds, shrinks the windows."""

    max_tags: int = 131072  # tags tracked at once; the stalest are evicted beyond this
    window_s: float = 900.0  # measured waits and dwells are taken over this window
    rate_window_s: float = 300.0  # arrivals and throughput per minute over this window
    fifo_slack_s: float = 120.0  # overtaking allowed before FIFO clearing of missed exits
    min_measured_waits: int = 5  # below this many measured waits, Little's law is used
    wait_recent: int = 20  # wait_s is the median of the latest this-many measured waits


@dataclass(frozen=True)
class Config:
    venue: VenueConfig
    gateway: GatewayConfig
    broker: BrokerConfig
    storage: StorageConfig
    moments: MomentsConfig
    estimation: EstimationConfig
    readers: tuple[ReaderConfig, ...]
    zones: tuple[ZoneConfig, ...]
    source: str = field(default="<memory>", compare=False)

    @property
    def client_id(self) -> str:
        return self.broker.client_id or f"venue-agent-{self.venue.id}-{self.gateway.id}"

    @property
    def db_path(self) -> Path:
        return Path(self.storage.path)

    @property
    def key_path(self) -> Path:
        return Path(self.storage.key_path) if self.storage.key_path else (
            self.db_path.parent / "pseudonym.key")

    @property
    def numba_cache_dir(self) -> Path:
        return Path(self.storage.numba_cache_dir) if self.storage.numba_cache_dir else (
            self.db_path.parent / "numba-cache")

    def zone(self, zone_id: str) -> ZoneConfig:
        for z in self.zones:
            if z.id == zone_id:
                return z
        raise KeyError(zone_id)


# --------------------------------------------------------------------------- loading

T = TypeVar("T")


class _Section:
    """Reads one TOML table into a dataclass, checking every key's type and rejecting
    unknown keys (a typo such as ``capcity`` must not silently fall back to a default)."""

    def __init__(self, file: str, prefix: str, table: object) -> None:
        if not isinstance(table, Mapping):
            raise ConfigError(file, prefix, "a table", table)
        self.file, self.prefix, self.table = file, prefix, dict(table)

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def build(self, cls: type[T], *, skip: tuple[str, ...] = (), **overrides: Any) -> T:
        known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
        for k in self.table:
            if k not in known and k not in skip:
                raise ConfigError(self.file, self.key(k),
                                  f"one of the known keys ({', '.join(sorted(known))})",
                                  f"unknown key {k!r}")
        kwargs: dict[str, Any] = {}
        for name, f in known.items():
            if name in overrides:
                kwargs[name] = overrides[name]
                continue
            if name not in self.table:
                continue  # the dataclass default applies; required ones are checked by callers
            kwargs[name] = self._coerce(name, self.table[name], f.default)
        try:
            return cls(**kwargs)
        except TypeError as e:  # a required key is missing
            missing = [n for n, f in known.items() if n not in kwargs and
                       f.default is f.default_factory]  # type: ignore[misc]
            raise ConfigError(self.file, self.key(missing[0] if missing else ""),
                              "this key to be set") from e

    def _coerce(self, name: str, value: object, default: object) -> object:
        key = self.key(name)
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(self.file, key, "true or false", value)
            return value
        if isinstance(default, int) and not isinstance(default, bool):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(self.file, key, "an integer", value)
            if value < 0:
                raise ConfigError(self.file, key, "an integer >= 0", value)
            return value
        if isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(self.file, key, "a number", value)
            if not math.isfinite(value) or value < 0:
                raise ConfigError(self.file, key, "a finite number >= 0", value)
            return float(value)
        if isinstance(value, str):
            return value
        raise ConfigError(self.file, key, "a string", value)


def _check_choice(file: str, key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(file, key, "one of " + ", ".join(repr(c) for c in choices), value)


def _check_id(file: str, key: str, value: str) -> None:
    if not _ID_RE.match(value):
        raise ConfigError(file, key, "an id of letters, digits, '_', '.', '-' "
                          "(no spaces, '/', '+' or '#': it becomes an MQTT topic level)", value)


def _required(sec: _Section, name: str) -> None:
    if name not in sec.table:
        raise ConfigError(sec.file, sec.key(name), "this key to be set")


def _table_list(file: str, data: Mapping[str, Any], name: str) -> list[Any]:
    value = data.get(name, [])
    if not isinstance(value, list):
        raise ConfigError(file, name, f"an array of tables ([[{name}]])", value)
    return value


def _load_reader(file: str, i: int, table: object) -> ReaderConfig:
    sec = _Section(file, f"readers[{i}]", table)
    for name in ("id", "protocol", "zone"):
        _required(sec, name)
    bands = []
    raw_bands = sec.table.get("wristbands", [])
    if not isinstance(raw_bands, list):
        raise ConfigError(file, sec.key("wristbands"), "an array of tables", raw_bands)
    for j, wb in enumerate(raw_bands):
        wsec = _Section(file, f"{sec.key('wristbands')}[{j}]", wb)
        for name in ("name", "company_id"):
            _required(wsec, name)
        band = wsec.build(WristbandConfig)
        if band.company_id > 0xFFFF:
            raise ConfigError(file, wsec.key("company_id"), "a 16-bit company id", band.company_id)
        if band.id_length == 0:
            raise ConfigError(file, wsec.key("id_length"), "an integer >= 1", band.id_length)
        bands.append(band)
    reader = sec.build(ReaderConfig, skip=("wristbands",), wristbands=tuple(bands))
    _check_id(file, sec.key("id"), reader.id)
    _check_choice(file, sec.key("protocol"), reader.protocol, PROTOCOLS)
    _check_choice(file, sec.key("role"), reader.role, ROLES)
    _check_choice(file, sec.key("identity"), reader.identity, BLE_IDENTITIES)
    if reader.protocol != "ble" and not reader.port:
        raise ConfigError(file, sec.key("port"),
                          "a serial port or pyserial URL (/dev/ttyUSB0, socket://host:port, "
                          f"rfc2217://host:port) for a {reader.protocol} reader")
    if reader.poll_interval_s <= 0:
        raise ConfigError(file, sec.key("poll_interval_s"), "a number > 0", reader.poll_interval_s)
    return reader


def _load_zone(file: str, i: int, table: object) -> ZoneConfig:
    sec = _Section(file, f"zones[{i}]", table)
    for name in ("id", "kind"):
        _required(sec, name)
    zone = sec.build(ZoneConfig)
    _check_id(file, sec.key("id"), zone.id)
    _check_id(file, sec.key("team"), zone.team)
    _check_choice(file, sec.key("kind"), zone.kind, ZONE_KINDS)
    if zone.queue_long_clear_s and zone.queue_long_clear_s >= zone.queue_long_wait_s:
        raise ConfigError(file, sec.key("queue_long_clear_s"),
                          f"a wait below queue_long_wait_s ({zone.queue_long_wait_s:g}) so the "
                          "moment has hysteresis", zone.queue_long_clear_s)
    if zone.crowded_pct > 1000:
        raise ConfigError(file, sec.key("crowded_pct"), "a percentage", zone.crowded_pct)
    return zone


def parse_config(text: str, file: str = "<memory>") -> Config:
    """Parse and validate a config. Raises :class:`ConfigError` for anything that can't run."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(file, "", f"valid TOML ({e})") from None

    known_sections = {"venue", "gateway", "broker", "storage", "moments", "estimation",
                      "readers", "zones"}
    for k in data:
        if k not in known_sections:
            raise ConfigError(file, k, "one of the sections " + ", ".join(sorted(known_sections)),
                              f"unknown section {k!r}")

    for name in ("venue", "gateway"):
        if name not in data:
            raise ConfigError(file, f"[{name}]", "this section with an id")
    venue_sec = _Section(file, "venue", data["venue"])
    _required(venue_sec, "id")
    venue = venue_sec.build(VenueConfig)
    _check_id(file, "venue.id", venue.id)

    gw_sec = _Section(file, "gateway", data["gateway"])
    _required(gw_sec, "id")
    gateway = gw_sec.build(GatewayConfig)
    _check_id(file, "gateway.id", gateway.id)
    _check_choice(file, "gateway.log_level", gateway.log_level, LOG_LEVELS)
    if gateway.tick_s <= 0:
        raise ConfigError(file, "gateway.tick_s", "a number > 0", gateway.tick_s)

    broker = _Section(file, "broker", data.get("broker", {})).build(BrokerConfig)
    if not _BROKER_RE.match(broker.url):
        raise ConfigError(file, "broker.url", "mqtt://host[:port] or mqtts://host[:port]",
                          broker.url)
    _check_choice(file, "broker.protocol", broker.protocol, MQTT_PROTOCOLS)

    storage = _Section(file, "storage", data.get("storage", {})).build(StorageConfig)
    if not storage.path:
        raise ConfigError(file, "storage.path", "a path for the gateway's SQLite database")
    moments = _Section(file, "moments", data.get("moments", {})).build(MomentsConfig)
    estimation = _Section(file, "estimation", data.get("estimation", {})).build(EstimationConfig)
    for name in ("max_tags", "window_s", "rate_window_s", "min_measured_waits", "wait_recent"):
        if getattr(estimation, name) <= 0:
            raise ConfigError(file, f"estimation.{name}", "a number > 0",
                              getattr(estimation, name))

    zones = tuple(_load_zone(file, i, z) for i, z in enumerate(_table_list(file, data, "zones")))
    readers = tuple(_load_reader(file, i, r)
                    for i, r in enumerate(_table_list(file, data, "readers")))
    if not zones:
        raise ConfigError(file, "zones", "at least one [[zones]] table")
    _check_unique(file, "zones", [z.id for z in zones])
    _check_unique(file, "readers", [r.id for r in readers])
    zone_kind = {z.id: z.kind for z in zones}
    for i, r in enumerate(readers):
        if r.zone not in zone_kind:
            raise ConfigError(file, f"readers[{i}].zone",
                              "the id of a zone in [[zones]] (" + ", ".join(zone_kind) + ")",
                              r.zone)
        if zone_kind[r.zone] == "area" and r.role != "presence":
            raise ConfigError(file, f"readers[{i}].role",
                              f"'presence' for a reader in area zone {r.zone!r}", r.role)
        if zone_kind[r.zone] == "queue" and r.role == "presence" and r.protocol != "ble":
            raise ConfigError(file, f"readers[{i}].role",
                              f"'entry' or 'exit' for a reader in queue zone {r.zone!r}", r.role)
    _check_unique(file, "readers[].port", [r.port for r in readers if r.port])
    return Config(venue=venue, gateway=gateway, broker=broker, storage=storage, moments=moments,
                  estimation=estimation, readers=readers, zones=zones, source=file)


def _check_unique(file: str, key: str, values: list[str]) -> None:
    seen: set[str] = set()
    for v in values:
        if v in seen:
            raise ConfigError(file, key, "unique values", f"{v!r} appears twice")
        seen.add(v)


def load_config(path: str | Path) -> Config:
    """Read and validate the config file at ``path``."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(p), "", "an existing config file (no such file)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(str(p), "", f"a readable UTF-8 file ({e})") from None
    return parse_config(text, str(p))


# --------------------------------------------------------------------------- printing

def _clean(value: Any, keep: Callable[[str], bool] = lambda _k: True) -> Any:
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items() if keep(k)}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def effective(cfg: Config) -> dict[str, Any]:
    """The config with every default filled in, as plain TOML-ready data."""
    data = asdict(cfg)
    data.pop("source")
    data["storage"]["key_path"] = str(cfg.key_path)
    data["storage"]["numba_cache_dir"] = str(cfg.numba_cache_dir)
    data["broker"]["client_id"] = cfg.client_id
    for z, zd in zip(cfg.zones, data["zones"], strict=True):
        zd["absence_timeout_s"] = z.timeout_s
        zd["queue_long_clear_s"] = z.clear_wait_s
        zd["name"] = z.display_name
    from firmware_bridge.protocols import DEFAULT_BAUDRATE

    for rd in data["readers"]:
        # Show only the keys that apply to the reader's protocol.
        if rd["protocol"] == "ble":
            for k in ("port", "baudrate", "poll_interval_s"):
                rd.pop(k)
        else:
            rd["baudrate"] = rd["baudrate"] or DEFAULT_BAUDRATE[rd["protocol"]]
            for k in ("adapter", "identity", "wristbands"):
                rd.pop(k)
    return _clean(data)


def to_toml(cfg: Config) -> str:
    import tomli_w

    return tomli_w.dumps(effective(cfg))
