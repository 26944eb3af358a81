"""``featurepipe init``: a small runnable project — config, one contract, one view, sample data.

The sample is an orders log of the 14 days before the current UTC day, so online lookups "now"
show live windows: the first 13 days as Parquet (``data/orders/``, to materialize up to the
cut-over), the last day as CSV (``data/new_orders.csv``, to send through Kafka with
``featurepipe produce``), plus label rows (``data/labels.csv``) for a training set.
Everything is deterministic for a given ``today``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

from featurepipe.errors import FeaturepipeError

CONFIG = """\
# featurepipe project configuration (every key optional; paths relative to this file)
definitions = "feature_defs"     # the definitions package
data_root = "."                  # relative source paths resolve against it
prefix = "fp"                    # key prefix in the online store
group = "featurepipe"            # the stream workers' consumer group
# redis_url = "redis://127.0.0.1:6379/0"   # else $REDIS_URL, else `featurepipe dev up`
# kafka_bootstrap = "127.0.0.1:9092"       # else $KAFKA_BOOTSTRAP_SERVERS, else dev up
"""

DEFINITIONS = '''\
"""Orders of customers: the event contract, the entity, the source and one feature view."""

from datetime import datetime

from pydantic import BaseModel

import featurepipe as fp


class Order(BaseModel):
    """The event contract: checked on the batch path and on the stream alike."""

    order_id: str
    customer_id: str
    amount: float | None      # may be null (present in every file and message)
    country: str | None = None  # optional: may also be absent from older files and messages
    ordered_at: datetime


customer = fp.Entity("customer", key="customer_id")

orders = fp.Source(
    "orders",
    schema=Order,
    timestamp="ordered_at",
    batch=fp.ParquetSource("data/orders/"),      # relative to the project's data_root
    stream=fp.KafkaSource(topic="orders"),
)


@fp.feature_view(entity=customer, source=orders, lateness="1h")
def customer_orders(o):  # type: ignore[no-untyped-def]
    """How much and how often a customer orders."""
    amount = o.amount.fill_null(0.0)
    return {
        "orders_24h": fp.count(window="24h"),
        "orders_7d": fp.count(window="7d"),
        "spend_7d": fp.sum(amount, window="7d", default=0.0),
        "avg_amount_7d": fp.mean(o.amount, window="7d"),
        "max_amount_total": fp.max(o.amount),
        "countries_total": fp.count_distinct(o.country),
        "last_country": fp.last(o.country.fill_null("unknown")),
        "orders_total": fp.count(),
        "foreign_share_7d": fp.count(window="7d", where=o.country.fill_null("US") != "US")
        / (fp.feature("orders_7d") + 1),
    }
'''

README = """\
# {name}

A featurepipe project: `feature_defs/orders.py` declares the features once; the commands
below run them in batch (training sets) and per event (Kafka -> Redis), identically.

