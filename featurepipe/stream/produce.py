"""Writing an event log to a Kafka topic (``featurepipe produce``, demo, end-to-end parity,
benchmarks).

One encoding for every producer: each row is a JSON object (msgspec), datetimes as ISO-8601 text
in UTC with microseconds (``EVENT_TIME_FORMAT``; naive datetimes are taken as UTC, as the batch
path does), keyed by ``str(row[key])`` (no key when the value is null). msgspec writes a float
NaN or infinity as ``null``: JSON has no token for them that the contract accepts.

``featurepipe produce`` reads an event log from a file (``read_event_log``):

* Parquet: the rows as stored;
* CSV: timestamps parsed as datetimes (Polars ``try_parse_dates``; a declared datetime column
  mixing formats is read value by value, ISO-8601 with or without an offset, naive as UTC);
  the columns the source's contract declares as text are read as text (a ``user_id`` of
  ``"0042"`` stays text), and a value that does not convert to its declared type is sent as
  the text it was, so the worker refuses it by the contract instead of it turning into a null
  here;
* JSONL: each non-empty line is sent as it is (it already is the wire format), keyed by its
  ``key`` member.

Rows that break the contract are sent all the same, and the stream worker dead-letters them
(``<topic>.dlq``); ``check_messages`` tells them apart beforehand with the worker's own
validator.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import polars as pl
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from featurepipe.dsl.definitions import Source
from featurepipe.errors import FeaturepipeError
from featurepipe.ir.entity_keys import compose_values
from featurepipe.ir.types import DType
from featurepipe.settings import kafka_security
from featurepipe.stream.validate import EventValidator, Invalid

EVENT_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S%.6f+00:00"
FORMATS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}
# events sent per progress callback
PROGRESS_EVERY = 2_000

Message = tuple[bytes | None, bytes]


class ProduceError(FeaturepipeError):
    """An event log that cannot be read or sent as asked."""


def ensure_topics(bootstrap: str, topics: dict[str, int]) -> None:
    """Create the topics that do not exist (name -> partitions); existing ones stay as they are."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, **kafka_security())
    try:
        existing = set(admin.list_topics())
        new = [
            NewTopic(t, num_partitions=n, replication_factor=1)
            for t, n in topics.items()
            if t not in existing
        ]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(new)
    finally:
        admin.close()


def _utc_text(df: pl.DataFrame) -> pl.DataFrame:
    """Datetime columns as ``EVENT_TIME_FORMAT`` text (zoned ones converted to UTC first)."""
    cols = []
    for c, t in df.schema.items():
        if not isinstance(t, pl.Datetime):
            continue
        col = pl.col(c)
        if t.time_zone is not None and t.time_zone != "UTC":
            col = col.dt.convert_time_zone("UTC")
        cols.append(col.dt.to_string(EVENT_TIME_FORMAT))
    return df.with_columns(cols) if cols else df


def encode_frame(df: pl.DataFrame, key: str | Sequence[str]) -> Iterator[Message]:
    """(key, JSON value) per row of ``df``, in row (arrival) order. ``key``: the column to key
    the messages by, or the columns of a composite key (keyed by their composite text,
    ``featurepipe.ir.entity_keys``)."""
    parts = [key] if isinstance(key, str) else list(key)
    missing = [p for p in parts if p not in df.columns]
    if missing:
        raise ProduceError(
            f"the events have no column {', '.join(map(repr, missing))} to key the messages by "
            f"(have: {', '.join(df.columns)})"
        )
    encode = msgspec.json.Encoder().encode
    for row in _utc_text(df).iter_rows(named=True):
        k = row[parts[0]] if len(parts) == 1 else compose_values([row[p] for p in parts])
        yield (None if k is None else str(k).encode()), encode(row)


