"""featurepipe on a real 3-master Redis Cluster (tests/redis_cluster.py), beside a single Redis.

On a cluster the online store keeps every key of a Kafka partition in the slot of its hash tag
``{<topic>:<p>}`` (docs/online-store.md, "Redis Cluster"), so the worker's commit is one
atomic script per partition. These tests run materialize, the stream worker (exactly-once
commit, a restart, a wrong partitioner, a slot moved while it streams) and lookups on the
cluster, and compare with the batch path and with the same runs on a single Redis, byte for
byte; a node that lost its data is refused, never answered from.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl
import pytest
import redis
from kafka import KafkaProducer

from featurepipe import FeatureStore, load_definitions
from featurepipe.dev import infra
from featurepipe.dev.datagen import generate_transactions
from featurepipe.online.cluster_store import PartitionedStateStore
from featurepipe.online.errors import OnlineStoreError
from featurepipe.online.materialize import materialize
from featurepipe.online.redis_conn import connect
from featurepipe.online.state_store import StateStore, StateWrite, StoredState, open_store
from featurepipe.parity.e2e import run_e2e
from featurepipe.stream.errors import StreamError
from featurepipe.stream.produce import encode_event, ensure_topics, produce_frame
from featurepipe.stream.recover import recover
from featurepipe.stream.worker import StreamWorker, WorkerConfig
from tests.online_check import online_vs_batch
from tests.services import services, unique

if TYPE_CHECKING:
    from redis_cluster import Cluster

pytest_plugins = ["redis_cluster", "redis_server"]  # fixtures redis_cluster, redis_url
__all__ = ["services"]

ROOT = Path(__file__).resolve().parents[1]
PARTITIONS = 12  # enough slots for every master to hold some


@pytest.fixture(scope="module")
def defs() -> Any:
    return load_definitions(ROOT / "feature_defs")


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pl.DataFrame, datetime]:
    """A small Parquet log of user_spend and a cut-over inside it."""
    df = generate_transactions(3_000, users=120, seed=5)
    path = tmp_path_factory.mktemp("cluster") / "transactions.parquet"
    df.write_parquet(path)
    return path, df, df["event_time"].sort()[df.height * 2 // 3]


MORE_VIEWS = """

merchant = fp.Entity("merchant", key="merchant_id")
merchant_tx = fp.Source(
    "merchant_tx", schema=Transaction, timestamp="event_time",
    batch=fp.ParquetSource("data/transactions/"),
    stream=fp.KafkaSource(topic="merchant_transactions"),
)


@fp.feature_view(entity=merchant, source=merchant_tx, lateness="1h")
def merchant_spend(t):  # type: ignore[no-untyped-def]
    return {"merchant_tx_24h": fp.count(window="24h"), "merchant_sum_7d": fp.sum(t.amount, window="7d")}


@fp.feature_view(entity=user, source=transactions, lateness="1h")
def user_counts(t):  # type: ignore[no-untyped-def]
    return {"user_tx_24h": fp.count(window="24h")}
"""


@pytest.fixture(scope="module")
def two_views(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """feature_defs plus a second view of the users' topic and a view of another topic."""
    root = tmp_path_factory.mktemp("two_views")
    (root / "fraud.py").write_text((ROOT / "feature_defs" / "fraud.py").read_text() + MORE_VIEWS)
    return load_definitions(root)


@pytest.fixture
def cluster(redis_cluster: Cluster) -> Any:
    client = connect(redis_cluster.url)
    yield client
    client.close()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "featurepipe.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _states(store: StateStore, view: str, entities: list[Any]) -> list[Any]:
    return store.read_states([(view, e) for e in entities])


def test_the_fixture_is_a_real_three_master_cluster(redis_cluster: Cluster) -> None:
    client = redis_cluster.cluster_client()
    try:
        info = client.cluster_info()
        assert info["cluster_state"] == "ok" and int(info["cluster_size"]) == 3
        owners = {client.get_node_from_key(f"k{i}").port for i in range(200)}
        assert owners == {n.port for n in redis_cluster.nodes}  # keys spread over all three
    finally:
        client.close()


