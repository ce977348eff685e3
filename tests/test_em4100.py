"""EM4100 ASCII frames (RDM6300, ID-12LA/ID-20LA): vector, round trip, resync, properties."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_bridge.em4100 import (
    FRAME_LEN,
    FRAME_LEN_CRLF,
    Em4100Decoder,
    encode,
    tag_number,
    xor_checksum,
)
from firmware_bridge.records import RawRead

VECTORS = Path(__file__).resolve().parents[2] / "shared" / "vectors" / "readers.json"


def em4100_vectors() -> list[dict[str, object]]:
    vectors: list[dict[str, object]] = json.loads(VECTORS.read_text())["em4100"]
    return vectors


def decode_all(data: bytes, chunks: list[int] | None = None) -> tuple[list[RawRead], Em4100Decoder]:
    """Decode ``data`` fed in pieces cut at the offsets ``chunks`` (sorted)."""
    dec = Em4100Decoder()
    reads: list[RawRead] = []
    cuts = [0, *(chunks or []), len(data)]
    for a, b in zip(cuts, cuts[1:], strict=False):
        reads += dec.feed(data[a:b])
    return reads, dec


@pytest.mark.parametrize("vec", em4100_vectors(), ids=lambda v: str(v["data"]))
def test_datasheet_vector_decodes(vec: dict[str, object]) -> None:
    frame = bytes.fromhex(str(vec["hex"]))
    reads, dec = decode_all(frame)
    assert reads == [RawRead("em4100", bytes.fromhex(str(vec["data"])))]
    assert tag_number(reads[0].tag_id) == vec["tag_id"]
    assert f"{xor_checksum(reads[0].tag_id):02X}" == vec["checksum"]
    assert (dec.stats.frames, dec.stats.bad_frames, dec.stats.skipped_bytes) == (1, 0, 0)
    # Our encoder produces the datasheet bytes exactly.
    assert encode(bytes.fromhex(str(vec["data"]))) == frame


def test_crlf_variant_is_16_bytes_and_decodes() -> None:
    tag = bytes.fromhex("62E3086CED")
    frame = encode(tag, crlf=True)
    assert len(frame) == FRAME_LEN_CRLF
    assert frame[-3:] == b"\r\n\x03"
    assert len(encode(tag)) == FRAME_LEN
    reads, dec = decode_all(frame)
    assert reads == [RawRead("em4100", tag)]
    assert dec.stats.skipped_bytes == 0


def test_lowercase_hex_accepted() -> None:
    frame = encode(bytes.fromhex("62E3086CED"))
    lower = frame[:1] + frame[1:13].lower() + frame[13:]
    assert lower != frame
    assert decode_all(lower)[0] == [RawRead("em4100", bytes.fromhex("62e3086ced"))]


@pytest.mark.parametrize("crlf", [False, True])
def test_split_at_every_offset(crlf: bool) -> None:
    tags = [bytes.fromhex("62E3086CED"), bytes.fromhex("0102030405"), bytes(5)]
    stream = b"".join(encode(t, crlf=crlf) for t in tags)
    for cut in range(len(stream) + 1):
        reads, _ = decode_all(stream, [cut])
        assert [r.tag_id for r in reads] == tags, cut
    # And byte by byte.
    reads, _ = decode_all(stream, list(range(1, len(stream))))
    assert [r.tag_id for r in reads] == tags


def test_bad_checksum_rejected_and_counted() -> None:
    good = encode(bytes.fromhex("62E3086CED"))
    bad = good[:11] + b"00" + good[13:]  # checksum field "00" instead of "08"
    reads, dec = decode_all(bad + good)
    assert reads == [RawRead("em4100", bytes.fromhex("62E3086CED"))]
    assert dec.stats.bad_frames == 1
    assert dec.stats.skipped_bytes == len(bad)


def test_wrong_terminator_rejected() -> None:
    good = encode(bytes.fromhex("62E3086CED"))
    for tail in (b"\x04", b"\r\x03", b"\r\n\x04"):
        reads, dec = decode_all(good[:13] + tail)
        assert reads == [], tail
        assert dec.stats.bad_frames == 1, tail


def test_frame_hidden_inside_truncated_frame_is_found() -> None:
    # A reader unplugged mid-frame, then a full frame: the truncated frame's STX must not
    # swallow the real one. Each cut places the real STX in a different slot of the fake.
    good = encode(bytes.fromhex("0A0B0C0D0E"))
    for keep in range(1, FRAME_LEN_CRLF):
        truncated = encode(bytes.fromhex("62E3086CED"), crlf=True)[:keep]
        reads, dec = decode_all(truncated + good)
        assert reads == [RawRead("em4100", bytes.fromhex("0A0B0C0D0E"))], keep
        assert dec.stats.bad_frames == 1, keep


def test_reset_drops_partial_frame() -> None:
    frame = encode(bytes.fromhex("62E3086CED"))
    dec = Em4100Decoder()
    assert dec.feed(frame[:8]) == []
    dec.reset()
    assert dec.feed(frame[8:]) == []
    assert dec.feed(frame) == [RawRead("em4100", bytes.fromhex("62E3086CED"))]
    assert dec.stats.skipped_bytes == len(frame)


def test_encode_rejects_wrong_length() -> None:
    with pytest.raises(ValueError, match="5 bytes"):
        encode(b"\x01\x02\x03\x04")


tags_st = st.binary(min_size=5, max_size=5)
# Garbage that cannot start a frame (no STX), so the expected reads are exactly the frames.
garbage_st = st.binary(max_size=40).map(lambda b: b.replace(b"\x02", b""))


@settings(max_examples=300, deadline=None)
@given(
    items=st.lists(st.tuples(garbage_st, tags_st, st.booleans()), max_size=8),
    tail=garbage_st,
    cuts=st.lists(st.integers(min_value=0, max_value=1000), max_size=10),
)
def test_frames_between_garbage_all_recovered(
    items: list[tuple[bytes, bytes, bool]], tail: bytes, cuts: list[int]
) -> None:
    stream = b"".join(g + encode(t, crlf=c) for g, t, c in items) + tail
    reads, dec = decode_all(stream, sorted(c for c in cuts if c <= len(stream)))
    assert [r.tag_id for r in reads] == [t for _, t, _ in items]
    assert dec.stats.skipped_bytes == sum(len(g) for g, _, _ in items) + len(tail)
    assert dec.stats.bad_frames == 0


@settings(max_examples=300, deadline=None)
@given(
    items=st.lists(st.tuples(st.binary(max_size=40), tags_st, st.booleans()), max_size=6),
    cuts=st.lists(st.integers(min_value=0, max_value=1000), max_size=10),
)
def test_frames_survive_arbitrary_garbage(
    items: list[tuple[bytes, bytes, bool]], cuts: list[int]
) -> None:
    # Garbage may contain STX and even whole frames, so extra reads are allowed, but every
    # real frame must come out, in order: a candidate that starts in garbage can never
    # extend over a real frame's STX (STX is not a hex digit nor a terminator).
    stream = b"".join(g + encode(t, crlf=c) for g, t, c in items)
    reads, _ = decode_all(stream, sorted(c for c in cuts if c <= len(stream)))
    got = iter(r.tag_id for r in reads)
    assert all(any(x == t for x in got) for _, t, _ in items)


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=300), cuts=st.lists(st.integers(0, 300), max_size=8))
def test_random_bytes_never_raise_and_are_accounted(data: bytes, cuts: list[int]) -> None:
    reads, dec = decode_all(data, sorted(c for c in cuts if c <= len(data)))
    dec.reset()
    framed = len(data) - dec.stats.skipped_bytes
    assert dec.stats.frames == len(reads)
    assert FRAME_LEN * len(reads) <= framed <= FRAME_LEN_CRLF * len(reads)


def test_megabyte_of_noise_costs_less_than_a_python_byte_loop() -> None:
    # Honest relative check: on noise the decoder must not do per-byte Python work, so it
    # must beat the cheapest possible per-byte Python loop over the same buffer.
    noise = random.Random(4100).randbytes(1 << 20)
    dec = Em4100Decoder()
    t0 = time.perf_counter()
    for i in range(0, len(noise), 4096):
        dec.feed(noise[i : i + 4096])
    decode_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    stx = 0
    for b in noise:
        if b == 2:
            stx += 1
    loop_s = time.perf_counter() - t0

    assert dec.stats.frames == 0
    assert dec.stats.bad_frames == stx  # every STX in noise was a candidate and failed
    assert decode_s < loop_s, (decode_s, loop_s)


def test_drain_counts_a_truncated_frame_and_empties_the_buffer() -> None:
    frame = encode(bytes.fromhex("62E3086CED"))
    dec = Em4100Decoder()
    seen: list[tuple[int, str]] = []
    dec.on_bad_frame = lambda offset, reason: seen.append((offset, reason))
    assert dec.feed(b"xy" + frame + frame[:9]) != []
    assert dec.drain() == []
    assert seen == [(2 + len(frame), "frame truncated at end of input")]
    assert dec.buffered == b"" and dec.stats.skipped_bytes == 2 + 9


def test_frames_seen_before_decode_as_the_first_time_in_both_variants() -> None:
    """The fast path takes a frame it has seen by its bytes: repeats of both variants, a
    repeat whose checksum byte differs, and a repeat split by a chunk decode exactly as a
    fresh decoder decodes them."""
    a, b = bytes.fromhex("62E3086CED"), bytes.fromhex("0102030405")
    bad = encode(a)[:11] + b"00" + encode(a)[13:]  # same digits, wrong checksum
    stream = (encode(a) + encode(b, crlf=True)) * 3 + bad + encode(a) + encode(b, crlf=True)
    dec = Em4100Decoder()
    first = dec.feed(stream)
    again = dec.feed(stream[:20]) + dec.feed(stream[20:])
    fresh, fresh_dec = decode_all(stream)
    assert first == again == fresh
    assert [r.tag_id for r in first] == [a, b] * 4
    assert dec.stats.bad_frames == 2 * fresh_dec.stats.bad_frames == 2


def test_a_working_set_as_large_as_the_frame_cache_stays_cached_and_decodes_the_same(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Frames read in turn, as many as the cache holds: after the first round none is
    checked again (the hex parse is not called), also after a new frame starts a new
    generation (clearing the cache when full, as before, checked all of them again); more
    frames than that still decode exactly as a fresh decoder decodes them."""
    monkeypatch.setattr(Em4100Decoder, "cache_size", 16)
    tags = [bytes([1, 2, 3, 4, i]) for i in range(16)]
    stream = b"".join(encode(t, crlf=i % 3 == 0) for i, t in enumerate(tags))
    dec = Em4100Decoder()
    first = dec.feed(stream)
    assert [r.tag_id for r in first] == tags
    import firmware_bridge.em4100 as em

    parsed = 0
    real = bytes.fromhex

    class CountingBytes(bytes):
        @classmethod
        def fromhex(cls, s: str) -> bytes:  # type: ignore[override]
            nonlocal parsed
            parsed += 1
            return real(s)

    extra = encode(bytes([7, 7, 7, 7, 7]))
    assert len(dec.feed(extra)) == 1  # the cache was full: a new generation begins
    monkeypatch.setattr(em, "bytes", CountingBytes, raising=False)
    for _ in range(4):
        assert dec.feed(stream) == first  # the working set came back from the older one
    assert parsed == 0
    more = b"".join(encode(bytes([9, 9, 9, i >> 8, i & 0xFF])) for i in range(40))
    got = dec.feed(more + stream)
    fresh, _ = decode_all(more + stream)
    assert got == fresh and parsed > 0
