"""Message ids (ULID) and RFC 3339 timestamps."""

from __future__ import annotations

import threading
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.ids import CROCKFORD32, UlidGenerator, id_time_ms, new_id
from agent.timefmt import parse_rfc3339, rfc3339


def test_new_id_is_26_crockford_chars_with_current_time() -> None:
    before = time.time_ns() // 1_000_000
    ulid = new_id()
    after = time.time_ns() // 1_000_000
    assert len(ulid) == 26
    assert set(ulid) <= set(CROCKFORD32)
    assert before <= id_time_ms(ulid) <= after


def test_ids_strictly_increase_within_one_millisecond() -> None:
    gen = UlidGenerator(clock_ms=lambda: 1_700_000_000_000)
    ids = [gen.new() for _ in range(10_000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert {id_time_ms(i) for i in ids} == {1_700_000_000_000}


def test_ids_stay_monotonic_across_a_backward_clock_step() -> None:
    now = [1_700_000_005_000]
    gen = UlidGenerator(clock_ms=lambda: now[0])
    first = gen.new()
    now[0] -= 3_000  # NTP pulls the clock back 3 s
    during = [gen.new() for _ in range(100)]
    now[0] += 10_000  # and time moves on past the old high-water mark
    later = gen.new()
    seq = [first, *during, later]
    assert seq == sorted(seq) and len(set(seq)) == len(seq)
    assert id_time_ms(later) == 1_700_000_012_000


def test_random_part_overflow_borrows_the_next_millisecond() -> None:
    gen = UlidGenerator(clock_ms=lambda: 1000, randbytes=lambda n: b"\xff" * n)
    a, b = gen.new(), gen.new()
    assert a < b
    assert id_time_ms(b) == 1001


def test_ids_from_many_threads_are_unique() -> None:
    out: list[str] = []
    lock = threading.Lock()

    def work() -> None:
        local = [new_id() for _ in range(2000)]
        with lock:
            out.extend(local)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(out)) == len(out) == 8000


@given(st.integers(min_value=0, max_value=(1 << 48) - 1))
def test_time_round_trips_and_string_order_is_time_order(ms: int) -> None:
    a = UlidGenerator(clock_ms=lambda: ms).new()
    assert id_time_ms(a) == ms
    if ms < (1 << 48) - 1:
        b = UlidGenerator(clock_ms=lambda: ms + 1, randbytes=lambda n: bytes(n)).new()
        assert a < b


@pytest.mark.parametrize("bad", ["", "0" * 25, "0" * 26 + "0", "U" * 26, "8" + "0" * 25])
def test_id_time_ms_rejects_malformed(bad: str) -> None:
    with pytest.raises(ValueError):
        id_time_ms(bad)


@pytest.mark.parametrize(
    ("ts", "text"),
    [
        (0.0, "1970-01-01T00:00:00.000Z"),
        (1.001, "1970-01-01T00:00:01.001Z"),
        (1_700_000_000.123456, "2023-11-14T22:13:20.123Z"),
        (1_700_000_000.9999, "2023-11-14T22:13:20.999Z"),  # truncated, not rounded up
    ],
)
def test_rfc3339_formats_utc_milliseconds(ts: float, text: str) -> None:
    assert rfc3339(ts) == text


@given(st.integers(min_value=0, max_value=4_102_444_800_000))
def test_rfc3339_round_trips_whole_milliseconds(ms: int) -> None:
    text = rfc3339(ms / 1000)
    assert text.endswith("Z") and len(text) == 24
    assert round(parse_rfc3339(text) * 1000) == ms


def test_parse_rfc3339_needs_an_offset() -> None:
    assert parse_rfc3339("2023-11-14T23:13:20.123+01:00") == pytest.approx(1_700_000_000.123)
    with pytest.raises(ValueError):
        parse_rfc3339("2023-11-14T22:13:20")
