"""Generated transaction logs for the demo, the parity run and the benchmarks."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import polars as pl

COUNTRIES = ["US", "US", "US", "FR", "DE", "GB", "BR", "JP", "Ísland", "中国"]
EMPLOYMENT = ["salaried", "self_employed", "student", "retired", "unemployed", "contractor"]
CHANNELS = [" Web", "app", "POS ", "phone"]


def generate_transactions(
    n: int,
    *,
    users: int = 10_000,
    merchants: int = 2_000,
    days: float = 30.0,
    late_fraction: float = 0.02,
    max_delay_s: float = 1800.0,
    null_fraction: float = 0.03,
    seed: int = 7,
    start: datetime = datetime(2026, 1, 1, tzinfo=UTC),
    shift_day: float | None = None,
    bug_day: float | None = None,
) -> pl.DataFrame:
    """``n`` transactions in *arrival* order.

    Most events arrive in timestamp order; ``late_fraction`` of them arrive up to
    ``max_delay_s`` late (out of order). Amounts are log-normal with some nulls, a few exact
    ties in time, and unicode in the country field.

    ``shift_day``: from that day on, a new customer segment appears (a third of the traffic:
    new users, students, abroad, three times the spend). ``bug_day``: from that day on, a
    production bug makes ``country`` arrive as null.
    """
    rng = np.random.default_rng(seed)
    span_us = int(days * 86_400e6)
    ts = np.sort(rng.integers(0, span_us, n)) // 1_000_000 * 1_000_000  # whole seconds: ties
    delay = np.where(rng.random(n) < late_fraction, rng.uniform(0, max_delay_s, n) * 1e6, 0.0)
    arrival = ts + delay.astype(np.int64)
    order = np.argsort(arrival, kind="stable")
    ts = ts[order]
    user_ids = (users * rng.random(n) ** 1.5).astype(np.int64)  # skewed, no single giant user
    amount = np.round(rng.lognormal(3.5, 1.2, n), 2)

    def pick(values: list[str], p_null: float) -> pl.Series:
        idx = rng.integers(0, len(values), n)
        s = pl.Series(np.array(values, dtype=object)[idx].tolist(), dtype=pl.String)
        return pl.select(
            pl.when(pl.lit(pl.Series(rng.random(n) < p_null))).then(None).otherwise(s)
        ).to_series()

    start_us = int(start.timestamp() * 1_000_000)
    out = pl.DataFrame(
        {
            "transaction_id": pl.Series([f"t{i}" for i in range(n)]),
            "user_id": pl.Series(user_ids).cast(pl.String).str.replace(r"^", "u"),
            "merchant_id": pl.Series(rng.integers(0, merchants, n))
            .cast(pl.String)
            .str.replace(r"^", "m"),
            "amount": pl.select(
                pl.when(pl.lit(pl.Series(rng.random(n) < null_fraction)))
                .then(None)
                .otherwise(pl.lit(pl.Series(amount)))
            ).to_series(),
            "country": pick(COUNTRIES, null_fraction),
            "employment_type": pick(EMPLOYMENT, null_fraction),
            "channel": pick(CHANNELS, null_fraction),
            "event_time": pl.Series(ts + start_us).cast(pl.Datetime("us", "UTC")),
        }
    )
    day = (pl.col("event_time").cast(pl.Int64) - start_us) / 86_400e6
    if shift_day is not None:
        segment = (day >= shift_day) & pl.lit(pl.Series(rng.random(n) < 1 / 3))
        out = out.with_columns(
            pl.when(segment)
            .then(pl.lit("n") + pl.col("user_id"))
            .otherwise(pl.col("user_id"))
            .alias("user_id"),
            pl.when(segment).then(pl.col("amount") * 3).otherwise(pl.col("amount")).alias("amount"),
            pl.when(segment)
            .then(pl.lit("student"))
            .otherwise(pl.col("employment_type"))
            .alias("employment_type"),
            pl.when(segment).then(pl.lit("BR")).otherwise(pl.col("country")).alias("country"),
        )
    if bug_day is not None:
        out = out.with_columns(
            pl.when(day >= bug_day).then(None).otherwise(pl.col("country")).alias("country")
        )
    return out
