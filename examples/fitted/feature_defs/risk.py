"""Fitted transforms: vocabularies, scaling and quantile buckets fitted by `featurepipe fit`."""

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


@fp.feature_view(entity=user, source=transactions)
def user_risk(t):  # type: ignore[no-untyped-def]
    return {
        "country_code": fp.last(fp.encode(t.country, top_k=5)),
        "employment_code": fp.last(fp.encode(t.employment_type, min_frequency=10)),
        "amount_z_mean_24h": fp.mean(fp.standardize(t.amount), window="24h"),
        "amount_quartile": fp.last(fp.bucketize(t.amount, quantiles=4)),
        "txn_count_24h": fp.count(window="24h"),
    }
