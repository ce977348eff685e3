"""The staff console (`venue-agent watch`, and the demo's live view).

An independent MQTT consumer, as a staff app or a central system would be: it subscribes to
one venue's topics, keeps the latest zone states, and shows dispatch alerts as they arrive.
It knows nothing of the agent's internals; everything it shows came over the broker.

On a terminal it redraws a table in place; otherwise (logs, pipes) it prints one line per
alert and a zone table every ``table_every_s``.
"""

from __future__ import annotations

import json
import queue
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.publisher import BrokerSettings
from agent.topics import Topics

CLEAR = "\x1b[H\x1b[2J"


@dataclass
class ConsoleState:
    zones: dict[str, dict[str, Any]] = field(default_factory=dict)
    gateways: dict[str, dict[str, Any]] = field(default_factory=dict)
    alerts: list[str] = field(default_factory=list)
    moments: dict[str, dict[str, Any]] = field(default_factory=dict)  # open moments by id
    messages: int = 0

    def apply(self, topic: str, payload: dict[str, Any]) -> str | None:
        """Fold one message in; return a printable alert line for dispatches and nudges."""
        self.messages += 1
        parts = topic.split("/")
        if len(parts) < 4:
            return None
        kind = parts[2]
        if kind == "zone" and parts[-1] == "state":
            self.zones[parts[3]] = payload
        elif kind == "gateway" and parts[-1] == "status":
            self.gateways[parts[3]] = payload
        elif kind == "moment":
            mid = str(payload.get("moment_id"))
            if payload.get("status") == "resolved":
                self.moments.pop(mid, None)
            else:
                self.moments[mid] = payload
        elif kind == "dispatch":
            line = (f"{_hhmmss(payload.get('at'))} DISPATCH [{parts[3]}] "
                    f"{payload.get('priority', '').upper()} {payload.get('kind')} "
                    f"{payload.get('status')}: {payload.get('action')}")
            self.alerts.append(line)
            return line
        elif kind == "nudge":
            line = f"{_hhmmss(payload.get('at'))} NUDGE {parts[3]}: {payload.get('message')}"
            self.alerts.append(line)
            return line
        return None

    def table(self) -> str:
        rows = [f"{'zone':<16} {'kind':<6} {'queue':>6} {'occup.':>6} {'wait':>8} "
                f"{'method':<11} {'fcst':>8} {'arr/min':>7} {'out/min':>7}"]
        for zid in sorted(self.zones):
            z = self.zones[zid]
            rows.append(f"{zid:<16} {z.get('kind', ''):<6} {_num(z.get('queue_length')):>6} "
                        f"{_num(z.get('occupancy')):>6} {_dur(z.get('wait_s')):>8} "
                        f"{z.get('wait_method') or '':<11} {_dur(z.get('wait_forecast_s')):>8} "
                        f"{_num(z.get('arrivals_per_min')):>7} "
                        f"{_num(z.get('throughput_per_min')):>7}")
        for gid, g in sorted(self.gateways.items()):
            rows.append(f"gateway {gid}: {'online' if g.get('online') else 'OFFLINE'}")
        for m in self.moments.values():
            rows.append(f"open moment: {m.get('kind')} at {m.get('zone')} "
                        f"(value {m.get('value')}{m.get('unit', '')})")
        return "\n".join(rows)


def _num(x: Any) -> str:
    return "-" if x is None else f"{x:.0f}" if isinstance(x, int | float) else str(x)


def _dur(x: Any) -> str:
    if not isinstance(x, int | float):
        return "-"
    m, s = divmod(int(round(x)), 60)
    return f"{m}m{s:02d}s"


def _hhmmss(at: Any) -> str:
    return at[11:19] if isinstance(at, str) and len(at) >= 19 else "--:--:--"


def watch(broker_url: str, venue: str, *, team: str | None = None, duration_s: float | None = None,
          out: TextIO = sys.stdout, table_every_s: float = 5.0, redraw: bool | None = None,
          stop_check: Any = None) -> ConsoleState:
    """Run the console until ``duration_s`` passes (or forever / Ctrl-C); returns its state."""
    where = BrokerSettings(broker_url, client_id="venue-agent-watch")  # ValueError if bad
    inbox: queue.Queue[tuple[str, bytes | bytearray]] = queue.Queue()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    if where.tls:
        client.tls_set()
    topics = Topics(venue).console_filters(team)

    def on_connect(c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any = None) -> None:
        if not rc.is_failure:
            c.subscribe([(t, 1) for t in topics])

    # paho's thread only hands messages over; rendering happens on this thread.
    client.on_connect = on_connect
    client.on_message = lambda _c, _u, m: inbox.put((m.topic, m.payload))
    client.connect_async(where.host, where.port, keepalive=30)
    client.loop_start()
    state = ConsoleState()
    redraw = out.isatty() if redraw is None else redraw
    deadline = None if duration_s is None else time.monotonic() + duration_s
    next_table = time.monotonic() + (0.0 if redraw else table_every_s)
    try:
        while deadline is None or time.monotonic() < deadline:
            if stop_check is not None and stop_check():
                break
            try:
                topic, raw = inbox.get(timeout=0.25)
                try:
                    payload = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(payload, dict):
                    line = state.apply(topic, payload)
                    if line and not redraw:
                        print(line, file=out, flush=True)
            except queue.Empty:
                pass
            if time.monotonic() >= next_table:
                if redraw:
                    out.write(CLEAR + state.table() + "\n\nlatest alerts:\n" +
                              "\n".join(state.alerts[-10:]) + "\n")
                    out.flush()
                    next_table = time.monotonic() + 1.0
                else:
                    print(state.table() + "\n", file=out, flush=True)
                    next_table = time.monotonic() + table_every_s
    except KeyboardInterrupt:
        pass
    finally:
        client.loop_stop()
        client.disconnect()
    return state
