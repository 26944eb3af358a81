"""Batch input as a newcomer first hands it in (issue 9): what each mistake or legacy file does.

Every expected value is a literal worked out by hand from the rows written here (event times are
minutes after T), never computed by the code under test.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from pydantic import BaseModel

import featurepipe as fp
from featurepipe.batch.sources import FILE, REASON, ROW, read_events, read_table
from featurepipe.errors import DataError
from featurepipe.store import FeatureStore, read_lineage, write_training_set
from featurepipe.stream.validate import EventValidator, Invalid
from tests.schema import Ev, polars_schema

ROOT = Path(__file__).resolve().parents[1]
T = datetime(2026, 5, 1, tzinfo=UTC)
UTC_US = pl.Datetime("us", "UTC")


def _at(minutes: float) -> datetime:
    return T + timedelta(minutes=minutes)


def _repo(tmp_path: Path, defs: str, files: dict[str, pl.DataFrame]) -> Path:
    (tmp_path / "feature_defs").mkdir(parents=True)
    (tmp_path / "feature_defs" / "defs.py").write_text(defs)
    for name, frame in files.items():
        path = tmp_path / "data" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.write_parquet(path)
    return tmp_path


# -- A: the quarantine file keeps what it quarantined ------------------------------------------
class Reading(BaseModel):
    k: str
    amount: float
    qty: int
    ts: datetime


READINGS = fp.Source("readings", schema=Reading, timestamp="ts")


def test_quarantine_keeps_the_original_values_as_text(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    # a.parquet: text amounts, float quantities, real datetimes
    pl.DataFrame(
        {
            "k": ["a", "a", "b", "b"],
            "amount": ["1.5", "four", "2.5", "3"],
            "qty": [1.0, 2.0, float("nan"), 3.0],
            "ts": [_at(0), _at(10), _at(20), datetime(2200, 1, 1, tzinfo=UTC)],
        },
        schema={"k": pl.String, "amount": pl.String, "qty": pl.Float64, "ts": UTC_US},
    ).write_parquet(data / "a.parquet")
    # b.parquet: native numbers, text times
    pl.DataFrame(
        {
            "k": ["a", "a"],
            "amount": [1.0, 2.0],
            "qty": [1, 2],
            "ts": ["2026-05-01T00:30:00Z", "yesterday"],
        },
        schema={"k": pl.String, "amount": pl.Float64, "qty": pl.Int64, "ts": pl.String},
    ).write_parquet(data / "b.parquet")
    lf, report = read_events(READINGS, path=data, quarantine_dir=tmp_path / "q")
    assert lf.collect().select("k", "amount", "qty").rows() == [("a", 1.5, 1), ("a", 1.0, 1)]
    assert report.quarantine_file is not None
    q = pl.read_parquet(report.quarantine_file)
    assert q.columns == [ROW, FILE, "k", "amount", "qty", "ts", REASON]
    assert all(q.schema[c] == pl.String for c in ("k", "amount", "qty", "ts"))
    a, b = str(data / "a.parquet"), str(data / "b.parquet")
    assert q.sort(FILE, ROW).rows() == [
        (1, a, "a", "four", "2.0", "2026-05-01T00:10:00+00:00", "amount: not a valid float"),
        (
            2,
            a,
            "b",
            "2.5",
            "NaN",
            "2026-05-01T00:20:00+00:00",
            "qty: not a finite number (NaN, Infinity and numbers beyond float64 are refused)",
        ),
        (
            3,
            a,
            "b",
            "3",
            "3.0",
            "2200-01-01T00:00:00+00:00",
            "ts: outside the accepted range [1970, 2100)",
        ),
        (1, b, "a", "2.0", "2", "yesterday", "ts: not a valid datetime"),
    ]
    # the report's examples show the same original text
    assert report.examples[0]["amount"] == "four"


def test_a_file_refused_whole_keeps_the_values_of_its_other_columns(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = tmp_path / "data"
    data.mkdir()
    columns = [["a"], [1.5], [2.5], [7.0], pa.array([T], pa.timestamp("us", "UTC"))]
    table = pa.table(columns, names=["k", "amount", "amount", "qty", "ts"])
    pq.write_table(table, data / "dup.parquet")
    _lf, report = read_events(READINGS, path=data, quarantine_dir=tmp_path / "q")
    assert report.quarantine_file is not None
    assert pl.read_parquet(report.quarantine_file).rows() == [
        (0, str(data / "dup.parquet"), "a", None, "7.0", "2026-05-01T00:00:00+00:00",
         "amount: duplicate key"),
    ]  # fmt: skip


# -- B: label keys and times of the wrong type ---------------------------------------------------
INT_KEYED = """
from datetime import datetime
from pydantic import BaseModel
import featurepipe as fp

