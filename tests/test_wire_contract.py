"""One strict wire contract on both paths (docs/semantics.md, "Bad input, on both paths").

Each refused input is tried on the stream path (``EventValidator.parse`` on the message bytes)
and in batch (a Parquet file read by ``read_events``, the row written to the quarantine file),
and both must give the reason text that docs/semantics.md states, the same on both paths. The
expected texts are written out here, from the page, not imported from the code.

The last test runs the poison messages through the real broker, worker and Redis: they go to
the dead-letter topic with their reasons and the good events around them are applied exactly.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from kafka import KafkaConsumer, TopicPartition

import featurepipe as fp
from featurepipe import load_definitions
from featurepipe.batch.sources import FILE, REASON, ROW, read_events
from featurepipe.dev import infra
from featurepipe.dev.datagen import generate_transactions
from featurepipe.errors import FeaturepipeError
from featurepipe.online.redis_conn import connect
from featurepipe.stream.produce import encode_event, ensure_topics, produce_raw
from featurepipe.stream.validate import EventValidator, Invalid
from featurepipe.stream.worker import StreamWorker, WorkerConfig
from tests.online_check import online_vs_batch
from tests.schema import Ev, polars_schema
from tests.services import services, unique

__all__ = ["services"]

ROOT = Path(__file__).resolve().parents[1]
SOURCE = fp.Source("evs", schema=Ev, timestamp="ts")
SCHEMA = polars_schema(Ev)
T = datetime(2026, 3, 1, tzinfo=UTC)

# The reason texts of docs/semantics.md ("Bad input, on both paths").
NON_FINITE = "not a finite number (NaN, Infinity and numbers beyond float64 are refused)"
DUPLICATE = "duplicate key"
DATETIME_NUMBER = "a number is not a datetime (ISO-8601 text required)"
NOT_INT64 = "does not fit in int64"
OUT_OF_RANGE = "outside the accepted range [1970, 2100)"
NULL_REQUIRED = "null in a required field"

GOOD = {"k": "a", "x": 1.5, "n": 7, "s": "text", "b": True, "ts": "2026-03-01T00:00:00Z"}


def _json(**replace: str) -> bytes:
    """The good event as JSON text, with some members' values replaced by raw JSON tokens."""
    members = [
        f"{json.dumps(k)}: {replace[k] if k in replace else json.dumps(v)}" for k, v in GOOD.items()
    ]
    return ("{" + ", ".join(members) + "}").encode()


def _stream_reason(raw: bytes, **kw: Any) -> str | None:
    try:
        EventValidator(SOURCE, **kw).parse(raw)
    except Invalid as e:
        return e.reason
    return None


def _good_row() -> dict[str, Any]:
    return {"k": "a", "x": 1.5, "n": 7, "s": "text", "b": True, "ts": T}


def _batch(
    tmp_path: Path, bad: pl.DataFrame | pa.Table, **kw: Any
) -> tuple[dict[str, int], pl.DataFrame, pl.DataFrame]:
    """Read a directory holding a good file and ``bad`` (one row): (reasons, quarantine, kept)."""
    data = tmp_path / "data"
    data.mkdir()
    pl.DataFrame([_good_row()], schema=SCHEMA).write_parquet(data / "a-good.parquet")
    if isinstance(bad, pl.DataFrame):
        bad.write_parquet(data / "b-bad.parquet")
    else:
        pq.write_table(bad, data / "b-bad.parquet")
    lf, report = read_events(SOURCE, path=data, quarantine_dir=tmp_path / "q", **kw)
    kept = lf.collect()
    assert report.quarantine_file is not None, report
    return report.reasons, pl.read_parquet(report.quarantine_file), kept


def _frame(**columns: pl.Series) -> pl.DataFrame:
    """One bad row: the good row with some columns replaced (by typed one-element series)."""
    good = pl.DataFrame([_good_row()], schema=SCHEMA)
    return good.with_columns(**{name: s for name, s in columns.items()})


def _text(value: str) -> pl.Series:
    return pl.Series([value], dtype=pl.String)


