"""Request-time features (``fp.request``): definition checks, training sets taking request values
from the label table, and batch-vs-per-event parity with the scored event's own fields as the
request. Online lookups with request values: tests/test_request_lookups.py."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import featurepipe as fp
from featurepipe.compile.polars_aggs import TS, BatchProgram
from featurepipe.compile.python_state import ViewProgram
from featurepipe.errors import DataError, DefinitionError
from featurepipe.ir.types import DType
from featurepipe.parity.harness import normalize_events
from featurepipe.store import FeatureStore
from featurepipe.testing import assert_parity
from tests.schema import at, frame, scaled, view
from tests.test_parity_properties import event_logs

# ---- definition time ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "match"),
    [
        (lambda t: fp.sum(fp.request("amount", float)), "cannot be used inside an aggregation"),
        (lambda t: fp.count(where=fp.request("flag", bool)), "cannot be used inside an aggregation"),
        (lambda t: fp.request("amount", float) + fp.request("amount", int), "declared both float and int"),
        (lambda t: fp.request("amount", "money"), "type 'money' is not offered"),
        (lambda t: fp.request("__ts", float) + fp.count(), "not a valid request field name"),
        (lambda t: fp.request("k", str) == fp.last(t.s), "has the name of the entity key"),
    ],
)
def test_request_fields_checked_at_definition_time(expr: Any, match: str) -> None:
    with pytest.raises(DefinitionError, match=match):
        view({"f": expr})


def test_request_fields_are_part_of_the_version() -> None:
    base = view({"f": lambda t: fp.request("amount", float) / fp.mean(t.x)})
    assert base.ir.request_fields == (("amount", DType.FLOAT),)
    assert view({"f": lambda t: fp.request("amt", float) / fp.mean(t.x)}).fingerprint != base.fingerprint
    assert view({"f": lambda t: fp.request("amount", int) / fp.mean(t.x)}).fingerprint != base.fingerprint
    assert view({"f": lambda t: fp.mean(t.x)}).ir.request_fields == ()


# ---- both compilers, hand-worked values ----------------------------------------------------------


ROWS = [
    {"k": "a", "x": 2.0, "n": 1, "s": "p", "b": True, "ts": at(0)},
    {"k": "a", "x": 6.0, "n": 2, "s": "q", "b": True, "ts": at(5)},
    {"k": "b", "x": 1.0, "n": 3, "s": "r", "b": None, "ts": at(7)},
]


def test_both_compilers_compute_hand_worked_request_features() -> None:
    v = view(
        {
            "ratio": lambda t: fp.request("amount", float) / fp.mean(t.x, window="10s"),
            "above_max": lambda t: fp.request("amount", float) > fp.max(t.x),
            "same_s": lambda t: fp.request("s", str) == fp.last(t.s),
            "doubled": lambda t: fp.request("amount", float) * 2.0,
            "count_plus": lambda t: fp.request("extra", int) + fp.count(),
        }
    )
    t = int(at(8).timestamp()) * 1_000_000
    requests = [
        ("a", {"amount": 8.0, "s": "q", "extra": 10}),
        ("a", {"amount": 3.0, "s": "p", "extra": None}),
        ("b", {"amount": None, "s": "r", "extra": -1}),
        ("z", {"amount": 1.5, "s": None, "extra": 0}),
    ]
    # by hand (docs/semantics.md): a's events at 0 and 5 (x 2, 6): mean 4, max 6, last s "q";
    # b's one event (x 1, s "r"); z has none: mean/max/last null, count 0
    want = [
        (2.0, True, True, 16.0, 12),
        (0.75, False, False, 6.0, None),
        (None, None, True, None, 0),
        (None, None, None, 3.0, 0),
    ]
    ev = normalize_events(v, frame(ROWS))
    prog = ViewProgram(v.ir)
    states: dict[str, Any] = {}
    for seq, e in enumerate(ev.iter_rows(named=True)):
        prog.ingest(states.setdefault(e["k"], prog.new_state()), e, seq)
    per_event = [prog.query(states.get(k), t, req) for k, req in requests]
    q = pl.DataFrame(
        {
            "k": [k for k, _ in requests],
            TS: [t] * len(requests),
            "amount": [r["amount"] for _, r in requests],
            "s": [r["s"] for _, r in requests],
            "extra": [r["extra"] for _, r in requests],
        },
        schema={"k": pl.String, TS: pl.Int64, "amount": pl.Float64, "s": pl.String, "extra": pl.Int64},
    )
    batch = BatchProgram(v.ir).features(ev.lazy(), q).drop("k", TS).rows()
    assert per_event == want
    assert batch == want


def test_batch_refuses_a_missing_or_mistyped_request_column() -> None:
    v = view({"ratio": lambda t: fp.request("amount", float) / fp.mean(t.x)})
    ev = normalize_events(v, frame(ROWS)).lazy()
    q = pl.DataFrame({"k": ["a"], TS: [0]})
    with pytest.raises(DataError, match=r"request field 'amount' \(float\): the query frame has no column 'amount'"):
        BatchProgram(v.ir).features(ev, q)
    with pytest.raises(DataError, match="request field 'amount' is declared float; column 'amount' is String"):
        BatchProgram(v.ir).features(ev, q.with_columns(amount=pl.lit("12")))
    # an int column is a float request field's values, widened
    out = BatchProgram(v.ir).features(ev, q.with_columns(amount=pl.lit(12, pl.Int64)))
    assert out["ratio"].to_list() == [None]  # no event before T = 0


# ---- training sets: request values from the label table ----------------------------------------

DEFS = """
from datetime import datetime
from pydantic import BaseModel
import featurepipe as fp

