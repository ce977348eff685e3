"""The staff console (`venue-agent watch`, and the demo's live view).

An independent MQTT consumer, as a staff app or a central system would be: it subscribes to
one venue's topics, keeps the latest zone states, and shows dispatch alerts as they arrive.
It knows nothing of the agent's internals; everything it shows came over the broker.

Three parts, so each can be tested on its own:

- :class:`ConsoleState` is pure: it consumes ``(topic, payload)`` and knows the zones, the
  alert feed, the open moments, the current nudges and who took which moment.
- :func:`render` turns a state into Rich renderables; tests print them to a
  ``rich.console.Console(record=True)`` and read ``export_text()``.
- :class:`MqttFeed` owns the paho client (TLS, client certificate, username and password,
  MQTT 5 with a fall back to 3.1.1) and only hands messages over; the board uses it too.

On a terminal :func:`watch` shows a live Rich view and takes keys (``a``: take the newest
open alert, ``q``: quit); otherwise (logs, pipes) it prints one line per alert and a zone
table every ``table_every_s``. An acknowledgement is a retained QoS 1 message on
``venue/{venue}/ack/{moment_id}`` (schema ``venue-agent/ack@1``), so every console, also one
started later, shows "taken by …".
"""

from __future__ import annotations

import contextlib
import getpass
import io
import json
import os
import queue
import select
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from agent.ids import new_id
from agent.publisher import BrokerSettings
from agent.timefmt import rfc3339
from agent.topics import SCHEMA_ACK, Topics

__all__ = ["Alert", "ConsoleState", "MqttFeed", "NeverConnected", "ack_payload", "render",
           "watch"]

FEED_MAX = 200  # alerts kept in the feed (newest first on screen)
PRIORITY_STYLE = {"high": "bold red", "medium": "yellow", "low": "cyan", "info": "green"}
_V5_UNSUPPORTED = 0x84  # CONNACK "Unsupported Protocol Version"
_V3_UNACCEPTABLE_PROTOCOL = 1


class NeverConnected(RuntimeError):
    """The console gave up: the broker did not accept a connection within the timeout."""


# ---------------------------------------------------------------------------------------------
# The state (pure)


@dataclass
class Alert:
    """One dispatch or nudge as it arrived."""

    source: str  # "dispatch" | "nudge"
    at: str  # RFC 3339 UTC, from the payload
    moment_id: str | None
    zone: str
    zone_name: str
    team: str | None
    kind: str
    status: str
    priority: str
    text: str
    line: str  # the plain log line (non-terminal output)


def trend_arrow(zone: dict[str, Any]) -> str:
    """Where the wait is heading: the forecast against the wait a guest joining now gets.

    ``↑`` when the forecast is longer by more than max(60 s, 10 %), ``↓`` when shorter by as
    much, ``→`` otherwise, ``·`` when either is unknown."""
    now = posted_wait(zone)
    fc = zone.get("wait_forecast_s")
    if not isinstance(now, int | float) or not isinstance(fc, int | float):
        return "·"
    band = max(60.0, 0.1 * now)
    return "↑" if fc > now + band else "↓" if fc < now - band else "→"


def posted_wait(zone: dict[str, Any]) -> float | None:
    """The wait to post: ``wait_joining_s`` (for a guest joining now), else ``wait_s``."""
    for key in ("wait_joining_s", "wait_s"):
        v = zone.get(key)
        if isinstance(v, int | float) and not isinstance(v, bool):
            return float(v)
    return None


def _epoch(at: Any) -> float | None:
    if not isinstance(at, str):
        return None
    try:
        return datetime.fromisoformat(at).timestamp()
    except ValueError:
        return None


def local_hhmmss(at: Any) -> str:
    """An RFC 3339 time as local wall-clock HH:MM:SS (this machine's time zone)."""
    t = _epoch(at)
    return "--:--:--" if t is None else time.strftime("%H:%M:%S", time.localtime(t))