class Click(BaseModel):
    uid: int
    amount: float
    ts: datetime

src = fp.Source("clicks", schema=Click, timestamp="ts", batch=fp.ParquetSource("data/clicks/"))

@fp.feature_view(entity=fp.Entity("user", key="uid"), source=src)
def clicks(t):
    return {"n": fp.count(), "s": fp.sum(t.amount)}
"""


def _clicks(tmp_path: Path) -> FeatureStore:
    events = pl.DataFrame(
        {
            "uid": [1, 1, 2, 3],
            "amount": [1.0, 2.0, 4.0, 8.0],
            "ts": [_at(0), _at(1), _at(2), _at(3)],
        },
        schema={"uid": pl.Int64, "amount": pl.Float64, "ts": UTC_US},
    )
    return FeatureStore(_repo(tmp_path, INT_KEYED, {"clicks/a.parquet": events}))


def test_label_key_of_another_type_is_a_data_error_naming_column_and_types(
    tmp_path: Path,
) -> None:
    store = _clicks(tmp_path)
    at = [_at(60), _at(60)]
    digits = pl.DataFrame({"uid": ["1", "2"], "event_timestamp": at})
    with pytest.raises(DataError) as e:
        store.get_historical_features(digits, ["clicks"])
    msg = str(e.value)
    assert "column 'uid' has type String; expected Int64" in msg
    assert "pl.col('uid').cast(pl.Int64)" in msg  # said, not done
    words = pl.DataFrame({"uid": ["u1", "u2"], "event_timestamp": at})
    with pytest.raises(DataError, match="column 'uid' has type String; expected Int64") as e:
        store.get_historical_features(words, ["clicks"])
    assert "cast" not in str(e.value)  # "u1" would not convert
    with pytest.raises(DataError, match=r"lacks column 'uid'.*frame has: user, event_timestamp"):
        store.get_historical_features(
            pl.DataFrame({"user": [1], "event_timestamp": [_at(60)]}), ["clicks"]
        )
    with pytest.raises(
        DataError, match="timestamp column 'event_timestamp' has type String; expected Datetime"
    ):
        store.get_historical_features(
            pl.DataFrame({"uid": [1], "event_timestamp": ["2026-05-01T01:00:00Z"]}), ["clicks"]
        )


def test_narrower_integer_keys_are_the_same_keys_partitioned_or_not(tmp_path: Path) -> None:
    store = _clicks(tmp_path)
    labels = pl.DataFrame(
        {"uid": [1, 2, 3, 4], "event_timestamp": [_at(60)] * 4},
        schema={"uid": pl.Int32, "event_timestamp": UTC_US},
    )
    # uid 1: 1.0 + 2.0; uid 2: 4.0; uid 3: 8.0; uid 4: no events
    want = [(2, 3.0), (1, 4.0), (1, 8.0), (0, None)]
    assert store.get_historical_features(labels, ["clicks"]).select("n", "s").rows() == want
    split = store.get_historical_features(labels, ["clicks"], partitions=3)
    assert split.select("n", "s").rows() == want


# -- C: label files in Parquet, CSV and Arrow IPC, through the command line ----------------------
STR_KEYED = """
from datetime import datetime
from pydantic import BaseModel
import featurepipe as fp

class Pay(BaseModel):
    user_id: str
    amount: float
    ts: datetime

src = fp.Source("pays", schema=Pay, timestamp="ts", batch=fp.ParquetSource("data/pays/"))

@fp.feature_view(entity=fp.Entity("user", key="user_id"), source=src)
def spend(t):
    return {"n": fp.count(), "s": fp.sum(t.amount), "last": fp.last(t.amount)}
