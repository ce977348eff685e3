"""What every incremental serial decoder shares: its buffer, stream offset, counters and
callbacks, and (for command/response protocols) the split of messages into tag reads and
everything else.

The frame hunting itself stays in each protocol module: EM4100 hunts for STX, the M100 for
0xBB and a length field, the PN532 for a start code with an optional preamble, and each
judges its candidates differently.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from firmware_bridge.records import DecoderStats, RawRead

M = TypeVar("M")
T = TypeVar("T")


class BufferedDecoder:
    """Buffer and bookkeeping of an incremental decoder.

    ``_buf`` holds bytes not yet consumed; ``_offset`` is the stream offset of ``_buf[0]``,
    so bad frames can be reported by their position in the whole stream.
    ``on_bad_frame(stream_offset, reason)``, if set, hears about each bad frame.
    """

    def __init__(self) -> None:
        self.stats = DecoderStats()
        self.on_bad_frame: Callable[[int, str], None] | None = None
        self._buf = bytearray()
        self._offset = 0

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

    def _hunt(self, data: bytes, marker: bytes | int,
              check: Callable[[bytearray, int], int | str | None],
              frame: Callable[[bytearray, int, int], T | str]) -> list[T]:
        """Append ``data`` and return the frames it completes, for protocols whose frames
        begin with ``marker``.

        ``check(buf, start)`` judges the candidate at ``start``: its length when well framed,
        a reason when it can no longer become valid (scanning resumes at the byte after the
        marker, so a real frame starting inside a broken one is found), or None while more
        bytes are needed. ``frame(buf, start, length)`` decodes a well-framed candidate, or
        returns a reason: then the frame's own checks agree on where it ends, and all of it
        is skipped. Bytes outside frames count as skipped.
        """
        buf = self._buf
        buf += data
        out: list[T] = []
        pos = 0
        n = len(buf)
        while pos < n:
            start = buf.find(marker, pos)
            if start < 0:
                self.stats.skipped_bytes += n - pos
                pos = n
                break
            self.stats.skipped_bytes += start - pos
            verdict = check(buf, start)
            if verdict is None:  # a valid-so-far prefix: wait for more bytes
                pos = start
                break
            if isinstance(verdict, str):
                self._bad(start, verdict)
                pos = start + 1
                continue
            item = frame(buf, start, verdict)
            if isinstance(item, str):
                self._bad(start, item)
                self.stats.skipped_bytes += verdict - 1
            else:
                self.stats.frames += 1
                out.append(item)
            pos = start + verdict
        self._consumed(pos)
        return out


class MessageDecoder(BufferedDecoder, Generic[M]):
    """A decoder of a command/response protocol: besides tag reads, a reader answers with
    acknowledgements, errors and responses.

    :meth:`feed` returns the tag reads and keeps every other message in :attr:`messages`
    (a bounded deque of the latest 64) and passes it to ``on_message`` if set. Subclasses
    implement :meth:`feed_messages` and :meth:`_reads_of`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.messages: deque[M] = deque(maxlen=64)
        self.on_message: Callable[[M], None] | None = None

    def feed_messages(self, data: bytes) -> list[M]:
        raise NotImplementedError

    def _reads_of(self, msg: M) -> list[RawRead] | None:
        """The reads a message carries, or None when it is not a tag report."""
        raise NotImplementedError

    def feed(self, data: bytes) -> list[RawRead]:
        """Consume ``data``; return the tag reads completed by it, in order."""
        reads: list[RawRead] = []
        for msg in self.feed_messages(data):
            got = self._reads_of(msg)
            if got is not None:
                reads += got
                continue
            self.messages.append(msg)
            if self.on_message is not None:
                self.on_message(msg)
        return reads
