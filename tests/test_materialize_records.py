"""materialize's vectorized path: the records the Polars row stage computes are the row
function's (value, type and float bits), and the states assembled from them are the bytes a
per-event replay (``ViewProgram.ingest``, the stream worker's code) writes, on generated logs
of every aggregation kind with nulls, NaN, infinities, -0.0, int64 extremes, ties, late events
and unicode; views the fast path cannot take (hopped windows, order-dependent lifetime kinds,
kinds without a vectorized row stage) fall back and give the same bytes too."""

from __future__ import annotations

import math
import struct
from datetime import timedelta
from pathlib import Path
from typing import Any

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from featurepipe.compile.polars_records import EXACT, PREPARED, record_plan
from featurepipe.compile.python_state import ORDER_FREE_FOLDS, ViewProgram
from featurepipe.dev.datagen import generate_transactions
from featurepipe.dsl.loader import load_definitions
from featurepipe.ir.aggs import kind_of
from featurepipe.online import materialize as materialize_module
from featurepipe.online.materialize import entity_states
from featurepipe.parity.harness import normalize_events
from tests.schema import BASE, frame, scaled, view
from tests.test_oracle_duckdb import (
    BOOLS,
    FLOATS,
    INTS,
    KEYS,
    KINDS,
    LISTS,
    TEXT,
    US,
    Spec,
    logs,
    specs,
)

ROOT = Path(__file__).resolve().parents[1]
ALL_KINDS = sorted({*KINDS, *LISTS, "count_by"})
FIELDS = ["k", "x", "n", "s", "b", "ts"]


def _events(rows: list[dict[str, Any]], v: Any) -> pl.DataFrame:
    return normalize_events(v, frame([
        {"k": r["k"], "x": r["x"], "n": r["n"], "s": r["s"], "b": r["b"],
         "ts": BASE + timedelta(microseconds=r["us"])}
        for r in rows
    ]))


def same(got: Any, want: Any) -> bool:
    """Equal values of equal types, floats by their bits, sequences element by element."""
    if isinstance(want, tuple | list):
        return (type(got) is type(want) and len(got) == len(want)
                and all(same(g, w) for g, w in zip(got, want, strict=True)))
    if isinstance(want, float):
        return type(got) is float and struct.pack("<d", got) == struct.pack("<d", want)
    return type(got) is type(want) and got == want


def replayed(prog: ViewProgram, events: pl.DataFrame, fields: list[str], key: str) -> dict[Any, bytes]:
    """The naive reference: each entity's events ingested one by one in arrival order (no
    materialize code: ``ViewProgram.ingest``, as the stream worker calls it)."""
    states: dict[Any, Any] = {}
    for row in events.sort("__seq").iter_rows(named=True):
        state = states.setdefault(row[key], prog.new_state())
        prog.ingest(state, {f: row[f] for f in fields}, row["__seq"])
    return {k: prog.dumps(s) for k, s in states.items()}


def materialized(
    prog: ViewProgram, events: pl.DataFrame, fields: list[str], key: str, min_events: int = 1
) -> dict[Any, bytes]:
    """``entity_states`` as materialize runs it; by default every entity assembled, however
    few its events (``min_events``: ``ASSEMBLE_MIN_EVENTS``, from which they are)."""
    todo = events.select(*fields, "__seq").sort(key, "__seq")
    out = {}
    saved = materialize_module.ASSEMBLE_MIN_EVENTS
    materialize_module.ASSEMBLE_MIN_EVENTS = min_events
    try:
        for entity, blob, n in entity_states(prog, todo, fields, key, None):
            assert n == events.filter(pl.col(key) == entity).height
            out[entity] = blob
    finally:
        materialize_module.ASSEMBLE_MIN_EVENTS = saved
    return out


@settings(max_examples=scaled(200), deadline=None)
@given(data=st.data(), rows=logs())
def test_vectorized_records_are_the_row_functions(data: st.DataObject, rows: list[dict[str, Any]]) -> None:
    kinds = data.draw(st.lists(st.sampled_from(ALL_KINDS), min_size=1, max_size=4), label="kinds")
    specs_ = [data.draw(specs(kind), label=kind) for kind in kinds]
    v = view({f"f{i}": s.expr for i, s in enumerate(specs_)})
    prog = ViewProgram(v.ir)
    plan = record_plan(v.ir, prog.slots)
    covered = all(type(kind_of(a)) in PREPARED and a.by is None for a in v.ir.aggs)
    assert (plan is not None) == covered
    if plan is None:
        return
    events = _events(rows, v)
    computed = events.select(*plan.columns, plan.exact)
    records = plan.records(computed)
    exact = computed[EXACT].to_list()
    for i, row in enumerate(events.iter_rows(named=True)):
        want = prog.record({f: row[f] for f in FIELDS}, row["__seq"])
        if exact[i]:
            assert same(records[i], want), (i, records[i], want, specs_)
        else:  # left to the row function: only a NaN, a saturated sum or a wide square
            x, n = row["x"], row["n"]
            assert (x is not None and (math.isnan(x) or abs(x) >= 2.0**26)) or (
                n is not None and abs(n) >= 2**26
            ), (row, specs_)


