"""Definition power: hopped windows, request-time features, the query time, composite keys and
the newer aggregation kinds, over the same transactions contract as feature_defs/fraud.py.

Each view is proven like the rest: `featurepipe parity` on its own log, and the tests run the
parity harness over these definitions (tests/test_examples.py).
"""

from datetime import datetime

from pydantic import BaseModel

import featurepipe as fp


class Transaction(BaseModel):
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
# a composite key needs its own topic: messages are keyed (and partitioned) by the entity
pair_transactions = fp.Source(
    "pair_transactions",
    schema=Transaction,
    timestamp="event_time",
    batch=fp.ParquetSource("data/transactions/"),
    stream=fp.KafkaSource(topic="pair-transactions"),
)
user_merchant = fp.Entity("user_merchant", key=("user_id", "merchant_id"))


@fp.feature_view(entity=user, source=transactions, lateness="1h")
def user_patterns(t):  # type: ignore[no-untyped-def]
    """Per user: sawtooth windows, the newer kinds, the query time and the request."""
    amount_mean_7d = fp.mean(t.amount, window="7d", hop="1h")
    return {
        # 7 days hopping every hour: at most 168 tiles per user however busy
        "amount_sum_7d": fp.sum(t.amount, window="7d", hop="1h", default=0.0),
        "amount_mean_7d": amount_mean_7d,
        "amount_p90_7d": fp.approx_percentile(t.amount, 0.9, window="7d", hop="1h"),
        "usual_country_30d": fp.mode(t.country, window="30d", hop="1d"),
        "usual_channel": fp.mode(t.channel),
        "spend_decayed_1d": fp.decayed_sum(t.amount, half_life="1d", window="7d"),
        "txn_decayed_6h": fp.decayed_count(half_life="6h", window="2d"),
        "since_last_s": fp.since_last(t.event_time),
        "since_foreign_s": fp.since_last(t.event_time, where=t.country != "US", window="30d"),
        # request-time features: the transaction being scored, given at lookup
        "amount_vs_mean": fp.request("amount", float) / amount_mean_7d,
        "amount_vs_p90": fp.request("amount", float) / fp.feature("amount_p90_7d"),
        "new_country": fp.request("country", str) != fp.feature("usual_country_30d"),
        # lists and maps, served as they are (a sequence model's inputs, a bucketed count)
        "last_amounts": fp.last_k(t.amount, 5),
        "first_channels_30d": fp.first_k(t.channel, 3, window="30d", hop="1d"),
        "recent_merchants_7d": fp.last_distinct_k(t.merchant_id, 5, window="7d", hop="1h"),
        "channel_counts_30d": fp.count_by(t.channel, window="30d", hop="1d"),
        "top_countries": fp.count_by(t.country, top_k=3),
        # bucketed aggregations: one value per channel, as a map
        "amount_by_channel_30d": fp.sum(t.amount, by=t.channel, window="30d", hop="1d"),
        "mean_amount_by_country": fp.mean(t.amount, by=t.country),
    }


@fp.feature_view(entity=user_merchant, source=pair_transactions, lateness="1h")
def user_merchant_spend(t):  # type: ignore[no-untyped-def]
    """Per (user, merchant) pair: how this user usually spends at this merchant."""
    return {
        "pair_count_30d": fp.count(window="30d", hop="1d"),
        "pair_amount_mean_30d": fp.mean(t.amount, window="30d", hop="1d"),
        "pair_since_last_s": fp.since_last(t.event_time),
        "pair_amount_vs_mean": fp.request("amount", float) / fp.mean(t.amount, window="30d"),
    }
