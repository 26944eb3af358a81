"""A newcomer's first hour: what `parity`, `plan` and `demo` print, and what they read.

Expected values are worked out by hand from the small event logs written here (see each test's
comments), never read back from the code under test.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from featurepipe.dev import infra
from tests.services import services, unique  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]

DEFS = """\
from datetime import datetime

from pydantic import BaseModel

import featurepipe as fp


class Click(BaseModel):
    user_id: str
    page: str | None
    secs: float | None
    at: datetime


user = fp.Entity("user", key="user_id")
clicks = fp.Source(
    "clicks",
    schema=Click,
    timestamp="at",
    batch=fp.ParquetSource("data/clicks/"),
    stream=fp.KafkaSource(topic="TOPIC"),
)


@fp.feature_view(entity=user, source=clicks, lateness="1h")
def user_clicks(t):
    return {
        "clicks_1h": fp.count(window="1h"),
        "clicks_total": fp.count(),
        "last_page": fp.last(t.page),
        "secs_1h": fp.sum(t.secs, window="1h"),
    }
"""

# Two files, read in file order (= arrival order). The u1 event of 08:00 arrives last, more
# than the view's lateness (1h) behind u1's newest event (10:30).
PART_0 = [("u1", "a", 1.5, (10, 0)), ("u2", "b", 2.0, (10, 5)), ("u1", "c", 4.25, (10, 30))]
PART_1 = [("u1", "d", 0.5, (8, 0)), ("u2", None, None, (11, 0))]


def _write(rows: list[tuple[Any, ...]], path: Path) -> None:
    pl.DataFrame(
        {
            "user_id": [r[0] for r in rows],
            "page": [r[1] for r in rows],
            "secs": [r[2] for r in rows],
            "at": [datetime(2026, 1, 1, *r[3], tzinfo=UTC) for r in rows],
        },
        schema={
            "user_id": pl.String,
            "page": pl.String,
            "secs": pl.Float64,
            "at": pl.Datetime("us", "UTC"),
        },
    ).write_parquet(path)


def _clicks_repo(root: Path, topic: str = "clicks") -> Path:
    """A project whose only source is data/clicks/ (two files); no data/transactions."""
    (root / "feature_defs").mkdir(parents=True)
    (root / "feature_defs" / "clicks.py").write_text(DEFS.replace("TOPIC", topic))
    (root / "data" / "clicks").mkdir(parents=True)
    _write(PART_0, root / "data" / "clicks" / "part-0.parquet")
    _write(PART_1, root / "data" / "clicks" / "part-1.parquet")
    (root / "featurepipe.toml").write_text("")
    return root


def _fp(
    *args: str, cwd: Path = ROOT, env: dict[str, str] | None = None, columns: int = 200
) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [sys.executable, "-m", "featurepipe.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "COLUMNS": str(columns), **(env or {})},
    )
    assert "Traceback" not in out.stdout + out.stderr, out.stdout + out.stderr
    return out


def _flat(text: str) -> str:
    return " ".join(text.split())


# -- 1. parity reads each view's own source -------------------------------------------------


def test_parity_replays_the_views_own_source_in_arrival_order(tmp_path: Path) -> None:
    repo = _clicks_repo(tmp_path / "repo")
    assert not (repo / "data" / "transactions").exists()
    out = _fp("parity", "--repo", str(repo), "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    (report,) = json.loads(out.stdout)["views"]
    # By hand, in arrival order (sample 1.0): a query at each event's time and, when the entity
    # had an earlier event at another time, one midway; then per entity its newest event time
    # plus 1h and plus 1h + 1 day.
    #   u1 10:00 -> 1 query; u2 10:05 -> 1; u1 10:30 -> 2 (10:30, 10:15);
    #   u1 08:00 -> 0: both 08:00 and 09:15 are more than 1h behind u1's newest event (10:30);
    #   u2 11:00 -> 2 (11:00, 10:32:30); tail: 2 entities x 2 = 4. Total 10, 2 not asked.
    # (In event-time order nothing would be skipped and there would be 12 queries.)
    assert report["events"] == 5
    assert report["queries"] == 10
    assert report["skipped_beyond_lateness"] == 2
    assert report["mismatches"] == 0 and report["ok"] is True
    assert report["source"]["name"] == "clicks"
    assert [Path(f).name for f in report["source"]["files"]] == ["part-0.parquet", "part-1.parquet"]
    assert [(f["name"], f["compared"], f["mismatched"]) for f in report["features"]] == [
        ("clicks_1h", 10, 0),
        ("clicks_total", 10, 0),
        ("last_page", 10, 0),
        ("secs_1h", 10, 0),
    ]
    text = _fp("parity", "--repo", str(repo))
    assert text.returncode == 0, text.stdout + text.stderr
    flat = _flat(text.stdout)
    assert "5 events from 2 file(s) under data/clicks/" in flat
    assert "0 mismatches over 40 values" in flat  # 10 queries x 4 features

    # two processes, one entity each: the same hand-worked report
    split = _fp("parity", "--repo", str(repo), "--json", "--jobs", "2")
    assert split.returncode == 0, split.stdout + split.stderr
    (two,) = json.loads(split.stdout)["views"]
    assert two["jobs"] == 2 and report["jobs"] == 1  # 5 events: one process by default
    timing = ("seconds_stream", "seconds_batch", "seconds_wall", "jobs")
    assert {k: v for k, v in two.items() if k not in timing} == {
        k: v for k, v in report.items() if k not in timing
    }
    text = _fp("parity", "--repo", str(repo), "--jobs", "2")
    assert text.returncode == 0, text.stdout + text.stderr
    assert "5 events checked in" in text.stdout and "by 2 processes" in _flat(text.stdout)
    assert "0 mismatches over 40 values" in _flat(text.stdout)


def test_parity_events_override(tmp_path: Path) -> None:
    repo = _clicks_repo(tmp_path / "repo")
    out = _fp("parity", "--repo", str(repo), "--events", "data/clicks/part-0.parquet", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    (report,) = json.loads(out.stdout)["views"]
    # part-0 alone: u1 10:00 -> 1; u2 10:05 -> 1; u1 10:30 -> 2; tail 2 x 2 = 4
    assert (report["events"], report["queries"], report["skipped_beyond_lateness"]) == (3, 8, 0)

    # a second view on another source: one --events log cannot stand for both sources
    other = DEFS.replace('"clicks"', '"views"').replace("user_clicks", "user_views")
    other = other.replace("Click", "View").replace("data/clicks/", "data/views/")
    (repo / "feature_defs" / "views.py").write_text(other.replace("TOPIC", "views"))
    refused = _fp("parity", "--repo", str(repo), "--events", "data/clicks/part-0.parquet")
    assert refused.returncode == 2
    assert "--view" in refused.stdout and "different sources" in _flat(refused.stdout)
    one = _fp(
        "parity", "--repo", str(repo), "--events", "data/clicks/", "--view", "user_clicks", "--json"
    )
    assert one.returncode == 0, one.stdout + one.stderr
    assert [r["events"] for r in json.loads(one.stdout)["views"]] == [5]


def test_parity_e2e_replays_the_views_own_source(
    tmp_path: Path,
    services: infra.DevServices,  # noqa: F811
) -> None:
    repo = _clicks_repo(tmp_path / "repo", topic=unique("clicks"))
    env = {"REDIS_URL": services.redis_url, "KAFKA_BOOTSTRAP_SERVERS": services.kafka_bootstrap}
    out = _fp("parity", "--repo", str(repo), "--e2e", "--json", env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    (report,) = json.loads(out.stdout)["views"]
    # every event through Kafka; per entity (u1, u2): its newest event time, + 1h, + 1h + 1 day
    assert (report["events"], report["queries"], report["mismatches"]) == (5, 6, 0)
    assert report["mode"] == "e2e"


# -- 2. --json on plan and parity -------------------------------------------------------------


def test_plan_json(tmp_path: Path) -> None:
    import featurepipe as fp

    repo = _clicks_repo(tmp_path / "repo")
    out = _fp("plan", "--repo", str(repo), "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    doc = json.loads(out.stdout)
    assert doc["fitted"] is True
    (v,) = doc["views"]
    expected_fp = fp.load_definitions(repo / "feature_defs").view("user_clicks").fingerprint
    assert re.fullmatch(r"[0-9a-f]{16}", v["fingerprint"]) and v["fingerprint"] == expected_fp
    assert (v["name"], v["entity"], v["key"], v["lateness_s"]) == (
        "user_clicks",
        "user",
        "user_id",
        3600,
    )
    assert v["source"] == {
        "name": "clicks",
        "timestamp": "at",
        "batch": "data/clicks/",
        "stream": "clicks",
    }
    assert [(f["name"], f["type"], f["definition"]) for f in v["features"]] == [
        ("clicks_1h", "int", "count(window=1h, default=0)"),
        ("clicks_total", "int", "count(default=0)"),
        ("last_page", "str", "last(t.page)"),
        ("secs_1h", "float", "sum(t.secs, window=1h)"),
    ]
    assert [(a["kind"], a["window_s"]) for a in v["aggregations"]] == [
        ("count", 3600),
        ("count", None),
        ("last", None),
        ("sum", 3600),
    ]
    assert v["fitted_artifacts"] == []


_NUDGED = textwrap.dedent(
    """
    import math, sys
    from featurepipe import kernels
    original = kernels.finalize_float_sum
    kernels.finalize_float_sum = lambda *a: math.nextafter(original(*a), math.inf)
    from featurepipe.cli import main
    sys.argv = ["featurepipe", *sys.argv[1:]]
    main()
    """
)


def _nudged_parity(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`featurepipe parity` with the per-event float sum one ulp off: a real mismatch."""
    return subprocess.run(
        [sys.executable, "-c", _NUDGED, "parity", "--repo", str(repo), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "250"},
    )


