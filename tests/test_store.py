"""Point-in-time training sets from real Parquet files."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from featurepipe.dev.datagen import generate_transactions
from featurepipe.errors import DataError
from featurepipe.store import FeatureStore, read_lineage, write_training_set
from tests.schema import PAY_SCHEMA, TX_SCHEMA

ROOT = Path(__file__).resolve().parents[1]
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
    return {"n": fp.count(), "s": fp.sum(t.amount, default=-1.0), "last": fp.last(t.amount)}

@fp.feature_view(entity=user, source=plain)
def eventtime(t):
    return {"n_plain": fp.count(), "n_1h": fp.count(window="1h")}
'''


def _repo(tmp_path: Path, rows: list[dict[str, object]]) -> FeatureStore:
    (tmp_path / "feature_defs").mkdir()
    (tmp_path / "feature_defs" / "pays.py").write_text(DEFS)
    (tmp_path / "data" / "pays").mkdir(parents=True)
    pl.DataFrame(
        rows,
        schema=PAY_SCHEMA,
    ).write_parquet(tmp_path / "data" / "pays" / "part-0.parquet")
    return FeatureStore(tmp_path)


def _at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def test_point_in_time_rules(tmp_path: Path) -> None:
    rows = [
        {"user_id": "a", "amount": 1.0, "ts": _at(0), "arrived": _at(0)},
        {"user_id": "a", "amount": 2.0, "ts": _at(10), "arrived": _at(10)},
        # late: happened at 20, arrived at 50
        {"user_id": "a", "amount": 4.0, "ts": _at(20), "arrived": _at(50)},
        {"user_id": "a", "amount": 8.0, "ts": _at(30), "arrived": _at(30)},
    ]
    store = _repo(tmp_path, rows)
    labels = pl.DataFrame({
        "user_id": ["a", "a", "a", "a", "a", "zz", "a"],
        "event_timestamp": [_at(10), _at(10), _at(10) + timedelta(microseconds=1), _at(40), _at(60), _at(60), _at(-5)],
        "label": [1, 2, 3, 4, 5, 6, 7],
    })
    out = store.get_historical_features(labels, ["bitemporal", "eventtime"])
    assert out["label"].to_list() == [1, 2, 3, 4, 5, 6, 7]  # order and labels kept
    # exactly at T excluded; duplicate label timestamps get identical rows
    assert out["n"].to_list()[:3] == [1, 1, 2]
    # at 40 the late event (ts 20, arrived 50) is invisible in the bi-temporal view ...
    assert out.row(3, named=True)["n"] == 3 and out.row(3, named=True)["s"] == 11.0
    # ... but the event-time-only view counts it (no arrival column declared)
    assert out.row(3, named=True)["n_plain"] == 4
    # at 60 it has arrived; "last" is by event time: the event at 30
    assert out.row(4, named=True)["n"] == 4 and out.row(4, named=True)["last"] == 8.0
    # unseen entity and a time before any event: declared defaults
    assert out.row(5, named=True)["n"] == 0 and out.row(5, named=True)["s"] == -1.0
    assert out.row(6, named=True)["s"] == -1.0 and out.row(6, named=True)["last"] is None
    # window [T - 1h, T) at T = 60 min: the event at 0 sits exactly on the start: included
    assert out.row(4, named=True)["n_1h"] == 4


def test_matches_a_naive_reference_on_generated_data(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "feature_defs", tmp_path / "feature_defs")
    (tmp_path / "data" / "transactions").mkdir(parents=True)
    events = generate_transactions(4_000, users=40, days=3, seed=11)
    events.write_parquet(tmp_path / "data" / "transactions" / "a.parquet")
    labels = events.sample(300, seed=2).select(
        "user_id", (pl.col("event_time") + pl.duration(minutes=7)).alias("event_timestamp")
    )
    store = FeatureStore(tmp_path)
    got = store.get_historical_features(
        labels, ["user_spend:txn_count_1h", "user_spend:amount_max_24h", "user_spend:last_country"]
    )
    rows = events.to_dicts()
    for r in got.iter_rows(named=True):
        t = r["event_timestamp"]
        mine = [e for e in rows if e["user_id"] == r["user_id"] and e["event_time"] < t]
        hour = [e for e in mine if e["event_time"] >= t - timedelta(hours=1)]
        day = [e["amount"] for e in mine if e["event_time"] >= t - timedelta(hours=24) and e["amount"] is not None]
        assert r["txn_count_1h"] == len(hour)
        assert r["amount_max_24h"] == (max(day) if day else None)
        if mine:
            latest = max(range(len(mine)), key=lambda i: (mine[i]["event_time"], i))
            assert r["last_country"] == (mine[latest]["country"] or "UNKNOWN")


def test_training_set_lineage_round_trip(tmp_path: Path) -> None:
    store = _repo(tmp_path, [{"user_id": "a", "amount": 1.0, "ts": _at(0), "arrived": _at(0)}])
    labels = pl.DataFrame({"user_id": ["a"], "event_timestamp": [_at(5)]})
    out = store.get_historical_features(labels, ["bitemporal:n"])
    assert store.last_lineage is not None
    write_training_set(out, tmp_path / "train.parquet", store.last_lineage)
    meta = read_lineage(tmp_path / "train.parquet")
    assert meta["views"]["bitemporal"]["fingerprint"] == store.definitions.view("bitemporal").fingerprint
    assert meta["sources"]["pays"]["rows"] == 1
    assert meta["sources"]["pays"]["files"][0]["path"].endswith("part-0.parquet")
    assert pl.read_parquet(tmp_path / "train.parquet")["n"].to_list() == [1]


def test_bad_rows_are_quarantined_not_coerced(tmp_path: Path) -> None:
    store = _repo(tmp_path, [{"user_id": "a", "amount": 1.0, "ts": _at(0), "arrived": _at(0)}])
    bad = pl.DataFrame({
        "user_id": ["a", None, "a", "a"],
        "amount": ["2.5", "1", "lots", "3"],
        "ts": [_at(1).isoformat(), _at(2).isoformat(), _at(3).isoformat(), "yesterday"],
        "arrived": [_at(1), _at(2), _at(3), _at(4)],
    })
    bad.write_parquet(tmp_path / "data" / "pays" / "part-1.parquet")
    labels = pl.DataFrame({"user_id": ["a"], "event_timestamp": [_at(60)]})
    out = store.get_historical_features(labels, ["eventtime:n_plain"])
    assert out["n_plain"].to_list() == [2]  # the good row of each file
    report = store.source_reports["plain"]
    assert report.quarantined == 3
    assert report.reasons == {
        "user_id: null in a required field": 1,
        "amount: not a valid float": 1,
        "ts: not a valid datetime": 1,
    }
    assert report.quarantine_file is not None
    q = pl.read_parquet(report.quarantine_file)
    assert q.height == 3 and "__reason" in q.columns and "__file" in q.columns


def test_missing_column_and_incompatible_type_name_file_and_column(tmp_path: Path) -> None:
    store = _repo(tmp_path, [{"user_id": "a", "amount": 1.0, "ts": _at(0), "arrived": _at(0)}])
    pl.DataFrame({"user_id": ["a"], "ts": [_at(1)], "arrived": [_at(1)]}).write_parquet(
        tmp_path / "data" / "pays" / "part-2.parquet"
    )
    labels = pl.DataFrame({"user_id": ["a"], "event_timestamp": [_at(60)]})
    with pytest.raises(DataError, match=r"part-2.parquet: column 'amount' of source 'pays' is missing"):
        store.get_historical_features(labels, ["bitemporal:n"])
    pl.DataFrame({"user_id": ["a"], "amount": [[1.0]], "ts": [_at(1)], "arrived": [_at(1)]}).write_parquet(
        tmp_path / "data" / "pays" / "part-2.parquet"
    )
    with pytest.raises(DataError, match=r"part-2.parquet: column 'amount' has type List"):
        store.get_historical_features(labels, ["bitemporal:n"])


def test_entity_frame_errors(tmp_path: Path) -> None:
    store = _repo(tmp_path, [{"user_id": "a", "amount": 1.0, "ts": _at(0), "arrived": _at(0)}])
    with pytest.raises(DataError, match="no timestamp column"):
        store.get_historical_features(pl.DataFrame({"user_id": ["a"]}), ["bitemporal:n"])
    with pytest.raises(DataError, match="lacks column 'user_id'"):
        store.get_historical_features(pl.DataFrame({"uid": ["a"], "event_timestamp": [_at(1)]}), ["bitemporal:n"])
    with pytest.raises(DataError, match="entity frame of type list is not supported"):
        store.get_historical_features([{"user_id": "a", "event_timestamp": _at(1)}], ["bitemporal:n"])
    # the same row under a named timestamp column is answered
    ok = store.get_historical_features(
        pl.DataFrame({"user_id": ["a"], "at": [_at(1)]}), ["bitemporal:n"], timestamp="at"
    )
    assert ok["n"].to_list() == [1]


def test_partitioned_run_equals_in_memory_run(tmp_path: Path) -> None:
    rows = [
        {"user_id": f"u{i % 7}", "amount": float(i), "ts": _at(i), "arrived": _at(i + (30 if i % 5 == 0 else 0))}
        for i in range(200)
    ]
    store = _repo(tmp_path, rows)
    labels = pl.DataFrame({
        "user_id": [f"u{i % 9}" for i in range(100)],
        "event_timestamp": [_at(2 * i + 0.5) for i in range(100)],
    })
    whole = store.get_historical_features(labels, ["bitemporal", "eventtime"])
    split = store.get_historical_features(labels, ["bitemporal", "eventtime"], partitions=4, engine="streaming")
    assert whole.equals(split)


def test_out_of_range_timestamps_are_quarantined_like_on_the_stream(tmp_path: Path) -> None:
    store = _repo(tmp_path, [{"user_id": "a", "amount": 1.0, "ts": _at(0), "arrived": _at(0)}])
    pl.DataFrame({
        "user_id": ["a", "a"], "amount": [1.0, 2.0],
        "ts": [datetime(1900, 1, 1, tzinfo=UTC), datetime(2200, 1, 1, tzinfo=UTC)],
        "arrived": [_at(1), _at(1)],
    }).write_parquet(tmp_path / "data" / "pays" / "part-3.parquet")
    out = store.get_historical_features(
        pl.DataFrame({"user_id": ["a"], "event_timestamp": [_at(60)]}), ["eventtime:n_plain"]
    )
    assert out["n_plain"].to_list() == [1]
    assert store.source_reports["plain"].reasons == {"ts: outside the accepted range [1970, 2100)": 2}


TWO_ENTITIES = """
import featurepipe as fp
from tests.schema import Tx

