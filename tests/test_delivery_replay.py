"""Outage replay in the right order (real Mosquitto).

Before: after an outage the outbox was sent strictly in row order, so the latest zone state
(re-queued at the end on every tick) waited behind an hour of backlog and the board showed
hour-old numbers, and a live moment waited behind all of it too. The outage here is two hours
of simulated time (the backlog is stamped over it). Now: zone state first
(latest only), live messages never behind the backlog, the backlog at ``replay_per_s``, and
every replayed message flagged ``"replayed": true`` with its original ``at``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.broker import LocalBroker, start_broker
from agent.outbox import Outbox
from agent.publisher import BrokerSettings, Publisher
from agent.timefmt import rfc3339
from tests.mqtt_helpers import Collector, Received, async_wait_for

STATUS = "venue/park/gateway/gw-01/status"
MOMENT = "venue/park/moment/dino-queue/queue_long"
STATE = "venue/park/zone/{}/state"
BACKLOG = 200
RATE = 40.0
OUTAGE_S = 2 * 3600.0  # simulated: the backlog is stamped over two hours


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[LocalBroker]:
    with start_broker(prefer="mosquitto", workdir=tmp_path / "broker") as broker:
        yield broker


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def make_publisher(url: str, outbox: Outbox, **kw: Any) -> Publisher:
    return Publisher(BrokerSettings(url, client_id="gw-01"), outbox,
                     will=(STATUS, b'{"online":false}'), birth=lambda: (STATUS, b'{"online":true}'),
                     backoff_min_s=0.05, backoff_max_s=0.5, **kw)


def fill_the_outage(outbox: Outbox, clock: Clock) -> dict[str, int]:
    """What two hours offline leave behind: moments, and state re-written every tick."""
    latest: dict[str, int] = {}
    for i in range(BACKLOG):
        clock.t += OUTAGE_S / BACKLOG
        outbox.enqueue(MOMENT, {"n": i, "at": rfc3339(clock.t)}, seq_stream="guaranteed")
        for zone in ("dino-queue", "jungle"):
            outbox.enqueue(STATE.format(zone), {"zone": zone, "v": i, "at": rfc3339(clock.t)},
                           retain=True, seq_stream="state", coalesce_key=STATE.format(zone))
            latest[zone] = i
    return latest


def test_after_an_outage_state_first_live_never_waits_backlog_at_its_rate(
    mosquitto: LocalBroker, tmp_path: Path
) -> None:
    clock = Clock(time.time() - OUTAGE_S)
    outbox = Outbox(tmp_path / "o.db", clock=clock)
    latest = fill_the_outage(outbox, clock)
    assert outbox.depth() == BACKLOG + 2
    age = outbox.oldest_age_s(now=time.time())
    assert age is not None and OUTAGE_S - 100 < age < OUTAGE_S + 100
    pub = make_publisher(mosquitto.url, outbox, replay_per_s=RATE)
    live_sent: dict[int, float] = {}
    sub = Collector(mosquitto.url, "venue/#")

    async def scenario() -> None:
        task = asyncio.create_task(pub.run())
        await async_wait_for(lambda: len(sub.on(MOMENT)) >= 20, what="replay under way")
        assert pub.stats().replaying
        for k in range(5):  # the gateway keeps producing while the backlog drains
            clock.t = time.time()
            n = 1000 + k
            outbox.enqueue(MOMENT, {"n": n, "at": rfc3339(clock.t)}, seq_stream="guaranteed")
            live_sent[n] = time.time()
            pub.kick()
            await asyncio.sleep(0.3)
        await async_wait_for(lambda: outbox.depth() == 0, timeout=30, what="drained")
        stats = pub.stats()
        assert not stats.replaying and stats.replayed == BACKLOG + 2
        assert stats.oldest_age_s is None
        await pub.stop()
        await task

    try:
        asyncio.run(asyncio.wait_for(scenario(), 60))
        sub.wait_for(lambda ms: len(sub.on(MOMENT)) == BACKLOG + 5)
        # 0. The gateway's status (the birth message) comes before anything else.
        assert sub.messages[0].topic == STATUS
        ms = [m for m in sub.messages if m.topic != STATUS]
        # 1. The zones' latest state comes first, flagged as replayed, with its own at.
        first_two = [m.json() for m in ms[:2]]
        assert sorted(p["zone"] for p in first_two) == ["dino-queue", "jungle"]
        assert all(p["v"] == latest[p["zone"]] and p["replayed"] is True for p in first_two)
        assert len([m for m in ms if "/zone/" in m.topic]) == 2  # coalesced: only the latest
        # 2. Live moments arrive at once, not after the backlog, and are not flagged.
        moments: list[Received] = sub.on(MOMENT)
        live = [m for m in moments if m.json()["n"] >= 1000]
        backlog = [m for m in moments if m.json()["n"] < 1000]
        delays = [m.received - live_sent[m.json()["n"]] for m in live]
        assert max(delays) < 1.0, delays  # (the acceptance allows 5 s)
        assert all("replayed" not in m.json() for m in live)
        assert live[-1].received < backlog[-1].received  # they overtook the backlog
        # 3. The backlog: every message, in order, flagged, original at, at the set rate.
        payloads = [m.json() for m in backlog]
        assert [p["n"] for p in payloads] == list(range(BACKLOG))
        assert all(p["replayed"] is True for p in payloads)
        assert payloads[0]["at"] < rfc3339(time.time() - OUTAGE_S + 100)  # its old at, kept
        span = backlog[-1].received - backlog[0].received
        rate = (len(backlog) - 1) / span
        print(f"replay: {len(backlog)} messages in {span:.2f} s = {rate:.1f}/s "
              f"(set {RATE:g}/s); live delay max {max(delays) * 1000:.0f} ms")
        assert 0.7 * RATE < rate < 1.3 * RATE
        with Collector(mosquitto.url, STATE.format("+")) as late:  # a board opened now
            late.wait_for(lambda ms: len(ms) == 2)
            assert all(m.retain and m.json()["v"] == BACKLOG - 1 for m in late.messages)
    finally:
        sub.stop()
        outbox.close()


def test_messages_enqueued_after_the_connection_came_up_are_not_replays(
    mosquitto: LocalBroker, tmp_path: Path
) -> None:
    outbox = Outbox(tmp_path / "o.db")
    pub = make_publisher(mosquitto.url, outbox)
    sub = Collector(mosquitto.url, "venue/#")

    async def scenario() -> None:
        task = asyncio.create_task(pub.run())
        await async_wait_for(lambda: pub.connected)
        for n in range(3):
            outbox.enqueue(MOMENT, {"n": n}, seq_stream="guaranteed")
        outbox.enqueue(STATE.format("jungle"), {"v": 1}, retain=True,
                       coalesce_key=STATE.format("jungle"))
        pub.kick()
        await async_wait_for(lambda: outbox.depth() == 0)
        assert pub.stats().replayed == 0 and not pub.stats().replaying
        await pub.stop()
        await task

    try:
        asyncio.run(asyncio.wait_for(scenario(), 30))
        sub.wait_for(lambda ms: len([m for m in ms if m.topic != STATUS]) == 4)
        assert all("replayed" not in m.json() for m in sub.messages if m.topic != STATUS)
    finally:
        sub.stop()
        outbox.close()


def test_unlimited_replay_and_bad_rates(mosquitto: LocalBroker, tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.db")
    for n in range(300):
        outbox.enqueue(MOMENT, {"n": n}, seq_stream="guaranteed")
    pub = make_publisher(mosquitto.url, outbox, replay_per_s=None)

    async def scenario() -> None:
        t0 = time.monotonic()
        task = asyncio.create_task(pub.run())
        await async_wait_for(lambda: outbox.depth() == 0)
        assert time.monotonic() - t0 < 5.0
        await pub.stop()
        await task

    asyncio.run(asyncio.wait_for(scenario(), 30))
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="replay_per_s"):
            make_publisher(mosquitto.url, outbox, replay_per_s=bad)
    outbox.close()