def test_parity_json_on_a_mismatch_exits_1_with_the_first_difference(tmp_path: Path) -> None:
    repo = _clicks_repo(tmp_path / "repo")
    out = _nudged_parity(repo, "--json")
    assert out.returncode == 1, out.stdout + out.stderr
    doc = json.loads(out.stdout)
    assert doc["ok"] is False
    (report,) = doc["views"]
    by_name = {f["name"]: f for f in report["features"]}
    assert (
        by_name["clicks_1h"]["mismatched"] == 0 and by_name["clicks_1h"]["first_difference"] is None
    )
    # the first query with a non-empty 1h window: u1 at 10:30, over u1's 10:00 event (1.5 s)
    first = by_name["secs_1h"]["first_difference"]
    assert first["entity"] == "u1"
    assert first["time"] == "2026-01-01T10:30:00Z"
    assert first["time_us"] == 1_767_263_400_000_000  # 2026-01-01T10:30Z, by hand
    assert first["batch"].startswith("1.5 (0x3ff8000000000000)")
    assert report["mismatches"] == by_name["secs_1h"]["mismatched"] > 0

    text = _nudged_parity(repo)
    assert text.returncode == 1
    flat = _flat(text.stdout)
    assert "entity=u1 t=2026-01-01T10:30:00Z batch=1.5" in flat
    assert "1767263400000000" not in flat and not re.search(r"\bt=\d{5}", flat)