def test_connect_gives_a_cluster_client_from_any_node(redis_cluster: Cluster) -> None:
    for node in redis_cluster.nodes:
        client = connect(node.url)
        try:
            assert isinstance(client, redis.RedisCluster)
            assert isinstance(open_store(client, "fpc"), PartitionedStateStore)
            ports = {n.port for n in client.get_primaries()}
            assert ports == {n.port for n in redis_cluster.nodes}
        finally:
            client.close()


@pytest.mark.parametrize("protocol", [2, 3])
def test_a_user_not_allowed_info_still_gets_a_cluster_client_or_one_clear_error(redis_cluster: Cluster, protocol: int) -> None:
    """A reader restricted by ACL (no INFO) is told a cluster by HELLO, in either protocol; it
    gets a cluster client, or, when the ACL also refuses what the cluster client needs (CLUSTER
    SLOTS), one clear error with the password masked: never a plain client on one node."""
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
        try:
            client = connect(url)
        except OnlineStoreError as e:
            assert password not in str(e) and "\n" not in str(e)
            assert "Redis Cluster at" in str(e), e
        else:
            assert isinstance(client, redis.RedisCluster)
            client.close()
    finally:
        for node in nodes:
            with node.client() as admin:
                admin.acl_deluser(user)


def test_a_standalone_server_still_connects_with_a_user_not_allowed_info(redis_url: str) -> None:
    """A single server is never taken for a cluster, not even when INFO is refused."""
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
                assert isinstance(client, redis.Redis) and client.ping()
                client.close()
        finally:
            admin.acl_deluser(user)


def test_materialize_spreads_over_every_master_and_equals_a_single_redis(
    defs: Any, cluster: Any, redis_url: str, redis_cluster: Cluster, events: Any
) -> None:
    path, df, until = events
    view = defs.view("user_spend")
    prefix = unique("fpc-mat")
    report = materialize(view, until, cluster, path=path, prefix=prefix, partitions=PARTITIONS)
    single = connect(redis_url)
    try:
        materialize(view, until, single, path=path, prefix=prefix)
        users = sorted(df.filter(pl.col("event_time") < until)["user_id"].unique().to_list())
        assert report.entities == len(users) > 50
        on_cluster = _states(open_store(cluster, prefix), view.name, users)
        on_single = _states(StateStore(single, prefix), view.name, users)
        assert all(s is not None for s in on_cluster)
        assert on_cluster == on_single  # the same bytes, fingerprints, no quarantine
        open_store(single, prefix).clear()
    finally:
        single.close()
    # every master holds states: the partitions' slots are spread over the cluster
    for node in redis_cluster.nodes:
        with node.client() as c:
            assert any(True for _ in c.scan_iter(match=f"{prefix}:*", count=1000)), node.port
    # each state lives in the slot of its partition's head (one slot per partition)
    store = open_store(cluster, prefix)
    assert isinstance(store, PartitionedStateStore)
    store.load_routing()
    for user in users[:40]:
        topic, p = store.layout.partition(view.name, user)
        assert cluster.keyslot(store.layout.state_key(view.name, user)) == cluster.keyslot(
            store.layout.head_key(topic, p)
        )
    # lookups equal the batch path over the events before the cut-over
    before = df.filter(pl.col("event_time") < until)
    assert online_vs_batch(view, cluster, prefix, before, require_found=True) == 0
    assert store.clear() > 0 and redis_cluster.dbsize_under(prefix) == 0


@pytest.mark.usefixtures("kafka_client")
def test_the_stream_worker_on_the_cluster_equals_the_batch_path(
    defs: Any, redis_cluster: Cluster, services: infra.DevServices
) -> None:
    """End-to-end parity (produce, stream with the exactly-once commit, look up, compare with
    the batch path) with the online store on the cluster."""
    report = run_e2e(
        defs, "user_spend", generate_transactions(6_000, users=300, seed=41),
        bootstrap=services.kafka_bootstrap, redis_url=redis_cluster.url, partitions=6,
    )  # fmt: skip
    assert report.events == 6_000 and report.queries > 300
    assert report.mismatches == 0, [f.first for f in report.features if f.mismatched]


