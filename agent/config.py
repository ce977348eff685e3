"""The gateway config: a TOML file loaded into typed, frozen dataclasses.

Only the keys of DESIGN.md's minimal example are required; everything else has a
venue-typical default. Every error names the file, the key and what was expected, so an
installer can fix a config without reading code. ``venue-agent check-config F`` prints the
effective config (defaults filled in) with :func:`to_toml`.

Units: every ``*_s`` key is seconds, ``*_pct`` is a fraction of capacity in percent,
``*_dbm`` is dBm, ``*_mb`` is MiB.

What the runtime would refuse at start is refused here, by the runtime's own checks where
they exist (the broker URL parser of :mod:`agent.brokerurl`, the publisher's
``BrokerSettings``, the BLE decoder's ``WristbandFormat``), so ``check-config`` and ``run``
cannot disagree; ``tests/test_config_property.py`` checks that they don't.
"""

from __future__ import annotations

import math
import re
import reprlib
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from agent.brokerurl import effective_require_tls, parse_broker_url
from firmware_bridge.ble_adverts import IDENTITY_RULES, WristbandFormat
from firmware_bridge.protocols import PROTOCOL_NAMES

PROTOCOLS = PROTOCOL_NAMES
ROLES = ("entry", "exit", "presence")
ZONE_KINDS = ("queue", "area")
BLE_IDENTITIES = IDENTITY_RULES
MQTT_PROTOCOLS = ("auto", "5", "3.1.1")
LOG_LEVELS = ("debug", "info", "warning", "error")
DEFAULT_BROKER_URL = "mqtt://127.0.0.1:1883"

# Ids end up in MQTT topic levels (DESIGN.md: every topic level from config is an id), so no
# config value can make a wildcard, a separator or a case-only duplicate.
ID_RE = re.compile(r"^[a-z0-9-]{1,64}$")
ID_EXPECTED = "an id of 1..64 characters [a-z0-9-] (it becomes an MQTT topic level)"

# Numbers: integers must fit the kernels' int32 columns, times must stay far from float
# overflow in deadline arithmetic; keys that allow less say so in their field metadata.
INT_MAX = 2**31 - 1
FLOAT_MAX = 1e9
MAX_TAGS_LIMIT = 1 << 22  # ~4 M live tags: the kernels' tables stay within a Pi's memory

_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = 80
_repr.maxlevel = 2
_repr.maxlist = _repr.maxdict = 4


def _limits(default: Any, *, lo: float | None = None, hi: float | None = None,
            gt: float | None = None) -> Any:
    """A dataclass field with bounds beyond the generic ones (>= 0, finite, INT_MAX)."""
    return field(default=default, metadata={"lo": lo, "hi": hi, "gt": gt})


class ConfigError(ValueError):
    """A config that cannot run. ``str()`` names the file, the key and what was expected."""

    def __init__(self, file: str, key: str, expected: str, got: object = None) -> None:
        self.file, self.key, self.expected = file, key, expected
        where = f"{file}: {key}" if key else file
        msg = f"{where}: expected {expected}"
        if got is not None:
            # Shortened: a value may be a megabyte of text or an array nested 300 deep.
            msg += f", got {got if isinstance(got, _Said) else _repr.repr(got)}"
        super().__init__(msg)


class _Said(str):
    """A ``got`` that is already a description (``unknown key 'x'``), not a value."""



@dataclass(frozen=True)
class VenueConfig:
    id: str
    name: str = ""


@dataclass(frozen=True)
class GatewayConfig:
    id: str
    tick_s: float = _limits(1.0, gt=0)
    health_interval_s: float = 10.0
    log_level: str = "info"