# -- 3. times in errors are ISO text ----------------------------------------------------------


def test_query_beyond_lateness_names_iso_times() -> None:
    import featurepipe as fp
    from featurepipe.compile.python_state import ViewProgram

    repo_defs = ROOT / "feature_defs"
    view = fp.load_definitions(repo_defs).view("user_spend")  # lateness 1h
    prog = ViewProgram(view.ir)
    state = prog.new_state()
    event = {name: None for name in view.source.fields}
    noon = 1_767_268_800_000_000  # 2026-01-01T12:00:00Z, by hand
    event.update(user_id="u1", transaction_id="t1", merchant_id="m1", event_time=noon)
    prog.ingest(state, event, 0)
    with pytest.raises(fp.StateError) as err:
        prog.query(state, noon - 2 * 3_600_000_000)  # 10:00, two hours behind
    msg = str(err.value)
    assert "2026-01-01T10:00:00Z" in msg and "2026-01-01T12:00:00Z" in msg
    assert not re.search(r"\d{16}", msg)


# -- 4. the demo's output ---------------------------------------------------------------------


def _demo(cwd: Path, columns: int) -> subprocess.CompletedProcess[str]:
    # 4,000 generated events (fixed seed) alarm on more features than the 8 listed
    return _fp("demo", "--events", "4000", "--workdir", str(cwd / "demo"), cwd=cwd, columns=columns)