def non_finite_floats(df: pl.DataFrame) -> int:
    """How many float values of ``df`` are NaN or infinite (each is sent as ``null``)."""
    n = 0
    for c, t in df.schema.items():
        if t in (pl.Float32, pl.Float64):
            col = df[c]
            n += int((col.is_nan() | col.is_infinite()).sum())
    return n


def produce_frame(
    df: pl.DataFrame,
    topic: str,
    bootstrap: str,
    key: str | Sequence[str],
    *,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Send each row as a JSON event keyed by ``key``, in row (arrival) order."""
    # idempotent (acks from all replicas): a retried batch is written neither twice nor out of
    # order, either of which the worker would apply as events (parity would count them)
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        linger_ms=20,
        batch_size=1 << 20,
        acks="all",
        enable_idempotence=True,
        **kafka_security(),
    )
    n = 0
    try:
        for k, value in encode_frame(df, key):
            producer.send(topic, key=k, value=value)
            n += 1
            if progress is not None and n % 10_000 == 0:
                progress(n)
        producer.flush()
    finally:
        producer.close()
    return n


def produce_raw(topic: str, bootstrap: str, messages: list[tuple[bytes | None, bytes]]) -> None:
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, max_request_size=8 << 20, **kafka_security()
    )
    try:
        for k, v in messages:
            producer.send(topic, key=k, value=v)
        producer.flush()
    finally:
        producer.close()


def encode_event(event: dict[str, Any]) -> bytes:
    return msgspec.json.encode(event)


# -- event logs from files -------------------------------------------------------------------
@dataclass
class EventLog:
    """An event log read from a file: ``messages()`` yields its (key, value) pairs (again on
    every call), ``count`` of them."""

    path: Path
    format: str
    count: int
    key: str | tuple[str, ...]  # several: a composite key's parts
    non_finite: int = 0  # NaN/infinite floats, sent as null
    _frame: pl.DataFrame | None = None
    _limit: int | None = None

    def messages(self) -> Iterator[Message]:
        if self._frame is not None:
            return encode_frame(self._frame, self.key)
        return _jsonl_messages(self.path, self.key, self._limit)


def event_format(path: Path) -> str:
    """``parquet``, ``csv`` or ``jsonl`` by the file's extension; else a ``ProduceError``."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ProduceError(
            f"cannot read events from '{path}': unknown extension '{path.suffix or '(none)'}'; "
            "accepted: Parquet (.parquet, .pq), CSV (.csv), JSON lines (.jsonl, .ndjson)"
        )
    return fmt


def read_event_log(
    path: Path,
    key: str | tuple[str, ...],
    *,
    source: Source | None = None,
    limit: int | None = None,
) -> EventLog:
    """The events of ``path`` (the first ``limit`` of them), keyed by column ``key`` (or by
    the composite text of several columns, ``featurepipe.ir.entity_keys``).

    ``source``: the contract, when known, reads CSV columns as the types it declares."""
    fmt = event_format(path)
    if not path.is_file():
        raise ProduceError(f"event log '{path}' does not exist")
    if fmt == "jsonl":
        n = 0
        with path.open("rb") as f:
            for line in f:
                if line.strip():
                    n += 1
                    if limit is not None and n >= limit:
                        break
        return EventLog(path, fmt, n, key, _limit=limit)
    try:
        if fmt == "parquet":
            df = pl.read_parquet(path, n_rows=limit)
        else:
            df = _read_csv(path, key, source, limit)
    except (pl.exceptions.PolarsError, OSError) as e:
        raise ProduceError(f"cannot read {fmt} event log '{path}': {e}") from None
    missing = [k for k in ((key,) if isinstance(key, str) else key) if k not in df.columns]
    if missing:
        raise ProduceError(
            f"event log '{path}' has no column {', '.join(map(repr, missing))} to key the "
            f"messages by (columns: {', '.join(df.columns)})"
        )
    return EventLog(path, fmt, df.height, key, non_finite_floats(df), _frame=df)