src = fp.Source("tx", schema=Tx, timestamp="ts", batch=fp.ParquetSource("data/tx/*.parquet"))

@fp.feature_view(entity=fp.Entity("user", key="user_id"), source=src)
def by_user(t):
    return {"user_n": fp.count(), "user_sum": fp.sum(t.amount)}

@fp.feature_view(entity=fp.Entity("merchant", key="merchant_id"), source=src)
def by_merchant(t):
    return {"merchant_n": fp.count(window="1h"), "merchant_max": fp.max(t.amount)}
"""


def test_several_entities_in_one_call_from_a_glob(tmp_path: Path) -> None:
    (tmp_path / "feature_defs").mkdir()
    (tmp_path / "feature_defs" / "tx.py").write_text(TWO_ENTITIES)
    (tmp_path / "data" / "tx").mkdir(parents=True)
    pl.DataFrame({"user_id": ["a", "b"], "merchant_id": ["m", "m"], "amount": [1.0, 5.0],
                  "ts": [_at(0), _at(10)]}, schema=TX_SCHEMA).write_parquet(tmp_path / "data" / "tx" / "1.parquet")
    pl.DataFrame({"user_id": ["a"], "merchant_id": ["z"], "amount": [2.0], "ts": [_at(20)]},
                 schema=TX_SCHEMA).write_parquet(tmp_path / "data" / "tx" / "2.parquet")
    store = FeatureStore(tmp_path)
    labels = pl.DataFrame({"user_id": ["a", "b"], "merchant_id": ["m", "z"],
                           "event_timestamp": [_at(30), _at(30)]})
    out = store.get_historical_features(labels, ["by_user", "by_merchant"])
    assert out.select("user_n", "user_sum", "merchant_n", "merchant_max").rows() == [
        (2, 3.0, 2, 5.0),
        (1, 5.0, 1, 2.0),
    ]


def test_hive_partitions_outside_the_range_are_not_read(tmp_path: Path) -> None:
    from featurepipe.batch.sources import read_events

    store = _repo(tmp_path, [{"user_id": "a", "amount": 1.0, "ts": _at(0), "arrived": _at(0)}])
    shutil.rmtree(tmp_path / "data" / "pays")
    for day in ("2026-05-01", "2026-05-02"):
        d = tmp_path / "data" / "pays" / f"date={day}"
        d.mkdir(parents=True)
        t = datetime.fromisoformat(day).replace(tzinfo=UTC) + timedelta(hours=1)
        pl.DataFrame({"user_id": ["a"], "amount": [1.0], "ts": [t], "arrived": [t]},
                     schema=PAY_SCHEMA).write_parquet(d / "p.parquet")
    # a corrupt file in a pruned partition proves it is never opened
    (tmp_path / "data" / "pays" / "date=2026-05-02" / "zz.parquet").write_bytes(b"not parquet")
    src = store.definitions.sources["pays"]
    lf, report = read_events(src, root=tmp_path, end=datetime(2026, 5, 2, tzinfo=UTC))
    assert lf.collect().height == 1 and len(report.files) == 1