def test_demo_output_is_not_cut_and_says_what_it_leaves_out(tmp_path: Path) -> None:
    try:
        runs = {cols: _demo(tmp_path, cols) for cols in (200, 80)}
    finally:
        _fp("dev", "down", cwd=tmp_path)
    for cols, out in runs.items():
        assert out.returncode == 0, (cols, out.stdout + out.stderr)
        assert "…" not in out.stdout, (cols, out.stdout)  # no cell, header or title cut
        assert max(len(line) for line in out.stdout.splitlines()) <= cols
        # the monitoring alarms are cut to the largest (by PSI) and say how many more there are
        m = re.search(r"\.\.\. and (\d+) more in the report", _flat(out.stdout))
        assert m is not None, out.stdout
        listed = [line for line in out.stdout.splitlines() if line.startswith("  ALARM ")]
        total = re.search(r"(\d+) of 25 features drift", _flat(out.stdout))
        assert total is not None and len(listed) == 8 and 8 + int(m.group(1)) == int(total.group(1))
        # the online lookup table: every feature name whole on its row
        for name in ("txn_count_24h", "amount_sum_24h", "last_country", "foreign_count_24h"):
            assert re.search(rf"│ {name}\s+│", out.stdout), (cols, name)
        both = out.stdout + out.stderr
        assert not re.search(r"\bINFO\b", both) and "kafka." not in both
        assert "blocking the event loop" not in both
    assert "8. end-to-end parity: Kafka -> worker -> Redis vs the batch plan, bit for bit" in (
        _flat(runs[80].stdout)
    )


