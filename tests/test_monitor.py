"""Monitoring end to end: baselines in the registry, planted null bug and shift caught with
exactly the affected features named, no alarm on clean data, the HTML report, the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from functools import cache
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

import featurepipe as fp
from featurepipe.batch.registry import Registry
from featurepipe.compile.polars_aggs import TS, BatchProgram
from featurepipe.dev.datagen import generate_transactions
from featurepipe.monitoring import (
    BaselineError,
    CurrentView,
    compute_baseline,
    load_baseline,
    monitor,
    read_baseline,
    read_current,
    record_baseline,
)
from featurepipe.monitoring.check import ThresholdsError, thresholds_from_table
from featurepipe.monitoring.report import to_html
from featurepipe.parity.harness import normalize_events

ROOT = Path(__file__).resolve().parents[1]
VIEW = fp.load_definitions(ROOT / "feature_defs").view("user_spend")
TYPES = {f.name: str(f.expr.dtype) for f in VIEW.ir.features}
CLEAN_SEEDS = range(1, 21)
FALSE_ALARM_BOUND = 0.05  # at most 1 of the 20 clean seeds may alarm (measured: 0)

# the planted production bugs (in the served values, which is what monitoring sees)
NULL_FEATURE = "amount_mean_7d"  # served null for 10% of the rows of one segment (US users)
SHIFTED_NUMERIC = "amount_sum_24h"  # a unit bug: every value x1.5
SHIFTED_CATEGORY = "last_country"  # 20% of the rows report a country never seen before
PLANTED = {NULL_FEATURE, SHIFTED_NUMERIC, SHIFTED_CATEGORY}


@cache
def feature_frame(seed: int, points: int = 5_000) -> pl.DataFrame:
    """Features of view user_spend (the repository's fraud example) at ``points`` sampled
    event times of a generated 10-day log: one row per lookup, as a training set holds them."""
    events = normalize_events(VIEW, generate_transactions(20_000, users=1_000, days=10, seed=seed))
    at = events.select(VIEW.entity.key, TS).sample(points, seed=seed)
    out = BatchProgram(VIEW.ir).features(events.lazy(), at)
    # datetimes as a training set holds them (the batch plan gives epoch microseconds)
    return out.with_columns(pl.col("first_seen_at").cast(pl.Datetime("us", "UTC")))


def plant(frame: pl.DataFrame, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    us = (frame["last_country"] == "US").fill_null(False).to_numpy()
    null_bug = pl.Series(us & (rng.random(frame.height) < 0.10))
    new_country = pl.Series(rng.random(frame.height) < 0.20)
    return frame.with_columns(
        pl.when(null_bug).then(None).otherwise(pl.col(NULL_FEATURE)).alias(NULL_FEATURE),
        (pl.col(SHIFTED_NUMERIC) * 1.5).alias(SHIFTED_NUMERIC),
        pl.when(new_country)
        .then(pl.lit("Atlantis"))
        .otherwise(pl.col(SHIFTED_CATEGORY))
        .alias(SHIFTED_CATEGORY),
    )


def served_log(frame: pl.DataFrame, fingerprint: str) -> pl.DataFrame:
    """``frame`` as a served-feature log: one row per lookup row and feature, the schema the
    feature server writes (featurepipe.online.served_log.SCHEMA)."""
    from featurepipe.online.served_log import SCHEMA
    from featurepipe.serve.values import rfc3339

    n = frame.height
    served = [datetime(2026, 1, 11, tzinfo=UTC) + timedelta(seconds=i) for i in range(n)]
    entity = [json.dumps({"user_id": u}) for u in frame["user_id"].to_list()]
    parts = []
    for name, dtype in TYPES.items():
        column = frame[name]
        if isinstance(column.dtype, pl.Datetime):  # a training set's datetimes
            column = column.dt.epoch("us")
        raw = column.to_list()
        if dtype == "datetime":
            value = [json.dumps(None if v is None else rfc3339(v)) for v in raw]
        else:
            value = [json.dumps(v) for v in raw]
        num = [
            float(v) if v is not None and dtype in ("int", "float", "bool") else None for v in raw
        ]
        parts.append(
            pl.DataFrame(
                {
                    "request_id": [f"r{i}" for i in range(n)],
                    "endpoint": ["/features"] * n,
                    "served_at": served,
                    "request_time": served,
                    "row": [0] * n,
                    "entity": entity,
                    "request": [None] * n,
                    "view": [VIEW.name] * n,
                    "fingerprint": [fingerprint] * n,
                    "found": [True] * n,
                    "feature": [name] * n,
                    "dtype": [dtype] * n,
                    "value": value,
                    "value_num": pl.Series(num, dtype=pl.Float64),
                }
            ).cast(SCHEMA)  # type: ignore[arg-type]
        )
    return pl.concat(parts)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    """The baseline of the trained version: features of seed 0 at 10,000 points, recorded as
    the training-set command records it (the lineage's views entry)."""
    reg = Registry(tmp_path_factory.mktemp("project") / ".featurepipe" / "registry")
    train = feature_frame(0, 10_000)
    record_baseline(
        reg, train, {VIEW.name: {"fingerprint": VIEW.fingerprint, "features": list(TYPES)}}
    )
    return reg


def current_of(frame: pl.DataFrame) -> list[CurrentView]:
    cv = CurrentView(VIEW.name, VIEW.fingerprint, rows=frame.height, origin="test")
    cv.columns = {n: (frame[n], TYPES[n]) for n in TYPES}
    return [cv]


def test_baseline_round_trip(tmp_path: Path) -> None:
    frame = pl.DataFrame(
        {
            "x": [1.0, 2.0, None, 4.0, float("nan"), 6.0, 7.0, 8.0],
            "n": [1, 1, 2, 2, 3, 3, 3, None],
            "c": ["a", "b", "a", None, "a", "c", "b", "a"],
            "flag": [True, False, True, True, None, False, True, True],
            "at": pl.Series([datetime(2026, 1, d, tzinfo=UTC) for d in range(1, 9)]),
            "l": [[1.0], [2.0], None, [], [1.0, 2.0], [3.0], [4.0], [5.0]],
        }
    )
    reg = Registry(tmp_path / "registry")
    types = {
        "x": "float",
        "n": "int",
        "c": "str",
        "flag": "bool",
        "at": "datetime",
        "l": "list[float]",
    }
    base = compute_baseline(frame, "v", "abc123", types, origin="unit")
    from featurepipe.monitoring.baseline import save_baseline

    path = save_baseline(reg, base)
    assert path == tmp_path / "registry" / "v" / "monitor-abc123.json"
    loaded = load_baseline(reg, "v", "abc123")
    assert loaded == json.loads(json.dumps(base))  # JSON keeps every value
    assert read_baseline(path) == loaded
    f = loaded["features"] if loaded else {}
    assert f["x"]["null_rate"] == 1 / 8 and f["x"]["kind"] == "numeric"
    assert f["x"]["shares"][-1] == pytest.approx(1 / 7)  # NaN has a bin of its own
    assert f["x"]["min"] == 1.0 and f["x"]["max"] == 8.0
    assert sum(f["n"]["shares"]) == pytest.approx(1.0)
    assert (
        f["c"]["categories"] == {"a": 4 / 7, "b": 2 / 7, "c": 1 / 7} and f["c"]["other_share"] == 0
    )
    assert f["flag"]["categories"] == {"true": 5 / 7, "false": 2 / 7}
    assert f["at"]["min"] == datetime(2026, 1, 1, tzinfo=UTC).timestamp()  # epoch seconds
    assert f["l"]["kind"] == "skipped" and "list[float]" in f["l"]["reason"]
    assert load_baseline(reg, "v", "other") is None
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(BaselineError, match="not a featurepipe monitoring baseline"):
        read_baseline(tmp_path / "bad.json")


def test_planted_null_bug_and_shift_alarm_on_exactly_those_features(
    registry: Registry, tmp_path: Path
) -> None:
    planted = plant(feature_frame(1), seed=1)
    log_dir = tmp_path / "served"
    log_dir.mkdir()
    served_log(planted, VIEW.fingerprint).write_parquet(log_dir / "served-1.parquet")
    report = monitor(read_current([log_dir / "served-1.parquet"]), registry=registry)
    alarms = {f.feature: f.alarms for f in report.alarms}
    assert set(alarms) == PLANTED, alarms
    assert alarms[NULL_FEATURE] == ["null_rate"]
    assert "ks" in alarms[SHIFTED_NUMERIC]
    assert "new_category" in alarms[SHIFTED_CATEGORY]
    got = {f.feature: f for f in report.views[0].features}
    assert got[NULL_FEATURE].null_rate - got[NULL_FEATURE].baseline_null_rate > 0.02
    assert got[SHIFTED_CATEGORY].new_category == pytest.approx(0.2, abs=0.02)
    assert (
        got["first_seen_at"].dtype == "datetime" and got["first_seen_at"].ks_statistic is not None
    )
    # the same values as a frame of feature columns read the same way
    wide = monitor(current_of(planted), registry=registry)
    assert {f.feature for f in wide.alarms} == PLANTED


def test_no_alarm_on_clean_logs_false_alarm_rate(registry: Registry) -> None:
    """The control: 20 clean logs from the same generator (other seeds). The false-alarm rate
    is the share of logs with any alarm; measured 0 of 20, bound FALSE_ALARM_BOUND."""
    alarmed: dict[int, list[str]] = {}
    for seed in CLEAN_SEEDS:
        report = monitor(current_of(feature_frame(seed)), registry=registry)
        if not report.ok:
            alarmed[seed] = [f"{f.feature}:{','.join(f.alarms)}" for f in report.alarms]
    rate = len(alarmed) / len(CLEAN_SEEDS)
    print(f"false-alarm rate over {len(CLEAN_SEEDS)} clean seeds: {rate:.2f} {alarmed}")
    assert rate <= FALSE_ALARM_BOUND, alarmed
    # and every planted log of those seeds alarms (detection rate 1)
    missed = [
        s
        for s in CLEAN_SEEDS
        if {
            f.feature
            for f in monitor(current_of(plant(feature_frame(s), s)), registry=registry).alarms
        }
        != PLANTED
    ]
    assert not missed


def test_thresholds_per_feature_and_validation() -> None:
    ts = thresholds_from_table(
        {
            "psi": 0.3,
            "features": {"user_spend:amount_sum_24h": {"ks_statistic": 0.5}, "x": {"skip": True}},
        },
        cli={"null_rate_delta": 0.05},
    )
    assert ts.default.psi == 0.3 and ts.default.null_rate_delta == 0.05
    t = ts.for_feature("user_spend", "amount_sum_24h")
    assert t.ks_statistic == 0.5 and t.psi == 0.3  # the override, on top of the defaults
    assert ts.for_feature("other", "x").skip
    with pytest.raises(ThresholdsError, match="unknown threshold 'pis'"):
        thresholds_from_table({"pis": 0.1})
    with pytest.raises(ThresholdsError, match="'min_rows' must be a whole number"):
        thresholds_from_table({"min_rows": 0.5})


def test_per_feature_override_silences_one_alarm(registry: Registry) -> None:
    planted = plant(feature_frame(2), seed=2)
    ts = thresholds_from_table({"features": {SHIFTED_NUMERIC: {"skip": True}}})
    report = monitor(current_of(planted), registry=registry, thresholds=ts)
    assert {f.feature for f in report.alarms} == PLANTED - {SHIFTED_NUMERIC}


class _Parsed(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for k, v in attrs:
            if k in ("src", "href") and v:
                self.external.append(v)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_html_report_is_self_contained_with_the_numbers(registry: Registry) -> None:
    from featurepipe.monitoring.check import ThresholdSet

    report = monitor(current_of(plant(feature_frame(3), 3)), registry=registry)
    page = to_html(report, ThresholdSet())
    parsed = _Parsed()
    parsed.feed(page)
    text = " ".join(parsed.text)
    assert parsed.tags.count("svg") >= 2 + len(TYPES)  # null rate, PSI, one histogram each
    assert "rect" in parsed.tags and not parsed.external  # nothing loaded from elsewhere
    got = {f.feature: f for f in report.views[0].features}
    assert f"{100 * got[NULL_FEATURE].null_rate:.2f}%" in text  # the numbers in the table
    assert f"{got[SHIFTED_NUMERIC].ks_statistic:.3f}" in text
    assert f"{got[SHIFTED_CATEGORY].psi:.3f}" in text
    embedded = json.loads(page.split("id='report'>")[1].split("</script>")[0])
    assert {a["feature"] for a in embedded["alarms"]} == PLANTED


# -- the command line ----------------------------------------------------------------------------
def _run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "featurepipe.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shop")
    (root / "featurepipe.toml").write_text('definitions = "feature_defs"\n')
    shutil.copytree(
        ROOT / "feature_defs", root / "feature_defs", ignore=shutil.ignore_patterns("__pycache__")
    )
    events = generate_transactions(20_000, users=1_000, days=10, seed=11)
    (root / "data" / "transactions").mkdir(parents=True)
    events.write_parquet(root / "data" / "transactions" / "part-0.parquet")
    for name, seed in (("labels.parquet", 0), ("labels2.parquet", 1)):
        events.select("user_id", pl.col("event_time").alias("event_timestamp")).sample(
            3_000, seed=seed
        ).write_parquet(root / name)
    return root


def test_cli_baseline_then_monitor_exit_codes(project: Path) -> None:
    out = _run(
        project, "monitor", "baseline", "--entities", "labels.parquet", "--features", "user_spend"
    )
    assert out.returncode == 0, out.stdout + out.stderr
    recorded = (
        project / ".featurepipe" / "registry" / "user_spend" / f"monitor-{VIEW.fingerprint}.json"
    )
    assert recorded.exists() and str(recorded.name) in out.stdout.replace("\n", "")

    # clean: a training set over other label rows of the same data
    out = _run(
        project,
        "training-set",
        "--entities",
        "labels2.parquet",
        "--features",
        "user_spend",
        "--out",
        "train2.parquet",
    )
    assert out.returncode == 0, out.stdout + out.stderr
    out = _run(project, "monitor", "--current", "train2.parquet", "--html", "report.html")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "no alarm" in out.stdout and (project / "report.html").exists()

    # planted: the served log of those lookups, with the bugs
    planted = plant(pl.read_parquet(project / "train2.parquet"), seed=5)
    (project / "logs").mkdir()
    served_log(planted, VIEW.fingerprint).write_parquet(project / "logs" / "served-000001.parquet")
    out = _run(project, "monitor", "--current", "logs", "--json")
    assert out.returncode == 1, out.stdout + out.stderr
    got = json.loads(out.stdout)
    assert not got["ok"] and {a["feature"] for a in got["alarms"]} == PLANTED
    out = _run(project, "monitor", "--current", "logs")
    assert out.returncode == 1 and "ALARM" in out.stdout and NULL_FEATURE in out.stdout

    # a per-feature override in the project's thresholds file
    (project / "monitor.toml").write_text(
        f'psi = 0.25\n[features."user_spend:{SHIFTED_CATEGORY}"]\nskip = true\n'
    )
    out = _run(project, "monitor", "--current", "logs", "--json")
    assert {a["feature"] for a in json.loads(out.stdout)["alarms"]} == PLANTED - {SHIFTED_CATEGORY}
    (project / "monitor.toml").unlink()

    # a frame without lineage, with the baseline named; a bigger PSI threshold changes nothing
    planted.drop("user_id", "event_timestamp").write_parquet(project / "plain.parquet")
    out = _run(
        project,
        "monitor",
        "--current",
        "plain.parquet",
        "--baseline",
        str(recorded),
        "--psi",
        "0.5",
        "--json",
    )
    assert (
        out.returncode == 1 and {a["feature"] for a in json.loads(out.stdout)["alarms"]} == PLANTED
    )


def test_cli_errors_exit_2(project: Path, tmp_path: Path) -> None:
    pl.DataFrame({"amount_sum_24h": [1.0]}).write_parquet(tmp_path / "plain.parquet")
    out = _run(project, "monitor", "--current", str(tmp_path / "plain.parquet"))
    assert out.returncode == 2 and "--baseline" in out.stdout
    out = _run(project, "monitor", "--current", str(tmp_path / "missing.parquet"))
    assert out.returncode == 2 and "does not exist" in out.stdout
    log = served_log(feature_frame(4).head(10), "0000deadbeef")
    log.write_parquet(tmp_path / "served.parquet")
    out = _run(project, "monitor", "--current", str(tmp_path / "served.parquet"))
    assert (
        out.returncode == 2
        and "no baseline recorded for view 'user_spend' version 0000deadbeef" in out.stdout
    )
    (tmp_path / "t.toml").write_text("psi = 'high'\n")
    out = _run(
        project,
        "monitor",
        "--current",
        str(tmp_path / "served.parquet"),
        "--thresholds",
        str(tmp_path / "t.toml"),
    )
    assert out.returncode == 2 and "'psi' must be a number" in out.stdout


def test_cli_baseline_from_a_written_training_set(project: Path, tmp_path: Path) -> None:
    out = _run(
        project,
        "training-set",
        "--entities",
        "labels.parquet",
        "--features",
        "user_spend",
        "--out",
        str(tmp_path / "t.parquet"),
    )
    assert out.returncode == 0, out.stdout + out.stderr
    out = _run(
        project, "monitor", "baseline", "--training-set", str(tmp_path / "t.parquet"), "--json"
    )
    assert out.returncode == 0, out.stdout + out.stderr
    [path] = json.loads(out.stdout)["baselines"]
    base = read_baseline(path)
    assert base["fingerprint"] == VIEW.fingerprint and base["rows"] == 3_000
    assert base["lineage"]["views"]["user_spend"]["fingerprint"] == VIEW.fingerprint
    assert base["features"]["first_seen_at"]["type"] == "datetime"  # declared types
    out = _run(project, "monitor", "--current", str(tmp_path / "t.parquet"))
    assert out.returncode == 0 and "no alarm" in out.stdout  # the training data itself


def test_training_set_records_the_baseline_and_the_project_file_holds_thresholds(
    project: Path, tmp_path: Path
) -> None:
    """`featurepipe training-set` records the version's baseline (unless --no-baseline), so
    `monitor` needs nothing more; thresholds may sit in the project file's [monitor] table."""
    root = tmp_path / "proj"
    shutil.copytree(project, root, ignore=shutil.ignore_patterns(".featurepipe", "logs", "*.html"))
    recorded = root / ".featurepipe" / "registry" / "user_spend" / f"monitor-{VIEW.fingerprint}.json"
    args = ("training-set", "--entities", "labels.parquet", "--features", "user_spend")
    out = _run(root, *args, "--out", "eval.parquet", "--no-baseline")
    assert out.returncode == 0, out.stdout + out.stderr
    assert not recorded.exists()
    out = _run(root, *args, "--out", "train.parquet")
    assert out.returncode == 0, out.stdout + out.stderr
    assert recorded.exists() and "monitoring baseline recorded" in out.stdout
    assert read_baseline(recorded)["rows"] == 3_000
    planted = plant(pl.read_parquet(root / "train.parquet"), seed=5)
    (root / "logs").mkdir()
    served_log(planted, VIEW.fingerprint).write_parquet(root / "logs" / "served-000001.parquet")
    out = _run(root, "monitor", "--current", "logs", "--json")
    assert out.returncode == 1 and {a["feature"] for a in json.loads(out.stdout)["alarms"]} == PLANTED
    (root / "featurepipe.toml").write_text(
        'definitions = "feature_defs"\n'
        f'[monitor.features."user_spend:{SHIFTED_CATEGORY}"]\nskip = true\n'
    )
    out = _run(root, "monitor", "--current", "logs", "--json")
    assert {a["feature"] for a in json.loads(out.stdout)["alarms"]} == PLANTED - {SHIFTED_CATEGORY}
    (root / "featurepipe.toml").write_text('definitions = "feature_defs"\nmonitor = "strict"\n')
    out = _run(root, "monitor", "--current", "logs")
    assert out.returncode == 2 and "'monitor' must be a table" in out.stdout


def test_alarm_triggers_a_fresh_training_set_and_the_command(project: Path, tmp_path: Path) -> None:
    """On an alarm: the report is kept as JSON, a training set of the alarmed view over the
    last 3 days of label rows is built (its lineage names the report) and the configured
    command runs with both paths; without an alarm nothing is triggered."""
    from featurepipe.store import read_lineage

    root = tmp_path / "proj"
    shutil.copytree(project, root, ignore=shutil.ignore_patterns(".featurepipe", "logs", "*.html"))
    args = ("training-set", "--entities", "labels.parquet", "--features", "user_spend")
    assert _run(root, *args, "--out", "train.parquet").returncode == 0
    planted = plant(pl.read_parquet(root / "train.parquet"), seed=5)
    (root / "logs").mkdir()
    served_log(planted, VIEW.fingerprint).write_parquet(root / "logs" / "served-000001.parquet")
    hook = (
        f"{sys.executable} -c \"import os, pathlib; pathlib.Path('hook.txt').write_text("
        "os.environ['FEATUREPIPE_MONITOR_REPORT'] + '|' + os.environ['FEATUREPIPE_RETRAIN_SET'])\""
    )
    trigger = ("--retrain-labels", "labels2.parquet", "--retrain-days", "3", "--on-alarm", hook)
    out = _run(root, "monitor", "--current", "logs", *trigger, "--retrain-out", "fresh.parquet")
    assert out.returncode == 1, out.stdout + out.stderr
    report_path, fresh = (root / "hook.txt").read_text().split("|")
    assert Path(fresh) == root / "fresh.parquet"
    alarms = json.loads(Path(report_path).read_text())["alarms"]
    assert {a["feature"] for a in alarms} == PLANTED
    labels = pl.read_parquet(root / "labels2.parquet")
    newest = labels["event_timestamp"].max()
    want = labels.filter(pl.col("event_timestamp") >= newest - timedelta(days=3)).height  # type: ignore[operator]
    assert 0 < want < labels.height
    assert pl.read_parquet(fresh).height == want
    lineage = read_lineage(fresh)
    assert lineage["trigger"]["report"] == report_path and lineage["entity_rows"] == want
    # no alarm: nothing triggered
    (root / "hook.txt").unlink()
    out = _run(root, "monitor", "--current", "train.parquet", *trigger)
    assert out.returncode == 0 and not (root / "hook.txt").exists()


def test_thresholds_declared_in_the_definitions(project: Path, tmp_path: Path) -> None:
    """`fp.monitor(...)` per feature in the view's definition: it leaves the fingerprint
    alone, silences or tightens that feature's alarms, and the project's thresholds file still
    has the last word; mistakes are refused when the definitions load."""
    root = tmp_path / "proj"
    shutil.copytree(project, root, ignore=shutil.ignore_patterns(".featurepipe", "logs", "*.html"))
    fraud = root / "feature_defs" / "fraud.py"
    plain = fraud.read_text()
    decorator = '@fp.feature_view(entity=user, source=transactions, lateness="1h")'
    assert decorator in plain
    declared = plain.replace(
        decorator,
        '@fp.feature_view(entity=user, source=transactions, lateness="1h", monitor={'
        f'"{SHIFTED_CATEGORY}": fp.monitor(skip=True), "txn_count_24h": fp.monitor(null_rate=0.5)}})',
    )
    fraud.write_text(declared)
    view = fp.load_definitions(root / "feature_defs").view("user_spend")
    assert view.fingerprint == VIEW.fingerprint  # thresholds are not what a feature computes
    assert view.monitoring == {SHIFTED_CATEGORY: {"skip": True}, "txn_count_24h": {"null_rate_delta": 0.5}}
    args = ("training-set", "--entities", "labels.parquet", "--features", "user_spend")
    assert _run(root, *args, "--out", "train.parquet").returncode == 0
    planted = plant(pl.read_parquet(root / "train.parquet"), seed=5)
    (root / "logs").mkdir()
    served_log(planted, VIEW.fingerprint).write_parquet(root / "logs" / "served-000001.parquet")
    out = _run(root, "monitor", "--current", "logs", "--json")
    assert out.returncode == 1, out.stdout + out.stderr
    assert {a["feature"] for a in json.loads(out.stdout)["alarms"]} == PLANTED - {SHIFTED_CATEGORY}
    # the operator's file overrides the definition
    (root / "monitor.toml").write_text(f"[features.{SHIFTED_CATEGORY}]\nskip = false\n")
    out = _run(root, "monitor", "--current", "logs", "--json")
    assert {a["feature"] for a in json.loads(out.stdout)["alarms"]} == PLANTED
    # mistakes are definition errors
    for bad, message in (
        ('"nope": fp.monitor(psi=0.3)', "monitor=: no feature named 'nope'"),
        ('"txn_count_24h": fp.monitor(psy=0.3)', "unknown threshold 'psy'"),
        ('"txn_count_24h": fp.monitor(psi=-1)', "'psi' must be a number >= 0"),
    ):
        fraud.write_text(plain.replace(decorator, decorator[:-1] + f", monitor={{{bad}}})"))
        with pytest.raises(fp.DefinitionError, match=message):
            fp.load_definitions(root / "feature_defs")


def _scrape(port: int) -> dict[str, float]:
    """``name{labels}`` -> value of a Prometheus text page (comments left out)."""
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_service_exposes_the_last_round_as_gauges(registry: Registry) -> None:
    """`monitor --every`: each round's statistics as Prometheus gauges, equal to the report's;
    a failing round is counted and the previous gauges stay."""
    import threading
    import time

    from featurepipe.monitoring.service import serve_forever

    planted = plant(feature_frame(2), seed=2)
    rounds: list[Any] = []
    fail = threading.Event()

    def check() -> Any:
        if fail.is_set():
            raise OSError("a log file is unreadable")
        return monitor(current_of(planted), registry=registry)

    stop, port = threading.Event(), _free_port()
    worker = threading.Thread(
        target=serve_forever, args=(check, 0.2, port),
        kwargs={"stop": stop, "on_round": lambda r, e: rounds.append(r or e)}, daemon=True,
    )  # fmt: skip
    worker.start()
    try:
        deadline = time.monotonic() + 20
        while len(rounds) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        got = _scrape(port)
        report = rounds[0]
        by = {(f.view, f.feature): f for v in report.views for f in v.features}
        for (view, feature), f in by.items():
            labels = f'{{feature="{feature}",view="{view}"}}'
            assert got[f"featurepipe_monitor_alarm{labels}"] == (1.0 if f.alarms else 0.0)
            if f.psi is not None:
                assert got[f"featurepipe_monitor_psi{labels}"] == pytest.approx(f.psi, rel=1e-12)
            if f.null_rate is not None:
                assert got[f"featurepipe_monitor_null_rate{labels}"] == pytest.approx(f.null_rate, rel=1e-12)
        assert {k for (k, v) in by.items() if v.alarms} == {("user_spend", f) for f in PLANTED}
        assert got["featurepipe_monitor_alarms"] == len(PLANTED)
        fail.set()
        seen = len(rounds)
        while len(rounds) < seen + 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        after = _scrape(port)
        assert after["featurepipe_monitor_run_errors_total"] >= 1
        assert after["featurepipe_monitor_alarms"] == len(PLANTED)  # the last good round's
    finally:
        stop.set()
        worker.join(timeout=10)


def test_cli_service_mode(project: Path, tmp_path: Path) -> None:
    """`featurepipe monitor --every 1s --metrics-port P` serves the gauges until stopped."""
    import contextlib
    import signal
    import time
    import urllib.error

    root = tmp_path / "proj"
    shutil.copytree(project, root, ignore=shutil.ignore_patterns(".featurepipe", "logs", "*.html"))
    args = ("training-set", "--entities", "labels.parquet", "--features", "user_spend")
    assert _run(root, *args, "--out", "train.parquet").returncode == 0
    (root / "logs").mkdir()
    planted = plant(pl.read_parquet(root / "train.parquet"), seed=5)
    served_log(planted, VIEW.fingerprint).write_parquet(root / "logs" / "served-000001.parquet")
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "featurepipe.cli", "monitor", "--current", "logs", "--every", "1s",
         "--metrics-port", str(port)],
        cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        got: dict[str, float] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and got.get("featurepipe_monitor_runs_total", 0) < 1:
            with contextlib.suppress(urllib.error.URLError, ConnectionError):
                got = _scrape(port)
            time.sleep(0.2)
        alarming = {
            k.split('feature="')[1].split('"')[0]
            for k, v in got.items()
            if k.startswith("featurepipe_monitor_alarm{") and v == 1.0
        }
        assert alarming == PLANTED, got
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert "Traceback" not in out + err and "monitoring every 1s" in out


def test_the_more_specific_threshold_wins_whatever_the_order() -> None:
    for features in (
        {"v1:amount": {"psi": 0.5}, "amount": {"psi": 0.1}},
        {"amount": {"psi": 0.1}, "v1:amount": {"psi": 0.5}},
    ):
        ts = thresholds_from_table({"features": features})
        assert ts.for_feature("v1", "amount").psi == 0.5
        assert ts.for_feature("v2", "amount").psi == 0.1


def test_service_mode_refuses_one_off_options(project: Path) -> None:
    for extra in (("--on-alarm", "true"), ("--json",), ("--consistency",), ("--html", "r.html")):
        out = _run(project, "monitor", "--current", "labels.parquet", "--every", "1m", *extra)
        assert out.returncode == 2 and "--every runs monitoring as a service" in out.stdout, extra


def test_a_failed_retraining_still_runs_the_command(project: Path, tmp_path: Path) -> None:
    root = tmp_path / "proj"
    shutil.copytree(project, root, ignore=shutil.ignore_patterns(".featurepipe", "logs", "*.html"))
    args = ("training-set", "--entities", "labels.parquet", "--features", "user_spend")
    assert _run(root, *args, "--out", "train.parquet").returncode == 0
    (root / "logs").mkdir()
    planted = plant(pl.read_parquet(root / "train.parquet"), seed=5)
    served_log(planted, VIEW.fingerprint).write_parquet(root / "logs" / "served-000001.parquet")
    pl.DataFrame({"user_id": ["u1"]}).write_parquet(root / "nolabels.parquet")  # no timestamp
    hook = f"{sys.executable} -c \"import pathlib; pathlib.Path('hook.txt').write_text('ran')\""
    out = _run(root, "monitor", "--current", "logs", "--retrain-labels", "nolabels.parquet",
               "--on-alarm", hook)  # fmt: skip
    assert out.returncode == 1, out.stdout + out.stderr
    assert "the fresh training set failed" in out.stdout
    assert (root / "hook.txt").read_text() == "ran"


def test_html_report_renders_in_headless_chromium(registry: Registry, tmp_path: Path) -> None:
    """The report opened by a real browser (Debian's Chromium, installed by `make test`),
    headless, from the file alone: the rendered page holds the key numbers, every chart is
    drawn (SVG elements with a size), and a screenshot is taken (a PNG of the page)."""
    import struct

    from featurepipe.monitoring.check import ThresholdSet
    from featurepipe.monitoring.report import write_html

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:  # `make test` installs it where apt can; said in the summary (-ra)
        pytest.skip("no Chromium on this machine: apt-get install chromium")
    report = monitor(current_of(plant(feature_frame(3), 3)), registry=registry)
    page = write_html(report, ThresholdSet(), tmp_path / "report.html")
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,2400",
    ]  # fmt: skip
    dom = subprocess.run(
        [browser, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    rendered = dom.stdout
    got = {f.feature: f for f in report.views[0].features}
    assert f"{100 * got[NULL_FEATURE].null_rate:.2f}%" in rendered
    assert f"{got[SHIFTED_NUMERIC].ks_statistic:.3f}" in rendered
    assert f"{got[SHIFTED_CATEGORY].psi:.3f}" in rendered
    assert rendered.count("<svg") >= 2 + len(TYPES)
    shot = tmp_path / "report.png"
    done = subprocess.run(
        [browser, *flags, f"--screenshot={shot}", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    head = shot.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", head[16:24])
    assert (width, height) == (1280, 2400)
    assert shot.stat().st_size > 20_000  # a drawn page, not a blank one