"""


def _pays(tmp_path: Path) -> Path:
    events = pl.DataFrame(
        {
            "user_id": ["u1", "u1", "u1", "007", "7"],
            "amount": [1.0, 2.0, 4.0, 8.0, 16.0],
            "ts": [_at(0), _at(10), _at(20), _at(5), _at(5)],
        },
        schema={"user_id": pl.String, "amount": pl.Float64, "ts": UTC_US},
    )
    return _repo(tmp_path / "repo", STR_KEYED, {"pays/a.parquet": events})


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"COLUMNS": "250", "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "featurepipe.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
    )


def _training_set(repo: Path, labels: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return _cli(
        "training-set", "--repo", str(repo), "--entities", str(labels), "--features", "spend",
        "--out", str(out),
    )  # fmt: skip


# the label rows: "007" is a key of its own (not 7); the third row sits exactly on an event
LABEL_CSV = """user_id,event_timestamp,label
u1,2026-05-01T00:15:00Z,1
007,2026-05-01 00:30:00,0
u1,2026-05-01T00:20:00+00:00,1
"""
WANT = [
    # user, label, n, s, last: events strictly before the label time
    ("u1", 1, 2, 3.0, 2.0),  # 00:00 and 00:10
    ("007", 0, 1, 8.0, 8.0),  # 00:05 of "007" only, not of "7"
    ("u1", 1, 2, 3.0, 2.0),  # the event at 00:20 is not before 00:20
]


def test_training_set_reads_csv_parquet_and_arrow_labels_alike(tmp_path: Path) -> None:
    repo = _pays(tmp_path)
    (tmp_path / "labels.csv").write_text(LABEL_CSV)
    typed = pl.DataFrame(
        {
            "user_id": ["u1", "007", "u1"],
            "event_timestamp": [_at(15), _at(30), _at(20)],
            "label": [1, 0, 1],
        },
        schema={"user_id": pl.String, "event_timestamp": UTC_US, "label": pl.Int64},
    )
    typed.write_parquet(tmp_path / "labels.parquet")
    typed.write_ipc(tmp_path / "labels.arrow")
    results = {}
    for name in ("labels.csv", "labels.parquet", "labels.arrow"):
        out = tmp_path / f"{name}.train.parquet"
        run = _training_set(repo, tmp_path / name, out)
        assert run.returncode == 0, run.stdout + run.stderr
        results[name] = pl.read_parquet(out)
        got = results[name].select("user_id", "label", "n", "s", "last").rows()
        assert got == WANT, name
    assert results["labels.csv"].equals(results["labels.parquet"])
    assert results["labels.arrow"].equals(results["labels.parquet"])
    assert results["labels.csv"]["event_timestamp"].to_list() == [_at(15), _at(30), _at(20)]


def test_training_set_refuses_unknown_or_unreadable_label_files_clearly(tmp_path: Path) -> None:
    repo = _pays(tmp_path)
    help_text = _cli("training-set", "--help").stdout
    assert "Parquet (.parquet), CSV (.csv) or Arrow IPC (.arrow, .ipc, .feather)" in " ".join(
        help_text.replace("│", " ").split()
    )
    (tmp_path / "labels.txt").write_text(LABEL_CSV)
    run = _training_set(repo, tmp_path / "labels.txt", tmp_path / "o.parquet")
    assert run.returncode == 2
    said = " ".join(run.stdout.split())
    assert "labels.txt: unsupported table format '.txt'" in said and "CSV (.csv)" in said
    (tmp_path / "labels.parquet").write_text(LABEL_CSV)  # a CSV under a Parquet name
    run = _training_set(repo, tmp_path / "labels.parquet", tmp_path / "o.parquet")
    assert run.returncode == 2 and "Traceback" not in run.stderr
    said = " ".join(run.stdout.split())
    assert "labels.parquet: cannot be read as Parquet" in said and "Arrow IPC" in said
    (tmp_path / "bad.csv").write_text(LABEL_CSV + "u1,yesterday,1\n")
    run = _training_set(repo, tmp_path / "bad.csv", tmp_path / "o.parquet")
    assert run.returncode == 2
    said = " ".join(run.stdout.split())
    assert "column 'event_timestamp', row 4: 'yesterday' is not an ISO-8601" in said
    assert not (tmp_path / "o.parquet").exists()


def test_read_table_parses_uniform_csv_times_and_keeps_text_keys(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text(
        "user_id,at\n007,2026-05-01T00:15:00Z\n1,2026-05-01T01:00:00Z\n"
    )
    got = read_table(tmp_path / "t.csv", timestamp="at", text_columns=["user_id"])
    assert got.schema == pl.Schema({"user_id": pl.String, "at": UTC_US})
    assert got.rows() == [("007", _at(15)), ("1", _at(60))]
    with pytest.raises(DataError, match=r"missing.csv: no such file \(CSV expected\)"):
        read_table(tmp_path / "missing.csv")


# -- D: lineage counts that say what they count ---------------------------------------------------
def test_lineage_counts_rows_in_files_and_events_used_separately(tmp_path: Path) -> None:
    events = pl.DataFrame(
        {
            # 4 valid rows at or before the last label (60), 1 null key, 2 after the label
            "user_id": ["u1", "u1", "u2", "u2", None, "u1", "u2"],
            "amount": [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0],
            "ts": [_at(0), _at(10), _at(20), _at(60), _at(30), _at(61), _at(90)],
        },
        schema={"user_id": pl.String, "amount": pl.Float64, "ts": UTC_US},
    )
    store = FeatureStore(_repo(tmp_path, STR_KEYED, {"pays/a.parquet": events}))
    labels = pl.DataFrame({"user_id": ["u1", "u2"], "event_timestamp": [_at(30), _at(60)]})
    out = store.get_historical_features(labels, ["spend:n"])
    assert out["n"].to_list() == [2, 1]  # u2 at 60 sees the event at 20, not the one at 60
    assert store.last_lineage is not None
    write_training_set(out, tmp_path / "train.parquet", store.last_lineage)
    source = read_lineage(tmp_path / "train.parquet")["sources"]["pays"]
    assert source["rows_in_files"] == 7
    assert source["events_used"] == 4
    assert source["quarantined"] == 1
    assert source["rows_after_last_label"] == 2
    assert source["last_label_time"] == "2026-05-01T01:00:00Z"
    assert source["rows"] == 4  # the former name, for older readers
    (entry,) = source["files"]
    assert (entry["rows_in_file"], entry["rows"], entry["quarantined"]) == (7, 4, 1)


def test_lineage_written_before_the_new_names_still_reads(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    old = {"features": ["spend:n"], "sources": {"pays": {"rows": 99_992, "quarantined": 0}}}
    table = pa.table({"n": [1]}).replace_schema_metadata({b"featurepipe": json.dumps(old)})
    pq.write_table(table, tmp_path / "old.parquet")
    source = read_lineage(tmp_path / "old.parquet")["sources"]["pays"]
    assert source["events_used"] == 99_992 and source["rows"] == 99_992


# -- E: an optional column absent from an older file ---------------------------------------------
EVOLVED = """
from datetime import datetime
from pydantic import BaseModel
import featurepipe as fp