_CASTS = {DType.INT: pl.Int64, DType.FLOAT: pl.Float64, DType.BOOL: pl.Boolean}


def _read_csv(
    path: Path, key: str | tuple[str, ...], source: Source | None, limit: int | None
) -> pl.DataFrame:
    """CSV with timestamps parsed; declared non-datetime fields read as text, then converted to
    their declared type value by value, a value that does not convert staying the text it was.
    """
    declared = {} if source is None else dict(source.fields)
    names = set(pl.read_csv(path, n_rows=0).columns)
    as_text: dict[str, type[pl.DataType]] = {
        n: pl.String for n, (t, _) in declared.items() if t is not DType.DATETIME and n in names
    }
    if isinstance(key, str) and key in names:  # a plain key is sent as its text anyway
        as_text.setdefault(key, pl.String)
    df = pl.read_csv(path, try_parse_dates=True, schema_overrides=as_text, n_rows=limit)
    for name, (dtype, _) in declared.items():
        if dtype is DType.DATETIME and df.schema.get(name) == pl.String:
            # formats Polars did not find one of for the whole column: value by value
            df = df.with_columns(_datetime_text(df[name]))
    for name in as_text:
        target = _CASTS.get(declared[name][0]) if name in declared else None
        if target is None:
            continue
        text = df[name]
        stripped = text.str.strip_chars()
        if target is pl.Boolean:
            low = stripped.str.to_lowercase()
            value = pl.select(
                pl.when(low == "true").then(True).when(low == "false").then(False)
            ).to_series()
        else:
            value = stripped.cast(target, strict=False)
            if target is pl.Float64:  # text reading as NaN or infinite stays text
                value = value.set(~value.is_finite().fill_null(True), None)
            else:  # "12.0": a JSON float, which the contract takes when it is integral
                as_float = stripped.cast(pl.Float64, strict=False)
                as_float = as_float.set(~as_float.is_finite().fill_null(True), None)
                if (value.is_null() & as_float.is_not_null()).any():
                    value = pl.Series(
                        name,
                        [
                            f if i is None else i
                            for i, f in zip(value.to_list(), as_float.to_list(), strict=True)
                        ],
                        dtype=pl.Object,
                    )
        unconverted = text.is_not_null() & value.is_null()
        if not unconverted.any():
            df = df.with_columns(value.alias(name))
            continue
        # a mixed column: the converted values, and the text of those that do not convert
        mixed = [
            t if bad else v
            for v, t, bad in zip(
                value.to_list(), text.to_list(), unconverted.to_list(), strict=True
            )
        ]
        df = df.with_columns(pl.Series(name, mixed, dtype=pl.Object))
    return df


# ISO-8601 with an offset (or Z), then without one (UTC), with "T" or a space, any fraction
_DATETIME_FORMATS = (
    ("%Y-%m-%dT%H:%M:%S%.f%#z", True),
    ("%Y-%m-%d %H:%M:%S%.f%#z", True),
    ("%Y-%m-%dT%H:%M:%S%.f", False),
    ("%Y-%m-%d %H:%M:%S%.f", False),
)


def _datetime_text(text: pl.Series) -> pl.Series:
    """Text datetimes as ``EVENT_TIME_FORMAT`` where one of ``_DATETIME_FORMATS`` reads them;
    the others stay the text they were (the worker's contract decides on them)."""
    out = text
    stripped = text.str.strip_chars()
    for fmt, zoned in reversed(_DATETIME_FORMATS):  # the first format wins
        parsed = stripped.str.to_datetime(fmt, strict=False, time_unit="us")
        if not zoned:
            parsed = parsed.dt.replace_time_zone("UTC")
        formatted = parsed.dt.convert_time_zone("UTC").dt.to_string(EVENT_TIME_FORMAT)
        out = pl.select(pl.coalesce(formatted, out)).to_series()
    return out.alias(text.name)


