"""The gateway runtime: the thin async shell around :class:`agent.gateway.GatewayCore`.

One asyncio loop owns everything. Reader threads (pyserial links) and library callbacks
(bleak, paho) never touch shared state: they hand their data to the loop with
``call_soon_threadsafe``. On the loop, reads go to the core; every tick the core decides what
to publish and the shell writes it to the SQLite outbox, from which the publisher sends it.

Start-up order matters: storage first (a gateway that cannot persist must say so before it
reads anything), then the pseudonym key, then the numba cache directory (numba reads it when
``kernels`` is first imported, and the ahead-of-time kernels live in it: kernels/backends.py),
then the broker connection and the readers.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import json
import logging
import os
import resource
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.config import Config
from agent.outbox import Outbox
from agent.privacy import KeyFileError, Rotation, load_or_create_key, store_key
from agent.sdnotify import Notifier
from agent.topics import SCHEMA_ACK, SCHEMA_HEALTH, SCHEMA_STATUS, Topics
from firmware_bridge.records import RawRead

if TYPE_CHECKING:  # the core imports the kernels (numba) only once the cache is set
    from agent.gateway import Outgoing

log = logging.getLogger("venue_agent.runtime")

# How often the outbox is asked what it dropped (a data_dropped moment per report).
DROP_REPORT_EVERY_S = 30.0

def monotonic_epoch_clock() -> Callable[[], float]:
    """Seconds since the epoch that never step: the wall clock read once at start-up, then
    advanced by the monotonic clock.

    The kernels measure waits and timeouts from these stamps, so an NTP step (a Pi has no
    real-time clock and often syncs minutes after boot) must not shorten or stretch them.
    Published ``at`` fields use the wall clock itself.
    """
    epoch0, mono0 = time.time(), time.monotonic()
    return lambda: epoch0 + (time.monotonic() - mono0)


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
LARGE_BLOCK = 128 * 1024  # bytes: glibc's own starting threshold


def give_back_large_blocks() -> None:
    """Keep every block of at least LARGE_BLOCK bytes in its own mapping, so that freeing it
    gives the memory back to the OS.

    glibc starts so, then raises the threshold to the size of the largest such block freed
    (up to 32 MB): after the first checkpoint, the copies of the engine's arrays each later
    one makes (28 MB, in a worker thread) came from heaps that keep what is freed, about
    14 MB of steady RSS. Setting the threshold turns that adjustment off. No effect where
    the C library is not glibc (mallopt missing or ignoring the parameter)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(M_MMAP_THRESHOLD, LARGE_BLOCK)


def settle_heap() -> None:
    """Once start-up is over: collect its garbage, then move every object alive (modules,
    numba's compiler and typing state: well over 100,000 objects) out of the collector's
    sight for good (``gc.freeze``).

    The per-read path allocates, so the cyclic collector runs often; each full collection
    walked that whole start-up heap again, a third of the CPU of a gateway at full read
    rate. Frozen objects are still freed by reference counting."""
    gc.collect()
    gc.freeze()


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