CASES: list[tuple[str, bytes, Any, str]] = [
    ("NaN", _json(x="NaN"), lambda: _frame(x=_text("NaN")), f"x: {NON_FINITE}"),
    ("Infinity", _json(x="Infinity"), lambda: _frame(x=_text("Infinity")), f"x: {NON_FINITE}"),
    ("-Infinity", _json(x="-Infinity"), lambda: _frame(x=_text("-Infinity")), f"x: {NON_FINITE}"),
    ("1e400", _json(x="1e400"), lambda: _frame(x=_text("1e400")), f"x: {NON_FINITE}"),
    ("-1e400 int", _json(n="-1e400"), lambda: _frame(n=_text("-1e400")), f"n: {NON_FINITE}"),
    (
        "int literal beyond float64",
        _json(x="1" + "0" * 400),
        lambda: _frame(x=_text("1" + "0" * 400)),
        f"x: {NON_FINITE}",
    ),
    (
        "2**63",
        _json(n="9223372036854775808"),
        lambda: _frame(n=_text("9223372036854775808")),
        f"n: {NOT_INT64}",
    ),
    (
        "2**63 unsigned",
        _json(n="9223372036854775808"),
        lambda: _frame(n=pl.Series([2**63], dtype=pl.UInt64)),
        f"n: {NOT_INT64}",
    ),
    (
        "duplicate key",
        b'{"k": "a", "x": 1.5, "x": 2.5, "n": 7, "s": "text", "b": true, "ts": "2026-03-01T00:00:00Z"}',
        lambda: pa.table(
            [["a"], [1.5], [2.5], [7], ["text"], [True], pa.array([T], pa.timestamp("us", "UTC"))],
            names=["k", "x", "x", "n", "s", "b", "ts"],
        ),
        f"x: {DUPLICATE}",
    ),
    (
        "numeric string datetime",
        _json(ts='"1772323200"'),
        lambda: _frame(ts=_text("1772323200")),
        f"ts: {DATETIME_NUMBER}",
    ),
    (
        "fractional numeric string datetime",
        _json(ts='"1772323200.5"'),
        lambda: _frame(ts=_text("1772323200.5")),
        f"ts: {DATETIME_NUMBER}",
    ),
    (
        "number datetime",
        _json(ts="1772323200"),
        lambda: _frame(ts=pl.Series([1772323200], dtype=pl.Int64)),
        f"ts: {DATETIME_NUMBER}",
    ),
    (
        "year 2150",
        _json(ts='"2150-01-01T00:00:00Z"'),
        lambda: _frame(
            ts=pl.Series([datetime(2150, 1, 1, tzinfo=UTC)], dtype=pl.Datetime("us", "UTC"))
        ),
        f"ts: {OUT_OF_RANGE}",
    ),
    (
        "null key",
        _json(k="null"),
        lambda: _frame(k=pl.Series([None], dtype=pl.String)),
        f"k: {NULL_REQUIRED}",
    ),
]