@dataclass
class ConsoleState:
    zones: dict[str, dict[str, Any]] = field(default_factory=dict)
    gateways: dict[str, dict[str, Any]] = field(default_factory=dict)
    alerts: list[str] = field(default_factory=list)  # plain lines, oldest first
    feed: list[Alert] = field(default_factory=list)  # oldest first, at most FEED_MAX
    moments: dict[str, dict[str, Any]] = field(default_factory=dict)  # open moments by id
    resolved: set[str] = field(default_factory=set)  # moment ids seen resolved
    nudges: dict[str, dict[str, Any]] = field(default_factory=dict)  # latest nudge by zone
    acks: dict[str, dict[str, Any]] = field(default_factory=dict)  # ack payload by moment id
    names: dict[str, str] = field(default_factory=dict)  # zone id -> display name
    messages: int = 0
    # the connection, as the console's MQTT client reports it
    broker: str = ""
    connected: bool = False
    ever_connected: bool = False
    last_error: str | None = None
    down_since: float | None = None  # wall time the broker became unreachable

    def apply_raw(self, topic: str, raw: bytes | bytearray) -> str | None:
        """Fold one message in as it came off the wire (JSON bytes; empty clears an ack)."""
        if not raw:
            parts = topic.split("/")
            if len(parts) == 4 and parts[2] == "ack":  # a retained ack cleared
                self.acks.pop(parts[3], None)
            return None
        try:
            payload = json.loads(raw)
        except ValueError:
            return None
        return self.apply(topic, payload) if isinstance(payload, dict) else None

    def apply(self, topic: str, payload: dict[str, Any]) -> str | None:
        """Fold one message in; return a printable line for dispatches, nudges and acks."""
        self.messages += 1
        parts = topic.split("/")
        if len(parts) < 4:
            return None
        kind = parts[2]
        zone = payload.get("zone")
        if isinstance(zone, str) and isinstance(payload.get("zone_name"), str):
            self.names[zone] = payload["zone_name"]
        if kind == "zone" and parts[-1] == "state":
            self.zones[parts[3]] = payload
        elif kind == "gateway" and parts[-1] == "status":
            self.gateways[parts[3]] = payload
        elif kind == "moment" or (kind == "gateway" and len(parts) > 4 and parts[4] == "moment"):
            mid = str(payload.get("moment_id"))
            if payload.get("status") == "resolved":
                self.moments.pop(mid, None)
                self.resolved.add(mid)
                for z, n in list(self.nudges.items()):
                    if n.get("moment_id") == mid:
                        del self.nudges[z]
            else:
                self.moments[mid] = payload
        elif kind == "dispatch":
            did = payload.get("moment_id")
            status = str(payload.get("status", ""))
            if status == "resolved" and isinstance(did, str):
                self.resolved.add(did)
            priority = str(payload.get("priority", ""))
            line = (f"{_hhmmss(payload.get('at'))} DISPATCH [{parts[3]}] "
                    f"{priority.upper()} {payload.get('kind')} "
                    f"{status}: {payload.get('action')}")
            self._add(Alert("dispatch", str(payload.get("at", "")),
                            did if isinstance(did, str) else None, str(zone or ""),
                            self.names.get(str(zone), str(zone or "")), parts[3],
                            str(payload.get("kind", "")), status, priority,
                            str(payload.get("action", "")), line))
            return line
        elif kind == "nudge":
            if payload.get("status") == "withdrawn":  # a venue-wide offer whose reason ended
                if self.nudges.get(parts[3], {}).get("moment_id") == payload.get("moment_id"):
                    del self.nudges[parts[3]]
            else:
                self.nudges[parts[3]] = payload
            line = f"{_hhmmss(payload.get('at'))} NUDGE {parts[3]}: {payload.get('message')}"
            nid = payload.get("moment_id")
            self._add(Alert("nudge", str(payload.get("at", "")),
                            nid if isinstance(nid, str) else None, parts[3],
                            self.names.get(parts[3], parts[3]), None, "nudge",
                            str(payload.get("status", "sent")), "low",
                            str(payload.get("message", "")), line))
            return line
        elif kind == "ack" and len(parts) == 4:
            self.acks[parts[3]] = payload
            return (f"{_hhmmss(payload.get('at'))} ACK {parts[3]} taken by "
                    f"{payload.get('by', '?')}")
        return None

    def _add(self, alert: Alert) -> None:
        self.alerts.append(alert.line)
        self.feed.append(alert)
        if len(self.feed) > FEED_MAX:
            del self.feed[: len(self.feed) - FEED_MAX]
        if len(self.alerts) > FEED_MAX:
            del self.alerts[: len(self.alerts) - FEED_MAX]

    def taken_by(self, moment_id: str | None) -> str | None:
        ack = self.acks.get(moment_id) if moment_id else None
        return None if ack is None else str(ack.get("by", "?"))

    def is_open(self, alert: Alert) -> bool:
        """A dispatch staff can still take: its moment is not resolved and nobody took it."""
        return (alert.source == "dispatch" and alert.moment_id is not None
                and alert.status != "resolved" and alert.moment_id not in self.resolved
                and alert.moment_id not in self.acks)

    def newest_open_alert(self) -> Alert | None:
        return next((a for a in reversed(self.feed) if self.is_open(a)), None)

    def current_nudges(self, now: float | None = None) -> list[dict[str, Any]]:
        """The nudges still valid (``at`` + ``valid_for_s`` in the future), by zone."""
        now = time.time() if now is None else now
        out = []
        for zid in sorted(self.nudges):
            n = self.nudges[zid]
            at, valid = _epoch(n.get("at")), n.get("valid_for_s")
            if at is not None and isinstance(valid, int | float) and at + valid < now:
                continue
            out.append(n)
        return out

    def owner_of(self, moment_id: str) -> dict[str, Any]:
        """What the console knows of a moment (gateway, zone, kind) for its acknowledgement."""
        src = self.moments.get(moment_id) or next(
            (p for p in [*self.moments.values()] if p.get("moment_id") == moment_id), None)
        if src is not None:
            return {k: src[k] for k in ("gateway", "zone", "kind") if isinstance(src.get(k), str)}
        for a in reversed(self.feed):
            if a.moment_id == moment_id:
                return {"zone": a.zone, "kind": a.kind}
        return {}

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        """Everything the board shows, as JSON-ready data."""
        now = time.time() if now is None else now
        zones = []
        for zid in sorted(self.zones):
            z = self.zones[zid]
            zones.append({
                "zone": zid, "name": self.names.get(zid, zid), "kind": z.get("kind"),
                "posted_wait_s": posted_wait(z), "wait_s": z.get("wait_s"),
                "wait_joining_s": z.get("wait_joining_s"),
                "wait_forecast_s": z.get("wait_forecast_s"), "trend": trend_arrow(z),
                "queue_length": z.get("queue_length"), "occupancy": z.get("occupancy"),
                "capacity": z.get("capacity"), "at": z.get("at")})
        moments = [{"moment_id": mid, "kind": m.get("kind"), "zone": m.get("zone"),
                    "zone_name": m.get("zone_name") or self.names.get(str(m.get("zone")), ""),
                    "status": m.get("status"), "opened_at": m.get("opened_at"),
                    "value": m.get("value"), "unit": m.get("unit"),
                    "taken_by": self.taken_by(mid)}
                   for mid, m in sorted(self.moments.items(),
                                        key=lambda kv: str(kv[1].get("opened_at") or ""))]
        nudges = [{"zone": n.get("zone"), "zone_name": n.get("zone_name"),
                   "message": n.get("message"), "wait_s": n.get("wait_s"), "at": n.get("at"),
                   "valid_for_s": n.get("valid_for_s")} for n in self.current_nudges(now)]
        gateways = {g: bool(p.get("online")) for g, p in sorted(self.gateways.items())}
        return {"zones": zones, "moments": moments, "nudges": nudges, "gateways": gateways,
                "broker": {"connected": self.connected, "error": self.last_error},
                "at": rfc3339(now)}

    # the plain (log) view -------------------------------------------------------------------

    def table(self) -> str:
        rows = [f"{'zone':<16} {'kind':<6} {'queue':>6} {'occup.':>6} {'posted':>8} "
                f"{'wait':>8} {'method':<11} {'fcst':>8} {'trend':>5} {'arr/min':>7} "
                f"{'out/min':>7}"]
        for zid in sorted(self.zones):
            z = self.zones[zid]
            rows.append(f"{zid:<16} {z.get('kind', ''):<6} {_num(z.get('queue_length')):>6} "
                        f"{_num(z.get('occupancy')):>6} {_dur(z.get('wait_joining_s')):>8} "
                        f"{_dur(z.get('wait_s')):>8} "
                        f"{z.get('wait_method') or '':<11} {_dur(z.get('wait_forecast_s')):>8} "
                        f"{trend_arrow(z):>5} {_num(z.get('arrivals_per_min')):>7} "
                        f"{_num(z.get('throughput_per_min')):>7}")
        for gid, g in sorted(self.gateways.items()):
            rows.append(f"gateway {gid}: {'online' if g.get('online') else 'OFFLINE'}")
        for mid, m in self.moments.items():
            taken = self.taken_by(mid)
            rows.append(f"open moment: {m.get('kind')} at {m.get('zone')} "
                        f"(value {m.get('value')}{m.get('unit', '')})"
                        + (f" taken by {taken}" if taken else ""))
        return "\n".join(rows)