class Txn(BaseModel):
    user_id: str
    amount: float
    country: str | None = None   # added later: older files lack it
    channel: str = "web"          # added later, with a default other than None
    ts: datetime

src = fp.Source("txns", schema=Txn, timestamp="ts", batch=fp.ParquetSource("data/txns/"))

@fp.feature_view(entity=fp.Entity("user", key="user_id"), source=src)
def txn(t):
    return {
        "n": fp.count(),
        "s": fp.sum(t.amount),
        "unknown_country": fp.count(where=t.country.is_null()),
        "last_country": fp.last(t.country.fill_null("??")),
        "web": fp.count(where=t.channel == "web"),
    }
"""


def test_an_optional_column_absent_from_an_older_file_reads_as_its_default(
    tmp_path: Path,
) -> None:
    old = pl.DataFrame(
        {"user_id": ["a", "a", "b"], "amount": [1.0, 2.0, 4.0], "ts": [_at(0), _at(1), _at(2)]},
        schema={"user_id": pl.String, "amount": pl.Float64, "ts": UTC_US},
    )
    new = pl.DataFrame(
        {
            "user_id": ["a", "b"],
            "amount": [8.0, 16.0],
            "country": ["FR", None],
            "channel": ["app", "web"],
            "ts": [_at(3), _at(4)],
        },
        schema={
            "user_id": pl.String,
            "amount": pl.Float64,
            "country": pl.String,
            "channel": pl.String,
            "ts": UTC_US,
        },
    )
    repo = _repo(tmp_path, EVOLVED, {"txns/2025.parquet": old, "txns/2026.parquet": new})
    store = FeatureStore(repo)
    labels = pl.DataFrame({"user_id": ["a", "b"], "event_timestamp": [_at(10), _at(10)]})
    out = store.get_historical_features(labels, ["txn"])
    # a: 1 + 2 (old, no country, channel "web") + 8 (FR, app); b: 4 (old) + 16 (null, web)
    assert out.select("n", "s", "unknown_country", "last_country", "web").rows() == [
        (3, 11.0, 2, "FR", 2),
        (2, 20.0, 2, "??", 2),
    ]
    files = {Path(f["path"]).name: f for f in store.source_reports["txns"].files}
    assert files["2025.parquet"]["absent"] == ["channel", "country"]
    assert "absent" not in files["2026.parquet"]
    # the stream reads a message without the fields the same way
    src = store.definitions.sources["txns"]
    event = EventValidator(src).parse(
        b'{"user_id": "a", "amount": 1.0, "ts": "2026-05-01T00:00:00Z"}'
    )
    assert (event["country"], event["channel"]) == (None, "web")


def test_a_required_column_absent_from_a_file_names_file_and_column(tmp_path: Path) -> None:
    lacking = pl.DataFrame(
        {"user_id": ["a"], "ts": [_at(0)]}, schema={"user_id": pl.String, "ts": UTC_US}
    )
    store = FeatureStore(_repo(tmp_path, EVOLVED, {"txns/2025.parquet": lacking}))
    labels = pl.DataFrame({"user_id": ["a"], "event_timestamp": [_at(10)]})
    with pytest.raises(
        DataError, match=r"2025.parquet: column 'amount' of source 'txns' is missing"
    ):
        store.get_historical_features(labels, ["txn"])


# -- F: one rule for floats in int fields, on both paths ------------------------------------------
EVS = fp.Source("evs", schema=Ev, timestamp="ts")
GOOD = {"k": "a", "x": 1.5, "s": "text", "b": True, "ts": "2026-03-01T00:00:00Z"}
# (JSON token for n, the float a Parquet float column holds, expected int or refusal)
FLOATS: list[tuple[str, float, int | str]] = [
    ("1.0", 1.0, 1),
    ("-0.0", -0.0, 0),
    ("1e3", 1000.0, 1000),
    ("-9223372036854775808.0", -(2.0**63), -9_223_372_036_854_775_808),
    ("1.5", 1.5, "n: not a valid int"),
    ("9223372036854775808.0", 2.0**63, "n: does not fit in int64"),
    ("1e19", 1e19, "n: does not fit in int64"),
]


def _stream(token: str) -> int | str:
    members = [f'"{k}": {json.dumps(v)}' for k, v in GOOD.items()] + [f'"n": {token}']
    try:
        event: dict[str, Any] = EventValidator(EVS).parse(("{" + ", ".join(members) + "}").encode())
    except Invalid as e:
        return e.reason
    value = event["n"]
    assert type(value) is int
    return value


def _batch(tmp_path: Path, column: pl.Series) -> list[int | str]:
    n = len(column)
    frame = pl.DataFrame(
        {
            "k": ["a"] * n,
            "x": [1.5] * n,
            "n": column,
            "s": ["text"] * n,
            "b": [True] * n,
            "ts": [datetime(2026, 3, 1, tzinfo=UTC)] * n,
        },
        schema=polars_schema(Ev) | {"n": column.dtype},
    )
    path = tmp_path / f"{column.dtype}.parquet"
    frame.write_parquet(path)
    lf, report = read_events(EVS, path=path, quarantine_dir=tmp_path / str(column.dtype))
    kept = dict(lf.collect().select(ROW, "n").iter_rows())
    refused: dict[int, str] = {}
    if report.quarantine_file is not None:
        refused = dict(pl.read_parquet(report.quarantine_file).select(ROW, REASON).iter_rows())
    return [kept[i] if i in kept else refused[i] for i in range(n)]


def test_floats_for_an_int_field_follow_one_rule_on_both_paths(tmp_path: Path) -> None:
    want = [case[2] for case in FLOATS]
    assert [_stream(token) for token, _, _ in FLOATS] == want
    floats = pl.Series("n", [value for _, value, _ in FLOATS], dtype=pl.Float64)
    assert _batch(tmp_path, floats) == want
    texts = pl.Series("n", [token for token, _, _ in FLOATS], dtype=pl.String)
    assert _batch(tmp_path, texts) == want
    assert math.copysign(1, FLOATS[1][1]) == -1  # the -0.0 case is a negative zero