def _stream(
    defs: Any,
    client: Any,
    bootstrap: str,
    topic: str,
    prefix: str,
    max_events: int,
    group: str | None = None,
    idle_exit_s: float = 3,
) -> Any:
    worker = StreamWorker(
        defs,
        WorkerConfig(bootstrap=bootstrap, group_id=group or prefix, prefix=prefix,
                     idle_exit_s=idle_exit_s, max_events=max_events, max_batch=200),
        client, views=["user_spend"], topics={"transactions": topic},
    )  # fmt: skip
    return worker.run()


def _assert_states_of_one_single_redis_worker(
    defs: Any,
    cluster: Any,
    prefix: str,
    redis_url: str,
    bootstrap: str,
    topic: str,
    log: pl.DataFrame,
) -> None:
    """Every user's state under ``prefix`` on the cluster is the bytes one uninterrupted
    worker writes on a single Redis from the same topic."""
    single = connect(redis_url)
    try:
        single_prefix = unique("fps-ref")
        _stream(defs, single, bootstrap, topic, single_prefix, log.height)
        users = sorted(log["user_id"].unique().to_list())
        got = _states(open_store(cluster, prefix), "user_spend", users)
        want = _states(StateStore(single, single_prefix), "user_spend", users)
        assert all(s is not None for s in got) and got == want
        StateStore(single, single_prefix).clear()
    finally:
        single.close()


def test_a_restarted_worker_on_the_cluster_ends_byte_identical_to_a_single_redis_run(
    defs: Any, cluster: Any, redis_url: str, services: infra.DevServices
) -> None:
    log = generate_transactions(5_000, users=200, seed=43)
    topic = unique("tx-cl")
    ensure_topics(services.kafka_bootstrap, {topic: 4, topic + ".dlq": 1})
    produce_frame(log, topic, services.kafka_bootstrap, "user_id")
    prefix = unique("fpc-restart")
    # on the cluster: stopped after about 2,000 events, then restarted to the end
    first = _stream(defs, cluster, services.kafka_bootstrap, topic, prefix, 2_000)
    assert 2_000 <= first.events < 5_000
    rest = _stream(defs, cluster, services.kafka_bootstrap, topic, prefix, 5_000 - first.valid)
    assert first.valid + rest.valid == 5_000 and rest.invalid == 0
    # on a single Redis: one uninterrupted worker
    _assert_states_of_one_single_redis_worker(
        defs, cluster, prefix, redis_url, services.kafka_bootstrap, topic, log
    )
    # the positions are in the partitions' heads, at the end of each partition
    positions = open_store(cluster, prefix).read_positions(prefix)
    assert sorted(positions) == [(topic, p) for p in range(4)]
    assert sum(p.offset for p in positions.values()) == 5_000
    assert online_vs_batch(defs.view("user_spend"), cluster, prefix, log, require_found=True) == 0


