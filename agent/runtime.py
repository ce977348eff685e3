"""The gateway runtime: one asyncio loop owns everything.

Reader threads (pyserial links) and library callbacks (bleak, paho) never touch shared state:
they hand their data to the loop with ``call_soon_threadsafe``. On the loop, each read is
pseudonymised and appended to the columnar :class:`~agent.readbuffer.ReadBuffer`; every tick
the buffer goes through the kernels, the moment rules look at the metrics, and what comes out
is written to the SQLite outbox, from which the publisher sends it.

Start-up order matters: storage first (a gateway that cannot persist must say so before it
reads anything), then the pseudonym key, then the numba cache directory (numba reads it when
``kernels`` is first imported), then the broker connection and the readers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from agent import __version__
from agent.config import Config, ReaderConfig
from agent.moments import MomentEvent, MomentRules
from agent.outbox import Outbox, OutboxFullError
from agent.privacy import Pseudonymizer, load_or_create_key
from agent.readbuffer import ReadBuffer
from agent.timefmt import rfc3339
from agent.topics import (
    SCHEMA_DISPATCH,
    SCHEMA_HEALTH,
    SCHEMA_MOMENT,
    SCHEMA_NUDGE,
    SCHEMA_STATUS,
    SCHEMA_ZONE_STATE,
    SEQ_GUARANTEED,
    SEQ_STATE,
    Topics,
)
from firmware_bridge.records import RawRead

log = logging.getLogger("venue_agent.runtime")



def monotonic_epoch_clock() -> Callable[[], float]:
    """Seconds since the epoch that never step: the wall clock read once at start-up, then
    advanced by the monotonic clock.

    The kernels measure waits and timeouts from these stamps, so an NTP step (a Pi has no
    real-time clock and often syncs minutes after boot) must not shorten or stretch them.
    Published ``at`` fields use the wall clock itself.
    """
    epoch0, mono0 = time.time(), time.monotonic()
    return lambda: epoch0 + (time.monotonic() - mono0)


class StartupError(RuntimeError):
    """The agent cannot start; the message says what to fix."""


def prepare_numba_cache(cfg: Config) -> None:
    """Point numba's on-disk cache at a writable directory before ``kernels`` is imported.

    An explicit NUMBA_CACHE_DIR in the environment wins (systemd units may set it).
    """
    if "NUMBA_CACHE_DIR" in os.environ:
        return
    path = cfg.numba_cache_dir
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        # Not fatal: numba compiles without a cache, only start-up is slower.
        log.warning("numba cache %s is not writable (%s); kernels will compile on every start",
                    path, e)
        return
    os.environ["NUMBA_CACHE_DIR"] = str(path)


@dataclass
class ReaderStatus:
    """What the loop knows of one reader (owned by the loop)."""

    config: ReaderConfig
    index: int
    online: bool | None = None  # None until the link first reports
    offline_since: float | None = None
    last_error: str | None = None
    reads: int = 0
    reads_at_last_health: int = 0
    last_read_ts: float | None = None


def _clean_float(x: float, ndigits: int = 2) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), ndigits)


class Agent:
    """One gateway. ``await Agent(cfg).run(stop_event)`` runs until ``stop_event`` is set."""

    def __init__(self, cfg: Config, *, clock: Callable[[], float] | None = None,
                 wall: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.clock = clock or monotonic_epoch_clock()  # stamps reads and ticks
        self.wall = wall  # stamps what is published
        self.topics = Topics(cfg.venue.id, cfg.gateway.id)
        self.buffer = ReadBuffer()
        self.rules = MomentRules(cfg)
        self.readers = {r.id: ReaderStatus(r, i) for i, r in enumerate(cfg.readers)}
        self.zone_index = {z.id: i for i, z in enumerate(cfg.zones)}
        self.started_at = self.wall()
        self._created_mono = time.monotonic()
        self._wall_offset = self.wall() - self.clock()
        self.ticks = 0
        self.tick_ms_last = 0.0
        self.tick_ms_max = 0.0
        self.dropped_unknown = 0
        self._links: list[Any] = []
        self._scanners: list[Any] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._cpu_mark = (time.monotonic(), time.process_time())
        self._open_storage()

    # ------------------------------------------------------------------ start-up
    def _open_storage(self) -> None:
        cfg = self.cfg
        try:
            cfg.db_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StartupError(f"storage.path: cannot create the directory "
                               f"{cfg.db_path.parent} ({e})") from None
        try:
            self.outbox = Outbox(cfg.db_path)
        except Exception as e:  # noqa: BLE001 - any storage failure stops start-up, named
            raise StartupError(f"storage.path: cannot open the outbox database "
                               f"{cfg.db_path} ({e})") from None
        try:
            self.pseudonym = Pseudonymizer(load_or_create_key(cfg.key_path))
        except Exception as e:  # noqa: BLE001
            raise StartupError(str(e)) from None
        prepare_numba_cache(cfg)
        import kernels  # only now: numba reads NUMBA_CACHE_DIR when it is first imported

        roles = {"presence": kernels.ROLE_PRESENCE, "entry": kernels.ROLE_ENTRY,
                 "exit": kernels.ROLE_EXIT}
        kinds = {"queue": kernels.KIND_QUEUE, "area": kernels.KIND_AREA}
        # The names zone state publishes for kernels' wait_method codes.
        self._wait_methods = {kernels.METHOD_NONE: "none", kernels.METHOD_MEASURED: "measured",
                              kernels.METHOD_LITTLE: "littles_law"}
        topo = kernels.Topology(
            reader_zone=np.array([self.zone_index[r.zone] for r in cfg.readers], np.int32),
            reader_role=np.array([roles[r.role] for r in cfg.readers], np.int8),
            zone_kind=np.array([kinds[z.kind] for z in cfg.zones], np.int8),
            zone_timeout_s=np.array([z.timeout_s for z in cfg.zones], np.float64),
        )
        est = cfg.estimation
        self.engine = kernels.ZoneEngine(
            topo, max_tags=est.max_tags, window_s=est.window_s, rate_window_s=est.rate_window_s,
            fifo_slack_s=est.fifo_slack_s, min_measured_waits=est.min_measured_waits,
            wait_recent=est.wait_recent,
            horizon_s=cfg.moments.forecast_horizon_s)
        # Compile (or load from the cache) before the first real tick.
        self.engine.ingest(np.empty(0, np.float64), np.empty(0, np.uint64),
                           np.empty(0, np.int32), np.empty(0, np.float32))
        self.engine.tick(self.clock())

    def _status_payload(self, online: bool, reason: str) -> bytes:
        msg = self.topics.envelope(SCHEMA_STATUS, self.wall(), online=online, reason=reason,
                                   version=__version__,
                                   started_at=rfc3339(self.started_at),
                                   readers=[r.id for r in self.cfg.readers],
                                   zones=[z.id for z in self.cfg.zones])
        return json.dumps(msg).encode()

    def _make_publisher(self) -> Any:
        from agent.publisher import BrokerSettings, Publisher

        b = self.cfg.broker
        password = None
        if b.password_file:
            try:
                with open(b.password_file, encoding="utf-8") as f:
                    password = f.read().strip()
            except OSError as e:
                raise StartupError(f"broker.password_file: cannot read {b.password_file} "
                                   f"({e})") from None
        settings = BrokerSettings(url=b.url, client_id=self.cfg.client_id,
                                  keepalive_s=b.keepalive_s, username=b.username or None,
                                  password=password, ca_file=b.ca_file or None,
                                  protocol=b.protocol)  # type: ignore[arg-type]  # validated
        return Publisher(settings, self.outbox,
                         will=(self.topics.status, self._status_payload(False, "connection lost")),
                         birth=lambda: (self.topics.status, self._status_payload(True, "started")))

    def _start_readers(self) -> None:
        from firmware_bridge.serial_link import open_reader_link

        for st in self.readers.values():
            r = st.config
            st.offline_since = self.clock()
            if r.protocol == "ble":
                continue
            # The factory picks the decoder, baud rate and, for readers that only answer
            # when asked (UHF, PN532), the polling driver.
            link = open_reader_link(r.id, r.protocol, r.port, self._reads_from_thread,
                                    baudrate=r.baudrate or None,
                                    poll_interval_s=r.poll_interval_s,
                                    on_state=self._state_from_thread, clock=self.clock)
            self._links.append(link)
            link.start()
            log.info("reader %s: %s on %s (zone %s, %s)", r.id, r.protocol, r.port, r.zone,
                     r.role)

    async def _start_ble(self) -> None:
        ble = [st.config for st in self.readers.values() if st.config.protocol == "ble"]
        if not ble:
            return
        from firmware_bridge.ble_adverts import WristbandFormat
        from firmware_bridge.ble_scanner import BleScanner

        for r in ble:
            bands = [WristbandFormat(company_id=w.company_id, id_offset=w.id_offset,
                                     id_length=w.id_length, name=w.name) for w in r.wristbands]
            sc = BleScanner(r.id, self._reads_from_thread, rule=r.identity, wristbands=bands,
                            adapter=r.adapter or None, on_state=self._state_from_thread,
                            clock=self.clock)
            await sc.start()
            self._scanners.append(sc)
            log.info("reader %s: BLE scanner on %s (zone %s)", r.id, r.adapter or "default "
                     "adapter", r.zone)

    # ------------------------------------------------------------------ hand-over
    def _reads_from_thread(self, reader_id: str, ts: float, reads: list[RawRead]) -> None:
        """Called from a reader thread (or bleak's callback): hand over, nothing else."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._accept_reads, reader_id, ts, reads)

    def _state_from_thread(self, reader_id: str, online: bool, message: str | None) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._reader_state, reader_id, online, message)

    def _accept_reads(self, reader_id: str, ts: float, reads: list[RawRead]) -> None:
        st = self.readers.get(reader_id)
        if st is None:
            self.dropped_unknown += len(reads)
            return
        for rd in reads:
            self.buffer.append(ts, self.pseudonym(rd.protocol, rd.tag_id), st.index, rd.rssi_dbm)
        st.reads += len(reads)
        st.last_read_ts = ts

    def _reader_state(self, reader_id: str, online: bool, message: str | None) -> None:
        st = self.readers.get(reader_id)
        if st is None or st.online == online:
            return
        st.online = online
        if online:
            st.offline_since, st.last_error = None, None
            log.info("reader %s: online", reader_id)
        else:
            # Keep an earlier start of the outage (a reader that never came up is offline
            # since start-up, not since its first error report).
            if st.offline_since is None:
                st.offline_since = self.clock()
            st.last_error = message
            log.warning("reader %s: offline: %s", reader_id, message)

    # ------------------------------------------------------------------ the tick
    def tick(self, now: float) -> None:
        t0 = time.perf_counter()
        # Kernel time (monotonic) to wall time, for what is published.
        self._wall_offset = self.wall() - now
        ts, tag, reader, rssi = self.buffer.take()
        if ts.size:
            self.engine.ingest(ts, tag, reader, rssi)
        m = self.engine.tick(now)
        # One transaction (one fsync) for everything this tick publishes.
        with self.outbox.batch():
            values: dict[str, dict[str, float]] = {}
            for z in self.cfg.zones:
                i = self.zone_index[z.id]
                v = {name: float(getattr(m, name)[i]) for name in (
                    "queue_length", "occupancy", "wait_s", "dwell_p50_s", "dwell_p90_s",
                    "arrivals_per_min", "throughput_per_min", "wait_forecast_s")}
                count = v["queue_length"] if z.kind == "queue" else v["occupancy"]
                v["fill_pct"] = 100.0 * count / z.capacity if z.capacity else math.nan
                # A nudge promises a short wait: only while the ride is seen to be moving guests.
                v["wait_s_flowing"] = v["wait_s"] if v["throughput_per_min"] > 0 else math.nan
                values[z.id] = v
                self._enqueue_state(now, z.id, z.kind, z.capacity, v, int(m.wait_method[i]))
            offline = {rid: (now - st.offline_since) if st.offline_since is not None else 0.0
                       for rid, st in self.readers.items()}
            for ev in self.rules.step(now, values, offline):
                self._enqueue_moment(ev, values.get(ev.zone, {}))
        self.ticks += 1
        self.tick_ms_last = (time.perf_counter() - t0) * 1000.0
        self.tick_ms_max = max(self.tick_ms_max, self.tick_ms_last)

    def _enqueue(self, topic: str, payload: dict[str, Any], **kw: Any) -> None:
        try:
            self.outbox.enqueue(topic, payload, **kw)
        except OutboxFullError as e:
            log.error("%s", e)

    def _enqueue_state(self, now: float, zone: str, kind: str, capacity: int,
                       v: dict[str, float], method: int) -> None:
        body = {
            "zone": zone, "kind": kind, "capacity": capacity or None,
            "queue_length": _clean_float(v["queue_length"], 1) if kind == "queue" else None,
            "occupancy": _clean_float(v["occupancy"], 1),
            "wait_s": _clean_float(v["wait_s"], 1), "wait_method": self._wait_methods.get(method),
            "wait_forecast_s": _clean_float(v["wait_forecast_s"], 1),
            "dwell_p50_s": _clean_float(v["dwell_p50_s"], 1),
            "dwell_p90_s": _clean_float(v["dwell_p90_s"], 1),
            "arrivals_per_min": _clean_float(v["arrivals_per_min"]),
            "throughput_per_min": _clean_float(v["throughput_per_min"]),
            "readers_online": sum(1 for st in self.readers.values()
                                  if st.config.zone == zone and st.online),
        }
        topic = self.topics.zone_state(zone)
        self._enqueue(topic, self.topics.envelope(SCHEMA_ZONE_STATE, now + self._wall_offset, **body), qos=1,
                      retain=True, seq_stream=SEQ_STATE, coalesce_key=topic)

    def _enqueue_moment(self, ev: MomentEvent, v: dict[str, float]) -> None:
        zone = self.cfg.zone(ev.zone)
        metrics = {k: _clean_float(v.get(k, math.nan), 1) for k in (
            "queue_length", "occupancy", "wait_s", "wait_forecast_s", "dwell_p90_s",
            "throughput_per_min")}
        body: dict[str, Any] = {
            "moment_id": ev.moment_id, "kind": ev.kind, "zone": ev.zone,
            "zone_name": zone.display_name, "status": ev.status,
            "opened_at": rfc3339(ev.opened_at + self._wall_offset),
            "value": _clean_float(ev.value, 1), "unit": ev.unit,
            "open_level": ev.open_level, "clear_level": ev.clear_level, "metrics": metrics}
        if ev.reader:
            st = self.readers[ev.reader]
            body["reader"] = ev.reader
            body["error"] = st.last_error
        log.info("moment %s %s %s (value %s%s)", ev.kind, ev.zone, ev.status,
                 body["value"], ev.unit)
        self._enqueue(self.topics.moment(ev.zone, ev.kind),
                      self.topics.envelope(SCHEMA_MOMENT, ev.at + self._wall_offset, **body),
                      qos=1, seq_stream=SEQ_GUARANTEED)
        dispatch = _dispatch_action(ev, zone.display_name, v)
        if dispatch is not None:
            team = self.cfg.moments.reader_team if ev.kind == "reader_down" else zone.team
            priority, action = dispatch
            self._enqueue(self.topics.dispatch(team), self.topics.envelope(
                SCHEMA_DISPATCH, ev.at + self._wall_offset, moment_id=ev.moment_id, kind=ev.kind, zone=ev.zone,
                zone_name=zone.display_name, team=team, status=ev.status, priority=priority,
                action=action, metrics=metrics, reader=ev.reader), qos=1,
                seq_stream=SEQ_GUARANTEED)
        if ev.kind == "wait_short" and ev.status in ("opened", "updated"):
            minutes = max(1, round(ev.value / 60.0))
            expiry = self.cfg.broker.nudge_expiry_s
            self._enqueue(self.topics.nudge(ev.zone), self.topics.envelope(
                SCHEMA_NUDGE, ev.at + self._wall_offset, moment_id=ev.moment_id, zone=ev.zone,
                zone_name=zone.display_name, wait_s=_clean_float(ev.value, 0),
                message=f"{zone.display_name} is a {minutes}-minute wait right now",
                valid_for_s=expiry), qos=1, expiry_s=expiry, seq_stream=SEQ_GUARANTEED)

    # ------------------------------------------------------------------ health
    def health(self) -> dict[str, Any]:
        mono, cpu = time.monotonic(), time.process_time()
        dt = max(mono - self._cpu_mark[0], 1e-6)
        cpu_pct = 100.0 * (cpu - self._cpu_mark[1]) / dt
        self._cpu_mark = (mono, cpu)
        readers = {}
        link_health = {h.reader_id: h for h in (lk.health() for lk in self._links)}
        for rid, st in self.readers.items():
            rate = (st.reads - st.reads_at_last_health) / dt
            st.reads_at_last_health = st.reads
            lh = link_health.get(rid)
            readers[rid] = {
                "online": bool(st.online), "reads": st.reads, "reads_per_s": round(rate, 2),
                "bad_frames": getattr(lh, "bad_frames", 0),
                "last_read_at": (rfc3339(st.last_read_ts + self._wall_offset)
                                 if st.last_read_ts else None),
                "error": st.last_error}
        pub = asdict(self.publisher.stats()) if hasattr(self, "publisher") else {}
        return {"uptime_s": round(self.wall() - self.started_at, 1), "readers": readers,
                "outbox_depth": self.outbox.depth(), "publisher": pub,
                "cpu_pct": round(cpu_pct, 1), "rss_mb": round(rss_mb(), 1),
                "tick_ms": round(self.tick_ms_last, 3), "tick_ms_max": round(self.tick_ms_max, 3),
                "live_tags": self.engine.live_tags}

    # ------------------------------------------------------------------ main
    async def run(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self.publisher = self._make_publisher()
        pub_task = asyncio.create_task(self.publisher.run(), name="publisher")
        self._start_readers()
        await self._start_ble()
        tick_s = self.cfg.gateway.tick_s
        next_health = time.monotonic() + self.cfg.gateway.health_interval_s
        next_tick = time.monotonic()  # the first tick at once: state is published at start-up
        log.info("gateway %s of venue %s running: %d readers, %d zones, broker %s",
                 self.cfg.gateway.id, self.cfg.venue.id, len(self.readers),
                 len(self.cfg.zones), self.cfg.broker.url)
        try:
            while not stop.is_set():
                delay = next_tick - time.monotonic()
                if delay > 0:
                    try:
                        await asyncio.wait_for(stop.wait(), delay)
                        break
                    except TimeoutError:
                        pass
                mono = time.monotonic()
                # If a tick ran long, skip the missed ones rather than run a burst of them.
                next_tick = max(next_tick + tick_s, mono + tick_s * 0.5)
                self.tick(self.clock())
                if self.ticks == 1:
                    # Benchmarks read this line to measure start-up (bench/).
                    log.info("first tick %.3f s after the agent was created",
                             time.monotonic() - self._created_mono)
                if mono >= next_health:
                    next_health = mono + self.cfg.gateway.health_interval_s
                    h = self.health()
                    self.publisher.publish_volatile(self.topics.health, json.dumps(
                        self.topics.envelope(SCHEMA_HEALTH, self.wall(), **h)).encode())
                self.publisher.kick()
                if pub_task.done():
                    pub_task.result()  # a publisher that died surfaces its error here
        finally:
            await self._shutdown(pub_task)

    async def _shutdown(self, pub_task: asyncio.Task[None]) -> None:
        log.info("stopping")
        for lk in self._links:
            lk.stop()
        for sc in self._scanners:
            try:
                await sc.stop()
            except Exception as e:  # noqa: BLE001 - shutting down anyway
                log.warning("BLE scanner stop: %s", e)
        try:
            await asyncio.wait_for(self.publisher.stop(), 10.0)
        except TimeoutError:
            log.warning("publisher did not stop in 10 s")
        if not pub_task.done():
            pub_task.cancel()
        self.outbox.close()


def _dispatch_action(ev: MomentEvent, name: str, v: dict[str, float]) -> tuple[str, str] | None:
    """(priority, recommended action) for the moments staff act on, else None."""
    def mins(x: float) -> str:
        if not math.isfinite(x):
            return "unknown"
        return f"{round(x)} s" if x < 120 else f"{round(x / 60.0)} min"

    if ev.status == "resolved":
        if ev.kind in ("queue_long", "queue_rising", "zone_crowded", "reader_down"):
            return "info", f"Stand down: {ev.kind.replace('_', ' ')} at {name} has cleared."
        return None
    if ev.status != "opened":
        return None
    if ev.kind == "queue_long":
        return "high", (f"Open another load station or add staff at {name}: wait "
                        f"{mins(v.get('wait_s', math.nan))}, "
                        f"{_count(v.get('queue_length', math.nan))} in line.")
    if ev.kind == "queue_rising":
        return "medium", (f"Prepare staff for {name}: wait forecast "
                          f"{mins(v.get('wait_forecast_s', math.nan))} within the horizon.")
    if ev.kind == "zone_crowded":
        return "high", f"Manage crowding at {name}: {ev.value:.0f} % of capacity."
    if ev.kind == "reader_down":
        return "medium", f"Check reader {ev.reader} at {name}: offline."
    return None


def _count(x: float) -> str:
    return "unknown" if not math.isfinite(x) else str(round(x))


def rss_mb() -> float:
    """Resident set size now, in MiB (Linux /proc; elsewhere the peak from getrusage)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
