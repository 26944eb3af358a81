"""The fraud example: per-user spending features over a transactions stream."""

from datetime import datetime

from pydantic import BaseModel

import featurepipe as fp


class Transaction(BaseModel):
    """The event contract: validated on both paths."""

    transaction_id: str
    user_id: str
    merchant_id: str
    amount: float | None
    country: str | None
    employment_type: str | None
    channel: str | None
    event_time: datetime


user = fp.Entity("user", key="user_id")

transactions = fp.Source(
    "transactions",
    schema=Transaction,
    timestamp="event_time",
    batch=fp.ParquetSource("data/transactions/"),
    stream=fp.KafkaSource(topic="transactions"),
)

EMPLOYMENT = ["salaried", "self_employed", "student", "retired", "unemployed"]


@fp.feature_view(entity=user, source=transactions, lateness="1h")
def user_spend(t):  # type: ignore[no-untyped-def]
    """Spending behaviour of a user."""
    amount = t.amount.fill_null(0.0)
    foreign = t.country.fill_null("UNKNOWN") != "US"
    night = (t.event_time.hour() < 6) | (t.event_time.hour() >= 23)
    txn_count_1h = fp.count(window="1h")
    txn_count_24h = fp.count(window="24h")
    amount_sum_24h = fp.sum(amount, window="24h", default=0.0)
    return {
        "txn_count_1h": txn_count_1h,
        "txn_count_24h": txn_count_24h,
        "txn_count_total": fp.count(),
        "amount_sum_24h": amount_sum_24h,
        "amount_mean_7d": fp.mean(t.amount, window="7d"),
        "amount_std_7d": fp.std(t.amount, window="7d"),
        "amount_var_24h": fp.var(t.amount, window="24h"),
        "amount_max_24h": fp.max(t.amount, window="24h"),
        "amount_min_7d": fp.min(t.amount, window="7d"),
        "amount_known_count_7d": fp.count(t.amount, window="7d"),
        "foreign_count_24h": fp.count(window="24h", where=foreign),
        "night_amount_sum_7d": fp.sum(amount, window="7d", where=night, default=0.0),
        "distinct_merchants_7d": fp.count_distinct(t.merchant_id, window="7d"),
        "distinct_countries_total": fp.count_distinct(t.country),
        "first_seen_at": fp.first(t.event_time),
        "last_country": fp.last(t.country.fill_null("UNKNOWN")),
        "last_amount_bucket": fp.last(fp.bucketize(amount, [10.0, 50.0, 100.0, 500.0, 1000.0])),
        "last_channel_len": fp.last(t.channel.strip().lower().len(), window="7d"),
        "employment_code": fp.last(fp.encode(t.employment_type, vocabulary=EMPLOYMENT)),
        "merchant_bucket": fp.last(fp.hash_bucket(t.merchant_id, 64)),
        "max_amount_total": fp.max(t.amount),
        "cents_sum_24h": fp.sum((amount * 100.0).round().cast("int") % 100, window="24h", default=0),
        # derived features: evaluated after aggregation, identically on both paths
        "avg_amount_24h": fp.when(txn_count_24h > 0)
        .then(amount_sum_24h / txn_count_24h)
        .otherwise(None),
        "burst_ratio": fp.feature("txn_count_1h") / (fp.feature("txn_count_24h") + 1),
        "is_burst": fp.feature("txn_count_1h") >= 5,
    }