def test_slots_moved_between_masters_while_the_worker_streams(
    defs: Any, cluster: Any, redis_cluster: Cluster, redis_url: str, services: infra.DevServices
) -> None:
    """Resharding under load: the slots of every partition move to another master (keys a few
    at a time, so commits meet half-moved slots: ASK, TRYAGAIN) while events arrive and the
    worker commits. The final states are byte-identical to one worker on a single Redis."""
    log = generate_transactions(6_000, users=250, seed=45)
    topic = unique("tx-move")
    ensure_topics(services.kafka_bootstrap, {topic: 4, topic + ".dlq": 1})
    prefix = unique("fpc-move")
    chunks = [log.slice(i, 1_000) for i in range(0, log.height, 1_000)]
    produce_frame(chunks[0], topic, services.kafka_bootstrap, "user_id")
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["counters"] = _stream(
                defs, cluster, services.kafka_bootstrap, topic, prefix, log.height,
                idle_exit_s=30,
            )  # fmt: skip
        except BaseException as e:  # reported by the assertion below
            result["error"] = e

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    store = open_store(cluster, prefix)
    deadline = time.monotonic() + 60
    while not store.read_positions(prefix):  # the worker has laid out and started
        assert time.monotonic() < deadline and worker.is_alive(), result
        time.sleep(0.1)
    assert isinstance(store, PartitionedStateStore)
    slots = [cluster.keyslot(store.layout.head_key(topic, p)) for p in range(4)]
    redirected = redis_cluster.redirections()
    moved = 0
    for i, chunk in enumerate(chunks[1:]):

        def commit_while_half_moved(chunk: Any = chunk) -> None:
            # the chunk produced while the slot is half-moved, which is held so until the
            # worker's commit of it (every partition's head and states: this slot's too)
            # meets it, or a few seconds passed
            seen = redis_cluster.redirections()
            produce_frame(chunk, topic, services.kafka_bootstrap, "user_id")
            until = time.monotonic() + 5
            while redis_cluster.redirections() == seen and time.monotonic() < until:
                time.sleep(0.05)

        slot = slots[i % len(slots)]
        owner = redis_cluster.owner(slot)
        target = next(n for n in redis_cluster.nodes if n is not owner)
        moved += redis_cluster.migrate_slot(slot, target, halfway=commit_while_half_moved)
    worker.join(timeout=120)
    assert not worker.is_alive() and "error" not in result, result
    assert result["counters"].valid == log.height and result["counters"].invalid == 0
    assert moved > 50  # keys really moved under the worker
    met = redis_cluster.redirections() - redirected
    assert met > 0  # commits or reads met half-moved slots (ASK, TRYAGAIN) and went on
    _assert_states_of_one_single_redis_worker(
        defs, cluster, prefix, redis_url, services.kafka_bootstrap, topic, log
    )
    assert online_vs_batch(defs.view("user_spend"), cluster, prefix, log, require_found=True) == 0
    store.clear()


def test_a_message_on_another_partition_is_dead_lettered(
    defs: Any, cluster: Any, services: infra.DevServices
) -> None:
    """A producer with another partitioner (librdkafka's default is CRC32) puts an entity on a
    partition whose slot is not where readers look: refused, named, nothing written for it."""
    log = generate_transactions(300, users=20, seed=44)
    topic = unique("tx-part")
    ensure_topics(services.kafka_bootstrap, {topic: 4, topic + ".dlq": 1})
    produce_frame(log, topic, services.kafka_bootstrap, "user_id")
    row = log.row(0, named=True)
    stray = {**row, "user_id": "stray-user", "amount": 5.0}
    prefix = unique("fpc-part")
    store = open_store(cluster, prefix)
    producer = KafkaProducer(bootstrap_servers=services.kafka_bootstrap)
    try:
        from featurepipe.online.partitioning import entity_partition

        wrong = (entity_partition("stray-user", 4) + 1) % 4
        producer.send(topic, key=b"stray-user", value=encode_event(stray), partition=wrong)
        producer.flush()
    finally:
        producer.close()
    counters = _stream(defs, cluster, services.kafka_bootstrap, topic, prefix, 301)
    assert counters.valid == 300 and counters.invalid == 1
    assert counters.reasons.get("not on the key's partition") == 1, counters.reasons
    assert store.read_states([("user_spend", "stray-user")]) == [None]