@dataclass(frozen=True)
class BrokerConfig:
    """``url`` is the first broker; ``urls`` all of them, in failover order (in TOML,
    ``url`` is one string or a list). Built in code, pass either ``url`` or ``urls``."""

    url: str = DEFAULT_BROKER_URL
    client_id: str = ""  # empty: "venue-agent-<venue>-<gateway>"
    username: str = ""
    password_file: str = ""  # a file holding the password, so the config can be world-readable
    ca_file: str = ""  # for mqtts:// with a private CA; empty: the system trust store
    protocol: str = "auto"  # "auto" tries MQTT 5 and falls back to 3.1.1
    keepalive_s: int = 30
    nudge_expiry_s: int = 300  # MQTT 5 message expiry of guest nudges
    urls: tuple[str, ...] = ()  # empty: (url,)
    replay_per_s: float = _limits(50.0, gt=0)  # backlog messages sent per second after an outage
    cert_file: str = ""  # client certificate (PEM) for mqtts://; with key_file
    key_file: str = ""  # its private key (PEM, unencrypted, mode 0600)
    # None: with a username, plain mqtt:// only to a broker on this machine (loopback).
    require_tls: bool | None = None

    def __post_init__(self) -> None:
        if not self.urls:
            object.__setattr__(self, "urls", (self.url,))
        elif self.url != self.urls[0]:
            if self.url != DEFAULT_BROKER_URL:
                raise ValueError(f"BrokerConfig: url {self.url!r} must be urls[0] "
                                 f"({self.urls[0]!r}); pass one of url or urls")
            object.__setattr__(self, "url", self.urls[0])


@dataclass(frozen=True)
class StorageConfig:
    path: str = "/var/lib/venue-agent/agent.db"
    key_path: str = ""  # pseudonym key; empty: "pseudonym.key" beside the database
    numba_cache_dir: str = ""  # empty: "numba-cache" beside the database
    max_mb: int = _limits(2048, gt=0)  # the database's size cap; sized for a 16 GB SD card
    checkpoint_interval_s: float = 10.0  # WAL checkpoint every this often; 0: no checkpoints


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
    rssi_floor_dbm: float = _limits(-127.0, lo=-127.0, hi=20.0)  # weaker reads are ignored
    min_reads: int = _limits(1, gt=0)  # reads of a tag before it counts in the zone


@dataclass(frozen=True)
class AlternativeConfig:
    """A zone guests in a long line may be sent to instead (``zones[].alternatives``), and
    the walk there in seconds. It may be owned by another gateway of the venue."""

    zone: str
    walk_s: float = _limits(0.0, gt=0)


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
    crowded_pct: float = _limits(90.0, hi=1000.0)  # zone_crowded at this share of capacity
    dwell_long_s: float = 3600.0  # dwell_long when the p90 dwell exceeds this (area zones)
    # A tag leaves after missing this many of its own expected reads (at most timeout_s).
    departure_missed_reads: float = _limits(4.0, lo=1.0)
    # An alert nobody acknowledged this long after it opened is dispatched again to the
    # escalation team (0: never).
    escalate_after_s: float = _limits(300.0, lo=0.0)
    escalation_team: str = "supervisors"
    # Venue-wide nudges: where guests of this (long) line may go instead, with the walk...
    alternatives: tuple[AlternativeConfig, ...] = ()
    # ...when a guest saves at least this much (the alternative's wait on arrival plus the
    # walk, against this line's wait).
    nudge_margin_s: float = _limits(600.0, lo=0.0)

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
    forecast_horizon_s: float = _limits(900.0, gt=0)  # queue_rising looks this far ahead
    reader_down_after_s: float = 30.0  # a reader offline this long opens reader_down
    reader_team: str = "technical"  # dispatch topic level for reader_down alerts
    # The nudge experiment: each venue-wide nudge opportunity is held out (no nudge sent)
    # with this probability, so the nudges' effect can be measured (0 <= x < 1)...
    nudge_holdout: float = _limits(0.2, lo=0.0, hi=0.99)
    # ...for this long (an assignment and its measurement window; rounded to whole
    # estimation.rate_window_s, see docs/staff.md)...
    nudge_window_s: float = _limits(900.0, gt=0)
    # ...and another gateway's zone state older than this is stale: never nudged towards.
    remote_stale_s: float = _limits(30.0, gt=0)


@dataclass(frozen=True)
class EstimationConfig:
    """Tuning of the kernels (see kernels/README.md). The defaults suit rides with waits of
    minutes to an hour; the demo venue, whose waits are seconds, shrinks the windows."""

    # tags tracked at once; the stalest are evicted beyond this
    max_tags: int = _limits(131072, gt=0, hi=MAX_TAGS_LIMIT)
    window_s: float = _limits(900.0, gt=0)  # measured waits and dwells are taken over this window
    rate_window_s: float = _limits(300.0, gt=0)  # arrivals and throughput per minute over this
    fifo_slack_s: float = 120.0  # overtaking allowed before FIFO clearing of missed exits
    min_measured_waits: int = _limits(5, gt=0)  # below this many measured waits, Little's law
    wait_recent: int = _limits(20, gt=0)  # wait_s: median of the latest this-many measured waits