@settings(max_examples=scaled(200), deadline=None)
@given(data=st.data(), rows=logs(), lateness=st.sampled_from(["1h", "2s", "1us"]))
def test_materialized_states_are_the_bytes_of_a_per_event_replay(
    data: st.DataObject, rows: list[dict[str, Any]], lateness: str
) -> None:
    kinds = data.draw(st.lists(st.sampled_from(ALL_KINDS), min_size=1, max_size=4), label="kinds")
    specs_: list[Spec] = [data.draw(specs(kind), label=kind) for kind in kinds]
    v = view({f"f{i}": s.expr for i, s in enumerate(specs_)}, lateness=lateness)
    prog = ViewProgram(v.ir)
    events = _events(rows, v)
    want = replayed(prog, events, FIELDS, "k")
    got = materialized(ViewProgram(v.ir), events, FIELDS, "k")
    assert list(got) == sorted(want), (list(got), sorted(want))
    for entity, blob in got.items():
        assert blob == want[entity], (entity, specs_, prog.loads(blob), prog.loads(want[entity]))


def test_a_wide_view_takes_the_fast_path_and_writes_the_replayed_bytes() -> None:
    """The example's 25-feature view (row expressions on text, times, hashes, buckets) on a
    generated log with nulls and late events: assembled states, byte for byte."""
    v = load_definitions(ROOT / "feature_defs").view("user_spend")
    prog = ViewProgram(v.ir)
    assert prog.assembles and record_plan(v.ir, prog.slots) is not None  # the path under test is taken
    events = normalize_events(v, generate_transactions(4000, users=60, seed=3))
    fields = list(v.source.fields)
    want = replayed(prog, events, fields, v.entity.key)
    got = materialized(ViewProgram(v.ir), events, fields, v.entity.key)
    assert got == want
    # as materialize runs it: entities with few events ingest their records one by one
    assert materialized(ViewProgram(v.ir), events, fields, v.entity.key, min_events=8) == want
    todo = events.select(*fields, "__seq").sort(v.entity.key, "__seq")
    forced = {e: b for e, b, _ in entity_states(prog, todo, fields, v.entity.key, None, per_event=True)}
    assert forced == want  # the benchmark's baseline path


def test_the_fast_path_is_taken_only_where_it_is_exact() -> None:
    def make(spec: Spec) -> ViewProgram:
        return ViewProgram(view({"f": spec.expr}).ir)

    assert make(Spec("sum", "x", None, "all")).assembles
    assert make(Spec("last_k", "n", None, "all", k=2)).assembles
    # a hopped window's tiles depend on when events leave the buffer
    assert not make(Spec("sum", "x", "6s/2s", "all")).assembles
    # a lifetime mode's dict keeps its keys' first-seen order
    assert not make(Spec("mode", "s", None, "all")).assembles
    assert make(Spec("mode", "s", "5s", "all")).assembles  # windowed: never compacted
    by = view({"f": Spec("count_by", "s", "5s", "all").expr}).ir
    assert record_plan(by, ViewProgram(by).slots) is None
    assert all(kind in PREPARED for kind in ORDER_FREE_FOLDS)


ORDER_FREE = ["count", "sum", "mean", "var", "std", "min", "max", "first", "last", "count_distinct", "last_k", "first_k"]