@pytest.mark.parametrize(
    ("raw", "bad", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_refused_on_both_paths_with_the_same_reason(
    tmp_path: Path, raw: bytes, bad: Any, expected: str
) -> None:
    assert _stream_reason(raw) == expected
    reasons, quarantine, kept = _batch(tmp_path, bad())
    assert reasons == {expected: 1}
    (row,) = quarantine.iter_rows(named=True)
    assert row[REASON] == expected
    assert row[FILE].endswith("b-bad.parquet") and row[ROW] == 0
    assert kept.height == 1  # the neighbour in the other file is read


def _future(at: datetime) -> tuple[bytes, pl.DataFrame]:
    raw = _json(ts=json.dumps(at.isoformat()))
    frame = _frame(ts=pl.Series([at], dtype=pl.Datetime("us", "UTC")))
    return raw, frame


def test_an_event_dated_2099_is_refused_on_both_paths(tmp_path: Path) -> None:
    """Default tolerance: one day past the wall clock."""
    raw, frame = _future(datetime(2099, 1, 1, tzinfo=UTC))
    expected = "ts: more than 1d in the future"
    assert _stream_reason(raw) == expected
    reasons, quarantine, kept = _batch(tmp_path, frame)
    assert reasons == {expected: 1} and quarantine[REASON].to_list() == [expected]
    assert kept.height == 1
    # an hour ahead (a skewed producer clock) is within the default tolerance on both paths
    soon = datetime.now(UTC) + timedelta(hours=1)
    raw, frame = _future(soon)
    assert _stream_reason(raw) is None
    lf, report = read_events(SOURCE, path=_write(tmp_path / "soon.parquet", frame))
    assert report.quarantined == 0 and lf.collect().height == 1


def _write(path: Path, frame: pl.DataFrame) -> Path:
    frame.write_parquet(path)
    return path


def test_future_tolerance_boundary_is_the_same_on_both_paths(tmp_path: Path) -> None:
    """Accepted up to exactly now + tolerance; one microsecond later is refused."""
    now = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
    clock_ns = int(now.timestamp()) * 1_000_000_000
    tol = timedelta(hours=6)
    edge = now + tol
    expected = "ts: more than 6h in the future"
    for at, refused in ((edge, False), (edge + timedelta(microseconds=1), True)):
        raw, frame = _future(at)
        got = _stream_reason(raw, future_tolerance=tol, clock=lambda: clock_ns)
        assert got == (expected if refused else None), at
        _lf, report = read_events(
            SOURCE,
            path=_write(tmp_path / f"{refused}.parquet", frame),
            future_tolerance=tol,
            now=now,
        )
        assert report.reasons == ({expected: 1} if refused else {}), at


def test_future_tolerance_is_configured_by_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ahead = datetime.now(UTC) + timedelta(hours=3)
    raw, frame = _future(ahead)
    path = _write(tmp_path / "ahead.parquet", frame)
    monkeypatch.setenv("FEATUREPIPE_FUTURE_TOLERANCE", "2h")
    assert _stream_reason(raw) == "ts: more than 2h in the future"
    assert read_events(SOURCE, path=path)[1].reasons == {"ts: more than 2h in the future": 1}
    monkeypatch.setenv("FEATUREPIPE_FUTURE_TOLERANCE", "off")
    far, far_frame = _future(datetime(2099, 1, 1, tzinfo=UTC))
    assert _stream_reason(far) is None
    assert read_events(SOURCE, path=_write(tmp_path / "far.parquet", far_frame))[1].quarantined == 0
    monkeypatch.setenv("FEATUREPIPE_FUTURE_TOLERANCE", "soon")
    with pytest.raises(FeaturepipeError, match="FEATUREPIPE_FUTURE_TOLERANCE 'soon'"):
        EventValidator(SOURCE)
    with pytest.raises(FeaturepipeError, match="FEATUREPIPE_FUTURE_TOLERANCE 'soon'"):
        read_events(SOURCE, path=path)


def test_good_events_read_the_same_on_both_paths(tmp_path: Path) -> None:
    """The values the stream takes from JSON are the ones batch takes from Parquet."""
    rows = [
        _good_row(),
        {
            "k": "b,c",
            "x": None,
            "n": -(2**63),
            "s": None,
            "b": None,
            "ts": T + timedelta(microseconds=1),
        },
        {"k": "ü\u2028", "x": -0.0, "n": 2**63 - 1, "s": 'q"uote,', "b": False, "ts": T},
    ]
    lf, report = read_events(
        SOURCE, path=_write(tmp_path / "good.parquet", pl.DataFrame(rows, schema=SCHEMA))
    )
    assert report.quarantined == 0
    batch = lf.collect().select(list(Ev.model_fields)).to_dicts()
    v = EventValidator(SOURCE)
    for row, want in zip(rows, batch, strict=True):
        raw = json.dumps(row | {"ts": row["ts"].isoformat()}).encode()
        got = v.parse(raw)
        assert got == want
        assert str(got["x"]) == str(want["x"])  # -0.0 stays -0.0


def test_a_float_nan_stored_in_parquet_is_a_value(tmp_path: Path) -> None:
    """Only text can be a non-finite *number token*; an IEEE NaN in a float column is data."""
    frame = pl.DataFrame(
        [_good_row() | {"x": float("nan")}, _good_row() | {"x": float("-inf")}], schema=SCHEMA
    )
    lf, report = read_events(SOURCE, path=_write(tmp_path / "nan.parquet", frame))
    assert report.quarantined == 0
    assert [str(x) for x in lf.collect()["x"].to_list()] == ["nan", "-inf"]


@pytest.mark.parametrize(
    "raw",
    [
        # commas inside strings: the fast duplicate check must not refuse these
        b'{"k": "a,b,c", "x": 1.5, "n": 7, "s": ",,,", "b": true, "ts": "2026-03-01T00:00:00Z"}',
        # ... next to another escape
        b'{"k": "a\\u00e9,b", "x": 1.5, "n": 7, "s": "x", "b": true, "ts": "2026-03-01T00:00:00Z"}',
        # an escaped comma (\\u002c) decodes to a comma no byte shows
        b'{"k": "a\\u002cb", "x": 1.5, "n": 7, "s": "x", "b": true, "ts": "2026-03-01T00:00:00Z"}',
        # compact, and a comma in the datetime text (ISO-8601 allows it before the fraction)
        b'{"k":"a","x":1.5,"n":7,"s":null,"b":true,"ts":"2026-03-01T00:00:00,5Z"}',
    ],
)
def test_commas_in_strings_are_not_duplicates(raw: bytes) -> None:
    assert _stream_reason(raw) is None


@pytest.mark.parametrize(
    "raw",
    [
        b'{"k": "a", "x": 1.5, "n": 7, "s": "x", "b": true, "ts": "2026-03-01T00:00:00Z", "n": 8}',
        # a duplicate hidden behind as many commas inside strings as it adds outside
        b'{"k": "a,", "x": 1.5, "n": 7, "s": "x", "b": true, "ts": "2026-03-01T00:00:00Z", "n": 8}',
        # ... with another escape in the text
        b'{"k": "\\u00e9,", "x": 1.5, "n": 7, "s": "x", "b": true, "ts": "2026-03-01T00:00:00Z", "n": 8}',
        # ... and behind escaped commas, which no comma byte shows
        b'{"k": "\\u002c,", "x": 1.5, "n": 7, "s": "x", "b": true, "ts": "2026-03-01T00:00:00Z", "n": 8}',
    ],
)
def test_a_duplicate_key_is_found_however_the_commas_fall(raw: bytes) -> None:
    assert _stream_reason(raw) == f"n: {DUPLICATE}"


# -- end to end: real broker, worker and Redis ----------------------------------------------
def _poison(row: dict[str, Any]) -> list[tuple[bytes, str]]:
    """Messages for the entity of ``row`` that must be refused, with their reasons."""
    base = dict(row, transaction_id="poison")

    def doc(**replace: str) -> bytes:
        members = [
            f"{json.dumps(k)}: {replace[k] if k in replace else json.dumps(v)}"
            for k, v in base.items()
        ]
        return ("{" + ", ".join(members) + "}").encode()

    dup = json.dumps(base)[:-1] + ', "amount": 1000000.0}'
    return [
        (doc(amount="NaN"), f"amount: {NON_FINITE}"),
        (doc(amount="Infinity"), f"amount: {NON_FINITE}"),
        (doc(amount="-Infinity"), f"amount: {NON_FINITE}"),
        (doc(amount="1e400"), f"amount: {NON_FINITE}"),
        (dup.encode(), f"amount: {DUPLICATE}"),
        (doc(event_time='"1767225600"'), f"event_time: {DATETIME_NUMBER}"),
        (doc(event_time="1767225600"), f"event_time: {DATETIME_NUMBER}"),
        (doc(event_time='"2099-06-01T00:00:00+00:00"'), "event_time: more than 1d in the future"),
    ]


def _online_vs_batch(defs: Any, client: Any, prefix: str, good: pl.DataFrame) -> int:
    """Mismatches between online lookups and the batch plan over ``good`` (several times per
    entity, the last event's time onwards)."""
    return online_vs_batch(defs.view("user_spend"), client, prefix, good)


def test_poison_json_goes_to_the_dead_letter_topic_and_neighbours_are_applied(
    services: infra.DevServices,
) -> None:
    defs = load_definitions(ROOT / "feature_defs")
    good = generate_transactions(3_000, users=40, seed=31)
    rows = good.with_columns(
        pl.col("event_time").dt.to_string("%Y-%m-%dT%H:%M:%S%.6f+00:00")
    ).to_dicts()
    messages: list[tuple[bytes | None, bytes]] = []
    expected: dict[bytes, str] = {}
    for i, r in enumerate(rows):
        messages.append((r["user_id"].encode(), encode_event(r)))
        if i % 300 == 150:  # poison between good events of the same entity
            for raw, why in _poison(r):
                messages.append((r["user_id"].encode(), raw))
                expected[raw] = why
    topic, prefix = unique("tx-wire"), unique("fp-wire")
    ensure_topics(services.kafka_bootstrap, {topic: 2, topic + ".dlq": 1})
    produce_raw(topic, services.kafka_bootstrap, messages)
    client = connect(services.redis_url)
    worker = StreamWorker(
        defs,
        WorkerConfig(
            bootstrap=services.kafka_bootstrap,
            group_id=prefix,
            prefix=prefix,
            idle_exit_s=3,
            max_events=len(messages),
        ),
        client,
        topics={"transactions": topic},
    )
    counters = worker.run()
    assert counters.invalid == len(expected) and counters.valid == good.height

    dlq = KafkaConsumer(bootstrap_servers=services.kafka_bootstrap, enable_auto_commit=False)
    tp = TopicPartition(topic + ".dlq", 0)
    dlq.assign([tp])
    dlq.seek_to_beginning(tp)
    dead: list[Any] = []
    for _ in range(20):
        batch = dlq.poll(timeout_ms=1000)
        for msgs in batch.values():
            dead.extend(msgs)
        if len(dead) >= len(expected):
            break
    dlq.close()
    got = {m.value: dict(m.headers)["featurepipe-reason"].decode() for m in dead}
    assert len(dead) == len(expected)
    assert got == expected
    assert _online_vs_batch(defs, client, prefix, good) == 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-03-01", T),  # a date alone is midnight UTC
        ("2026-03-01T01:30:00+01:30", T),
        ("2026-03-01 00:00:00", T),  # no offset means UTC
        ("2026-03-01T00:00:00.000001Z", T + timedelta(microseconds=1)),
    ],
)
def test_datetime_text_reads_the_same_on_both_paths(
    tmp_path: Path, text: str, expected: datetime
) -> None:
    got = EventValidator(SOURCE).parse(_json(ts=json.dumps(text)))["ts"]
    lf, report = read_events(SOURCE, path=_write(tmp_path / "t.parquet", _frame(ts=_text(text))))
    assert report.quarantined == 0
    want = int((expected - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(microseconds=1))
    assert got == lf.collect()["ts"].item() == want
