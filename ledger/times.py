"""Times at the edges (contract §5): RFC 3339 UTC out; an RFC 3339 time or a YYYY-MM-DD date in."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

ONE_MICROSECOND = timedelta(microseconds=1)


def rfc3339(at: datetime | None) -> str | None:
    """`2026-11-24T15:04:05.123456Z`: always UTC, always with the Z (None stays None: an optional time)."""
    return None if at is None else at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_time(text: str, *, end_of_day: bool = False) -> datetime:
    """An aware UTC time from an RFC 3339 time, or from a date: its first instant, or with `end_of_day` its
    last (a date in `as_of` or `to` means the whole UTC day). ValueError, saying why, on anything else."""
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            start = datetime.combine(day, time.min, UTC)
            return start + timedelta(days=1) - ONE_MICROSECOND if end_of_day else start
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not a YYYY-MM-DD date or an RFC 3339 time") from None
    if at.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone (add Z for UTC)")
    return at.astimezone(UTC)
