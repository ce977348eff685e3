"""What every incremental serial decoder shares: its buffer, stream offset, counters and
callbacks, the hunt for frames (with resynchronisation), the final attempt at the end of an
input, and (for command/response protocols) the split of messages into tag reads and
everything else.

What differs per protocol stays in each protocol module: EM4100 hunts for STX, the M100 for
0xBB and a length field, the PN532 for a start code with an optional preamble, and each
judges its candidates differently.

How the hunt stays in step with a noisy line:

* a candidate whose header already shows it cannot be a frame (a length longer than any
  real frame of the protocol, an unknown type) is refused before any more bytes are waited
  for;
* a candidate that could still become valid is waited for, unless a complete, valid frame
  already starts inside it: then the candidate was line noise that happened to look like a
  header, and waiting would hold the real frame hostage until enough bytes arrived to fill
  the bogus length;
* every refused candidate gives up only its start marker: scanning resumes at the next
  byte, so a real frame starting inside a broken one is still found;
* at the end of a finite input (:meth:`drain`) a candidate that is still incomplete never
  will be: it is refused too and the bytes behind its marker are scanned once more.

So the buffer never holds more than one frame of the protocol's largest size (plus a
preamble), whatever the line sends.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from firmware_bridge.records import DecoderStats, RawRead

M = TypeVar("M")
T = TypeVar("T")

#: The reason a candidate still incomplete at the end of the input is refused with.
TRUNCATED = "frame truncated at end of input"

#: ``check(buf, start, final)``: the frame length if the candidate at ``start`` is well
#: framed, a reason if it can never be, ``None`` if more bytes are needed (never ``None``
#: when the decision cannot change: ``final`` says no more bytes will come).
Check = Callable[[bytearray, int, bool], "int | str | None"]


class BufferedDecoder:
    """Buffer and bookkeeping of an incremental decoder.

    ``_buf`` holds bytes not yet consumed; ``_offset`` is the stream offset of ``_buf[0]``,
    so bad frames can be reported by their position in the whole stream.
    ``on_bad_frame(stream_offset, reason)``, if set, hears about each bad frame.
    ``max_frame_len`` is the most bytes the buffer can ever hold (the longest frame the
    protocol accepts, with its preamble).
    """

    max_frame_len: int = 0

    def __init__(self) -> None:
        self.stats = DecoderStats()
        self.on_bad_frame: Callable[[int, str], None] | None = None
        self._buf = bytearray()
        self._offset = 0

    @property
    def buffered(self) -> bytes:
        """The bytes held back as the start of a frame not yet complete (for diagnostics)."""
        return bytes(self._buf)

    def reset(self) -> None:
        """Drop a partial frame (call after a reconnect: its tail will never arrive)."""
        self.stats.skipped_bytes += len(self._buf)
        self._offset += len(self._buf)
        self._buf.clear()

    def _consumed(self, pos: int) -> None:
        """Drop the first ``pos`` buffered bytes, which have been dealt with."""
        del self._buf[:pos]
        self._offset += pos

    def _bad(self, start: int, reason: str, preamble: int = 0) -> None:
        """Count the bad frame whose start marker is at ``buf[start]`` (after ``preamble``
        bytes that belong to it): the marker and preamble are skipped, and scanning resumes
        after the marker."""
        self.stats.bad_frames += 1
        self.stats.skipped_bytes += 1 + preamble
        if self.on_bad_frame is not None:
            self.on_bad_frame(self._offset + start - preamble, reason)

    def _hunt(
        self,
        data: bytes,
        marker: bytes | int,
        check: Check,
        frame: Callable[[bytearray, int, int], T | str],
        *,
        final: bool = False,
        preamble: Callable[[bytearray, int, int], int] | None = None,
        keep: Callable[[bytearray, int], int] | None = None,
    ) -> list[T]:
        """Append ``data`` and return the frames it completes, for protocols whose frames
        begin with ``marker``.

        ``check`` judges the candidate at a marker (see :data:`Check`); a reason means it
        can no longer become valid (scanning resumes at the byte after the marker).
        ``frame(buf, start, length)`` decodes a well-framed candidate, or returns a reason:
        then the frame's own checks agree on where it ends, and all of it is skipped. Bytes
        outside frames count as skipped.

        ``final``: no more bytes will come (end of input): incomplete candidates are
        refused and everything left is scanned, so the buffer ends empty.
        ``preamble(buf, pos, start)``: how many bytes before the marker belong to the frame
        (they are not counted as noise). ``keep(buf, pos)``: when no marker is left, how many
        trailing bytes to hold because they may be the start of a split marker.
        """
        buf = self._buf
        buf += data
        out: list[T] = []
        pos = 0
        n = len(buf)
        # Candidates before this index are known to be noise: a complete frame starts here.
        superseded_until = 0
        while pos < n:
            start = buf.find(marker, pos)
            if start < 0:
                held = 0 if final or keep is None else keep(buf, pos)
                self.stats.skipped_bytes += n - held - pos
                pos = n - held
                break
            pre = 0 if preamble is None else preamble(buf, pos, start)
            self.stats.skipped_bytes += start - pre - pos
            verdict = check(buf, start, final)
            if verdict is None:  # a valid-so-far prefix
                if final:
                    verdict = TRUNCATED
                else:
                    if start >= superseded_until:
                        superseded_until = self._complete_frame_after(buf, start, marker, check)
                    if start >= superseded_until:  # nothing complete behind it: wait
                        pos = start - pre
                        break
                    verdict = "a complete frame starts inside its claimed length"
            if isinstance(verdict, str):
                self._bad(start, verdict, pre)
                pos = start + 1
                continue
            item = frame(buf, start, verdict)
            if isinstance(item, str):
                self._bad(start, item, pre)
                self.stats.skipped_bytes += verdict - 1
            else:
                self.stats.frames += 1
                out.append(item)
            pos = start + verdict
        self._consumed(pos)
        return out

    @staticmethod
    def _complete_frame_after(buf: bytearray, start: int, marker: bytes | int,
                              check: Check) -> int:
        """Where the first well-framed, complete frame after ``start`` begins, or -1."""
        at = buf.find(marker, start + 1)
        while at >= 0:
            if isinstance(check(buf, at, False), int):
                return at
            at = buf.find(marker, at + 1)
        return -1


class MessageDecoder(BufferedDecoder, Generic[M]):
    """A decoder of a command/response protocol: besides tag reads, a reader answers with
    acknowledgements, errors and responses.

    :meth:`feed` (and :meth:`drain`) return the tag reads and keep every other message in
    :attr:`messages` (a bounded deque of the latest 64) and pass it to ``on_message`` if
    set. Subclasses implement :meth:`_decode` and :meth:`_reads_of`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.messages: deque[M] = deque(maxlen=64)
        self.on_message: Callable[[M], None] | None = None

    def _decode(self, data: bytes, final: bool) -> list[M]:
        """Consume ``data``; return every message it completes (all that is left if
        ``final``)."""
        raise NotImplementedError

    def _reads_of(self, msg: M) -> list[RawRead] | None:
        """The reads a message carries, or None when it is not a tag report."""
        raise NotImplementedError

    def feed_messages(self, data: bytes) -> list[M]:
        """Consume ``data``; return every message completed by it, in order."""
        return self._decode(data, False)

    def drain_messages(self) -> list[M]:
        """End of input: give held-back bytes a final attempt; the buffer ends empty."""
        return self._decode(b"", True)

    def feed(self, data: bytes) -> list[RawRead]:
        """Consume ``data``; return the tag reads completed by it, in order."""
        return self._split(self.feed_messages(data))

    def drain(self) -> list[RawRead]:
        """End of input: the reads held-back bytes still make (see :meth:`drain_messages`)."""
        return self._split(self.drain_messages())

    def _split(self, msgs: list[M]) -> list[RawRead]:
        reads: list[RawRead] = []
        for msg in msgs:
            got = self._reads_of(msg)
            if got is not None:
                reads += got
                continue
            self.messages.append(msg)
            if self.on_message is not None:
                self.on_message(msg)
        return reads