@dataclass(frozen=True)
class PrivacyConfig:
    """Pseudonym rotation and how long stored data may live (see docs/privacy.md)."""

    rotate_hours: int = _limits(24, lo=1, hi=24 * 366)  # pseudonyms change this often...
    rotate_at: str = "04:00"  # ...at this local time "HH:MM": when the venue is closed
    retention_days: float = _limits(1.0, gt=0, hi=3650.0)  # stores keep data at most this long
    # after a rotation, wristbands inside keep their pseudonym until they leave, at most this
    # long (the previous key stays in memory that long at most; 0: visits split at rotation)
    carry_over_s: float = _limits(5400.0, lo=0.0, hi=86400.0)

    @property
    def retention_s(self) -> float:
        return self.retention_days * 86400.0


# A discovery prefix: one or more topic levels of [A-Za-z0-9_-] (no wildcards, no empty level).
HA_PREFIX_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}(/[A-Za-z0-9_-]{1,64}){0,3}$")


@dataclass(frozen=True)
class HomeAssistantConfig:
    """Home Assistant MQTT discovery (agent/homeassistant.py): off unless ``discovery``."""

    discovery: bool = False  # publish a retained discovery config per zone sensor
    prefix: str = "homeassistant"  # Home Assistant's discovery prefix (its default)


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
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    homeassistant: HomeAssistantConfig = field(default_factory=HomeAssistantConfig)
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

    @property
    def checkpoint_path(self) -> Path:
        """Where the engine's checkpoint lives: beside the database."""
        return self.db_path.parent / "checkpoint.npz"

    def zone(self, zone_id: str) -> ZoneConfig:
        for z in self.zones:
            if z.id == zone_id:
                return z
        raise KeyError(zone_id)


# --------------------------------------------------------------------------- loading

T = TypeVar("T")

# Fields whose TOML value is not a plain scalar of the field's type: read by their loaders.
_SPECIAL = {(WristbandConfig, "company_id"), (BrokerConfig, "urls"), (BrokerConfig, "url"),
            (BrokerConfig, "require_tls"),
            (ReaderConfig, "wristbands"), (ZoneConfig, "alternatives")}


def _field_kind(cls: type, f: Any) -> str:
    """'bool', 'int', 'float' or 'str', from the annotation (``from __future__`` strings)."""
    t = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
    return t if t in ("bool", "int", "float", "str") else "str"


class _Section:
    """Reads one TOML table into a dataclass, checking every key's type and bounds and
    rejecting unknown keys (a typo such as ``capcity`` must not silently fall back to a
    default)."""

    def __init__(self, file: str, prefix: str, table: object) -> None:
        if not isinstance(table, Mapping):
            raise ConfigError(file, prefix, "a table", table)
        self.file, self.prefix, self.table = file, prefix, dict(table)

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def build(self, cls: type[T], **overrides: Any) -> T:
        known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
        for k in self.table:
            if k not in known or (k == "urls" and cls is BrokerConfig):
                names = sorted(n for n in known if not (cls is BrokerConfig and n == "urls"))
                raise ConfigError(self.file, self.key(k),
                                  f"one of the known keys ({', '.join(names)})",
                                  _Said(f"unknown key {k!r}"))
        kwargs: dict[str, Any] = {}
        for name, f in known.items():
            if name in overrides:
                kwargs[name] = overrides[name]
            elif name in self.table and (cls, name) not in _SPECIAL:
                kwargs[name] = self._coerce(name, self.table[name], _field_kind(cls, f),
                                            f.metadata)
        for name, f in known.items():
            if name not in kwargs and f.default is MISSING and f.default_factory is MISSING:
                raise ConfigError(self.file, self.key(name), "this key to be set")
        return cls(**kwargs)

    def _coerce(self, name: str, value: object, kind: str, limits: Mapping[str, Any]) -> object:
        key = self.key(name)
        if kind == "bool":
            if not isinstance(value, bool):
                raise ConfigError(self.file, key, "true or false", value)
            return value
        if kind == "str":
            if not isinstance(value, str):
                raise ConfigError(self.file, key, "a string", value)
            if any(not c.isprintable() for c in value):
                raise ConfigError(self.file, key, "a string without control characters", value)
            return value
        if kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(self.file, key, "an integer", value)
        elif isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(self.file, key, "a number", value)
        else:
            if not math.isfinite(value):
                raise ConfigError(self.file, key, "a finite number", value)
            value = float(value)
        lo, hi, gt = limits.get("lo"), limits.get("hi"), limits.get("gt")
        if lo is None and gt is None:
            lo = 0
        if hi is None:
            hi = INT_MAX if kind == "int" else FLOAT_MAX
        if (lo is not None and value < lo) or (gt is not None and value <= gt) or value > hi:
            low = f"> {_num(gt)}" if gt is not None else f">= {_num(lo)}"
            raise ConfigError(self.file, key, f"{'an integer' if kind == 'int' else 'a number'} "
                              f"{low} and <= {_num(hi)}", value)
        return value