class Pay(BaseModel):
    user_id: str
    amount: float | None
    country: str | None
    ts: datetime

pays = fp.Source("pays", schema=Pay, timestamp="ts", batch=fp.ParquetSource("data/pays/"))

@fp.feature_view(entity=fp.Entity("user", key="user_id"), source=pays)
def risk(t):
    return {
        "amount_vs_mean": fp.request("amount", float) / fp.mean(t.amount, window="1h"),
        "n_1h": fp.count(window="1h"),
        "is_new_country": fp.request("country", str) != fp.last(t.country),
    }
"""
T0 = datetime(2026, 5, 1, tzinfo=UTC)


def _store(tmp_path: Path) -> FeatureStore:
    (tmp_path / "feature_defs").mkdir()
    (tmp_path / "feature_defs" / "defs.py").write_text(DEFS)
    (tmp_path / "data" / "pays").mkdir(parents=True)
    pl.DataFrame(
        {
            "user_id": ["u", "u", "v"],
            "amount": [10.0, 30.0, 5.0],
            "country": ["FR", "US", "DE"],
            "ts": [T0, T0 + timedelta(minutes=10), T0 + timedelta(minutes=20)],
        },
        schema={
            "user_id": pl.String,
            "amount": pl.Float64,
            "country": pl.String,
            "ts": pl.Datetime("us", "UTC"),
        },
    ).write_parquet(tmp_path / "data" / "pays" / "part-0.parquet")
    return FeatureStore(tmp_path)


def test_training_sets_take_request_values_from_the_label_table(tmp_path: Path) -> None:
    store = _store(tmp_path)
    labels = pl.DataFrame(
        {
            "user_id": ["u", "u", "v", "w"],
            "event_timestamp": [T0 + timedelta(minutes=m) for m in (5, 15, 25, 25)],
            "amount": [40.0, 40.0, None, 7.0],
            "country": ["FR", "FR", "DE", None],
        }
    )
    out = store.get_historical_features(labels, ["risk"], partitions=2)
    # by hand: at +5 u has 10 -> 40 / 10 = 4; at +15 u has 10, 30 -> 40 / 20 = 2; v has 5
    # (amount null -> null); w has nothing (mean null -> null; last null -> != gives null);
    # the last country before +5 is FR (same), before +15 US (new), v's DE (same)
    assert out.select("amount_vs_mean", "n_1h", "is_new_country").rows() == [
        (4.0, 1, False),
        (2.0, 2, True),
        (None, 1, False),
        (None, 0, None),
    ]
    # the label table's own columns are kept as they were
    assert out["amount"].to_list() == [40.0, 40.0, None, 7.0]
    with pytest.raises(DataError, match=r"amount_vs_mean read the request field 'amount' \(float\); the entity frame has no column 'amount'"):
        store.get_historical_features(labels.drop("amount"), ["risk:amount_vs_mean"])
    # a feature that reads no request field needs no request column
    only_n = store.get_historical_features(labels.drop("amount", "country"), ["risk:n_1h"])
    assert only_n["n_1h"].to_list() == [1, 2, 1, 0]


def test_fit_baselines_views_with_request_fields(tmp_path: Path) -> None:
    """featurepipe fit's baselines score each event with its own fields of the request's name
    (a view reading the request does not break fit)."""
    from featurepipe.batch.fit import fit

    _store(tmp_path)
    report = fit(tmp_path, "feature_defs", None, None)
    assert report.views["risk"]["points"] == 3


# ---- parity on generated data ------------------------------------------------------------------


def _request_features() -> st.SearchStrategy[dict[str, Any]]:
    """Features mixing request fields (named like event fields, so the harness scores each
    event with its own values, or not, so they are null) with aggregations."""
    window = st.sampled_from([None, "5s", "30s"])
    templates = {
        "ratio": lambda w: lambda t: fp.request("x", float) / fp.mean(t.x, window=w),
        "gap": lambda w: lambda t: fp.request("n", int) - fp.max(t.n, window=w),
        "same": lambda w: lambda t: fp.request("s", str) == fp.last(t.s, window=w),
        "flagged": lambda w: lambda t: fp.when(fp.request("b", bool)).then(fp.count(window=w)).otherwise(-1),
        "absent": lambda w: lambda t: fp.request("q", float) + fp.sum(t.x, window=w),
        "coalesced": lambda w: lambda t: fp.coalesce(fp.request("x", float), fp.last(t.x, window=w)),
        "only": lambda w: lambda t: fp.request("s", str).upper(),
    }
    return st.dictionaries(st.sampled_from(sorted(templates)), window, min_size=1).map(
        lambda picked: {name: templates[name](w) for name, w in picked.items()}
    )


@settings(max_examples=scaled(120))
@given(features=_request_features(), lateness=st.sampled_from(["1s", "1h"]), rows=event_logs())
def test_request_features_are_bit_identical(
    features: dict[str, Any], lateness: str, rows: list[dict[str, Any]]
) -> None:
    v = view(features, lateness=lateness)
    report = assert_parity(v, frame(rows))
    assert report.events == len(rows)


def test_the_harness_scores_each_event_with_its_own_fields() -> None:
    """The parity harness's request values are the event's fields of the same name: the
    ratio at each event is its own x over the mean of the events before it."""
    rows = [{"k": "a", "x": x, "n": 1, "s": "p", "b": True, "ts": at(i)} for i, x in enumerate([2.0, 4.0, 9.0])]
    v = view({"ratio": lambda t: fp.request("x", float) / fp.mean(t.x)})
    report = assert_parity(v, frame(rows))
    assert report.queries >= 3
    # the values themselves, from the per-event side of a replay: 4 / 2 at the second event,
    # 9 / 3 at the third (the first has no mean)
    prog = ViewProgram(v.ir)
    state = prog.new_state()
    got = []
    for seq, e in enumerate(normalize_events(v, frame(rows)).iter_rows(named=True)):
        got.append(prog.query(state, e["ts"], {"x": e["x"]}))
        prog.ingest(state, e, seq)
    assert got == [(None,), (2.0,), (3.0,)]
    assert not math.isnan(got[1][0])


# ---- the query time -------------------------------------------------------------------------------


def test_since_last_and_the_query_time_worked_by_hand() -> None:
    """Events at 0 s (b true) and 10 s (b false): at T = 25 s the latest is 15 s old, the latest
    with b 25 s old; within a 12 s window at T = 25 s there is none (13 s ago is the start)."""
    v = view(
        {
            "since": lambda t: fp.since_last(t.ts),
            "since_b": lambda t: fp.since_last(t.ts, where=t.b),
            "since_12s": lambda t: fp.since_last(t.ts, window="12s"),
            "age_us": lambda t: fp.query_time() - fp.first(t.ts),
            "minute": lambda t: fp.query_time().minute(),
        }
    )
    rows = [
        {"k": "a", "x": 1.0, "n": 1, "s": "p", "b": True, "ts": at(0)},
        {"k": "a", "x": 2.0, "n": 2, "s": "q", "b": False, "ts": at(10)},
    ]
    ev = normalize_events(v, frame(rows))
    prog = ViewProgram(v.ir)
    state = prog.new_state()
    for seq, e in enumerate(ev.iter_rows(named=True)):
        prog.ingest(state, e, seq)
    base = int(at(0).timestamp()) * 1_000_000
    times = [base + 25_000_000, base + 90_000_000, base]
    # at(0) is BASE, a midnight: minute 0; 90 s after it, minute 1
    want = [
        (15.0, 25.0, None, 25_000_000, 0),
        (80.0, 90.0, None, 90_000_000, 1),
        (None, None, None, None, 0),  # before every event
    ]
    per_event = [prog.query(state, t) for t in times]
    q = pl.DataFrame({"k": ["a"] * 3, TS: times}, schema={"k": pl.String, TS: pl.Int64})
    batch = BatchProgram(v.ir).features(ev.lazy(), q).drop("k", TS).rows()
    assert per_event == want
    assert batch == want


def test_the_query_time_cannot_be_aggregated() -> None:
    with pytest.raises(DefinitionError, match="cannot be used inside an aggregation"):
        view({"f": lambda t: fp.max(fp.query_time())})
    with pytest.raises(DefinitionError, match="arithmetic needs numbers"):
        view({"f": lambda t: fp.query_time() + fp.max(t.ts)})  # only a difference is offered


@settings(max_examples=scaled(60))
@given(rows=event_logs(), window=st.sampled_from([None, "5s", "30s"]), lateness=st.sampled_from(["1s", "1h"]))
def test_query_time_features_are_bit_identical(rows: list[dict[str, Any]], window: str | None, lateness: str) -> None:
    v = view(
        {
            "since": lambda t: fp.since_last(t.ts, window=window),
            "since_b": lambda t: fp.since_last(t.ts, where=t.b, window=window),
            "age": lambda t: fp.query_time() - fp.min(t.ts),
            "late": lambda t: fp.query_time().hour() * 60 + fp.count(window=window),
        },
        lateness=lateness,
    )
    assert_parity(v, frame(rows))