def test_a_topic_with_another_partition_count_is_refused_by_the_worker(
    defs: Any, cluster: Any, services: infra.DevServices, events: Any
) -> None:
    """The store was laid out for 8 partitions of the topic; the broker's topic has 4 (say it
    was recreated): streaming on would put states where no reader looks. Refused, named."""
    path, df, until = events
    topic = unique("tx-count")
    ensure_topics(services.kafka_bootstrap, {topic: 4, topic + ".dlq": 1})
    prefix = unique("fpc-count")
    view = defs.view("user_spend")
    materialize(view, until, cluster, path=path, prefix=prefix, topic=topic, partitions=8)
    produce_frame(df.filter(pl.col("event_time") >= until), topic, services.kafka_bootstrap,
                  "user_id")  # fmt: skip
    with pytest.raises(StreamError, match=r"has 4 partitions.*laid out for 8"):
        _stream(defs, cluster, services.kafka_bootstrap, topic, prefix, 10)
    before = df.filter(pl.col("event_time") < until)
    assert online_vs_batch(view, cluster, prefix, before, require_found=True) == 0
    open_store(cluster, prefix).clear()


def test_a_node_that_lost_its_data_is_refused_never_answered(
    defs: Any, cluster: Any, redis_cluster: Cluster, events: Any
) -> None:
    """A master restarted empty (FLUSHALL on it: what it holds after a restart without
    persistence): every entity is then either answered exactly as before or refused."""
    path, df, until = events
    view = defs.view("user_spend")
    prefix = unique("fpc-lost")
    materialize(view, until, cluster, path=path, prefix=prefix, partitions=PARTITIONS)
    users = sorted(df.filter(pl.col("event_time") < until)["user_id"].unique().to_list())
    at = datetime(2030, 1, 1)
    with FeatureStore(ROOT, redis_url=redis_cluster.url, prefix=prefix) as fs:
        before = fs.get_online_features({"user_id": users}, ["user_spend"], at=at)
    store = open_store(cluster, prefix)
    assert isinstance(store, PartitionedStateStore)
    store.load_routing()
    keys = {user: store.layout.state_key(view.name, user) for user in users}
    victim = redis_cluster.nodes[1]
    with victim.client() as c:
        lost_slots = {cluster.keyslot(k) for k in c.scan_iter(match=f"{prefix}:*", count=1000)}
        assert lost_slots
        c.flushall()
    answered = refused = 0
    with FeatureStore(ROOT, redis_url=redis_cluster.url, prefix=prefix) as fs:
        for i, user in enumerate(users):
            key = keys[user]
            try:
                row = fs.get_online_features({"user_id": [user]}, ["user_spend"], at=at)
            except OnlineStoreError as e:
                refused += 1
                assert "recover" in str(e)
                continue
            answered += 1
            assert cluster.keyslot(key) not in lost_slots
            assert row.to_dicts()[0] == before.to_dicts()[i]
    assert refused > 0
    # a single request over every entity is refused as a whole
    with (
        FeatureStore(ROOT, redis_url=redis_cluster.url, prefix=prefix) as fs,
        pytest.raises(OnlineStoreError),
    ):
        fs.get_online_features({"user_id": users}, ["user_spend"], at=at)
    store.clear()