def _num(x: Any) -> str:
    return "-" if x is None else f"{x:.0f}" if isinstance(x, int | float) else str(x)


def _dur(x: Any) -> str:
    if not isinstance(x, int | float):
        return "-"
    m, s = divmod(int(round(x)), 60)
    return f"{m}m{s:02d}s"


def _hhmmss(at: Any) -> str:
    """The UTC time of day of an RFC 3339 ``at`` (log lines, as in the payloads)."""
    return at[11:19] if isinstance(at, str) and len(at) >= 19 else "--:--:--"


# ---------------------------------------------------------------------------------------------
# Rendering (Rich)


def render(state: ConsoleState, *, venue: str = "", interactive: bool = False,
           now: float | None = None, max_alerts: int = 15) -> RenderableType:
    """The live view: a banner while the broker is unreachable, zones, then the alert feed
    newest first (local times, coloured by priority, "taken by …" once acknowledged)."""
    now = time.time() if now is None else now
    parts: list[RenderableType] = []
    if not state.connected:
        since = ("" if state.down_since is None else
                 f" since {time.strftime('%H:%M:%S', time.localtime(state.down_since))}")
        what = "BROKER UNREACHABLE" if state.ever_connected or state.last_error else \
            "CONNECTING"
        detail = f" ({state.last_error})" if state.last_error else ""
        parts.append(Panel(Text(f"{what}: {state.broker}{detail}{since} - retrying; what "
                                "you see may be out of date", style="bold white on red"),
                           style="red"))
    gw = "  ".join(f"{g} {'online' if p.get('online') else 'OFFLINE'}"
                   for g, p in sorted(state.gateways.items()))
    parts.append(Text(f"venue {venue}   gateways: {gw or '-'}", style="bold"))

    zt = Table(title="zones", title_justify="left", expand=False)
    zt.add_column("zone", no_wrap=True,
                  min_width=min(24, max((len(z) for z in state.zones), default=4)))
    for col, justify in (("kind", "left"), ("queue", "right"),
                         ("posted wait", "right"), ("wait_s", "right"),
                         ("forecast", "right"), ("trend", "center"), ("arr/min", "right"),
                         ("out/min", "right")):
        zt.add_column(col, justify=justify)  # type: ignore[arg-type]
    for zid in sorted(state.zones):
        z = state.zones[zid]
        arrow = trend_arrow(z)
        zt.add_row(zid, str(z.get("kind", "")),
                   _num(z.get("queue_length") if z.get("kind") != "area" else
                        z.get("occupancy")),
                   _dur(z.get("wait_joining_s")), _dur(z.get("wait_s")),
                   _dur(z.get("wait_forecast_s")),
                   Text(arrow, style={"↑": "red", "↓": "green"}.get(arrow, "")),
                   _num(z.get("arrivals_per_min")), _num(z.get("throughput_per_min")))
    parts.append(zt)

    at = Table(title="alerts (newest first)", title_justify="left", expand=False)
    for col in ("time", "priority", "team", "zone"):
        at.add_column(col, no_wrap=True)
    at.add_column("what", ratio=1)
    at.add_column("taken by", no_wrap=True)
    for a in list(reversed(state.feed))[:max_alerts]:
        style = PRIORITY_STYLE.get(a.priority, "") if a.source == "dispatch" else "magenta"
        taken = state.taken_by(a.moment_id)
        what = f"{a.kind} {a.status}: {a.text}" if a.source == "dispatch" else f"nudge: {a.text}"
        at.add_row(local_hhmmss(a.at), Text(a.priority.upper() or "-", style=style),
                   a.team or "-", a.zone_name or a.zone, Text(what, style=style),
                   Text(f"taken by {taken}", style="bold green") if taken else
                   ("open" if state.is_open(a) else ""))
    parts.append(at)
    nudges = state.current_nudges(now)
    if nudges:
        parts.append(Text("current nudges: " + " | ".join(str(n.get("message"))
                                                           for n in nudges), style="magenta"))
    if interactive:
        newest = state.newest_open_alert()
        hint = (f"[a] take {newest.kind} at {newest.zone_name or newest.zone}"
                if newest else "[a] take the newest open alert (none open)")
        parts.append(Text(f"{hint}   [q] quit", style="dim"))
    return Group(*parts)


