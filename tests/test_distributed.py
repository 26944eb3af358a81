"""Training-set partitions as tasks on a Dask cluster: the same training set, bit for bit.

The cluster is a Dask LocalCluster of two worker processes on this machine (the workers import
featurepipe from the same installation). Frames are compared with their dtypes and as Arrow IPC
bytes, so every float's bits, every null and the row order count.
"""

from __future__ import annotations

import io
import logging
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from featurepipe.batch.distributed import ClusterError, DaskRunner
from featurepipe.batch.engine import ROW_ID, PartitionTask
from featurepipe.dev.datagen import generate_transactions
from featurepipe.store import FeatureStore

ROOT = Path(__file__).resolve().parents[1]

# a source with an arrival column: a row at T sees only the events that had arrived by T
ARRIVALS = """
from datetime import datetime

from pydantic import BaseModel

import featurepipe as fp


class Arriving(BaseModel):
    transaction_id: str
    user_id: str
    merchant_id: str
    amount: float | None
    country: str | None
    event_time: datetime
    arrived_at: datetime


payments = fp.Source("payments", schema=Arriving, timestamp="event_time", arrival="arrived_at",
                     batch=fp.ParquetSource("data/arrivals/"))


@fp.feature_view(entity=fp.Entity("user", key="user_id"), source=payments, lateness="1h")
def arrived_spend(t):
    return {
        "arrived_24h": fp.count(window="24h"),
        "arrived_sum_7d": fp.sum(t.amount.fill_null(0.0), window="7d", default=0.0),
        "arrived_std_7d": fp.std(t.amount, window="7d"),
        "arrived_country": fp.last(t.country.fill_null("?")),
        "arrived_merchants_7d": fp.count_distinct(t.merchant_id, window="7d"),
    }
"""
VIEWS = ["user_patterns", "user_merchant_spend", "arrived_spend"]


