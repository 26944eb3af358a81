"""The one statement of how time is represented: UTC instants as int64 epoch microseconds.

Every layer converts through here (definitions, batch sources, the stream validator, the
online store, the CLI), so a naive datetime means UTC everywhere and the accepted range of
event times is the same on both paths (docs/semantics.md, "Timestamps").
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from featurepipe.errors import FeaturepipeError

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_US = timedelta(microseconds=1)

# Accepted event times, the same on both paths: anything outside is bad input, not data.
MIN_TIME = datetime(1970, 1, 1, tzinfo=UTC)
MAX_TIME = datetime(2100, 1, 1, tzinfo=UTC)


def as_utc(t: datetime) -> datetime:
    """``t`` as an aware UTC datetime; a naive datetime is taken as UTC."""
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def to_epoch_us(t: datetime) -> int:
    """Epoch microseconds of ``t`` (exact integer arithmetic); naive means UTC."""
    return (as_utc(t) - EPOCH) // ONE_US


def from_epoch_us(us: int) -> datetime:
    """The aware UTC datetime of epoch microseconds ``us``."""
    return EPOCH + timedelta(microseconds=us)


def duration_us(d: timedelta) -> int:
    """Microseconds of a duration (exact)."""
    return d // ONE_US


_UNITS = (("d", 86_400_000_000), ("h", 3_600_000_000), ("m", 60_000_000), ("s", 1_000_000),
          ("ms", 1_000), ("us", 1))  # fmt: skip


def format_duration(us: int) -> str:
    """A duration the way definitions spell one, in its largest exact unit: 7d, 90m, 1500ms."""
    for unit, size in _UNITS:
        if us % size == 0:
            return f"{us // size}{unit}"
    raise AssertionError("every duration is a whole number of microseconds")


MIN_US = to_epoch_us(MIN_TIME)
MAX_US = to_epoch_us(MAX_TIME)


def format_us(us: int) -> str:
    """ISO-8601 text of epoch microseconds, for messages people read."""
    try:
        return from_epoch_us(us).isoformat().replace("+00:00", "Z")
    except OverflowError:
        return f"{us} µs since the epoch"


def parse_instant(text: str, option: str = "time") -> datetime:
    """An ISO-8601 date or date-time typed by a user; naive means UTC; returned in UTC.

    Raises ``FeaturepipeError`` naming ``option`` with an example of what is accepted.
    """
    try:
        t = datetime.fromisoformat(text.strip())
    except ValueError:
        raise FeaturepipeError(
            f"{option} {text!r} is not an ISO-8601 date or date-time "
            "(e.g. 2026-01-15 or 2026-01-15T08:30:00Z; naive times are UTC)"
        ) from None
    return as_utc(t)
