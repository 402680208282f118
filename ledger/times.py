"""Times at the edges (contract §5): RFC 3339 UTC out; an RFC 3339 time or a YYYY-MM-DD date in."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

from ledger.errors import InvalidEntry

ONE_MICROSECOND = timedelta(microseconds=1)


def start_of_day(day: date) -> datetime:
    """The first instant of the UTC day."""
    return datetime.combine(day, time.min, UTC)


def end_of_day(day: date) -> datetime:
    """The last instant (inclusive) of the UTC day: what "as of that day" means."""
    return start_of_day(day + timedelta(days=1)) - ONE_MICROSECOND


def just_before(at: datetime) -> datetime:
    """The instant before `at` (an opening balance is the balance just before the period). Nothing is kept before
    the first representable instant, so that one is its own "before" (an `as_of`/`from` of 0001-01-01 was a 500)."""
    return at if at <= datetime.min.replace(tzinfo=UTC) else at - ONE_MICROSECOND


_last_instant = end_of_day  # inside parse_time, its keyword `end_of_day` hides the function


def rfc3339(at: datetime | None) -> str | None:
    """`2026-11-24T15:04:05.123456Z`: always UTC, always with the Z (None stays None: an optional time)."""
    return None if at is None else at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_time(text: str, *, end_of_day: bool = False) -> datetime:
    """An aware UTC time from an RFC 3339 time, or from a date: its first instant, or with `end_of_day` its
    last (a date in `as_of` or `to` means the whole UTC day). ValueError, saying why, on anything else."""
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            if end_of_day and day == date.max:
                return datetime.max.replace(tzinfo=UTC)
            return _last_instant(day) if end_of_day else start_of_day(day)
        # RFC 3339 §5.6 allows a lowercase t and z.
        at = datetime.fromisoformat(text[:10] + text[10:].replace("t", "T", 1).replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not a YYYY-MM-DD date or an RFC 3339 time") from None
    if at.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone (add Z for UTC)")
    try:
        return at.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+01:00 or 9999-12-31T23:59-01:00: before or after every instant kept
        return datetime.min.replace(tzinfo=UTC) if at.year == 1 else datetime.max.replace(tzinfo=UTC)


def aware(at: datetime) -> datetime:
    """`at` in UTC; a time without a zone is refused (the core never guesses one)."""
    if at.tzinfo is None:
        raise InvalidEntry(f"time {at.isoformat()} has no time zone; give it in UTC")
    return at.astimezone(UTC)


def aware_or_none(at: datetime | None) -> datetime | None:
    return None if at is None else aware(at)