def render_text(state: ConsoleState, *, width: int = 140, **kw: Any) -> str:
    """The live view as plain text (tests, and a one-shot dump)."""
    con = Console(record=True, width=width, file=io.StringIO(), force_terminal=False,
                  color_system=None)
    con.print(render(state, **kw))
    return con.export_text()


# ---------------------------------------------------------------------------------------------
# The MQTT side


def ack_payload(venue: str, moment_id: str, by: str, *, at: float | None = None,
                **known: Any) -> dict[str, Any]:
    """The acknowledgement (``venue-agent/ack@1``) a console publishes when staff take a moment.

    ``known`` adds what the console knows of the moment (``gateway`` that owns it, ``zone``,
    ``kind``), so the owning gateway can find it."""
    Topics(venue).ack(moment_id)  # ValueError for a moment_id that is no topic level
    msg: dict[str, Any] = {"schema": SCHEMA_ACK, "id": new_id(), "venue": venue,
                           "at": rfc3339(time.time() if at is None else at),
                           "moment_id": moment_id, "by": by}
    msg.update({k: v for k, v in known.items() if v})
    return msg


def default_staff_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "staff"


class MqttFeed:
    """One subscribing paho client: connects in the background, re-subscribes on every
    connect, and hands each message to ``on_message(topic, payload)`` on paho's thread.

    ``protocol="auto"`` tries MQTT 5 and falls back to 3.1.1 when the broker refuses the
    version (call :meth:`poll` now and then from the owning thread: it swaps the client).
    TLS is the gateway's (``BrokerSettings.ssl_context``), client certificate included."""

    def __init__(self, settings: BrokerSettings, filters: list[str],
                 on_message: Callable[[str, bytes], None], *,
                 on_change: Callable[[], None] | None = None) -> None:
        self.settings, self.filters = settings, filters
        self._on_message, self._on_change = on_message, on_change
        self.connected = False
        self.ever_connected = False
        self.last_error: str | None = None
        self.down_since: float | None = time.time()
        self.protocol: str = "3.1.1" if settings.protocol == "3.1.1" else "5"
        self._fallback = threading.Event()
        self._subscribed = threading.Event()
        self.client = self._make_client()

    def _make_client(self) -> mqtt.Client:
        s = self.settings
        v5 = self.protocol == "5"
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=s.client_id,
                        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
                        clean_session=None if v5 else True)
        if s.username is not None:
            c.username_pw_set(s.username, s.password)
        if s.tls:  # the gateway's TLS: server verified, TLS 1.2+, optional client cert
            c.tls_set_context(s.ssl_context())
        c.reconnect_delay_set(1, 5)
        c.on_connect = self._connected
        c.on_connect_fail = self._connect_failed
        c.on_disconnect = self._disconnected
        c.on_subscribe = lambda *_a: self._subscribed.set()
        c.on_message = lambda _c, _u, m: self._on_message(m.topic, bytes(m.payload))
        return c

    def _set(self, connected: bool, error: str | None) -> None:
        changed = connected != self.connected or error != self.last_error
        if connected:
            self.ever_connected, self.down_since = True, None
        elif self.connected or self.down_since is None:
            self.down_since = time.time()
        self.connected, self.last_error = connected, error
        if changed and self._on_change is not None:
            self._on_change()

    def _connected(self, c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any = None) -> None:
        if rc.is_failure:
            if (self.settings.protocol == "auto" and self.protocol == "5"
                    and rc.value in (_V5_UNSUPPORTED, _V3_UNACCEPTABLE_PROTOCOL)):
                self._fallback.set()
            self._set(False, f"refused: {rc}")
            return
        self._set(True, None)
        c.subscribe([(t, 1) for t in self.filters])

    def _connect_failed(self, _c: mqtt.Client, _u: Any) -> None:
        self._set(False, "no connection")

    def _disconnected(self, _c: mqtt.Client, _u: Any, _f: Any, rc: Any,
                      _p: Any = None) -> None:
        self._set(False, f"connection lost: {rc}" if rc.is_failure else "disconnected")

    def start(self) -> None:
        self.client.connect_async(self.settings.host, self.settings.port,
                                  keepalive=self.settings.keepalive_s)
        self.client.loop_start()

    def poll(self) -> None:
        """Swap to an MQTT 3.1.1 client when the broker refused MQTT 5 (``auto`` only)."""
        if self._fallback.is_set():
            self._fallback.clear()
            self.stop()
            self.protocol = "3.1.1"
            self.client = self._make_client()
            self.start()

    def wait_subscribed(self, timeout: float) -> bool:
        return self._subscribed.wait(timeout)

    def publish(self, topic: str, payload: dict[str, Any], *, qos: int = 1,
                retain: bool = False) -> mqtt.MQTTMessageInfo:
        return self.client.publish(topic, json.dumps(payload, separators=(",", ":")),
                                   qos=qos, retain=retain)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()


