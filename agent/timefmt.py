"""RFC 3339 timestamps for payloads (``at``): UTC, millisecond precision, ``Z`` suffix."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

__all__ = ["parse_rfc3339", "rfc3339"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def rfc3339(ts: float) -> str:
    """Format a Unix timestamp as ``2024-05-01T12:00:00.123Z``.

    Milliseconds are truncated, never rounded up, so a timestamp never appears later than
    the event. Truncation goes through whole microseconds first: ``1.001 * 1000`` is
    ``1000.999...`` in binary floating point and must still print ``.001``.
    """
    micros = round(ts * 1_000_000)
    millis = micros // 1000
    dt = _EPOCH + timedelta(milliseconds=millis)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{millis % 1000:03d}Z"


def parse_rfc3339(text: str) -> float:
    """Parse an RFC 3339 timestamp (any offset, ``Z`` allowed) to a Unix timestamp."""
    dt = datetime.fromisoformat(text.replace("z", "Z").replace("Z", "+00:00"))
    if dt.tzinfo is None:
        raise ValueError(f"RFC 3339 timestamp needs an offset or 'Z': {text!r}")
    return dt.timestamp()