def test_stream_logs_featurepipe_info_but_no_kafka_chatter(
    tmp_path: Path,
    services: infra.DevServices,  # noqa: F811
) -> None:
    from featurepipe.stream.produce import ensure_topics, produce_frame

    topic = unique("clicks")
    repo = _clicks_repo(tmp_path / "repo", topic=topic)
    ensure_topics(services.kafka_bootstrap, {topic: 2, topic + ".dlq": 1})
    log = pl.concat([pl.read_parquet(p) for p in sorted((repo / "data" / "clicks").iterdir())])
    produce_frame(log, topic, services.kafka_bootstrap, "user_id")
    env = {"REDIS_URL": services.redis_url, "KAFKA_BOOTSTRAP_SERVERS": services.kafka_bootstrap}
    group = unique("g")
    out = _fp(
        "stream",
        "--repo",
        str(repo),
        "--idle-exit",
        "2",
        "--group",
        group,
        "--prefix",
        group,
        env=env,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "5 valid" in _flat(out.stdout)
    assert "INFO featurepipe.stream" in out.stderr  # featurepipe's own INFO stays
    assert not re.search(r"INFO kafka", out.stderr), out.stderr
    assert "blocking the event loop" not in out.stderr


def test_quiet_kafka_logging_keeps_real_warnings() -> None:
    from featurepipe.stream.logs import quiet_kafka_logging

    kafka, selector = logging.getLogger("kafka"), logging.getLogger("kafka.net.selector")
    saved = (kafka.level, list(selector.filters), list(kafka.handlers), kafka.propagate)
    try:
        quiet_kafka_logging()
        quiet_kafka_logging()  # idempotent: one filter
        assert not selector.isEnabledFor(logging.INFO)
        assert logging.getLogger("kafka.consumer.fetcher").getEffectiveLevel() == logging.WARNING

        def record(msg: str) -> logging.LogRecord:
            return selector.makeRecord(selector.name, logging.WARNING, __file__, 1, msg, (), None)

        slow = record(
            "Task <kafka.net.selector.Task object at 0x7f> ran for 0.137s (>0.100s threshold). "
            "It is blocking the event loop -- likely a tight sync loop inside a coroutine."
        )
        assert selector.filter(slow) is False
        assert selector.filter(record("Node 1 connection failed")) is not False
    finally:
        kafka.setLevel(saved[0])
        selector.filters[:] = saved[1]
        kafka.handlers[:] = saved[2]
        kafka.propagate = saved[3]


def test_drifts_rank_by_change_relative_to_threshold() -> None:
    from featurepipe.batch.drift import compare, ranked

    base = {
        "features": {
            # null rate +0.13: 2.6 x its threshold (0.05)
            "country": {"null_rate": 0.80, "mean": None, "top": None},
            # mean 50 -> 84: 34 / (0.25 x 50) = 2.72 x
            "amount": {"null_rate": 0.0, "mean": 50.0, "std": 10.0, "top": None},
            # share of 'US' 0.9 -> 0.42: 0.48 / 0.2 = 2.4 x
            "code": {"null_rate": 0.0, "mean": None, "top": {"US": 90, "DE": 10}},
        }
    }
    cur = {
        "features": {
            "country": {"null_rate": 0.67, "mean": None, "top": None},
            "amount": {"null_rate": 0.0, "mean": 84.0, "std": 10.0, "top": None},
            "code": {"null_rate": 0.0, "mean": None, "top": {"US": 42, "DE": 40, "FR": 18}},
        }
    }
    drifts = compare(base, cur)
    assert [d.feature for d in drifts] == ["country", "amount", "code"]  # definition order
    assert [(d.feature, d.metric) for d in ranked(drifts)] == [
        ("amount", "mean"),
        ("country", "null rate"),
        ("code", "share of 'US'"),
    ]


# -- 5. plan before fit -----------------------------------------------------------------------


@pytest.fixture
def fitted_repo(tmp_path: Path) -> Path:
    from featurepipe.dev.datagen import generate_transactions

    shutil.copytree(ROOT / "examples" / "fitted" / "feature_defs", tmp_path / "feature_defs")
    (tmp_path / "data" / "transactions").mkdir(parents=True)
    generate_transactions(2_000, users=50, days=4, seed=3).write_parquet(
        tmp_path / "data" / "transactions" / "t.parquet"
    )
    pl.DataFrame(
        {"user_id": ["u1"], "event_timestamp": [datetime(2026, 1, 2, tzinfo=UTC)]}
    ).write_parquet(tmp_path / "labels.parquet")
    return tmp_path


FITTED_OPS = [  # examples/fitted/feature_defs/risk.py, with each op's defaults spelled out
    ("country_code", "encode(t.country, min_frequency=1, top_k=5)"),
    ("employment_code", "encode(t.employment_type, min_frequency=10, top_k=None)"),
    ("amount_z_mean_24h", "standardize(t.amount)"),
    ("amount_quartile", "bucketize(t.amount, quantiles=4)"),
]


def test_plan_before_fit_shows_what_is_not_fitted_yet(fitted_repo: Path) -> None:
    out = _fp("plan", "--repo", str(fitted_repo))
    assert out.returncode == 0, out.stdout + out.stderr
    flat = _flat(out.stdout)
    for feature, op in FITTED_OPS:
        assert re.search(re.escape(f"{feature}: {op} ") + r"\S+ not fitted yet", flat), feature
    assert "fingerprint not final" in flat and "featurepipe fit" in flat
    assert "def prepare_event(ev, seq):" in out.stdout  # the plans, with placeholders

    doc = json.loads(_fp("plan", "--repo", str(fitted_repo), "--json").stdout)
    assert doc["fitted"] is False
    (v,) = doc["views"]
    assert v["fingerprint"] is None
    assert [(a["features"], a["op"], a["fitted"]) for a in v["fitted_artifacts"]] == [
        ([feature], op, False) for feature, op in FITTED_OPS
    ]

    fit = _fp("fit", "--repo", str(fitted_repo), "--start", "2026-01-01", "--end", "2026-01-03")
    assert fit.returncode == 0, fit.stdout + fit.stderr
    after = _fp("plan", "--repo", str(fitted_repo))
    assert after.returncode == 0 and "not fitted yet" not in after.stdout
    doc = json.loads(_fp("plan", "--repo", str(fitted_repo), "--json").stdout)
    assert doc["fitted"] is True and doc["views"][0]["fitted_artifacts"] == []
    assert re.fullmatch(r"[0-9a-f]{16}", doc["views"][0]["fingerprint"])


@pytest.mark.parametrize(
    "args",
    [
        ("materialize", "--until", "2026-01-03"),
        (
            "training-set",
            "--entities",
            "labels.parquet",
            "--features",
            "user_risk",
            "--out",
            "out.parquet",
        ),
        ("stream", "--idle-exit", "1"),
        ("get", "--entity", "user_id=u1", "--features", "user_risk"),
        ("parity",),
    ],
)
def test_commands_needing_fitted_artifacts_refuse_before_fit(
    fitted_repo: Path, args: tuple[str, ...]
) -> None:
    out = _fp(*args, "--repo", str(fitted_repo), cwd=fitted_repo)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "run `featurepipe fit" in _flat(out.stdout)


# -- 6. featurepipe.testing after a plain import ----------------------------------------------


def test_testing_is_reachable_after_import_featurepipe(tmp_path: Path) -> None:
    repo = _clicks_repo(tmp_path / "repo")
    script = textwrap.dedent(
        f"""
        import sys
        import polars as pl
        import featurepipe as fp
        assert "featurepipe.testing" not in sys.modules
        view = fp.load_definitions({str(repo / "feature_defs")!r}).view("user_clicks")
        files = sorted(__import__("pathlib").Path({str(repo / "data" / "clicks")!r}).iterdir())
        events = pl.concat([pl.read_parquet(f) for f in files])
        report = fp.testing.assert_parity(view, events)
        print(report.events, report.queries, report.skipped_beyond_lateness)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.split() == ["5", "10", "2"]  # as counted in the first test