def make_repo(root: Path, events: int, *, users: int, labels: int, files: int = 3) -> pl.DataFrame:
    """A project with examples/definition_power's views (hopped windows, percentiles, decayed
    sums, lists, maps, request fields, a composite key) and a view whose source has an arrival
    column, over a generated log in ``files`` Parquet files (one row breaks the contract).
    Returns the label rows."""
    defs = root / "feature_defs"
    defs.mkdir(parents=True)
    shutil.copy(ROOT / "examples" / "definition_power" / "feature_defs" / "fraud_plus.py", defs)
    (defs / "arrivals.py").write_text(ARRIVALS)
    log = generate_transactions(events, users=users, merchants=max(users // 10, 5), days=10)
    rng = np.random.default_rng(11)
    delay_us = np.where(rng.random(events) < 0.05, rng.integers(0, 7_200_000_000, events), 0)
    arriving = log.select(
        "transaction_id", "user_id", "merchant_id", "amount", "country", "event_time"
    ).with_columns(
        (pl.col("event_time") + pl.duration(microseconds=pl.Series(delay_us))).alias("arrived_at")
    )
    # one row without a transaction id: quarantined on both paths
    log = log.with_columns(
        pl.when(pl.int_range(pl.len()) == 7)
        .then(None)
        .otherwise("transaction_id")
        .alias("transaction_id")
    )
    for name, frame in (("transactions", log), ("arrivals", arriving)):
        out = root / "data" / name
        out.mkdir(parents=True)
        step = -(-events // files)
        for i in range(files):
            frame[i * step : (i + 1) * step].write_parquet(out / f"part-{i}.parquet")
    pick = rng.integers(0, events, labels)
    shift = pl.Series(rng.integers(-3_600, 3_600, labels))
    return log[pick].select(
        "user_id",
        "merchant_id",
        "amount",
        "country",
        (pl.col("event_time") + pl.duration(seconds=shift)).alias("event_timestamp"),
        pl.Series("label", rng.random(labels) < 0.1),
    )


def ipc_bytes(frame: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.rechunk().write_ipc(buf, compression="uncompressed")
    return buf.getvalue()


def assert_bit_identical(got: pl.DataFrame, want: pl.DataFrame) -> None:
    assert got.schema == want.schema
    assert got.equals(want)  # nulls equal nulls, row order counts
    for name, dtype in want.schema.items():  # NaN and -0.0 bits too
        if dtype.is_float():
            g = got[name].to_numpy().view(np.uint64)
            w = want[name].to_numpy().view(np.uint64)
            assert (g == w).all(), name
    assert ipc_bytes(got) == ipc_bytes(want)


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A scheduler and two worker processes on this machine (about a second to start)."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",
        silence_logs=logging.ERROR,
    ) as local:
        yield str(local.scheduler_address)


@pytest.fixture(scope="module")
def small_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pl.DataFrame]:
    root = tmp_path_factory.mktemp("distributed") / "repo"
    labels = make_repo(root, 30_000, users=300, labels=2_000)
    return root, labels


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- the same training set ----------------------------------------------------------------------


@pytest.mark.parametrize("partitions", [1, 4])
def test_dask_engine_equals_local_engine_bit_for_bit(
    cluster: str, small_repo: tuple[Path, pl.DataFrame], partitions: int
) -> None:
    root, labels = small_repo
    store = FeatureStore(root)
    want = store.get_historical_features(labels, VIEWS, partitions=partitions)
    local_reports = dict(store.source_reports)
    got = store.get_historical_features(labels, VIEWS, partitions=partitions, cluster=cluster)
    assert_bit_identical(got, want)
    assert want.height == labels.height and got["arrived_std_7d"].null_count() < got.height
    # the client read and checked the sources: the same reports, the bad row quarantined once
    assert store.source_reports["transactions"].quarantined == 1
    assert store.source_reports == local_reports


def test_started_local_cluster_equals_local_engine(small_repo: tuple[Path, pl.DataFrame]) -> None:
    """``cluster="local:2"``: worker processes started for the call, and stopped after it."""
    pytest.importorskip("distributed")
    root, labels = small_repo
    store = FeatureStore(root)
    want = store.get_historical_features(labels, ["arrived_spend"], partitions=3)
    got = store.get_historical_features(labels, ["arrived_spend"], partitions=3, cluster="local:2")
    assert_bit_identical(got, want)


# ---- errors -------------------------------------------------------------------------------------


def test_unreachable_scheduler_is_one_clear_error_naming_the_address(
    small_repo: tuple[Path, pl.DataFrame],
) -> None:
    pytest.importorskip("distributed")
    root, labels = small_repo
    address = f"tcp://127.0.0.1:{free_port()}"
    with pytest.raises(ClusterError, match=f"cannot reach the Dask scheduler at {address}"):
        FeatureStore(root).get_historical_features(labels, VIEWS, partitions=2, cluster=address)
    with pytest.raises(ClusterError, match="'local:N' takes a number"):
        FeatureStore(root).get_historical_features(labels, VIEWS, cluster="local:none")


def test_missing_engine_names_the_extra(
    small_repo: tuple[Path, pl.DataFrame], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, labels = small_repo
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    with pytest.raises(ClusterError, match=r"pip install 'featurepipe\[distributed\]'"):
        FeatureStore(root).get_historical_features(labels, VIEWS, cluster="tcp://127.0.0.1:1")


def test_failed_partition_names_the_partition_view_and_paths(cluster: str) -> None:
    from featurepipe.ir import nodes as ir

    task = PartitionTask(
        view="v",
        ir=ir.ViewIR("v", "e", "k", "s", "ts", (), (), 0),
        arrival=None,
        partition=2,
        partitions=5,
        queries=pl.DataFrame({ROW_ID: [0], "k": ["a"], "__ts": [1]}),
        events=pl.scan_parquet("/nonexistent/featurepipe/part-0.parquet"),
        engine="auto",
    )
    runner = DaskRunner(cluster)
    try:
        with pytest.raises(ClusterError, match=r"partition 2 of 5 of view 'v' failed") as e:
            runner.run([task])
        assert "same paths" in str(e.value)
    finally:
        runner.close()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "featurepipe.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_unreachable_address_exits_2_with_one_line(
    small_repo: tuple[Path, pl.DataFrame], tmp_path: Path
) -> None:
    pytest.importorskip("distributed")
    root, labels = small_repo
    labels.write_parquet(tmp_path / "labels.parquet")
    address = f"tcp://127.0.0.1:{free_port()}"
    common = [
        "training-set",
        "--repo",
        str(root),
        "--entities",
        str(tmp_path / "labels.parquet"),
        "--features",
        "arrived_spend",
        "--out",
        str(tmp_path / "train.parquet"),
        "--no-baseline",
    ]
    out = run_cli(*common, "--engine", "dask", "--address", address)
    assert out.returncode == 2, out.stdout + out.stderr
    lines = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in out.stderr, lines
    assert f"cannot reach the Dask scheduler at {address}" in lines[0]
    out = run_cli(*common, "--address", address)
    assert out.returncode == 2 and "needs --engine dask" in out.stdout, out.stdout + out.stderr
    out = run_cli(*common, "--engine", "spark")
    assert out.returncode == 2 and "expected 'local' or 'dask'" in out.stdout, out.stdout


# ---- larger: many partitions, the command line end to end (slow) --------------------------------


@pytest.mark.slow
def test_dask_engine_equals_local_engine_on_a_larger_log(
    cluster: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    root = tmp_path_factory.mktemp("distributed_large") / "repo"
    labels = make_repo(root, 400_000, users=5_000, labels=40_000, files=5)
    store = FeatureStore(root)
    want = store.get_historical_features(labels, VIEWS, partitions=16, engine="streaming")
    got = store.get_historical_features(
        labels, VIEWS, partitions=16, engine="streaming", cluster=cluster
    )
    assert_bit_identical(got, want)
    whole = store.get_historical_features(labels, VIEWS)  # one partition, in memory
    assert_bit_identical(got, whole)


@pytest.mark.slow
def test_cli_training_set_on_the_dask_engine_writes_the_local_rows(
    cluster: str, small_repo: tuple[Path, pl.DataFrame], tmp_path: Path
) -> None:
    root, labels = small_repo
    labels.write_parquet(tmp_path / "labels.parquet")

    def training_set(out: str, *extra: str) -> pl.DataFrame:
        done = run_cli(
            "training-set",
            "--repo",
            str(root),
            "--entities",
            str(tmp_path / "labels.parquet"),
            "--features",
            ",".join(VIEWS),
            "--out",
            str(tmp_path / out),
            "--partitions",
            "4",
            "--no-baseline",
            *extra,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return pl.read_parquet(tmp_path / out)

    want = training_set("local.parquet")
    assert_bit_identical(
        training_set("dask.parquet", "--engine", "dask", "--address", cluster), want
    )
    # no --address: worker processes on this machine, started for the command
    assert_bit_identical(training_set("own.parquet", "--engine", "dask"), want)