@st.composite
def dense_logs(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Up to 40 events of one or two entities over 8 s, mostly in time order: several events
    behind a 1 s horizon per entity."""
    n = draw(st.integers(2, 40))
    keys = draw(st.lists(st.sampled_from(KEYS), min_size=1, max_size=2, unique=True))
    rows = [
        {"k": draw(st.sampled_from(keys)), "x": draw(FLOATS), "n": draw(INTS), "s": draw(TEXT),
         "b": draw(BOOLS), "us": draw(st.integers(0, 8000)) * 1000}
        for _ in range(n)
    ]
    rows.sort(key=lambda r: r["us"])
    for i, j in draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=4)):
        rows[i], rows[j] = rows[j], rows[i]
    return rows


def test_lifetime_last_k_on_a_hand_worked_log() -> None:
    """last_k(n, 3) over events n = 0..5 at 0..5 s, 1 s window, 1 us lateness: the buffer
    keeps the events at 4 s and 5 s (horizon 5 s - 1 s - 1 us), and the lifetime list holds
    the three newest of the rest, newest first: 3, 2, 1."""
    rows = [{"k": "a", "x": None, "n": i, "s": None, "b": None, "us": i * US} for i in range(6)]
    v = view({"f0": Spec("last_k", "n", None, "all", k=3).expr, "f1": Spec("count", "", "1s", "all").expr},
             lateness="1us")
    prog = ViewProgram(v.ir)
    state = prog.loads(materialized(prog, _events(rows, v), FIELDS, "k")["a"])
    assert [rec[1] for rec in state.buffer] == [4, 5]  # arrival ranks
    assert [value for _, _, value in state.compacted[0]] == [3, 2, 1]


@settings(max_examples=scaled(200), deadline=None)
@given(data=st.data(), rows=dense_logs())
def test_lifetime_accumulators_folded_in_polars_are_the_replayed_bytes(
    data: st.DataObject, rows: list[dict[str, Any]]
) -> None:
    """Lifetime aggregations of every order-free kind, with and without ``where``, beside a 1 s
    window and a 1 us lateness: most events fall behind the horizon and are folded by the
    Polars aggregations (or by the row function where their record is inexact)."""
    kinds = data.draw(st.lists(st.sampled_from(ORDER_FREE), min_size=1, max_size=5), label="kinds")
    lifetime = [data.draw(specs(kind), label=kind) for kind in kinds]
    k = data.draw(st.sampled_from([1, 2, 3]), label="k")  # fewer than the events folded
    specs_ = [Spec(s.kind, s.arg, None, s.where, s.default, k if s.k else None) for s in lifetime]
    specs_.append(Spec("count", "", "1s", "all"))
    v = view({f"f{i}": s.expr for i, s in enumerate(specs_)}, lateness="1us")
    prog = ViewProgram(v.ir)
    assert prog.assembles
    events = _events(rows, v)
    want = replayed(prog, events, FIELDS, "k")
    got = materialized(ViewProgram(v.ir), events, FIELDS, "k")
    assert got == want, (specs_, {k: (prog.loads(got[k]), prog.loads(want[k])) for k in got if got[k] != want.get(k)})


def _rows(*events: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"k": "a", "x": None, "n": None, "s": None, "b": None, "us": i * US, **e} for i, e in enumerate(events)]


def test_a_divisor_of_one_value_on_every_row_divides_exactly() -> None:
    """x / when(b).then(3.0).otherwise(x) with every event on the literal branch: Polars would
    multiply by the reciprocal of a scalar, 7.0 * (1/3) = 2.333333333333333, where IEEE
    division (Python's, the stream worker's) gives 7.0 / 3.0 = 2.3333333333333335. Both the
    materialized state and the batch plan (training sets) must divide."""
    import featurepipe as fp
    from featurepipe.compile.polars_aggs import BatchProgram

    v = view({"f": lambda t: fp.last(t.x / fp.when(t.b).then(3.0).otherwise(t.x))})
    events = _events(_rows({"b": True, "x": 7.0}, {"b": True, "x": 1.0}, {"b": True, "x": 2.0}), v)
    prog = ViewProgram(v.ir)
    got = materialized(prog, events, FIELDS, "k")
    assert got == replayed(prog, events, FIELDS, "k")
    assert [rec[3] for rec in prog.loads(got["a"]).buffer] == [2.3333333333333335, 1 / 3, 2 / 3]
    first = int(events["ts"][0]) + 1
    batch = BatchProgram(v.ir).features(events.lazy(), pl.DataFrame({"k": ["a"], "__ts": [first]}))
    assert batch["f"].to_list() == [2.3333333333333335]


def test_a_literal_compared_with_a_branch_is_not_a_crash() -> None:
    """lit(0.0) < when(b).then(1.0).otherwise(x) with every event on the literal branch: eager
    Polars returns a one-row column for it; the records are computed lazily."""
    import featurepipe as fp

    v = view({"f": lambda t: fp.count(window="5s", where=fp.lit(0.0) < fp.when(t.b).then(1.0).otherwise(t.x))})
    events = _events(_rows({"b": True, "x": 2.0}, {"b": True, "x": None}), v)
    prog = ViewProgram(v.ir)
    assert materialized(prog, events, FIELDS, "k") == replayed(prog, events, FIELDS, "k")


def test_entities_are_assembled_a_few_at_a_time(monkeypatch: Any) -> None:
    """Steps of whole entities (here 50 events): the same bytes, entities in order."""
    from featurepipe.online import materialize as m

    monkeypatch.setattr(m, "ASSEMBLE_CHUNK", 50)
    v = load_definitions(ROOT / "feature_defs").view("user_spend")
    prog = ViewProgram(v.ir)
    events = normalize_events(v, generate_transactions(3000, users=40, seed=5))
    fields = list(v.source.fields)
    got = materialized(prog, events, fields, v.entity.key)
    assert list(got) == sorted(got)
    assert got == replayed(prog, events, fields, v.entity.key)