def _jsonl_messages(path: Path, key: str | tuple[str, ...], limit: int | None) -> Iterator[Message]:
    decode = msgspec.json.Decoder().decode
    n = 0
    with path.open("rb") as f:
        for line in f:
            value = line.strip()
            if not value:
                continue
            try:
                doc = decode(value)
            except msgspec.DecodeError:
                doc = None
            k: Any = None
            if isinstance(doc, dict):
                k = (
                    doc.get(key)
                    if isinstance(key, str)
                    else compose_values([doc.get(p) for p in key])
                )
            yield (None if k is None else str(k).encode()), value
            n += 1
            if limit is not None and n >= limit:
                return


# -- checking against the contract -----------------------------------------------------------
@dataclass
class ContractCheck:
    """What the stream worker's validator says about the messages: how many it refuses, and the
    first few (message number from 1, reason)."""

    refused: int = 0
    examples: list[tuple[int, str]] = field(default_factory=list)

    def summary(self, most: int = 3) -> str:
        shown = "; ".join(f"#{i}: {why}" for i, why in self.examples[:most])
        return f"{self.refused:,} break the contract ({shown})"


def checker(source: Source) -> Callable[[bytes], str | None]:
    """The reason the stream worker would refuse a message value, or None."""
    validator = EventValidator(source)

    def check(value: bytes) -> str | None:
        try:
            validator.parse(value)
        except Invalid as e:
            return e.reason
        return None

    return check


def check_messages(
    messages: Iterable[Message], check: Callable[[bytes], str | None], examples: int = 5
) -> ContractCheck:
    result = ContractCheck()
    for i, (_, value) in enumerate(messages, 1):
        why = check(value)
        if why is not None:
            result.refused += 1
            if len(result.examples) < examples:
                result.examples.append((i, why))
    return result


# -- sending ---------------------------------------------------------------------------------
@dataclass
class ProduceReport:
    sent: int = 0  # delivered (acknowledged by the broker)
    failed: int = 0
    first_error: str | None = None
    seconds: float = 0.0
    partitions: int = 0
    check: ContractCheck | None = None

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0


def produce_messages(
    messages: Iterable[Message],
    topic: str,
    bootstrap: str,
    *,
    rate: float | None = None,
    check: Callable[[bytes], str | None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> ProduceReport:
    """Send ``messages`` in order to ``topic``, at most ``rate`` per second (None: as fast as the
    producer goes), each delivery confirmed; ``check`` counts the ones the contract refuses
    (they are sent all the same). The topic must exist."""
    report = ProduceReport(check=ContractCheck() if check is not None else None)
    # idempotent (acks from all replicas): a retried send is never written twice, which the
    # worker would count twice
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        linger_ms=20,
        batch_size=1 << 20,
        acks="all",
        enable_idempotence=True,
        max_request_size=8 << 20,
        **kafka_security(),
    )

    def failed(e: BaseException) -> None:
        report.failed += 1
        if report.first_error is None:
            report.first_error = f"{type(e).__name__}: {e}"

    start = time.perf_counter()
    n = 0
    try:
        report.partitions = len(producer.partitions_for(topic) or ())
        for k, value in messages:
            if report.check is not None and check is not None:
                why = check(value)
                if why is not None:
                    report.check.refused += 1
                    if len(report.check.examples) < 5:
                        report.check.examples.append((n + 1, why))
            try:
                producer.send(topic, key=k, value=value).add_errback(failed)
            except KafkaError as e:  # refused before sending (e.g. larger than the producer takes)
                failed(e)
            n += 1
            if rate is not None:
                ahead = start + n / rate - time.perf_counter()
                if ahead > 0.002:
                    time.sleep(ahead)
            if progress is not None and n % PROGRESS_EVERY == 0:
                progress(n)
        producer.flush()
    finally:
        producer.close()
    report.seconds = time.perf_counter() - start
    report.sent = n - report.failed
    if progress is not None:
        progress(n)
    return report