def _num(x: Any) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _check_choice(file: str, key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(file, key, "one of " + ", ".join(repr(c) for c in choices), value)


def is_id(value: object) -> bool:
    """True for a valid id (venue, gateway, zone, reader, team): ``[a-z0-9-]``, 1..64."""
    return isinstance(value, str) and ID_RE.match(value) is not None


def _check_id(file: str, key: str, value: str) -> None:
    if not is_id(value):
        raise ConfigError(file, key, ID_EXPECTED, value)


def _required(sec: _Section, name: str) -> None:
    if name not in sec.table:
        raise ConfigError(sec.file, sec.key(name), "this key to be set")


def _table_list(file: str, data: Mapping[str, Any], name: str) -> list[Any]:
    value = data.get(name, [])
    if not isinstance(value, list):
        raise ConfigError(file, name, f"an array of tables ([[{name}]])", value)
    return value


def _runtime_check(file: str, prefix: str, keys: tuple[str, ...], what: str,
                   build: Callable[[], object]) -> None:
    """Run one of the runtime's own constructors (its rules' one home) and turn its
    ``ValueError`` into a :class:`ConfigError` on the first key its message names."""
    try:
        build()
    except ValueError as e:
        msg = str(e)
        key = next((k for k in keys if re.search(rf"\b{re.escape(k)}\b", msg)), "")
        raise ConfigError(file, f"{prefix}.{key}" if key else prefix,
                          f"what {what} accepts ({msg})") from None


def parse_company_id(value: object) -> int:
    """A Bluetooth SIG company id: a TOML integer (``0x0a12``) or a string of decimal digits
    (``"2578"``) or hex (``"0x0a12"``). Raises ``ValueError`` for anything else; the range is
    checked by ``WristbandFormat``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        if re.fullmatch(r"[0-9]{1,6}", value):
            return int(value, 10)
        if re.fullmatch(r"0[xX][0-9a-fA-F]{1,6}", value):
            return int(value, 16)
    raise ValueError("not an integer")


def _load_wristband(file: str, prefix: str, table: object) -> WristbandConfig:
    wsec = _Section(file, prefix, table)
    for name in ("name", "company_id"):
        _required(wsec, name)
    raw = wsec.table["company_id"]
    try:
        company_id = parse_company_id(raw)
    except ValueError:
        raise ConfigError(file, wsec.key("company_id"), "a 16-bit Bluetooth company id: an "
                          "integer such as 0x0a12, or a string \"2578\" or \"0x0a12\"",
                          raw) from None
    band = wsec.build(WristbandConfig, company_id=company_id)
    _runtime_check(file, prefix, ("company_id", "id_offset", "id_length"), "the BLE decoder",
                   lambda: WristbandFormat(company_id=band.company_id, id_offset=band.id_offset,
                                           id_length=band.id_length, name=band.name))
    return band


def tcp_reader_address(port: str) -> tuple[str, int] | None:
    """``(host, port)`` of a ``socket://`` or ``rfc2217://`` reader URL, ``None`` for other
    ports; ``ValueError`` when such a URL has no host or no port in 1..65535."""
    if not port.startswith(("socket://", "rfc2217://")):
        return None
    parts = urlsplit(port)
    netloc = parts.netloc
    host, _, port_text = netloc.rpartition(":") if not netloc.endswith("]") else (netloc, "", "")
    host = host.strip("[]")
    if not host or "@" in host or not re.fullmatch(r"[0-9]{1,5}", port_text) or not (
            0 < int(port_text) <= 65535):
        raise ValueError("no host:port")
    return host, int(port_text)


def _load_reader(file: str, i: int, table: object) -> ReaderConfig:
    sec = _Section(file, f"readers[{i}]", table)
    for name in ("id", "protocol", "zone"):
        _required(sec, name)
    raw_bands = sec.table.get("wristbands", [])
    if not isinstance(raw_bands, list):
        raise ConfigError(file, sec.key("wristbands"), "an array of tables", raw_bands)
    bands = tuple(_load_wristband(file, f"{sec.key('wristbands')}[{j}]", wb)
                  for j, wb in enumerate(raw_bands))
    reader = sec.build(ReaderConfig, wristbands=bands)
    _check_id(file, sec.key("id"), reader.id)
    _check_choice(file, sec.key("protocol"), reader.protocol, PROTOCOLS)
    _check_choice(file, sec.key("role"), reader.role, ROLES)
    _check_choice(file, sec.key("identity"), reader.identity, BLE_IDENTITIES)
    if reader.protocol != "ble" and not reader.port:
        raise ConfigError(file, sec.key("port"),
                          "a serial port or pyserial URL (/dev/ttyUSB0, socket://host:port, "
                          f"rfc2217://host:port) for a {reader.protocol} reader")
    if reader.protocol != "ble":
        try:
            tcp_reader_address(reader.port)
        except ValueError:
            raise ConfigError(file, sec.key("port"), "socket://host:port or rfc2217://host:port "
                              "with a port 1..65535", reader.port) from None
    if reader.poll_interval_s <= 0:
        raise ConfigError(file, sec.key("poll_interval_s"), "a number > 0", reader.poll_interval_s)
    return reader


def _load_alternatives(file: str, sec: _Section) -> tuple[AlternativeConfig, ...]:
    raw = sec.table.get("alternatives", [])
    key = sec.key("alternatives")
    if not isinstance(raw, list):
        raise ConfigError(file, key, 'an array of tables such as [{zone = "jungle-queue", '
                          "walk_s = 240}]", raw)
    alts = []
    for j, t in enumerate(raw):
        asec = _Section(file, f"{key}[{j}]", t)
        for name in ("zone", "walk_s"):
            _required(asec, name)
        alt = asec.build(AlternativeConfig)
        _check_id(file, asec.key("zone"), alt.zone)
        alts.append(alt)
    _check_unique(file, key, [a.zone for a in alts])
    return tuple(alts)


def _load_zone(file: str, i: int, table: object) -> ZoneConfig:
    sec = _Section(file, f"zones[{i}]", table)
    for name in ("id", "kind"):
        _required(sec, name)
    zone = sec.build(ZoneConfig, alternatives=_load_alternatives(file, sec))
    _check_id(file, sec.key("id"), zone.id)
    if any(a.zone == zone.id for a in zone.alternatives):
        raise ConfigError(file, sec.key("alternatives"), "other zones than the zone itself",
                          zone.id)
    _check_id(file, sec.key("team"), zone.team)
    _check_id(file, sec.key("escalation_team"), zone.escalation_team)
    _check_choice(file, sec.key("kind"), zone.kind, ZONE_KINDS)
    if zone.queue_long_clear_s and zone.queue_long_clear_s >= zone.queue_long_wait_s:
        raise ConfigError(file, sec.key("queue_long_clear_s"),
                          f"a wait below queue_long_wait_s ({zone.queue_long_wait_s:g}) so the "
                          "moment has hysteresis", zone.queue_long_clear_s)
    return zone


def _load_broker(file: str, table: object, client_id: str) -> BrokerConfig:
    sec = _Section(file, "broker", table)
    raw = sec.table.get("url", DEFAULT_BROKER_URL)
    expected = "mqtt://host[:port] or mqtts://host[:port]"
    if isinstance(raw, list):
        if not raw:
            raise ConfigError(file, "broker.url", f"{expected}, or a non-empty list of them", raw)
        keys = [f"broker.url[{j}]" for j in range(len(raw))]
    else:
        raw, keys = [raw], ["broker.url"]
    for key, url in zip(keys, raw, strict=True):
        if not isinstance(url, str):
            raise ConfigError(file, key, f"{expected} (a string, or a list of strings)", url)
        try:
            parse_broker_url(url)
        except ValueError as e:
            raise ConfigError(file, key, f"{expected} ({e})", url) from None
    _check_unique(file, "broker.url", raw)
    require_tls = sec.table.get("require_tls")
    if require_tls is not None and not isinstance(require_tls, bool):
        raise ConfigError(file, "broker.require_tls", "true or false", require_tls)
    broker = sec.build(BrokerConfig, url=raw[0], urls=tuple(raw), require_tls=require_tls)
    _check_choice(file, "broker.protocol", broker.protocol, MQTT_PROTOCOLS)
    if broker.password_file and not Path(broker.password_file).is_file():
        # `run` refuses a password file it cannot read; whether this user may read it is
        # doctor's question (check-config may run as another user than the agent).
        raise ConfigError(file, "broker.password_file", "an existing file holding the broker "
                          "password", broker.password_file)
    # The runtime reads the password from password_file; its content is not checked here.
    _runtime_check(file, "broker", ("require_tls", "key_file", "cert_file", "ca_file", "url",
                                    "client_id", "keepalive_s", "protocol", "username"),
                   "the MQTT publisher", lambda: broker_settings(
                       broker, broker.client_id or client_id,
                       password="-" if broker.password_file else None))
    return broker


def broker_settings(broker: BrokerConfig, client_id: str, password: str | None) -> Any:
    """The publisher's ``BrokerSettings`` for this config (every broker of the failover
    list, TLS files, ``require_tls``); ``password`` is what ``password_file`` holds.
    ``ValueError`` for what the publisher refuses."""
    from agent.publisher import BrokerSettings  # paho: imported only once the URL is sound

    return BrokerSettings(urls=broker.urls, client_id=client_id,
                          keepalive_s=broker.keepalive_s, username=broker.username or None,
                          password=password, ca_file=broker.ca_file or None,
                          cert_file=broker.cert_file or None, key_file=broker.key_file or None,
                          require_tls=broker.require_tls,
                          protocol=broker.protocol)  # type: ignore[arg-type]  # checked


def _load_privacy(file: str, table: object) -> PrivacyConfig:
    privacy = _Section(file, "privacy", table).build(PrivacyConfig)
    from agent.privacy import Rotation  # the rotation's own rules (run builds the same)

    _runtime_check(file, "privacy", ("rotate_hours", "rotate_at"), "pseudonym rotation",
                   lambda: Rotation.of(privacy))
    return privacy


def parse_config(text: str, file: str = "<memory>") -> Config:
    """Parse and validate a config. Raises :class:`ConfigError` for anything that can't run,
    and for nothing else: no text makes it raise another exception."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(file, "", f"valid TOML ({e})") from None
    except RecursionError:
        raise ConfigError(file, "", "valid TOML nested less deeply") from None

    known_sections = {"venue", "gateway", "broker", "storage", "moments", "estimation",
                      "privacy", "homeassistant", "readers", "zones"}
    for k in data:
        if k not in known_sections:
            raise ConfigError(file, k, "one of the sections " + ", ".join(sorted(known_sections)),
                              _Said(f"unknown section {k!r}"))

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

    broker = _load_broker(file, data.get("broker", {}),
                          f"venue-agent-{venue.id}-{gateway.id}")

    storage = _Section(file, "storage", data.get("storage", {})).build(StorageConfig)
    if not storage.path:
        raise ConfigError(file, "storage.path", "a path for the gateway's SQLite database")
    moments = _Section(file, "moments", data.get("moments", {})).build(MomentsConfig)
    _check_id(file, "moments.reader_team", moments.reader_team)
    estimation = _Section(file, "estimation", data.get("estimation", {})).build(EstimationConfig)
    privacy = _load_privacy(file, data.get("privacy", {}))
    homeassistant = _Section(file, "homeassistant",
                             data.get("homeassistant", {})).build(HomeAssistantConfig)
    if not HA_PREFIX_RE.match(homeassistant.prefix):
        raise ConfigError(file, "homeassistant.prefix", "1..4 topic levels of [A-Za-z0-9_-] "
                          "separated by '/' (Home Assistant's discovery prefix)",
                          homeassistant.prefix)

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
                  estimation=estimation, readers=readers, zones=zones, privacy=privacy,
                  homeassistant=homeassistant, source=file)


def _check_unique(file: str, key: str, values: list[str]) -> None:
    seen: set[str] = set()
    for v in values:
        if v in seen:
            raise ConfigError(file, key, "unique values", _Said(f"{v!r} appears twice"))
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
    # One broker prints as a string, a failover list as a list (``urls`` is not a TOML key).
    urls = data["broker"].pop("urls")
    data["broker"]["url"] = urls[0] if len(urls) == 1 else urls
    if cfg.broker.require_tls is None:  # printed as what it comes to
        data["broker"]["require_tls"] = effective_require_tls(cfg.broker.username, urls)
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
