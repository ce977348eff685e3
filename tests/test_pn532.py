"""PN532 HSU frames: datasheet vectors, encoders, ACK/NACK/error/extended, resync, properties."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_bridge import pn532
from firmware_bridge.pn532 import (
    Pn532Ack,
    Pn532Decoder,
    Pn532ErrorFrame,
    Pn532Frame,
    Pn532InList,
    Pn532Message,
    Pn532Nack,
    Pn532Target,
    encode_frame,
    in_list_passive_target_response,
)
from firmware_bridge.records import RawRead

VECTORS = Path(__file__).resolve().parents[2] / "shared" / "vectors" / "readers.json"
PN_VECTORS: list[dict[str, object]] = json.loads(VECTORS.read_text())["pn532"]


def by_kind(prefix: str) -> dict[str, object]:
    return next(v for v in PN_VECTORS if str(v["kind"]).startswith(prefix))


def vec_bytes(prefix: str) -> bytes:
    return bytes.fromhex(str(by_kind(prefix)["hex"]))


def messages(
    data: bytes, cuts: list[int] | None = None
) -> tuple[list[Pn532Message], Pn532Decoder]:
    dec = Pn532Decoder()
    out: list[Pn532Message] = []
    edges = [0, *(cuts or []), len(data)]
    for a, b in zip(edges, edges[1:], strict=False):
        out += dec.feed_messages(data[a:b])
    return out, dec


def test_in_list_passive_target_response_vector() -> None:
    vec = by_kind("InListPassiveTarget response")
    frame = vec_bytes("InListPassiveTarget response")
    msgs, dec = messages(frame)
    target = Pn532Target(
        tg=1,
        sens_res=int(str(vec["sens_res"]), 16),
        sel_res=int(str(vec["sel_res"]), 16),
        uid=bytes.fromhex(str(vec["uid"])),
    )
    assert msgs == [Pn532InList((target,))]
    assert len(msgs[0].targets) == vec["targets"]  # type: ignore[union-attr]
    assert dec.stats.skipped_bytes == 0
    assert Pn532Decoder().feed(frame) == [RawRead("pn532", bytes.fromhex(str(vec["uid"])))]
    assert in_list_passive_target_response([target]) == frame


def test_ack_vector() -> None:
    frame = vec_bytes("ACK")
    assert frame == pn532.ACK_FRAME
    msgs, dec = messages(frame)
    assert msgs == [Pn532Ack()] and dec.stats.skipped_bytes == 0


def test_in_list_command_vector() -> None:
    frame = vec_bytes("InListPassiveTarget command")
    assert pn532.in_list_passive_target(1, pn532.BRTY_106_TYPE_A) == frame
    assert messages(frame)[0] == [Pn532Frame(0xD4, 0x4A, b"\x01\x00")]


def test_nack_and_error_frames() -> None:
    msgs, dec = messages(pn532.NACK_FRAME + pn532.ERROR_FRAME)
    assert msgs == [Pn532Nack(), Pn532ErrorFrame()]
    assert dec.stats.skipped_bytes == 0 and dec.stats.bad_frames == 0


def test_extended_frame_recognised() -> None:
    pd = bytes([0x41]) + bytes(range(256)) + b"\x00\xff"  # body > 255 bytes
    frame = encode_frame(pd, tfi=pn532.TFI_PN532)
    assert frame[:5] == b"\x00\x00\xff\xff\xff"
    msgs, dec = messages(frame)
    assert msgs == [Pn532Frame(0xD5, 0x41, pd[1:], extended=True)]
    assert dec.stats.skipped_bytes == 0


def test_two_targets_seven_byte_uid_and_ats() -> None:
    classic = Pn532Target(1, 0x0004, 0x08, bytes.fromhex("CB98A605"))
    desfire = Pn532Target(2, 0x0344, 0x20, bytes.fromhex("04112233445566"), b"\x06\x75\x77\x81\x02\x80")
    frame = in_list_passive_target_response([classic, desfire])
    assert messages(frame)[0] == [Pn532InList((classic, desfire))]
    assert [r.tag_id for r in Pn532Decoder().feed(frame)] == [classic.uid, desfire.uid]


def test_zero_targets_is_not_a_read() -> None:
    frame = in_list_passive_target_response([])
    assert messages(frame)[0] == [Pn532InList(())]
    assert Pn532Decoder().feed(frame) == []


def test_wakeup_and_sam_configuration_bytes() -> None:
    assert pn532.WAKEUP[:2] == b"\x55\x55" and set(pn532.WAKEUP[2:]) == {0}
    assert pn532.sam_configuration().hex(" ") == "00 00 ff 05 fb d4 14 01 14 01 02 00"
    # The decoder skips the wake-up preamble and still sees the command right after it.
    msgs, _ = messages(pn532.WAKEUP + pn532.sam_configuration())
    assert msgs == [Pn532Frame(0xD4, 0x14, b"\x01\x14\x01")]


def test_split_at_every_offset() -> None:
    stream = b"".join(bytes.fromhex(str(v["hex"])) for v in PN_VECTORS) + pn532.ERROR_FRAME
    whole, dec = messages(stream)
    assert len(whole) == len(PN_VECTORS) + 1 and dec.stats.skipped_bytes == 0
    for cut in range(len(stream) + 1):
        got, dec = messages(stream, [cut])
        assert got == whole, cut
        assert dec.stats.skipped_bytes == 0, cut
    assert messages(stream, list(range(1, len(stream))))[0] == whole


def test_bad_checksums_rescan_and_report_offset() -> None:
    good = vec_bytes("InListPassiveTarget response")
    bad_dcs = bytearray(good)
    bad_dcs[-2] ^= 0xFF
    bad_lcs = bytearray(good)
    bad_lcs[4] ^= 0x01
    seen: list[tuple[int, str]] = []
    dec = Pn532Decoder()
    dec.on_bad_frame = lambda off, why: seen.append((off, why))
    reads = dec.feed(bytes(bad_dcs) + bytes(bad_lcs) + good)
    assert reads == [RawRead("pn532", bytes.fromhex("CB98A605"))]
    assert seen == [(0, "bad data checksum"), (len(good), "bad length checksum")]


def test_frame_inside_truncated_frame_is_found() -> None:
    good = vec_bytes("InListPassiveTarget response")
    one = messages(good)[0]
    for keep in range(3, len(good) - 1):
        got, _ = messages(good[:keep] + good)
        assert got == one, keep
    # Cut only before the postamble: that frame is complete (the postamble is optional).
    assert messages(good[:-1] + good)[0] == one + one


def test_malformed_target_list_is_bad_frame() -> None:
    # Checksums fine, but the target claims a 5-byte UID.
    frame = encode_frame(bytes.fromhex("4B01010004080501020304"), tfi=pn532.TFI_PN532)
    msgs, dec = messages(frame)
    assert msgs == [] and dec.stats.bad_frames == 1
    assert dec.stats.skipped_bytes == len(frame)


def test_reset_drops_partial_frame() -> None:
    frame = vec_bytes("InListPassiveTarget response")
    dec = Pn532Decoder()
    assert dec.feed(frame[:9]) == []
    dec.reset()
    assert dec.feed(frame[9:]) == []
    assert dec.feed(frame) == [RawRead("pn532", bytes.fromhex("CB98A605"))]


def test_encoder_limits() -> None:
    with pytest.raises(ValueError):
        pn532.in_list_passive_target(3)
    with pytest.raises(ValueError):
        encode_frame(bytes(400))


uids = st.sampled_from([4, 7, 10]).flatmap(lambda n: st.binary(min_size=n, max_size=n))
# No 0x00 in garbage: without it no start code (00 FF) can appear outside the frames.
no_zero = st.binary(max_size=30).map(lambda b: b.replace(b"\x00", b""))


@settings(max_examples=300, deadline=None)
@given(
    items=st.lists(st.tuples(no_zero, st.lists(uids, min_size=0, max_size=2)), max_size=8),
    tail=no_zero,
    cuts=st.lists(st.integers(0, 2000), max_size=10),
)
def test_frames_between_garbage_all_recovered(
    items: list[tuple[bytes, list[bytes]]], tail: bytes, cuts: list[int]
) -> None:
    def frame(us: list[bytes]) -> bytes:
        targets = [Pn532Target(i + 1, 0x0044, 0x00, u) for i, u in enumerate(us)]
        return in_list_passive_target_response(targets)

    stream = b"".join(g + frame(us) for g, us in items) + tail
    dec = Pn532Decoder()
    reads: list[RawRead] = []
    edges = [0, *sorted(c for c in cuts if c <= len(stream)), len(stream)]
    for a, b in zip(edges, edges[1:], strict=False):
        reads += dec.feed(stream[a:b])
    assert reads == [RawRead("pn532", u) for _, us in items for u in us]
    assert dec.stats.frames == len(items) and dec.stats.bad_frames == 0
    assert dec.stats.skipped_bytes == sum(len(g) for g, _ in items) + len(tail)


@settings(max_examples=400, deadline=None)
@given(data=st.binary(max_size=400), cuts=st.lists(st.integers(0, 400), max_size=8))
def test_random_bytes_never_raise(data: bytes, cuts: list[int]) -> None:
    msgs, dec = messages(data, sorted(c for c in cuts if c <= len(data)))
    dec.reset()
    assert dec.stats.frames == len(msgs)
    assert dec.stats.skipped_bytes <= len(data)


def test_megabyte_of_noise_costs_less_than_a_python_byte_loop() -> None:
    noise = random.Random(532).randbytes(1 << 20)
    dec = Pn532Decoder()
    t0 = time.perf_counter()
    for i in range(0, len(noise), 4096):
        dec.feed(noise[i : i + 4096])
    decode_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    zeros = sum(1 for b in noise if b == 0)
    loop_s = time.perf_counter() - t0
    assert dec.stats.bad_frames <= zeros
    assert decode_s < loop_s, (decode_s, loop_s)


# -- "Survives the field": noise that used to jam the decoder ----------------------------

#: A corrupted ACK seen on a real line: start code, LEN 0, LCS 0, DCS 0, postamble. Its
#: checksums pass, but a frame without a TFI is impossible.
CORRUPTED_ACK = bytes.fromhex("00FF00000000")


def test_len_zero_frame_is_bad_and_does_not_jam_later_frames() -> None:
    good = vec_bytes("InListPassiveTarget response")
    dec = Pn532Decoder()
    seen: list[tuple[int, str]] = []
    dec.on_bad_frame = lambda offset, reason: seen.append((offset, reason))
    assert dec.feed(CORRUPTED_ACK) == []
    # Every later chunk used to raise IndexError and leave the buffer growing.
    for _ in range(3):
        assert dec.feed(good) == [RawRead("pn532", bytes.fromhex("CB98A605"))]
    assert dec.stats.bad_frames == 1 and seen[0][0] == 0 and "LEN 0" in seen[0][1]
    assert dec.buffered == b""


def test_len_zero_frame_split_anywhere() -> None:
    good = vec_bytes("InListPassiveTarget response")
    stream = CORRUPTED_ACK + good + CORRUPTED_ACK + good
    for cut in range(len(stream) + 1):
        got, _ = messages(stream, [cut])
        assert [type(m) for m in got] == [pn532.Pn532InList] * 2, cut


@pytest.mark.parametrize(
    "noise",
    [
        # LEN 0xF0 with a valid LCS, then a TFI no PN532 sends: refused at the TFI.
        "0000FFF010AA",
        # LEN 0x80, LCS 0x80 and TFI 0xD5 pass every check that can be made so far; it is
        # given up because a complete frame starts inside its claimed length.
        "0000FF8080D5",
    ],
)
def test_frame_behind_a_long_noise_header_is_not_held_back(noise: str) -> None:
    good = vec_bytes("InListPassiveTarget response")
    dec = Pn532Decoder()
    assert dec.feed(bytes.fromhex(noise) + good) == [RawRead("pn532", bytes.fromhex("CB98A605"))]
    assert dec.stats.bad_frames == 1 and dec.buffered == b""


def test_drain_gives_a_frame_without_postamble_its_final_attempt() -> None:
    good = vec_bytes("InListPassiveTarget response")
    dec = Pn532Decoder()
    assert dec.feed(good[:-1]) == []  # the postamble may still come
    assert dec.drain() == [RawRead("pn532", bytes.fromhex("CB98A605"))]
    assert dec.buffered == b"" and dec.stats.skipped_bytes == 0


def test_drain_counts_a_truncated_frame_and_finds_what_follows_its_start() -> None:
    good = vec_bytes("InListPassiveTarget response")
    dec = Pn532Decoder()
    seen: list[str] = []
    dec.on_bad_frame = lambda _offset, reason: seen.append(reason)
    assert dec.feed(good[:8]) == []
    assert dec.drain() == []
    assert seen == ["frame truncated at end of input"]
    assert dec.buffered == b"" and dec.stats.skipped_bytes == 8
