"""Status you can trust: a fresh Last Will per connection, and "shutdown" on a clean stop.

Before: the will was built once at start-up with a fixed ``id`` and ``at`` and reused for
every connection and for the clean stop, so a consumer deduplicating on ``id`` dropped
every "offline" after the first and a clean stop claimed "connection lost".
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.broker import LocalBroker, start_broker
from agent.outbox import Outbox
from agent.publisher import REASON_LOST, REASON_SHUTDOWN, BrokerSettings, Publisher
from agent.timefmt import parse_rfc3339, rfc3339
from tests.mqtt_helpers import Collector, async_wait_for

STATUS = "venue/park/gateway/gw-01/status"
_ids = itertools.count(1)


def status(online: bool, reason: str) -> tuple[str, bytes]:
    """What the gateway core builds: a new id and the current time on every call."""
    body = {"id": f"status-{next(_ids)}", "at": rfc3339(time.time()), "online": online,
            "reason": reason}
    return STATUS, json.dumps(body).encode()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[LocalBroker]:
    with start_broker(prefer="mosquitto", workdir=tmp_path / "broker") as broker:
        yield broker


def make_publisher(url: str, outbox: Outbox, **kw: Any) -> Publisher:
    return Publisher(BrokerSettings(url, client_id="gw-01"), outbox,
                     will=lambda reason: status(False, reason),
                     birth=lambda: status(True, "started"),
                     backoff_min_s=0.05, backoff_max_s=0.2, **kw)


def payloads(sub: Collector) -> list[dict[str, Any]]:
    return [m.json() for m in sub.on(STATUS)]


def test_every_connection_gets_its_own_will_and_a_clean_stop_says_shutdown(
    mosquitto: LocalBroker, tmp_path: Path
) -> None:
    outbox = Outbox(tmp_path / "o.db")
    pub = make_publisher(mosquitto.url, outbox)
    sub = Collector(mosquitto.url, STATUS)

    def offline_count() -> int:
        return sum(1 for p in payloads(sub) if not p["online"])

    async def scenario() -> None:
        task = asyncio.create_task(pub.run())
        for n in (1, 2, 3):
            # Connection number n is up (and its birth went out).
            def up(n: int = n) -> bool:
                births = sum(1 for p in payloads(sub) if p["online"])
                return pub.connected and pub.stats().reconnects == n - 1 and births == n

            await async_wait_for(up, what=f"connection {n}")
            if n == 3:
                break
            await asyncio.sleep(0.05)  # a visible gap between the wills' times
            s = pub._session
            assert s is not None
            pub._abort(s)  # the network drops: the broker publishes this connection's will

            def will_out(n: int = n) -> bool:
                return offline_count() == n

            await async_wait_for(will_out, what=f"will {n}")
        await pub.stop()  # clean stop
        await task

    try:
        asyncio.run(asyncio.wait_for(scenario(), 30))
        sub.wait_for(lambda ms: len(ms) == 6)
        got = payloads(sub)
        assert [(p["online"], p["reason"]) for p in got] == [
            (True, "started"), (False, REASON_LOST),
            (True, "started"), (False, REASON_LOST),
            (True, "started"), (False, REASON_SHUTDOWN),
        ]
        offline = [p for p in got if not p["online"]]
        assert len({p["id"] for p in got}) == 6  # nothing a consumer would dedupe away
        at = [parse_rfc3339(p["at"]) for p in offline]
        assert at == sorted(at) and at[0] < at[1]  # each will stamped when it was made
    finally:
        sub.stop()
        outbox.close()
    with Collector(mosquitto.url, STATUS) as late:  # what a console sees on arrival
        late.wait_for(lambda ms: len(ms) == 1)
        assert late.messages[0].retain
        assert late.messages[0].json()["reason"] == REASON_SHUTDOWN


def test_ungraceful_stop_leaves_the_fresh_will(mosquitto: LocalBroker, tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.db")
    pub = make_publisher(mosquitto.url, outbox)

    async def scenario() -> None:
        task = asyncio.create_task(pub.run())
        await async_wait_for(lambda: pub.connected)
        await pub.stop(graceful=False)
        await task

    with Collector(mosquitto.url, STATUS) as sub:
        asyncio.run(asyncio.wait_for(scenario(), 30))
        sub.wait_for(lambda ms: len(ms) == 2)
        online, offline = payloads(sub)
        assert offline["reason"] == REASON_LOST and offline["id"] != online["id"]
    outbox.close()