class Agent:
    """One gateway. ``await Agent(cfg).run(stop_event)`` runs until ``stop_event`` is set.

    The agent is a shell around :class:`~agent.gateway.GatewayCore`: it owns the clock, the
    read sources, the outbox and the publisher, and hands the core reads and ticks.
    """

    def __init__(self, cfg: Config, *, clock: Callable[[], float] | None = None,
                 wall: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.clock = clock or monotonic_epoch_clock()  # stamps reads and ticks
        self.wall = wall  # stamps what is published
        self._created_mono = time.monotonic()
        self._wall_offset = self.wall() - self.clock()
        self.tick_ms_last = 0.0
        self.tick_ms_max = 0.0
        self._sources: list[Any] = []
        self._inbox: deque[tuple[str, float, list[RawRead]]] = deque()
        self._next_drop_report = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._cpu_mark = (time.monotonic(), time.process_time())
        give_back_large_blocks()
        self.outbox = _open_outbox(cfg)
        try:
            key = load_or_create_key(cfg.key_path,
                                     Rotation.of(cfg.privacy).epoch(self.clock()))
        except Exception as e:  # noqa: BLE001 - any key failure stops start-up, named
            raise StartupError(str(e)) from None
        self._key_epoch = key.epoch  # the epoch of the key on disk
        self._key_error_epoch: int | None = None
        prepare_numba_cache(cfg)  # before the core imports kernels
        from agent.gateway import GatewayCore
        from kernels.backends import KernelsUnavailable

        try:
            self.core = GatewayCore(cfg, key=key, started_at=self.wall())
        except KernelsUnavailable as e:  # VENUE_AGENT_KERNELS=aot without a module, or bad
            raise StartupError(str(e)) from None
        log.info("kernels: %s", self.core.engine.kernels.describe())
        self.core.warm_up(self.clock())
        self._restore_checkpoint()
        self._experiment = self._open_experiment()
        self._checkpoint_task: asyncio.Future[int] | None = None
        from agent import homeassistant

        # Published on every connection, retained (empty unless [homeassistant] discovery).
        self._discovery = homeassistant.discovery_configs(cfg)
        self._discovery_messages = homeassistant.discovery_messages(cfg)

    def _open_experiment(self) -> Any:
        """The nudge experiment's records (the gateway's database), when it has nudges."""
        if not self.core.nudges.enabled:
            return None
        from agent.experiment import OpportunityStore

        try:
            store = OpportunityStore(self.cfg.db_path)
        except Exception as e:  # noqa: BLE001 - any storage failure stops start-up, named
            raise StartupError(f"storage.path: cannot open the experiment records in "
                               f"{self.cfg.db_path} ({e})") from None
        self.core.nudges.load_history(store.outcomes())
        return store

    # ------------------------------------------------------------------ checkpoints
    def _restore_checkpoint(self) -> None:
        """Resume the queue from the last checkpoint, or say why the agent starts empty."""
        if self.cfg.storage.checkpoint_interval_s <= 0:
            return
        from agent import checkpoint

        path = self.cfg.checkpoint_path
        if _older_than(path, self.cfg.privacy.retention_s, self.wall()):
            # It holds pseudonyms: past the retention limit it goes (and it is of no use:
            # its pseudonym epoch is over).
            log.warning("checkpoint %s is older than privacy.retention_days (%g); deleting "
                        "it and starting with an empty engine", path,
                        self.cfg.privacy.retention_days)
            path.unlink(missing_ok=True)
            return
        cp, why = checkpoint.load(path, checkpoint.fingerprint(self.cfg))
        if cp is None:
            if why != "no checkpoint":
                log.warning("%s; starting with an empty engine", why)
            return
        now = self.clock()
        try:
            resumed = self.core.restore(cp, now)
        except checkpoint.CheckpointError as e:
            log.warning("checkpoint %s: %s; starting with an empty engine", path, e)
            return
        log.info("restored checkpoint %s: %d tags, %d open moments, down for %.0f s",
                 path, self.core.engine.live_tags, resumed, max(0.0, now - cp.taken_at))

    def _checkpoint(self, *, wait: bool = False) -> None:
        """Snapshot now (on the loop: a copy of the arrays), write in a worker thread."""
        from agent import checkpoint

        if self._checkpoint_task is not None and not self._checkpoint_task.done():
            return  # the previous write is still going: skip this one
        cp = self.core.checkpoint()
        path = self.cfg.checkpoint_path
        if wait or self._loop is None:
            checkpoint.save(path, cp)
            return
        self._checkpoint_task = self._loop.run_in_executor(None, checkpoint.save, path, cp)
        self._checkpoint_task.add_done_callback(self._checkpoint_done)

    def _checkpoint_done(self, fut: asyncio.Future[int]) -> None:
        if not fut.cancelled() and fut.exception() is not None:
            log.error("checkpoint %s: cannot write it (%s)", self.cfg.checkpoint_path,
                      fut.exception())

    @property
    def topics(self) -> Topics:
        return self.core.topics

    @property
    def ticks(self) -> int:
        return self.core.ticks

    # ------------------------------------------------------------------ start-up
    def _status(self, online: bool, reason: str) -> bytes:
        return json.dumps(self.core.status_payload(online, reason, self.wall())).encode()

    def _make_publisher(self) -> Any:
        from agent.config import broker_settings
        from agent.publisher import Publisher

        b = self.cfg.broker
        password = None
        if b.password_file:
            try:
                with open(b.password_file, encoding="utf-8") as f:
                    password = f.read().strip()
            except OSError as e:
                raise StartupError(f"broker.password_file: cannot read {b.password_file} "
                                   f"({e})") from None
        settings = broker_settings(b, self.cfg.client_id, password)
        # Staff consoles acknowledge moments here (retained: a restarted gateway hears them
        # again).
        subscriptions = [(self.topics.ack_filter, 1)]
        if self.cfg.homeassistant.discovery:
            # Our own retained discovery configs come back: the ones of zones no longer
            # configured are cleared (agent/homeassistant.py).
            subscriptions.append((self.topics.ha_discovery_filter(
                self.cfg.homeassistant.prefix), 1))
        if self.core.nudges.enabled:
            # Venue-wide nudges follow their alternatives' zone state and every gateway's
            # status (both retained: a gateway that starts later sees them at once).
            subscriptions.append((self.topics.status_filter, 1))
            subscriptions += [(self.topics.zone_state(z), 1)
                              for z in sorted(self.core.nudges.remote_zones)]
        # The will is built per connection (fresh id and at) and for the clean stop.
        return Publisher(settings, self.outbox,
                         will=lambda reason: (self.topics.status, self._status(False, reason)),
                         birth=lambda: (self.topics.status, self._status(True, "started")),
                         replay_per_s=b.replay_per_s, subscriptions=subscriptions,
                         on_message=self._on_message,
                         announce=lambda: self._discovery_messages)

    def _on_message(self, topic: str, payload: bytes) -> None:
        """On the loop: a message on one of the subscriptions."""
        from agent import homeassistant

        if self.cfg.homeassistant.discovery and homeassistant.is_discovery_topic(self.cfg,
                                                                                 topic):
            if homeassistant.is_stale(topic, payload, self._discovery):
                log.info("Home Assistant: clearing the discovery config %s (its zone is no "
                         "longer configured)", topic)
                self.publisher.publish_retained(topic, b"")
            return
        parts = topic.split("/")
        if len(parts) == 5 and parts[2] == "zone" and parts[4] == "state":
            self._on_zone_state(topic, payload)
        elif len(parts) == 5 and parts[2] == "gateway" and parts[4] == "status":
            self._on_status(topic, payload)
        else:
            self._on_ack(topic, payload)

    def _on_zone_state(self, topic: str, payload: bytes) -> None:
        """Another gateway's zone state (an alternative of one of this gateway's zones)."""
        try:
            msg = json.loads(payload)
        except ValueError:
            msg = None
        if not isinstance(msg, dict) or not self.core.remote_state(msg):
            log.debug("ignoring zone state on %s", topic)

    def _on_status(self, topic: str, payload: bytes) -> None:
        """A gateway's status: an offline gateway's zones are not nudged towards."""
        gateway = topic.split("/")[3]
        if gateway == self.cfg.gateway.id:
            return
        try:
            msg = json.loads(payload) if payload else {"schema": SCHEMA_STATUS, "online": False}
        except ValueError:
            return
        if isinstance(msg, dict) and msg.get("schema") == SCHEMA_STATUS:
            online = msg.get("online") is True
            self.core.gateway_status(gateway, online)
            log.info("gateway %s is %s", gateway, "online" if online else "offline")

    def _on_ack(self, topic: str, payload: bytes) -> None:
        """On the loop: a staff console took a moment (``venue/{venue}/ack/{moment_id}``)."""
        try:
            msg = json.loads(payload)
            moment_id, by, at = topic.rsplit("/", 1)[1], str(msg["by"]), str(msg["at"])
        except (ValueError, KeyError, TypeError, IndexError):
            log.warning("ignoring a malformed acknowledgement on %s", topic)
            return
        if msg.get("schema") != SCHEMA_ACK:
            log.warning("ignoring an acknowledgement of schema %r on %s", msg.get("schema"),
                        topic)
            return
        if self.core.acknowledge(moment_id, by, at):
            log.info("moment %s taken by %s", moment_id, by)

    async def _start_sources(self) -> None:
        from agent.sources import open_source

        self.core.readers_starting(self.clock())
        for r in self.cfg.readers:
            src = open_source(r, self._reads_from_thread, self._state_from_thread, self.clock)
            await src.start()
            self._sources.append(src)
            log.info("reader %s: %s (zone %s, %s)", r.id, src.describe, r.zone, r.role)

    # ------------------------------------------------------------------ hand-over
    def _reads_from_thread(self, reader_id: str, ts: float, reads: list[RawRead]) -> None:
        """Called from a reader thread (or bleak's callback): hand over, nothing else.

        Reads matter only at the next tick, so they wait in a deque (``append`` is atomic)
        rather than wake the loop for every chunk: a ``call_soon_threadsafe`` per chunk
        cost a third of the gateway's CPU at full read rate."""
        self._inbox.append((reader_id, ts, reads))

    def _take_inbox(self) -> None:
        """On the loop: hand every read that arrived since the last tick to the core."""
        pop, accept = self._inbox.popleft, self.core.accept_reads
        for _ in range(len(self._inbox)):  # what is there now; later arrivals wait a tick
            accept(*pop())

    def _state_from_thread(self, reader_id: str, online: bool, message: str | None) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._reader_state, reader_id, online, message)

    def _reader_state(self, reader_id: str, online: bool, message: str | None) -> None:
        if self.core.reader_state(reader_id, online, message, self.clock()):
            if online:
                log.info("reader %s: online", reader_id)
            else:
                log.warning("reader %s: offline: %s", reader_id, message)

    # ------------------------------------------------------------------ the tick
    def tick(self, now: float) -> None:
        """One tick of the core; what it decides goes to the outbox in one transaction."""
        t0 = time.perf_counter()
        wall = self.wall()
        self._wall_offset = wall - now  # kernel time (monotonic) to wall time
        self._take_inbox()
        result = self.core.step(now, wall)
        self._store_key()
        if self._experiment is not None and result.nudges is not None:
            self._record_experiment(result.nudges)
        self.store(result.messages, wall)
        for ev in result.events:
            log.info("moment %s %s %s (value %.1f%s)", ev.kind, ev.zone, ev.status, ev.value,
                     ev.unit)
        self.tick_ms_last = (time.perf_counter() - t0) * 1000.0
        self.tick_ms_max = max(self.tick_ms_max, self.tick_ms_last)

    def store(self, messages: Sequence[Outgoing], wall: float) -> None:
        """A tick's messages to the outbox in one transaction (one fsync), with the
        ``data_dropped`` moment for what the store dropped, when one is due."""
        with self.outbox.batch():  # one transaction (one fsync) per tick
            for msg in messages:
                self.outbox.enqueue(msg.topic, msg.payload, qos=msg.qos, retain=msg.retain,
                                    seq_stream=msg.seq_stream, coalesce_key=msg.coalesce_key,
                                    expiry_s=msg.expiry_s)
            if time.monotonic() >= self._next_drop_report:
                self._next_drop_report = time.monotonic() + DROP_REPORT_EVERY_S
                self.outbox.purge_dead_letters(wall - self.cfg.privacy.retention_s)
                report = self.outbox.take_drop_report()
                if report is not None:
                    log.warning("the outbox dropped %d messages (%s)", report.total,
                                ", ".join(f"{k}: {v}" for k, v in report.by_stream().items()))
                    msg = self.core.data_dropped(report.ranges, wall)
                    self.outbox.enqueue(msg.topic, msg.payload, qos=msg.qos,
                                        seq_stream=msg.seq_stream)

    def _record_experiment(self, plan: Any) -> None:
        """The nudge experiment's records, kept so the report survives restarts."""
        try:
            for opp in plan.opened:
                self._experiment.opened(opp)
                log.info("nudge opportunity %s at %s -> %s: %s", opp.id, opp.zone,
                         opp.alternative, opp.arm)
            for opp_id, arrivals in plan.measured:
                self._experiment.measured(opp_id, arrivals)
        except Exception as e:  # noqa: BLE001 - a lost record must not stop the gateway
            log.error("nudge experiment: cannot record (%s)", e)

    def _store_key(self) -> None:
        """After a rotation, the new epoch's key replaces the old one on disk."""
        ek = self.core.pseudonym.key_state
        if ek is None or ek.epoch == self._key_epoch:
            return
        try:
            store_key(self.cfg.key_path, ek)
        except KeyFileError as e:
            if self._key_error_epoch != ek.epoch:  # once per epoch, not every tick
                self._key_error_epoch = ek.epoch
                log.error("%s: the previous epoch's key stays on disk; retrying every tick",
                          e)
            return
        log.info("pseudonym key %s: now the key of epoch %d; the previous one is gone from "
                 "the disk", self.cfg.key_path, ek.epoch)
        self._key_epoch = ek.epoch

    # ------------------------------------------------------------------ health
    def health(self) -> dict[str, Any]:
        mono, cpu = time.monotonic(), time.process_time()
        dt = max(mono - self._cpu_mark[0], 1e-6)
        cpu_pct = 100.0 * (cpu - self._cpu_mark[1]) / dt
        self._cpu_mark = (mono, cpu)
        sources = {s.reader_id: s.health() for s in self._sources}
        pub = asdict(self.publisher.stats()) if hasattr(self, "publisher") else {}
        return {"uptime_s": round(time.monotonic() - self._created_mono, 1),  # never steps
                "readers": self.core.reader_health(dt, self._wall_offset, sources),
                "outbox_depth": self.outbox.depth(), "publisher": pub,
                "outbox": asdict(self.outbox.stats()),
                "cpu_pct": round(cpu_pct, 1), "rss_mb": round(rss_mb(), 1),
                "tick_ms": round(self.tick_ms_last, 3), "tick_ms_max": round(self.tick_ms_max, 3),
                "live_tags": self.core.engine.live_tags,
                "kernels": self.core.engine.kernels.backend,
                "dropped_unknown_reads": self.core.dropped_unknown}

    # ------------------------------------------------------------------ main
    async def run(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self.notifier = Notifier()
        self.publisher = self._make_publisher()
        pub_task = asyncio.create_task(self.publisher.run(), name="publisher")
        await self._start_sources()
        tick_s = self.cfg.gateway.tick_s
        next_health = time.monotonic() + self.cfg.gateway.health_interval_s
        cp_every = self.cfg.storage.checkpoint_interval_s
        next_checkpoint = time.monotonic() + cp_every
        next_tick = time.monotonic()  # the first tick at once: state is published at start-up
        log.info("gateway %s of venue %s running: %d readers, %d zones, broker %s",
                 self.cfg.gateway.id, self.cfg.venue.id, len(self.cfg.readers),
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
                    self.notifier.ready(f"gateway {self.cfg.gateway.id} running")
                    settle_heap()
                self.notifier.ping(mono)
                if mono >= next_health:
                    next_health = mono + self.cfg.gateway.health_interval_s
                    self.publisher.publish_volatile(self.topics.health, json.dumps(
                        self.topics.envelope(SCHEMA_HEALTH, self.wall(),
                                             **self.health())).encode())
                if cp_every > 0 and mono >= next_checkpoint:
                    next_checkpoint = mono + cp_every
                    self._checkpoint()
                self.publisher.kick()
                if pub_task.done():
                    pub_task.result()  # a publisher that died surfaces its error here
        finally:
            await self._shutdown(pub_task)

    async def _shutdown(self, pub_task: asyncio.Task[None]) -> None:
        log.info("stopping")
        self.notifier.stopping()
        for src in self._sources:
            try:
                await src.stop()
            except Exception as e:  # noqa: BLE001 - shutting down anyway
                log.warning("reader %s stop: %s", src.reader_id, e)
        if self.cfg.storage.checkpoint_interval_s > 0 and self.ticks:
            if self._checkpoint_task is not None:
                await asyncio.wait([self._checkpoint_task])
            try:
                self._checkpoint(wait=True)  # a clean stop resumes exactly where it was
            except OSError as e:
                log.error("checkpoint %s: cannot write it (%s)", self.cfg.checkpoint_path, e)
        try:
            await asyncio.wait_for(self.publisher.stop(), 10.0)
        except TimeoutError:
            log.warning("publisher did not stop in 10 s")
        if not pub_task.done():
            pub_task.cancel()
        if self._experiment is not None:
            self._experiment.close()
        self.outbox.close()


def _older_than(path: Path, age_s: float, now: float) -> bool:
    """True if ``path`` exists and was last written more than ``age_s`` before ``now``."""
    try:
        return now - path.stat().st_mtime > age_s
    except OSError:
        return False


def _open_outbox(cfg: Config) -> Outbox:
    """Storage first: a gateway that cannot persist must say so before it reads anything."""
    try:
        cfg.db_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StartupError(f"storage.path: cannot create the directory "
                           f"{cfg.db_path.parent} ({e})") from None
    try:
        return Outbox(cfg.db_path, max_bytes=cfg.storage.max_mb * 2**20)
    except Exception as e:  # noqa: BLE001 - any storage failure stops start-up, named
        raise StartupError(f"storage.path: cannot open the outbox database "
                           f"{cfg.db_path} ({e})") from None


def rss_mb() -> float:
    """Resident set size now, in MiB (Linux /proc; elsewhere the peak from getrusage)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
