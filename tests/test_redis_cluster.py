"""featurepipe pointed at a real 3-master Redis Cluster (tests/redis_cluster.py).

Redis Cluster is not supported yet (docs/online-store.md, "Redis Cluster"): the stream worker
commits the states of many entities and its offsets in one MULTI/EXEC, which a cluster refuses
across slots, and a plain client on one node is answered MOVED for every key another node owns.
Left alone, ``materialize`` wrote the states of the node's own slots before failing with a bare
"MOVED" text and advice to rerun, and lookups and the worker ended in redis-py tracebacks. The
rule is a clear refusal instead: ``connect`` tells a cluster node in the round trip that checks
the connection, and every command refuses before anything is read or written.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import redis

from featurepipe import FeatureStore
from featurepipe.dev.datagen import generate_transactions
from featurepipe.online.errors import OnlineStoreError
from featurepipe.online.layout import OnlineStoreLayout
from featurepipe.online.redis_conn import connect

if TYPE_CHECKING:
    from redis_cluster import Cluster

pytest_plugins = ["redis_cluster", "redis_server"]  # fixtures redis_cluster, redis_url

ROOT = Path(__file__).resolve().parents[1]
REFUSAL = "is a Redis Cluster node: featurepipe does not support Redis Cluster yet"


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, datetime]:
    """A small Parquet log of user_spend and a cut-over inside it."""
    df = generate_transactions(2_000, users=50, seed=5)
    path = tmp_path_factory.mktemp("cluster") / "transactions.parquet"
    df.write_parquet(path)
    return path, df["event_time"].sort()[df.height * 2 // 3]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "featurepipe.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _assert_refused_in_one_line(out: subprocess.CompletedProcess[str], url: str) -> None:
    text = out.stdout + out.stderr
    assert out.returncode == 2, text
    assert "Traceback" not in text, text
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert lines[0].startswith("error:") and REFUSAL in lines[0], text
    assert url.removeprefix("redis://") in lines[0] and "single primary" in lines[0], text


def test_the_fixture_is_a_real_three_master_cluster(redis_cluster: Cluster) -> None:
    client = redis_cluster.cluster_client()
    try:
        info = client.cluster_info()
        assert info["cluster_state"] == "ok" and int(info["cluster_size"]) == 3
        owners = {client.get_node_from_key(f"k{i}").port for i in range(200)}
        assert owners == {n.port for n in redis_cluster.nodes}  # keys spread over all three
    finally:
        client.close()


def test_a_plain_client_on_a_cluster_node_cannot_run_the_store_s_commands(
    redis_cluster: Cluster,
) -> None:
    """Why the store refuses: one node redirects keys it does not own, and the worker's commit
    (a transaction over many entities and the offsets hash) spans slots."""
    layout = OnlineStoreLayout(f"fpc-{uuid.uuid4().hex[:8]}")
    keys = [layout.state_key("user_spend", f"u{i}") for i in range(20)]
    with redis_cluster.nodes[0].client() as node, pytest.raises(redis.exceptions.MovedError):
        pipe = node.pipeline(transaction=False)
        for k in keys:
            pipe.hget(k, "s")
        pipe.execute()
    client = redis_cluster.cluster_client()
    try:
        with (
            pytest.raises(redis.exceptions.RedisClusterException, match=r"same slot|CROSSSLOT"),
            client.pipeline(transaction=True) as tx,
        ):
            for k in keys:
                tx.hset(k, mapping={"s": b"x"})
            tx.hset(layout.offsets_key("g"), mapping={"t:0": "1"})
            tx.execute()
    finally:
        client.close()
    assert redis_cluster.dbsize() == 0


def test_connect_refuses_every_node_in_one_line(redis_cluster: Cluster) -> None:
    for node in redis_cluster.nodes:
        with pytest.raises(OnlineStoreError) as e:
            connect(node.url)
        message = str(e.value)
        assert "\n" not in message
        assert f"Redis at {node.url} (argument) {REFUSAL}" in message
        assert "single primary" in message and "Sentinel" in message


@pytest.mark.parametrize("protocol", [2, 3])
def test_a_user_not_allowed_info_is_refused_too(redis_cluster: Cluster, protocol: int) -> None:
    """A reader restricted by ACL (no INFO) is told by HELLO, in either protocol; the password
    stays masked."""
    user, password = f"reader-{uuid.uuid4().hex[:8]}", "s3cret-pw"
    nodes = redis_cluster.nodes
    for node in nodes:  # ACLs are per node
        with node.client() as admin:
            admin.acl_setuser(
                user, enabled=True, passwords=[f"+{password}"], keys=["*"],
                commands=["+@read", "+@connection"],
            )  # fmt: skip
    try:
        url = f"redis://{user}:{password}@127.0.0.1:{nodes[0].port}/0?protocol={protocol}"
        with (
            redis.Redis.from_url(url) as restricted,
            pytest.raises(redis.exceptions.NoPermissionError),
        ):
            restricted.info("cluster")
        with pytest.raises(OnlineStoreError, match=REFUSAL) as e:
            connect(url)
        assert password not in str(e.value)
    finally:
        for node in nodes:
            with node.client() as admin:
                admin.acl_deluser(user)


def test_a_standalone_server_still_connects_with_a_user_not_allowed_info(redis_url: str) -> None:
    """The check never refuses a single server, not even when INFO is refused."""
    connect(redis_url).close()
    user, password = f"reader-{uuid.uuid4().hex[:8]}", "s3cret-pw"
    with redis.Redis.from_url(redis_url) as admin:
        try:
            admin.acl_setuser(
                user, enabled=True, passwords=[f"+{password}"], keys=["*"],
                commands=["+@read", "+@connection"],
            )  # fmt: skip
        except redis.exceptions.ResponseError as e:
            pytest.skip(f"this test server does not let us create a user: {e}")
        try:
            kwargs = admin.connection_pool.connection_kwargs
            host, port = kwargs["host"], kwargs["port"]
            for protocol in (2, 3):
                client = connect(f"redis://{user}:{password}@{host}:{port}/0?protocol={protocol}")
                assert client.ping()
                client.close()
        finally:
            admin.acl_deluser(user)


def test_materialize_is_refused_and_writes_nothing(
    redis_cluster: Cluster, events: tuple[Path, datetime]
) -> None:
    path, until = events
    out = _cli(
        "materialize", "--until", until.isoformat(), "--view", "user_spend",
        "--events", str(path), "--redis-url", redis_cluster.url, "--prefix", "fpc",
    )  # fmt: skip
    _assert_refused_in_one_line(out, redis_cluster.url)
    assert redis_cluster.dbsize() == 0


def test_lookups_are_refused(redis_cluster: Cluster) -> None:
    store = FeatureStore(ROOT, redis_url=redis_cluster.url, prefix="fpc")
    with pytest.raises(OnlineStoreError, match=REFUSAL):
        store.get_online_features({"user_id": ["u1", "u2"]}, ["user_spend"])
    out = _cli(
        "get", "--entity", "user_id=u1", "--features", "user_spend",
        "--redis-url", redis_cluster.url, "--prefix", "fpc",
    )  # fmt: skip
    _assert_refused_in_one_line(out, redis_cluster.url)
    assert redis_cluster.dbsize() == 0


def test_the_stream_worker_is_refused_before_it_reads_kafka(redis_cluster: Cluster) -> None:
    """Refused on connect, before the broker is asked anything (none listens here)."""
    out = _cli(
        "stream", "--redis-url", redis_cluster.url, "--bootstrap", "127.0.0.1:1",
        "--prefix", "fpc", "--idle-exit", "1",
    )  # fmt: skip
    _assert_refused_in_one_line(out, redis_cluster.url)
    assert redis_cluster.dbsize() == 0