```
featurepipe plan                            # check the definitions, see both plans
featurepipe training-set --entities data/labels.csv --features customer_orders \\
    --out train.parquet                     # a point-in-time-correct training set
featurepipe dev up                          # embedded Kafka-protocol broker + Redis server
featurepipe materialize --until {cutover}  # online state from Parquet up to the cut-over
featurepipe get --entity customer_id=c0001 \\
    --features customer_orders              # online lookup
featurepipe parity                          # batch vs per-event, bit for bit
featurepipe produce --view customer_orders \\
    --events data/new_orders.csv            # the last day's orders, to Kafka
featurepipe stream --idle-exit 5            # Kafka -> Redis; stops after 5 idle seconds
featurepipe dlq list                        # anything the worker refused, counted by reason
featurepipe get --entity customer_id=c0001 \\
    --features customer_orders              # again: the new orders are in
featurepipe dev down                        # stop the broker and the server
```
"""


@dataclass(frozen=True)
class Skeleton:
    root: Path
    files: list[Path]
    cutover: date
    events: int
    customers: int


def orders_log(
    today: date, *, n: int = 5_000, customers: int = 200, seed: int = 11
) -> pl.DataFrame:
    """``n`` orders over the 14 days before ``today`` (UTC), in arrival order (2% late)."""
    rng = np.random.default_rng(seed)
    end = datetime(today.year, today.month, today.day, tzinfo=UTC)
    start = end - timedelta(days=14)
    span_us = 14 * 86_400 * 1_000_000
    ts = np.sort(rng.integers(0, span_us - 3_600_000_000, n))
    late = rng.random(n) < 0.02
    arrival = ts + np.where(late, rng.integers(1, 1_800_000_000, n), 0)
    order = np.argsort(arrival, kind="stable")
    amount = np.round(rng.lognormal(3.0, 1.0, n), 2)
    amount_null = rng.random(n) < 0.03
    countries = np.array(["US", "US", "US", "FR", "DE", "GB", "BR", "JP"])
    country = countries[rng.integers(0, len(countries), n)]
    start_us = int(start.timestamp()) * 1_000_000
    df = pl.DataFrame(
        {
            "order_id": [f"o{i:06d}" for i in range(n)],
            "customer_id": [f"c{int(c):04d}" for c in rng.integers(0, customers, n)],
            "amount": pl.Series(amount).set(pl.Series(amount_null), None),
            "country": country,
            "ordered_at": pl.Series(ts + start_us).cast(pl.Datetime("us", "UTC")),
        }
    )
    return df.select(pl.all().gather(order.tolist()))


def labels(log: pl.DataFrame, *, every: int = 25) -> pl.DataFrame:
    """Label rows: one in ``every`` orders becomes a (customer, time) row with a made-up label."""
    picked = log.sort("ordered_at").gather_every(every)
    return picked.select(
        "customer_id",
        (pl.col("ordered_at") + pl.duration(minutes=30)).alias("event_timestamp"),
        (pl.col("amount").fill_null(0.0) > 40.0).alias("churned"),
    )


def create(root: Path, *, today: date | None = None, force: bool = False) -> Skeleton:
    """Write a runnable project into ``root`` (created if missing).

    Refuses to overwrite an existing project (its config or definitions) unless ``force``.
    """
    today = today or datetime.now(UTC).date()
    root = root.expanduser()
    existing = [p for p in (root / "featurepipe.toml", root / "feature_defs") if p.exists()]
    if existing and not force:
        raise FeaturepipeError(
            f"{root} already holds a project ({', '.join(str(p) for p in existing)}); "
            "choose an empty directory or pass --force to overwrite the skeleton's files"
        )
    log = orders_log(today)
    # the last day is kept apart as "new orders" to send through Kafka after materializing
    cut = datetime(today.year, today.month, today.day, tzinfo=UTC) - timedelta(days=1)
    history = log.filter(pl.col("ordered_at") < cut)
    new = log.filter(pl.col("ordered_at") >= cut)
    files = {
        root / "featurepipe.toml": CONFIG,
        root / "feature_defs" / "orders.py": DEFINITIONS,
        root / "README.md": README.format(name=root.resolve().name, cutover=cut.date().isoformat()),
        root / ".gitignore": ".featurepipe/\n",
    }
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    data = root / "data"
    (data / "orders").mkdir(parents=True, exist_ok=True)
    history.write_parquet(data / "orders" / "part-0.parquet")
    new.with_columns(pl.col("ordered_at").dt.to_string("%Y-%m-%dT%H:%M:%S%.6fZ")).write_csv(
        data / "new_orders.csv"
    )
    labels(history).with_columns(
        pl.col("event_timestamp").dt.to_string("%Y-%m-%dT%H:%M:%S%.6fZ")
    ).write_csv(data / "labels.csv")
    written = [
        *files,
        data / "orders" / "part-0.parquet",
        data / "new_orders.csv",
        data / "labels.csv",
    ]
    return Skeleton(
        root=root,
        files=written,
        cutover=cut.date(),
        events=history.height,
        customers=history["customer_id"].n_unique(),
    )
