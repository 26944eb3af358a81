"""Training sets whose entity-hash partitions are read several per pass over the input, and
computed for only the requested features: the same rows as one partition, as a scan per
partition, and as the whole view."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featurepipe.batch import engine as batch_engine
from featurepipe.store import FeatureStore
from tests.schema import PAY_SCHEMA

T0 = datetime(2026, 5, 1, tzinfo=UTC)

DEFS = '''
import featurepipe as fp
from tests.schema import Pay

user = fp.Entity("user", key="user_id")
pays = fp.Source("pays", schema=Pay, timestamp="ts", arrival="arrived",
                 batch=fp.ParquetSource("data/pays/"))
plain = fp.Source("plain", schema=Pay, timestamp="ts", batch=fp.ParquetSource("data/pays/"))

@fp.feature_view(entity=user, source=pays)
def bitemporal(t):
    n = fp.count()
    return {"n": n, "s": fp.sum(t.amount, default=-1.0), "last": fp.last(t.amount),
            "n_10m": fp.count(window="10m"), "big": fp.count(window="1h", where=t.amount > 1.0),
            "n_plus_one": fp.feature("n") + 1}

@fp.feature_view(entity=user, source=plain)
def eventtime(t):
    n_1h = fp.count(window="1h")
    return {"n_plain": fp.count(), "n_1h": n_1h, "mx": fp.max(t.amount, window="30m"),
            "first": fp.first(t.amount), "twice_n_1h": fp.feature("n_1h") * 2,
            "over_amount": fp.count(window="1h") + fp.request("bump", int)}
'''
FEATURES = [
    "bitemporal:n", "bitemporal:s", "bitemporal:last", "bitemporal:n_10m", "bitemporal:big",
    "bitemporal:n_plus_one", "eventtime:n_plain", "eventtime:n_1h", "eventtime:mx",
    "eventtime:first", "eventtime:twice_n_1h", "eventtime:over_amount",
]
KEYS = ["a", "b", "ß", "🙂", "", "long-key-" * 4]
AMOUNTS = [None, 0.0, -0.0, 1.5, -2.0, 1e308, -1e308, math.inf, 2.0]


def _repo(root: Path, files: list[list[dict[str, object]]]) -> FeatureStore:
    (root / "feature_defs").mkdir(parents=True)
    (root / "feature_defs" / "pays.py").write_text(DEFS)
    (root / "data" / "pays").mkdir(parents=True)
    for i, rows in enumerate(files):
        pl.DataFrame(rows, schema=PAY_SCHEMA).write_parquet(root / "data" / "pays" / f"part-{i}.parquet")
    return FeatureStore(root)


def _at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@st.composite
def event_files(draw: st.DrawFn) -> list[list[dict[str, object]]]:
    """Events over two hours in 1 to 3 files: ties on time, arrivals late and out of order."""
    files = []
    for _ in range(draw(st.integers(1, 3))):
        rows = []
        for _ in range(draw(st.integers(0, 40))):
            ts = draw(st.sampled_from([0, 60, 600, 601, 3600, 3601, 7200])) + draw(st.integers(0, 2))
            rows.append({
                "user_id": draw(st.sampled_from(KEYS)),
                "amount": draw(st.sampled_from(AMOUNTS)),
                "ts": _at(ts),
                "arrived": _at(ts + draw(st.sampled_from([0, 0, 1, 900, 5000]))),
            })
        files.append(rows)
    return files


@st.composite
def label_rows(draw: st.DrawFn) -> pl.DataFrame:
    n = draw(st.integers(1, 30))
    return pl.DataFrame({
        "user_id": [draw(st.sampled_from([*KEYS, "never-seen"])) for _ in range(n)],
        "event_timestamp": [_at(draw(st.integers(-10, 9000))) for _ in range(n)],
        "bump": [draw(st.integers(-3, 3)) for _ in range(n)],
    })


class ScanPerPartition:
    """A runner computing each partition task here: the path where every partition is read by
    its own filtered scan of the input (as on Dask)."""

    def run(self, tasks: Sequence[batch_engine.PartitionTask]) -> list[pl.DataFrame]:
        return [t.compute() for t in tasks]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    files=event_files(),
    labels=label_rows(),
    partitions=st.sampled_from([2, 3, 7]),
    pass_rows=st.sampled_from([1, 5, 13, 10**9]),
)
def test_partitions_read_in_passes_equal_one_partition_and_a_scan_each(
    tmp_path_factory: pytest.TempPathFactory,
    files: list[list[dict[str, object]]],
    labels: pl.DataFrame,
    partitions: int,
    pass_rows: int,
) -> None:
    """Partitions read one per pass (given), several per pass (chosen: as many passes as
    ``PASS_ROWS`` makes, one per partition down to one for all), against the unsplit, ordered
    read (1 partition) and a filtered scan per partition (as on Dask): every value bit for
    bit, both sources (arrival column and file order)."""
    store = _repo(tmp_path_factory.mktemp("split"), files)
    whole = store.get_historical_features(labels, FEATURES, partitions=1)
    batch = batch_engine.BatchEngine(store.root, quarantine_dir=store.quarantine_dir, featurepipe_version="test")
    requests = [(store.definitions.view(v), names) for v, names in store.resolve(FEATURES).items()]
    scans = batch.historical_features(
        labels, requests, timestamp="event_timestamp", references=FEATURES, partitions=partitions,
        runner=ScanPerPartition(),
    ).frame
    one_each = store.get_historical_features(labels, FEATURES, partitions=partitions)
    # partitions chosen (None): passes of about PASS_ROWS events; here the count is forced
    saved = batch_engine.PASS_ROWS, batch_engine.auto_partitions
    batch_engine.PASS_ROWS = pass_rows
    batch_engine.auto_partitions = lambda events, labels: partitions
    try:
        passes = store.get_historical_features(labels, FEATURES)
    finally:
        batch_engine.PASS_ROWS, batch_engine.auto_partitions = saved
    assert whole.equals(scans), (whole, scans)
    assert whole.equals(one_each), (whole, one_each)
    assert whole.equals(passes), (whole, passes)


def test_passes_cover_every_partition_once() -> None:
    assert batch_engine.passes_for(0, 5) == 1
    assert batch_engine.passes_for(batch_engine.PASS_ROWS, 5) == 1
    assert batch_engine.passes_for(batch_engine.PASS_ROWS + 1, 5) == 2
    assert batch_engine.passes_for(100 * batch_engine.PASS_ROWS, 5) == 5  # one per partition
    frame = pl.LazyFrame({"k": [f"k{i % 11}" for i in range(200)], "v": list(range(200))})
    for passes in (1, 2, 3, 5):
        got = dict(batch_engine.events_by_partition(frame, "k", 5, passes, {0, 1, 2, 3, 4}, "auto"))
        assert sorted(got) == [0, 1, 2, 3, 4]
        rows = pl.concat([got[p].collect() for p in range(5)]).sort("v")
        assert rows["v"].to_list() == list(range(200))  # each row exactly once
        for p in range(5):  # in input order, one entity in one partition only
            v = got[p].collect()["v"].to_list()
            assert v == sorted(v)
        assert all(
            not (set(got[p].collect()["k"]) & set(got[r].collect()["k"])) for p in range(5) for r in range(p)
        )
    assert sorted(dict(batch_engine.events_by_partition(frame, "k", 5, 2, {1, 4}, "auto"))) == [1, 4]


def test_split_on_a_hand_worked_log(tmp_path: Path) -> None:
    """Values worked out by hand from docs/semantics.md, on the split path (4 partitions)."""
    files = [
        [
            {"user_id": "a", "amount": 1.0, "ts": _at(0), "arrived": _at(0)},
            {"user_id": "b", "amount": 5.0, "ts": _at(30), "arrived": _at(30)},
            {"user_id": "a", "amount": 2.0, "ts": _at(300), "arrived": _at(4000)},  # late
        ],
        [
            {"user_id": "a", "amount": 4.0, "ts": _at(900), "arrived": _at(900)},
            {"user_id": "🙂", "amount": None, "ts": _at(900), "arrived": _at(900)},
        ],
    ]
    store = _repo(tmp_path, files)
    labels = pl.DataFrame({
        "user_id": ["a", "a", "b", "🙂", "zz"],
        "event_timestamp": [_at(1000), _at(5000), _at(31), _at(901), _at(1000)],
        "bump": [10, 0, 0, 0, 1],
    })
    out = store.get_historical_features(labels, FEATURES, partitions=4)
    # a at 1000 s: events at 0 and 900 have arrived (the one at 300 arrives at 4000)
    assert out["n"].to_list() == [2, 3, 1, 1, 0]
    assert out["s"].to_list() == [5.0, 7.0, 5.0, -1.0, -1.0]  # a null amount adds nothing
    assert out["n_10m"].to_list() == [1, 0, 1, 1, 0]  # [T - 600 s, T)
    assert out["big"].to_list() == [1, 0, 1, 0, 0]  # amount > 1.0 within [T - 1 h, T)
    assert out["n_plus_one"].to_list() == [3, 4, 2, 2, 1]
    # event time only: the late event counts as soon as T passes its time
    assert out["n_plain"].to_list() == [3, 3, 1, 1, 0]
    assert out["n_1h"].to_list() == [3, 0, 1, 1, 0]
    assert out["mx"].to_list() == [4.0, None, 5.0, None, None]
    assert out["first"].to_list() == [1.0, 1.0, 5.0, None, None]
    assert out["over_amount"].to_list() == [13, 0, 1, 1, 1]


def test_a_few_features_equal_the_same_columns_of_the_whole_view(tmp_path: Path) -> None:
    """Only the requested features (and those they reference) are computed: the same values as
    requesting the whole view, in fewer aggregations."""
    files = [[
        {"user_id": k, "amount": float(i % 7) - 2.0, "ts": _at(37 * i), "arrived": _at(37 * i + (900 if i % 4 == 0 else 0))}
        for i, k in enumerate(KEYS * 20)
    ]]
    store = _repo(tmp_path, files)
    labels = pl.DataFrame({
        "user_id": KEYS * 5,
        "event_timestamp": [_at(200 * i) for i in range(len(KEYS) * 5)],
        "bump": list(range(len(KEYS) * 5)),
    })
    whole = store.get_historical_features(labels, ["bitemporal", "eventtime"], partitions=3)
    for pick in (["bitemporal:n_plus_one"], ["eventtime:twice_n_1h", "eventtime:mx"], ["eventtime:over_amount"]):
        part = store.get_historical_features(labels, pick, partitions=3)
        names = [p.split(":")[1] for p in pick]
        assert part.select(names).equals(whole.select(names)), pick

    view = store.definitions.view("eventtime").ir
    assert [f.name for f in view.restricted_to(["twice_n_1h"]).features] == ["n_1h", "twice_n_1h"]
    assert len(view.restricted_to(["twice_n_1h"]).aggs) == 1 < len(view.aggs)
    assert view.restricted_to(["mx"]).fields_read == {"amount"}