def broker_settings(url: str, *, client_id: str, username: str | None = None,
                    password_file: str | None = None, ca_file: str | None = None,
                    cert_file: str | None = None, key_file: str | None = None,
                    protocol: str = "auto") -> BrokerSettings:
    """BrokerSettings from command-line options; ValueError naming what is wrong."""
    password = None
    if password_file:
        try:
            password = Path(password_file).read_text(encoding="utf-8").strip()
        except OSError as e:
            raise ValueError(f"cannot read --password-file {password_file}: {e}") from None
    return BrokerSettings(url, client_id=client_id, username=username, password=password,
                          ca_file=ca_file, cert_file=cert_file, key_file=key_file,
                          protocol=protocol)  # type: ignore[arg-type]


def client_id(kind: str) -> str:
    return f"venue-agent-{kind}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@contextlib.contextmanager
def _keys(enabled: bool) -> Iterator[Callable[[], str | None]]:
    """Single keypresses from a terminal's stdin (cbreak mode), or nothing."""
    if not enabled:
        yield lambda: None
        return
    import termios
    import tty

    fd = sys.stdin.fileno()
    old = termios.tcgetattr(fd)
    tty.setcbreak(fd)

    def read() -> str | None:
        ready, _, _ = select.select([fd], [], [], 0)
        return os.read(fd, 1).decode(errors="ignore") if ready else None

    try:
        yield read
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, old)