def test_recover_after_a_master_lost_its_data_then_the_worker_ends_exact(
    defs: Any, cluster: Any, redis_cluster: Cluster, services: infra.DevServices, tmp_path: Path
) -> None:
    """The operator's path after a master restarted empty under a streaming store: the worker
    refuses, `recover` rebuilds every partition up to a cut-over and resets the positions, and
    the worker then ends exactly at the batch path over the whole log."""
    log = generate_transactions(4_000, users=150, seed=46)
    topic = unique("tx-rec")
    ensure_topics(services.kafka_bootstrap, {topic: 6, topic + ".dlq": 1})
    produce_frame(log, topic, services.kafka_bootstrap, "user_id")
    prefix = unique("fpc-rec")
    _stream(defs, cluster, services.kafka_bootstrap, topic, prefix, log.height)
    with redis_cluster.nodes[2].client() as c:
        c.flushall()
    with pytest.raises((StreamError, OnlineStoreError)) as refused:
        _stream(defs, cluster, services.kafka_bootstrap, topic, prefix, 1)
    assert "recover" in str(refused.value)
    until = log["event_time"].sort()[log.height // 2]
    path = tmp_path / "history.parquet"
    log.filter(pl.col("event_time") < until).write_parquet(path)
    report = recover(
        [defs.view("user_spend")], until, cluster, services.kafka_bootstrap, group=prefix,
        prefix=prefix, topics={"transactions": topic}, paths={"user_spend": path},
    )  # fmt: skip
    assert sorted(report.positions) == [(topic, p) for p in range(6)]
    counters = _stream(defs, cluster, services.kafka_bootstrap, topic, prefix, log.height)
    assert counters.before_cutover == log.filter(pl.col("event_time") < until).height
    view = defs.view("user_spend")
    assert online_vs_batch(view, cluster, prefix, log, require_found=True) == 0
    open_store(cluster, prefix).clear()


def test_a_stale_worker_s_identical_commit_is_not_taken_for_its_own_retry(cluster: Any) -> None:
    """Two workers apply the same messages of a partition (the stale one before a rebalance
    reached it): the second commit lands on the same end position with the same digest, but
    its states count the messages twice. Only the attempt that wrote the position may count
    it as its own (a retry after a lost reply); the other is told the position moved."""
    prefix = unique("fpc-attempt")
    stale, owner = open_store(cluster, prefix), open_store(cluster, prefix)
    stale.register_routing({"v": "t"}, {"t": 2})
    generation, _ = stale.create_generation("stream", {"v": "fp1"})
    for s in (stale, owner):
        s.bind(generation.id)
    assert stale.init_positions("g", {("t", 0): 0, ("t", 1): 0})
    tp = ("t", stale.partition_of("v", "u1"))
    once = [StateWrite("v", "u1", b"count=10", "fp1")]
    twice = [StateWrite("v", "u1", b"count=20", "fp1")]
    assert stale.commit("g", once, {tp: 5}, {tp: 0}, {tp: "d5"}, attempt="a")
    assert not owner.commit("g", twice, {tp: 5}, {tp: 0}, {tp: "d5"}, attempt="b")
    assert stale.commit("g", once, {tp: 5}, {tp: 0}, {tp: "d5"}, attempt="a")  # its own retry
    assert stale.read_states([("v", "u1")]) == [StoredState(b"count=10", "fp1")]
    assert stale.read_positions("g")[tp].offset == 5
    stale.clear()


def test_materializing_one_view_keeps_another_s_lost_partitions_refused(
    two_views: Any, cluster: Any, redis_cluster: Cluster, events: Any
) -> None:
    """A master lost its data; re-materializing one view of the topic starts a new generation
    but must not stamp the lost heads as current: the other view's entities there would read
    as 'not found'. Recovering both views lays the topic out again."""
    path, df, until = events
    prefix = unique("fpc-stamp")
    users, counts = two_views.view("user_spend"), two_views.view("user_counts")
    for view in (users, counts):
        materialize(view, until, cluster, path=path, prefix=prefix, partitions=PARTITIONS)
    before = df.filter(pl.col("event_time") < until)
    with redis_cluster.nodes[0].client() as c:
        c.flushall()
    materialize(counts, until, cluster, path=path, prefix=prefix, partitions=PARTITIONS)
    with pytest.raises(OnlineStoreError, match="recover"):
        online_vs_batch(users, cluster, prefix, before)
    # as `recover` does: each view with the views it rebuilds next
    materialize(users, until, cluster, path=path, prefix=prefix, rebuilding=["user_counts"])
    with pytest.raises(OnlineStoreError, match="materialization is running"):
        online_vs_batch(counts, cluster, prefix, before)  # flagged until it is rebuilt too
    materialize(counts, until, cluster, path=path, prefix=prefix)
    for view in (users, counts):
        assert online_vs_batch(view, cluster, prefix, before, require_found=True) == 0
    open_store(cluster, prefix).clear()


def test_a_worker_on_a_topic_new_to_the_store_lays_it_out(
    two_views: Any, cluster: Any, services: infra.DevServices, events: Any
) -> None:
    path, df, until = events
    prefix = unique("fpc-newtopic")
    materialize(two_views.view("user_spend"), until, cluster, path=path, prefix=prefix,
                partitions=PARTITIONS)  # fmt: skip
    topic = unique("tx-new")
    ensure_topics(services.kafka_bootstrap, {topic: 3, topic + ".dlq": 1})
    produce_frame(df, topic, services.kafka_bootstrap, "merchant_id")
    worker = StreamWorker(
        two_views,
        WorkerConfig(bootstrap=services.kafka_bootstrap, group_id=prefix, prefix=prefix,
                     idle_exit_s=3, max_events=df.height),
        cluster, views=["merchant_spend"], topics={"merchant_tx": topic},
    )  # fmt: skip
    counters = worker.run()
    assert counters.valid == df.height and counters.invalid == 0
    merchants = two_views.view("merchant_spend")
    assert online_vs_batch(merchants, cluster, prefix, df, require_found=True) == 0
    before = df.filter(pl.col("event_time") < until)
    assert online_vs_batch(two_views.view("user_spend"), cluster, prefix, before) == 0
    open_store(cluster, prefix).clear()


def test_a_lost_materialization_record_stops_the_worker(
    cluster: Any, redis_cluster: Cluster, defs: Any, services: infra.DevServices, events: Any
) -> None:
    """The master holding a view's materialization record restarted empty while its heads
    survived: the cut-over is unknown, so a worker would apply events before it again."""
    path, df, until = events
    prefix = unique("fpc-meta")
    view = defs.view("user_spend")
    materialize(view, until, cluster, path=path, prefix=prefix, partitions=PARTITIONS)
    store = open_store(cluster, prefix)
    cluster.delete(store.layout.meta_key(view.name))  # what the master lost
    topic = unique("tx-meta")
    ensure_topics(services.kafka_bootstrap, {topic: PARTITIONS, topic + ".dlq": 1})
    produce_frame(df, topic, services.kafka_bootstrap, "user_id")
    with pytest.raises((StreamError, OnlineStoreError), match="recover"):
        _stream(defs, cluster, services.kafka_bootstrap, topic, prefix, df.height)
    store.clear()


def test_a_lost_routing_and_materialization_record_are_refused_too(
    cluster: Any, defs: Any, events: Any
) -> None:
    """The routing record and the view's record were on the master that lost them: the view
    is unrouted, yet the generation knows it, so its cut-over is not 'none' but unknown."""
    path, _, until = events
    prefix = unique("fpc-routing")
    view = defs.view("user_spend")
    materialize(view, until, cluster, path=path, prefix=prefix, partitions=PARTITIONS)
    store = open_store(cluster, prefix)
    assert isinstance(store, PartitionedStateStore)
    cluster.delete(store.layout.meta_key(view.name), store.layout.routing_key())
    with pytest.raises(OnlineStoreError, match="recover"):
        open_store(cluster, prefix).read_meta(view.name)
    store.clear()


def test_the_cli_materializes_and_looks_up_on_the_cluster(
    redis_cluster: Cluster, events: Any
) -> None:
    path, df, until = events
    prefix = unique("fpc-cli")
    common = ["--redis-url", redis_cluster.url, "--prefix", prefix]
    out = _cli("materialize", "--until", until.isoformat(), "--view", "user_spend",
               "--events", str(path), *common)  # fmt: skip
    text = out.stdout + out.stderr
    assert out.returncode == 2 and "Traceback" not in text, text
    assert len(text.strip().splitlines()) == 1 and "--topic-partitions" in text, text
    assert redis_cluster.dbsize_under(prefix) == 0
    out = _cli("materialize", "--until", until.isoformat(), "--view", "user_spend",
               "--events", str(path), "--topic-partitions", "8", *common)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    user = df.filter(pl.col("event_time") < until)["user_id"][0]
    out = _cli("get", "--entity", f"user_id={user}", "--features", "user_spend", "--json",
               *common)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert '"user_spend_found": true' in out.stdout.replace("True", "true"), out.stdout
    open_store(connect(redis_cluster.url), prefix).clear()
