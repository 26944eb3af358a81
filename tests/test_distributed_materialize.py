"""materialize in entity-hash shards, here and on a Dask cluster: the same states, byte for byte.

The reference is an unsharded local run (one replay over all entities). Every state key of
every view is read back from Redis and compared as bytes, with the recorded entity and event
counts. The cluster is a Dask LocalCluster of two worker processes (tests/test_distributed.py).
"""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime
from pathlib import Path

import polars as pl
import pytest
import redis

from featurepipe.batch.distributed import DaskRunner
from featurepipe.batch.registry import load_definitions
from featurepipe.online.layout import OnlineStoreLayout
from featurepipe.online.materialize import materialize
from featurepipe.online.redis_conn import connect
from featurepipe.online.state_store import StateStore
from tests.services import unique
from tests.test_distributed import VIEWS, cluster, make_repo

pytest_plugins = ["redis_server"]  # fixture redis_url
__all__ = ["cluster"]

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, datetime]:
    root = tmp_path_factory.mktemp("dist_materialize") / "repo"
    make_repo(root, 20_000, users=400, labels=10)
    times = pl.read_parquet(root / "data" / "transactions")["event_time"].sort()
    return root, times[len(times) * 3 // 4]


def dump(client: redis.Redis, prefix: str, view: str) -> dict[str, dict[bytes, bytes]]:
    """Every state hash of ``view`` under ``prefix``, by the key's entity text (a SCAN)."""
    layout = OnlineStoreLayout(prefix)
    out = {}
    for key in client.scan_iter(match=layout.state_key_pattern(view), count=1000):
        entity = layout.entity_text(key, view)
        assert entity is not None
        out[entity] = client.hgetall(key)
    return out


def test_sharded_and_dask_materialize_write_the_unsharded_states(
    cluster: str, repo: tuple[Path, datetime], redis_url: str
) -> None:
    root, until = repo
    defs = load_definitions(root / "feature_defs")
    client = connect(redis_url)
    assert isinstance(client, redis.Redis)
    prefixes = {k: unique(f"fp-shard-{k}") for k in ("whole", "local", "dask")}
    runner = DaskRunner(cluster)
    try:
        for name in VIEWS:
            view = defs.view(name)
            whole = materialize(view, until, client, root=root, prefix=prefixes["whole"])
            local = materialize(view, until, client, root=root, prefix=prefixes["local"], shards=3)
            on_dask = materialize(
                view, until, client, root=root, prefix=prefixes["dask"], shards=4, runner=runner
            )
            assert whole.entities > 100 and whole.events > 1_000, name
            for got in (local, on_dask):
                assert (got.entities, got.events, got.skipped, got.quarantined) == (
                    whole.entities, whole.events, whole.skipped, whole.quarantined,
                ), name  # fmt: skip
            want = dump(client, prefixes["whole"], name)
            assert len(want) == whole.entities
            assert dump(client, prefixes["local"], name) == want, name
            assert dump(client, prefixes["dask"], name) == want, name
            metas = [StateStore(client, p).read_meta(name) for p in prefixes.values()]
            assert all(m is not None for m in metas)
            assert len({(m.entities, m.events, m.materialized_until) for m in metas if m}) == 1
    finally:
        runner.close()
        for p in prefixes.values():
            StateStore(client, p).clear()
        client.close()


def test_an_interrupted_sharded_run_starts_over_and_ends_the_same(
    repo: tuple[Path, datetime], redis_url: str
) -> None:
    root, until = repo
    view = load_definitions(root / "feature_defs").view("user_patterns")
    client = connect(redis_url)
    prefixes = [unique("fp-shard-ref"), unique("fp-shard-cut")]
    try:
        materialize(view, until, client, root=root, prefix=prefixes[0])
        calls = 0

        def stop_after_one(done: int, total: int) -> None:
            nonlocal calls
            calls += 1
            if calls == 3:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            materialize(
                view, until, client, root=root, prefix=prefixes[1], shards=4,
                batch_size=50, progress=stop_after_one,
            )  # fmt: skip
        store = StateStore(client, prefixes[1])
        assert store.read_meta(view.name) is None and store.read_progress(view.name) is not None
        again = materialize(view, until, client, root=root, prefix=prefixes[1], shards=4)
        assert again.resumed_from is None
        assert dump(client, prefixes[1], view.name) == dump(client, prefixes[0], view.name)
    finally:
        for p in prefixes:
            StateStore(client, p).clear()
        client.close()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "featurepipe.cli", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_cli_materialize_on_the_dask_engine(
    cluster: str, repo: tuple[Path, datetime], redis_url: str
) -> None:
    root, until = repo
    client = connect(redis_url)
    prefixes = [unique("fp-cli-whole"), unique("fp-cli-dask")]
    common = ["materialize", "--repo", str(root), "--until", until.isoformat(),
              "--view", "arrived_spend", "--redis-url", redis_url]  # fmt: skip
    try:
        out = _cli(*common, "--prefix", prefixes[0])
        assert out.returncode == 0, out.stdout + out.stderr
        out = _cli(*common, "--prefix", prefixes[1], "--engine", "dask", "--address", cluster,
                   "--partitions", "3")  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
        assert dump(client, prefixes[1], "arrived_spend") == dump(
            client, prefixes[0], "arrived_spend"
        )
        for bad, says in (
            (["--address", cluster], "needs --engine dask"),
            (["--engine", "spark"], "'local' or 'dask'"),
        ):
            out = _cli(*common, "--prefix", prefixes[1], *bad)
            text = out.stdout + out.stderr
            assert out.returncode == 2 and "Traceback" not in text, text
            assert len(text.strip().splitlines()) == 1 and says in text, text
    finally:
        for p in prefixes:
            StateStore(client, p).clear()
        client.close()




def test_training_set_partitions_follow_the_event_and_label_counts() -> None:
    """Worked by hand from the rule: ~400,000 events each, one below 800,000 events, at most
    one per 10,000 label rows, at most 64."""
    from featurepipe.batch.engine import auto_partitions

    assert auto_partitions(799_999, 1_000_000) == 1
    assert auto_partitions(800_000, 1_000_000) == 2
    assert auto_partitions(10_000_000, 1_000_000) == 25
    assert auto_partitions(10_000_000, 120_000) == 12
    assert auto_partitions(10_000_000, 9_999) == 1
    assert auto_partitions(1_000_000_000, 100_000_000) == 64
