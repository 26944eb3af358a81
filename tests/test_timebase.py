"""One statement of time: epoch microseconds, the accepted range, and times typed by users."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import polars as pl
import pytest

from featurepipe.errors import FeaturepipeError
from featurepipe.ir.timebase import (
    MAX_US,
    MIN_US,
    as_utc,
    format_us,
    from_epoch_us,
    parse_instant,
    to_epoch_us,
)
from featurepipe.online.cli_materialize import parse_until

ROOT = Path(__file__).resolve().parents[1]


def test_epoch_micros_agree_with_polars_and_round_trip() -> None:
    times = [
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(2026, 1, 15, 8, 30, 0, 123_456, tzinfo=UTC),
        datetime(2099, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
    ]
    polars_us = pl.Series(times, dtype=pl.Datetime("us", "UTC")).dt.epoch("us").to_list()
    assert [to_epoch_us(t) for t in times] == polars_us
    assert polars_us[1] == 1_768_465_800_123_456
    assert [from_epoch_us(us) for us in polars_us] == times


def test_naive_is_utc_and_offsets_are_honoured() -> None:
    naive = datetime(2026, 1, 15, 8, 30)
    assert to_epoch_us(naive) == to_epoch_us(naive.replace(tzinfo=UTC))
    plus_one = datetime(2026, 1, 15, 9, 30, tzinfo=timezone(timedelta(hours=1)))
    assert to_epoch_us(plus_one) == to_epoch_us(naive)
    assert as_utc(plus_one) == naive.replace(tzinfo=UTC) and as_utc(plus_one).tzinfo is UTC


def test_accepted_range_is_1970_to_2100() -> None:
    assert MIN_US == 0
    assert MAX_US == to_epoch_us(datetime(2100, 1, 1, tzinfo=UTC)) == 4_102_444_800_000_000
    assert format_us(0) == "1970-01-01T00:00:00Z"
    assert "since the epoch" in format_us(10**20)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-01-15", datetime(2026, 1, 15, tzinfo=UTC)),
        ("2026-01-15T01:00:00+01:00", datetime(2026, 1, 15, tzinfo=UTC)),
        ("2026-01-15T00:00:00Z", datetime(2026, 1, 15, tzinfo=UTC)),
        (" 2026-01-15T08:30 ", datetime(2026, 1, 15, 8, 30, tzinfo=UTC)),
    ],
)
def test_parse_instant(text: str, expected: datetime) -> None:
    got = parse_instant(text)
    assert got == expected and got.tzinfo is UTC
    assert parse_until(text) == expected


def test_parse_instant_names_the_option() -> None:
    with pytest.raises(FeaturepipeError, match=r"--at 'yesterday' is not an ISO-8601 date"):
        parse_instant("yesterday", "--at")
    with pytest.raises(FeaturepipeError, match=r"--until 'soon'"):
        parse_until("soon")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "featurepipe.cli", *args], cwd=ROOT, capture_output=True, text=True
    )


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (("get", "--entity", "user_id=u1", "--features", "user_spend", "--at", "yesterday"), "--at"),
        (("fit", "--start", "yesterday"), "--start"),
        (("fit", "--start", "2026-01-01", "--end", "tomorrow"), "--end"),
        (("materialize", "--until", "yesterday"), "--until"),
    ],
)
def test_cli_refuses_a_bad_time_with_a_clear_message(args: tuple[str, ...], option: str) -> None:
    out = _run(*args)
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"{option} 'yesterday'" in out.stdout or f"{option} 'tomorrow'" in out.stdout
    assert "Traceback" not in out.stdout + out.stderr


@pytest.mark.parametrize(
    ("us", "text"),
    [(604_800_000_000, "7d"), (5_400_000_000, "90m"), (3_600_000_000, "1h"), (1_500_000, "1500ms"),
     (1, "1us"), (86_400_000_001, "86400000001us"), (30_000_000, "30s")],
)
def test_durations_are_shown_in_their_largest_exact_unit(us: int, text: str) -> None:
    from featurepipe.dsl.definitions import parse_duration
    from featurepipe.ir.timebase import format_duration

    assert format_duration(us) == text
    assert parse_duration(text) == us  # what `featurepipe plan` shows reads back