def watch(broker_url: str, venue: str, *, team: str | None = None, duration_s: float | None = None,
          out: TextIO = sys.stdout, table_every_s: float = 5.0, redraw: bool | None = None,
          stop_check: Any = None, username: str | None = None, password_file: str | None = None,
          ca_file: str | None = None, cert_file: str | None = None, key_file: str | None = None,
          protocol: str = "auto", name: str | None = None, ack: str | None = None,
          connect_timeout_s: float | None = 30.0, keys: bool | None = None) -> ConsoleState:
    """Run the console until ``duration_s`` passes (or forever / Ctrl-C / ``q``).

    Raises :class:`NeverConnected` when no connection succeeded within ``connect_timeout_s``
    (None: wait forever) and ValueError for bad options. With ``ack``: publish the
    acknowledgement of that moment id, wait for the broker's PUBACK and return."""
    settings = broker_settings(broker_url, client_id=client_id("watch"), username=username,
                               password_file=password_file, ca_file=ca_file,
                               cert_file=cert_file, key_file=key_file, protocol=protocol)
    topics = Topics(venue)
    by = name or default_staff_name()
    if ack is not None:
        topics.ack(ack)  # ValueError early
    inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
    # paho's thread only hands messages over; state and rendering live on this thread.
    feed = MqttFeed(settings, topics.console_filters(team), lambda t, p: inbox.put((t, p)))
    state = ConsoleState(broker=broker_url)
    redraw = out.isatty() if redraw is None else redraw
    interactive = redraw and sys.stdin.isatty() if keys is None else keys
    started = time.monotonic()
    deadline = None if duration_s is None else started + duration_s
    next_table = started + (0.0 if redraw else table_every_s)
    console = Console(file=out) if redraw else None
    live = None
    if console is not None:
        from rich.live import Live

        live = Live(console=console, auto_refresh=False, screen=False, transient=False)
        live.start()
    feed.start()
    shown = "connecting"

    def take(moment_id: str) -> mqtt.MQTTMessageInfo:
        info = feed.publish(topics.ack(moment_id),
                            ack_payload(venue, moment_id, by, **state.owner_of(moment_id)),
                            qos=1, retain=True)
        return info

    try:
        with _keys(bool(interactive)) as read_key:
            while deadline is None or time.monotonic() < deadline:
                if stop_check is not None and stop_check():
                    break
                feed.poll()
                # One reading of paho's thread's flags per turn: the line printed and the
                # acknowledgement below must agree on whether the broker was connected.
                connected, last_error = feed.connected, feed.last_error
                state.connected, state.last_error = connected, last_error
                state.ever_connected, state.down_since = feed.ever_connected, feed.down_since
                if (not feed.ever_connected and connect_timeout_s is not None
                        and time.monotonic() - started > connect_timeout_s):
                    raise NeverConnected(
                        f"no connection to the broker at {broker_url} within "
                        f"{connect_timeout_s:g} s ({last_error or 'no answer'})")
                link = ("connected" if connected else
                        "UNREACHABLE" if last_error else "connecting")
                if not redraw and link != shown:
                    print(f"broker {link}: {broker_url}" + (
                        f" ({last_error}); retrying" if link == "UNREACHABLE" else
                        f" (MQTT {feed.protocol})" if link == "connected" else ""),
                        file=out, flush=True)
                shown = link
                if ack is not None and connected:
                    info = take(ack)
                    info.wait_for_publish(timeout=10)
                    if not info.is_published():
                        raise NeverConnected(f"the broker did not confirm the acknowledgement "
                                             f"of {ack}")
                    print(f"acknowledged {ack} as {by}", file=out, flush=True)
                    break
                try:
                    topic, raw = inbox.get(timeout=0.1)
                    line = state.apply_raw(topic, raw)
                    if line and not redraw:
                        print(line, file=out, flush=True)
                    while True:  # drain a burst (retained states on connect) before drawing
                        topic, raw = inbox.get_nowait()
                        line = state.apply_raw(topic, raw)
                        if line and not redraw:
                            print(line, file=out, flush=True)
                except queue.Empty:
                    pass
                key = read_key()
                if key in ("q", "Q"):
                    break
                if key in ("a", "A", "\n", "\r", " "):
                    newest = state.newest_open_alert()
                    if newest is not None and newest.moment_id is not None and connected:
                        take(newest.moment_id)
                        # shown at once; the retained ack comes back over the subscription
                        state.acks[newest.moment_id] = {"by": by}
                        next_table = 0.0
                if time.monotonic() >= next_table:
                    if live is not None:
                        live.update(render(state, venue=venue, interactive=bool(interactive)),
                                    refresh=True)
                        next_table = time.monotonic() + 0.5
                    else:
                        print(state.table() + "\n", file=out, flush=True)
                        next_table = time.monotonic() + table_every_s
    except KeyboardInterrupt:
        pass
    finally:
        if live is not None:
            live.stop()
        feed.stop()
    return state
