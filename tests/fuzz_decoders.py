"""Seeded fuzzing of the serial decoders (a plain loop: fast enough for 10^6 inputs each).

Three kinds of input, in turn:

* random bytes, drawn from the protocol's own alphabet half the time (start markers, zeros,
  0xFF, hex digits...) so that headers, lengths and checksums get hit, not only skipped;
* a few valid frames with noise between them, then mutated (bytes flipped, inserted,
  deleted, duplicated, truncated; a start marker dropped in);
* a few valid frames split at every offset: each split is one input, and it must give the
  same reads as the unsplit stream.

Every input is fed in random chunks to a fresh decoder, which is then drained. A failure
is any exception, a buffer longer than the decoder's ``max_frame_len`` after a feed, a
buffer left after ``drain()``, a read that is not of the protocol's shape, or a split that
changes the reads. It raises :class:`FuzzFailure` naming the seed, the input number and the
chunks in hex, which is all it takes to reproduce it.

``python -m tests.fuzz_decoders --inputs 1000000`` runs it outside pytest and prints
inputs/s per decoder; ``make fuzz`` runs the same through pytest (marker ``fuzz``).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from firmware_bridge import em4100, pn532, uhf_m100
from firmware_bridge.protocols import make_decoder
from firmware_bridge.records import RawRead

SERIAL_PROTOCOLS = ("em4100", "uhf-m100", "pn532")


class FuzzFailure(AssertionError):
    """A decoder misbehaved on a fuzz input; the message has what reproduces it."""


@dataclass
class FuzzReport:
    protocol: str
    inputs: int
    bytes_fed: int
    reads: int
    seconds: float

    @property
    def inputs_per_s(self) -> float:
        return self.inputs / self.seconds if self.seconds else float("inf")


# -- valid frames, per protocol ----------------------------------------------------------


def _em4100_frame(rng: random.Random) -> bytes:
    frame = em4100.encode(rng.randbytes(5), crlf=rng.random() < 0.3)
    # Readers send upper case; lower case is accepted and worth exercising.
    return frame.lower() if rng.random() < 0.1 else frame


def _uhf_frame(rng: random.Random) -> bytes:
    kind = rng.random()
    if kind < 0.6:
        return uhf_m100.inventory_notification(
            rng.randbytes(2 * rng.randint(0, 31)), rng.randint(-128, 127))
    if kind < 0.75:
        return uhf_m100.error_response(rng.choice([0x15, 0x09, rng.randrange(256)]),
                                       rng.randbytes(rng.randint(0, 3)))
    if kind < 0.85:
        return rng.choice([uhf_m100.single_inventory(), uhf_m100.stop_multi_inventory(),
                           uhf_m100.multi_inventory(rng.randint(1, 0xFFFF))])
    plen = rng.randint(0, uhf_m100.MAX_PARAM_LEN if rng.random() < 0.05 else 40)
    return uhf_m100.encode_frame(rng.randint(0, 2), rng.randrange(256), rng.randbytes(plen))


def _pn532_target(rng: random.Random, tg: int) -> pn532.Pn532Target:
    sel_res = rng.choice([0x00, 0x08, 0x20, 0x28, rng.randrange(256)])
    ats = b""
    if sel_res & 0x20:
        ats_len = rng.randint(1, 12)
        ats = bytes([ats_len]) + rng.randbytes(ats_len - 1)
    return pn532.Pn532Target(tg, rng.randrange(0x10000), sel_res,
                             rng.randbytes(rng.choice([4, 7, 10])), ats)


def _pn532_frame(rng: random.Random) -> bytes:
    kind = rng.random()
    if kind < 0.5:
        targets = [_pn532_target(rng, i + 1) for i in range(rng.randint(0, 2))]
        return pn532.in_list_passive_target_response(targets)
    if kind < 0.7:
        return rng.choice([pn532.ACK_FRAME, pn532.NACK_FRAME, pn532.ERROR_FRAME])
    if kind < 0.8:
        return rng.choice([pn532.sam_configuration(), pn532.rf_max_retries(),
                           pn532.in_list_passive_target(rng.randint(1, 2)), pn532.WAKEUP])
    # Any other information frame; now and then an extended one (body 256..265 bytes).
    size = rng.randint(255, pn532.MAX_EXTENDED_LEN - 1) if rng.random() < 0.05 else rng.randint(1, 40)
    return pn532.encode_frame(rng.randbytes(size),
                              tfi=rng.choice([pn532.TFI_HOST, pn532.TFI_PN532]))


_FRAMES: dict[str, Callable[[random.Random], bytes]] = {
    "em4100": _em4100_frame,
    "uhf-m100": _uhf_frame,
    "pn532": _pn532_frame,
}

# Bytes that matter to each protocol's framing: drawing noise from them reaches the checks.
_ALPHABET: dict[str, bytes] = {
    "em4100": bytes([em4100.STX, em4100.ETX, em4100.CR, em4100.LF]) + b"0123456789ABCDEFabcdef",
    "uhf-m100": bytes([uhf_m100.HEADER, uhf_m100.END, 0x00, 0x01, 0x02, 0x22, 0xFF, 0x15]),
    "pn532": bytes([0x00, 0xFF, 0xD4, 0xD5, 0x7F, 0x4B, 0x01, 0x04, 0x0C, 0xF4]),
}

def _em4100_header(rng: random.Random) -> bytes:
    # STX and a run of hex digits: a frame cut anywhere, or one with its ETX/CR replaced.
    return bytes([em4100.STX]) + bytes(rng.choices(b"0123456789ABCDEF", k=rng.randint(0, 13)))


def _uhf_header(rng: random.Random) -> bytes:
    # Lengths at and around every bound the decoder knows, and ones far beyond.
    pl = rng.choice([0, 1, 4, 5, 67, 68, 255, 256, 1023, 1024, 0xFFFF, rng.randrange(0x10000)])
    kind = rng.choice([(0x02, 0x22), (0x01, 0xFF), (0x00, 0x22),
                       (rng.randrange(4), rng.randrange(256))])
    return bytes([uhf_m100.HEADER, *kind]) + pl.to_bytes(2, "big")


def _pn532_header(rng: random.Random) -> bytes:
    # Start code, then a length whose checksum passes (LEN 0 included: the corrupted ACK),
    # normal or extended, and a TFI that is sometimes real.
    tfi = bytes([rng.choice([pn532.TFI_HOST, pn532.TFI_PN532, pn532.TFI_ERROR, 0x00,
                             rng.randrange(256)])])
    if rng.random() < 0.7:
        length = rng.choice([0, 1, 2, 0xFF, rng.randrange(256)])
        head = bytes([length, (-length) & 0xFF])
    else:
        length = rng.choice([0, 1, 255, 256, pn532.MAX_EXTENDED_LEN,
                             pn532.MAX_EXTENDED_LEN + 1, 0xFFFF])
        lenm, lenl = divmod(length, 256)
        head = bytes([0xFF, 0xFF, lenm, lenl, (-(lenm + lenl)) & 0xFF])
    return b"\x00\x00\xff" + head + tfi[: rng.randint(0, 1)] + bytes(rng.randint(0, 3))


#: A start marker and a header that passes the checks that can be made on it, with lengths
#: at the bounds: what noise has to look like to reach the length handling.
_HEADER: dict[str, Callable[[random.Random], bytes]] = {
    "em4100": _em4100_header,
    "uhf-m100": _uhf_header,
    "pn532": _pn532_header,
}


def _tag_ok(protocol: str, tag: bytes) -> bool:
    if protocol == "em4100":
        return len(tag) == 5
    if protocol == "uhf-m100":
        return len(tag) % 2 == 0 and len(tag) <= uhf_m100.MAX_EPC_LEN
    return len(tag) in (4, 7, 10)


# -- inputs -------------------------------------------------------------------------------


def _noise(rng: random.Random, protocol: str, max_len: int) -> bytes:
    n = rng.randint(0, max_len)
    draw = rng.random()
    if draw < 0.4:
        return rng.randbytes(n)
    if draw < 0.8:
        return bytes(rng.choices(_ALPHABET[protocol], k=n))
    # Noise strewn with headers: each one must be refused or given up, never trusted.
    out = bytearray()
    while len(out) < n:
        out += _HEADER[protocol](rng) if rng.random() < 0.3 else rng.randbytes(rng.randint(1, 8))
    return bytes(out)


def _stream(rng: random.Random, protocol: str) -> bytes:
    """1..4 valid frames, sometimes with noise between them."""
    parts = []
    for _ in range(rng.randint(1, 4)):
        if rng.random() < 0.3:
            parts.append(_noise(rng, protocol, 12))
        parts.append(_FRAMES[protocol](rng))
    return b"".join(parts)


def _mutate(rng: random.Random, protocol: str, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(7)
        at = rng.randint(0, len(buf))
        if op == 0 and buf:  # flip bits of one byte
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:  # replace one byte
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        elif op == 2:  # insert noise
            buf[at:at] = _noise(rng, protocol, 8)
        elif op == 3:  # delete a span
            del buf[at : at + rng.randint(1, 8)]
        elif op == 4:  # duplicate a span
            buf[at:at] = buf[at : at + rng.randint(1, 16)]
        elif op == 5:  # truncate
            del buf[at:]
        else:  # a start marker and a plausible header where none belongs
            buf[at:at] = _HEADER[protocol](rng)
    return bytes(buf)


def _chunks(rng: random.Random, data: bytes) -> list[bytes]:
    """``data`` cut at 0..3 random places."""
    cuts = sorted(rng.randint(0, len(data)) for _ in range(rng.randint(0, 3)))
    edges = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(edges, edges[1:], strict=False)]


def _decode(protocol: str, chunks: list[bytes], where: str) -> list[RawRead]:
    """Feed ``chunks`` to a fresh decoder, drain it, check what can be checked."""
    dec = make_decoder(protocol)
    limit = dec.max_frame_len
    reads: list[RawRead] = []
    try:
        for chunk in chunks:
            reads += dec.feed(chunk)
            if len(dec.buffered) > limit:
                raise FuzzFailure(f"buffer of {len(dec.buffered)} bytes > {limit}")
        reads += dec.drain()
        if dec.buffered:
            raise FuzzFailure("bytes left in the buffer after drain()")
        dec.reset()
    except Exception as exc:
        hexes = " | ".join(c.hex() for c in chunks)
        raise FuzzFailure(f"{protocol}: {where}: {type(exc).__name__}: {exc}\n"
                          f"chunks (hex): {hexes}") from exc
    total = sum(map(len, chunks))
    if dec.stats.skipped_bytes > total:
        raise FuzzFailure(f"{protocol}: {where}: skipped {dec.stats.skipped_bytes} of {total}")
    for r in reads:
        if r.protocol != protocol or not _tag_ok(protocol, r.tag_id):
            raise FuzzFailure(f"{protocol}: {where}: read of the wrong shape {r!r}\n"
                              f"chunks (hex): {' | '.join(c.hex() for c in chunks)}")
    return reads


def fuzz(protocol: str, inputs: int, seed: int = 0) -> FuzzReport:
    """Run ``inputs`` fuzz inputs through ``protocol``'s decoder; raise FuzzFailure on the
    first misbehaviour."""
    rng = random.Random(f"{protocol}/{seed}")
    done = fed = reads = 0
    t0 = time.perf_counter()
    while done < inputs:
        kind = done % 3
        where = f"seed {seed}, input {done}"
        if kind == 0:
            data = _noise(rng, protocol, 300)
            reads += len(_decode(protocol, _chunks(rng, data), where + " (random bytes)"))
            done, fed = done + 1, fed + len(data)
        elif kind == 1:
            data = _mutate(rng, protocol, _stream(rng, protocol))
            reads += len(_decode(protocol, _chunks(rng, data), where + " (mutated frames)"))
            done, fed = done + 1, fed + len(data)
        else:
            data = _stream(rng, protocol)
            whole = _decode(protocol, [data], where + " (frames, whole)")
            for cut in range(len(data) + 1):
                got = _decode(protocol, [data[:cut], data[cut:]], f"{where} (split at {cut})")
                if got != whole:
                    raise FuzzFailure(f"{protocol}: {where}: split at {cut} gives {got!r}, "
                                      f"whole gives {whole!r}\nstream (hex): {data.hex()}")
            reads += len(whole)
            done, fed = done + len(data) + 2, fed + len(data) * (len(data) + 2)
    return FuzzReport(protocol, done, fed, reads, time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--inputs", type=int, default=1_000_000, help="inputs per decoder")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--protocol", choices=SERIAL_PROTOCOLS, action="append")
    args = ap.parse_args(argv)
    for protocol in args.protocol or SERIAL_PROTOCOLS:
        r = fuzz(protocol, args.inputs, args.seed)
        print(f"{protocol}: {r.inputs} inputs, {r.bytes_fed} bytes, {r.reads} reads, "
              f"{r.seconds:.1f} s, {r.inputs_per_s:,.0f} inputs/s, 0 exceptions", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
