"""Magic RF M100 frames: datasheet vectors, encoders, PL framing, resync, properties."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_bridge import uhf_m100
from firmware_bridge.records import RawRead
from firmware_bridge.uhf_m100 import (
    UhfError,
    UhfFrame,
    UhfInventory,
    UhfM100Decoder,
    UhfMessage,
    encode_frame,
    epc_crc16,
    inventory_notification,
)

VECTORS = Path(__file__).resolve().parents[2] / "shared" / "vectors" / "readers.json"
UHF_VECTORS: list[dict[str, str]] = json.loads(VECTORS.read_text())["uhf_m100"]


def by_kind(kind: str) -> dict[str, str]:
    return next(v for v in UHF_VECTORS if v["kind"] == kind)


def messages(data: bytes, cuts: list[int] | None = None) -> tuple[list[UhfMessage], UhfM100Decoder]:
    dec = UhfM100Decoder()
    out: list[UhfMessage] = []
    edges = [0, *(cuts or []), len(data)]
    for a, b in zip(edges, edges[1:], strict=False):
        out += dec.feed_messages(data[a:b])
    return out, dec


def test_inventory_notification_vector() -> None:
    vec = by_kind("inventory notification")
    frame = bytes.fromhex(vec["hex"])
    msgs, dec = messages(frame)
    assert msgs == [
        UhfInventory(
            rssi_dbm=int(vec["rssi_dbm"]),
            pc=int(vec["pc"], 16),
            epc=bytes.fromhex(vec["epc"]),
            crc=int(vec["crc"], 16),
            crc_ok=True,
        )
    ]
    assert dec.stats.skipped_bytes == 0
    # feed() gives the read the agent uses.
    assert UhfM100Decoder().feed(frame) == [
        RawRead("uhf-m100", bytes.fromhex(vec["epc"]), float(vec["rssi_dbm"]))
    ]
    # The encoder rebuilds the exact bytes, including the tag's CRC-16 and the UMI PC bit.
    epc = bytes.fromhex(vec["epc"])
    assert inventory_notification(epc, int(vec["rssi_dbm"]), pc=int(vec["pc"], 16)) == frame


def test_error_response_vector_is_visible_but_not_a_read() -> None:
    vec = by_kind("error response")
    frame = bytes.fromhex(vec["hex"])
    assert messages(frame)[0] == [UhfError(int(vec["error_code"], 16))]
    assert uhf_m100.error_response(uhf_m100.ERROR_NO_TAG) == frame
    dec = UhfM100Decoder()
    seen: list[UhfMessage] = []
    dec.on_message = seen.append
    assert dec.feed(frame) == []
    assert list(dec.messages) == seen == [UhfError(0x15)]


def test_command_vectors() -> None:
    single = bytes.fromhex(by_kind("single inventory command (host to reader)")["hex"])
    stop = bytes.fromhex(by_kind("stop multiple inventory command (host to reader)")["hex"])
    assert uhf_m100.single_inventory() == single
    assert uhf_m100.stop_multi_inventory() == stop
    assert messages(single + stop)[0] == [UhfFrame(0, 0x22, b""), UhfFrame(0, 0x28, b"")]


def test_multi_inventory_command_layout() -> None:
    # BB 00 27 00 03 22 <count BE> checksum 7E; 10000 rounds -> 27 10.
    assert uhf_m100.multi_inventory(10000).hex(" ") == "bb 00 27 00 03 22 27 10 83 7e"
    with pytest.raises(ValueError):
        uhf_m100.multi_inventory(0)


def test_frame_with_header_and_end_bytes_inside_payload() -> None:
    # EPC full of BB and 7E: scanning for 7E would cut the frame short.
    epc = bytes.fromhex("7EBB7E7EBBBB7E00BB7E7EBB")
    frame = inventory_notification(epc, -40)
    assert frame.count(0x7E) > 1 and frame.count(0xBB) > 1
    msgs, dec = messages(frame + frame)
    assert [m.epc for m in msgs if isinstance(m, UhfInventory)] == [epc, epc]
    assert dec.stats.bad_frames == 0 and dec.stats.skipped_bytes == 0


@pytest.mark.parametrize("words", [0, 1, 6, 8, 31])
def test_any_epc_length_from_pc(words: int) -> None:
    epc = bytes(range(2 * words))
    [msg], _ = messages(inventory_notification(epc, -70))
    assert isinstance(msg, UhfInventory)
    assert msg.epc == epc and msg.pc >> 11 == words and msg.crc_ok


def test_signed_rssi() -> None:
    for rssi in (-128, -55, -1, 0, 5, 127):
        [msg], _ = messages(inventory_notification(b"\x01\x02", rssi))
        assert isinstance(msg, UhfInventory) and msg.rssi_dbm == rssi


def test_split_at_every_offset() -> None:
    stream = b"".join(bytes.fromhex(v["hex"]) for v in UHF_VECTORS)
    whole, _ = messages(stream)
    assert len(whole) == len(UHF_VECTORS)
    for cut in range(len(stream) + 1):
        assert messages(stream, [cut])[0] == whole, cut
    assert messages(stream, list(range(1, len(stream))))[0] == whole


def test_bad_checksum_rescans_from_next_byte() -> None:
    good = bytes.fromhex(by_kind("inventory notification")["hex"])
    # A frame whose PL claims to cover the real frame that follows; its checksum is wrong,
    # so the real frame inside must still be found.
    bogus = bytes([0xBB, 0x01, 0x03, 0x00, len(good) + 2, 0x99, 0x98]) + good + b"\x00\x7e"
    offsets: list[tuple[int, str]] = []
    dec = UhfM100Decoder()
    dec.on_bad_frame = lambda off, why: offsets.append((off, why))
    reads = dec.feed(b"\x11\x22" + bogus)
    assert [r.tag_id.hex().upper() for r in reads] == [by_kind("inventory notification")["epc"]]
    assert offsets == [(2, "bad checksum")]
    assert dec.stats.bad_frames == 1


def test_missing_end_byte_is_bad() -> None:
    frame = bytearray(uhf_m100.single_inventory())
    frame[-1] = 0x7D
    msgs, dec = messages(bytes(frame))
    assert msgs == [] and dec.stats.bad_frames == 1


def test_inconsistent_inventory_layout_is_bad_but_skipped_whole() -> None:
    # Checksum fine, but PC announces 6 words while PL leaves 2 bytes of EPC.
    params = b"\xc9\x30\x00\xaa\xbb\x12\x34"
    frame = encode_frame(uhf_m100.TYPE_NOTIFICATION, uhf_m100.CMD_INVENTORY, params)
    good = uhf_m100.single_inventory()
    msgs, dec = messages(frame + good)
    assert msgs == [UhfFrame(0, 0x22, b"")]
    assert dec.stats.bad_frames == 1 and dec.stats.skipped_bytes == len(frame)


def test_huge_pl_in_noise_does_not_hold_back_frames() -> None:
    good = uhf_m100.single_inventory()
    msgs, dec = messages(b"\xbb\x02\x22\xff\xff" + good)
    assert msgs == [UhfFrame(0, 0x22, b"")]
    assert dec.stats.bad_frames == 1


def test_reset_drops_partial_frame() -> None:
    frame = uhf_m100.single_inventory()
    dec = UhfM100Decoder()
    assert dec.feed_messages(frame[:4]) == []
    dec.reset()
    assert dec.feed_messages(frame[4:] + frame) == [UhfFrame(0, 0x22, b"")]


def test_epc_crc16_is_crc16_genibus() -> None:
    assert epc_crc16(b"123456789") == 0xD64E  # the catalogued check value of CRC-16/GENIBUS


def test_epc_crc16_known_value() -> None:
    vec = by_kind("inventory notification")
    assert epc_crc16(bytes.fromhex(vec["pc"] + vec["epc"])) == int(vec["crc"], 16)


def frame_len(m: UhfMessage) -> int:
    """Bytes of the frame that decoded to ``m`` (7 framing bytes + PL)."""
    if isinstance(m, UhfInventory):
        return 7 + 5 + len(m.epc)
    if isinstance(m, UhfError):
        return 7 + 1 + len(m.extra)
    return 7 + len(m.params)


epcs = st.integers(0, 31).flatmap(lambda w: st.binary(min_size=2 * w, max_size=2 * w))
rssis = st.integers(-128, 127)
no_header = st.binary(max_size=30).map(lambda b: b.replace(b"\xbb", b""))


@settings(max_examples=300, deadline=None)
@given(
    items=st.lists(st.tuples(no_header, epcs, rssis), max_size=8),
    tail=no_header,
    cuts=st.lists(st.integers(0, 2000), max_size=10),
)
def test_frames_between_garbage_all_recovered(
    items: list[tuple[bytes, bytes, int]], tail: bytes, cuts: list[int]
) -> None:
    stream = b"".join(g + inventory_notification(e, r) for g, e, r in items) + tail
    reads: list[RawRead] = []
    dec = UhfM100Decoder()
    edges = [0, *sorted(c for c in cuts if c <= len(stream)), len(stream)]
    for a, b in zip(edges, edges[1:], strict=False):
        reads += dec.feed(stream[a:b])
    assert reads == [RawRead("uhf-m100", e, float(r)) for _, e, r in items]
    assert dec.stats.skipped_bytes == sum(len(g) for g, _, _ in items) + len(tail)
    assert dec.stats.bad_frames == 0


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=400), cuts=st.lists(st.integers(0, 400), max_size=8))
def test_random_bytes_never_raise_and_are_accounted(data: bytes, cuts: list[int]) -> None:
    msgs, dec = messages(data, sorted(c for c in cuts if c <= len(data)))
    dec.reset()
    assert dec.stats.frames == len(msgs)
    # Every byte is either inside a decoded frame or counted as skipped.
    assert dec.stats.skipped_bytes == len(data) - sum(map(frame_len, msgs))


def test_megabyte_of_noise_costs_less_than_a_python_byte_loop() -> None:
    noise = random.Random(100).randbytes(1 << 20)
    dec = UhfM100Decoder()
    t0 = time.perf_counter()
    for i in range(0, len(noise), 4096):
        dec.feed(noise[i : i + 4096])
    decode_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    headers = sum(1 for b in noise if b == 0xBB)
    loop_s = time.perf_counter() - t0
    assert dec.stats.frames == 0
    assert dec.stats.bad_frames <= headers
    assert decode_s < loop_s, (decode_s, loop_s)


# -- "Survives the field": length fields that cannot be true ----------------------------

INVENTORY = bytes.fromhex(by_kind("inventory notification")["hex"])
INVENTORY_READ = RawRead(
    "uhf-m100",
    bytes.fromhex(by_kind("inventory notification")["epc"]),
    float(by_kind("inventory notification")["rssi_dbm"]),
)


def test_noise_header_claiming_1023_bytes_does_not_hold_back_a_valid_frame() -> None:
    dec = UhfM100Decoder()
    seen: list[tuple[int, str]] = []
    dec.on_bad_frame = lambda offset, reason: seen.append((offset, reason))
    # The inventory frame must come out of this very feed, not a kilobyte later.
    assert dec.feed(bytes.fromhex("BB027E03FF") + INVENTORY) == [INVENTORY_READ]
    assert seen == [(0, f"PL 1023 exceeds {uhf_m100.MAX_PARAM_LEN}")]
    assert dec.buffered == b""


def test_max_param_len_is_the_largest_real_frame() -> None:
    # A 496-bit EPC inventory notification (the longest the module sends unasked) fits...
    longest = inventory_notification(bytes(62), -40)
    assert len(longest) - 7 == 67 <= uhf_m100.MAX_PARAM_LEN
    assert messages(longest)[0] != []
    # ...and the bound is far below what a stray header claims.
    assert uhf_m100.MAX_PARAM_LEN == 255


def test_inventory_notification_longer_than_any_epc_is_rejected_at_the_header() -> None:
    # type 02 / cmd 22 with PL 68: an inventory notification has at most 67 param bytes.
    dec = UhfM100Decoder()
    assert dec.feed(bytes.fromhex("BB02220044") + INVENTORY) == [INVENTORY_READ]
    assert dec.stats.bad_frames == 1


def test_complete_frame_behind_a_plausible_noise_header_is_not_held_back() -> None:
    # PL 0xC8 = 200 is within the bound for a response, so the header alone cannot be
    # refused; but a complete, valid frame follows inside its claimed extent.
    dec = UhfM100Decoder()
    assert dec.feed(bytes.fromhex("BB013900C8") + INVENTORY) == [INVENTORY_READ]
    assert dec.stats.bad_frames == 1 and dec.buffered == b""


def test_drain_counts_a_truncated_frame_and_empties_the_buffer() -> None:
    dec = UhfM100Decoder()
    seen: list[str] = []
    dec.on_bad_frame = lambda _offset, reason: seen.append(reason)
    assert dec.feed(INVENTORY[:10]) == []
    assert dec.drain() == []
    assert seen == ["frame truncated at end of input"]
    assert dec.stats.skipped_bytes == 10 and dec.buffered == b""


def test_split_at_every_offset_behind_noise_headers() -> None:
    stream = bytes.fromhex("BB027E03FF") + INVENTORY + bytes.fromhex("BB013900C8") + INVENTORY
    for cut in range(len(stream) + 1):
        dec = UhfM100Decoder()
        reads = dec.feed(stream[:cut]) + dec.feed(stream[cut:]) + dec.drain()
        assert reads == [INVENTORY_READ] * 2, cut
