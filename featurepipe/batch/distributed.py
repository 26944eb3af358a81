"""Training-set partitions and materialization shards as tasks on a Dask cluster (``pip install 'featurepipe[distributed]'``).

The local engine computes entity-hash partitions one after another; here each partition is a
task (``featurepipe.batch.engine.PartitionTask``) that a Dask worker computes: the view's IR
(compiled on the worker), the partition's label rows and the lazy Polars plan that reads the
partition's events (file paths and expressions, no data). Workers read the source files
themselves, so they must see them at the same paths (a shared file system or object store).
Each task returns the partition's features; the client puts the rows back in label order exactly
as the local engine does, so the training set is the same, bit for bit.

What workers need: the same featurepipe, Polars and Python (minor) versions as the client (the
plans are Polars' serialized plans, and the results must be bit-identical): checked on connect.
A cluster that cannot be reached, has no workers, or whose workers cannot import featurepipe is
a ``ClusterError`` naming the address.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import polars as pl

from featurepipe.batch.engine import PartitionTask
from featurepipe.errors import FeaturepipeError

if TYPE_CHECKING:
    from featurepipe.online.materialize import StateTask

EXTRA = "pip install 'featurepipe[distributed]'"
LOCAL = "local"  # a cluster of worker processes on this machine, started for the job
DEFAULT_TIMEOUT_S = 10.0


class ClusterError(FeaturepipeError):
    """The cluster cannot be used: not installed, unreachable, no workers, mismatched versions,
    or a partition failed on it. The message names the address."""


def _distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise ClusterError(
            f"the dask engine needs Dask distributed, which is not installed: {EXTRA}"
        ) from None
    return distributed


def worker_environment() -> dict[str, str]:
    """What must match between the client and every worker (run on the workers)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version("featurepipe")
    except PackageNotFoundError:  # imported from a source tree
        installed = "not installed"
    # the entity-hash partition is taken of the label rows here and of the events there: the
    # hash must be the same function on both sides (builds of one Polars version may differ)
    probe = [*pl.Series(["user-42", "u|7", ""]).hash(7), *pl.Series([42, -1]).hash(7)]
    return {
        "featurepipe": installed,
        "polars": pl.__version__,
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "polars_hash": ",".join(map(str, probe)),
    }


def _compute_states(task: StateTask) -> pl.DataFrame:
    """A worker's task: one materialization shard's states."""
    return task.compute()


def compute_partition(task: PartitionTask, queries: pl.DataFrame) -> pl.DataFrame:
    """A worker's task: one partition's features (``queries`` travel on their own)."""
    return replace(task, queries=queries).compute()


class DaskRunner:
    """Runs partition tasks on a Dask cluster; a ``PartitionRunner`` for ``BatchEngine``.

    ``address``: a scheduler address (``tcp://host:8786``, ``host:8786``, ``tls://...``), or
    ``"local"`` / ``"local:N"`` for a cluster of N worker processes on this machine (default:
    one per core), started here and stopped by ``close``. ``timeout``: seconds to reach the
    scheduler and for a worker to join.
    """

    def __init__(self, address: str, *, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        dist = _distributed()
        self.address = address
        self._cluster: Any = None
        self._client: Any = None
        try:
            if address == LOCAL or address.startswith(LOCAL + ":"):
                workers = _local_workers(address)
                self._cluster = dist.LocalCluster(
                    n_workers=workers,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=":0",  # any free port: never 8787 of another cluster
                    silence_logs=logging.ERROR,
                )
                self.address = f"{address} ({self._cluster.scheduler_address})"
                self._client = dist.Client(self._cluster, timeout=timeout)
            else:
                _reachable(address, timeout)
                self._client = dist.Client(address, timeout=timeout)
            self._check_workers(timeout)
        except BaseException:
            self.close()
            raise

    def _check_workers(self, timeout: float) -> None:
        try:
            self._client.wait_for_workers(1, timeout=timeout)
        except (TimeoutError, OSError):
            raise ClusterError(
                f"the Dask scheduler at {self.address} has no workers (waited {timeout:g}s): "
                "start some with `dask worker <scheduler address>`"
            ) from None
        here = worker_environment()
        try:
            seen: dict[str, dict[str, str]] = self._client.run(worker_environment)
        except Exception as e:  # the function cannot be unpickled: featurepipe is not there
            raise ClusterError(
                f"the workers of the Dask cluster at {self.address} cannot run featurepipe "
                f"({type(e).__name__}: {e}); install featurepipe {here['featurepipe']} with "
                f"Polars {here['polars']} on every worker"
            ) from None
        for worker, env in sorted(seen.items()):
            if env != here:
                diff = ", ".join(
                    f"{k} {env.get(k)} (here {v})" for k, v in here.items() if env.get(k) != v
                )
                raise ClusterError(
                    f"worker {worker} of the Dask cluster at {self.address} runs {diff}; the "
                    "workers need the same featurepipe, Polars and Python versions as this "
                    "machine for identical results"
                )

    @property
    def workers(self) -> int:
        return len(self._client.scheduler_info()["workers"])

    def run(self, tasks: Sequence[PartitionTask]) -> list[pl.DataFrame]:
        """Every task's result, in the tasks' order; a failed task stops the job."""
        dist = _distributed()
        client = self._client
        run = uuid.uuid4().hex[:8]
        futures = []
        for t in tasks:
            # the label rows go to the cluster as data, the rest of the task is small
            queries = client.scatter(t.queries, hash=False)
            futures.append(
                client.submit(
                    compute_partition,
                    replace(t, queries=t.queries.clear()),
                    queries,
                    key=f"featurepipe-{t.view}-{t.partition}of{t.partitions}-{run}",
                    pure=False,
                )
            )
        where = {f.key: i for i, f in enumerate(futures)}
        out: list[pl.DataFrame | None] = [None] * len(tasks)
        try:
            for future in dist.as_completed(futures):
                i = where[future.key]
                try:
                    out[i] = future.result()
                except FeaturepipeError:
                    raise
                except Exception as e:
                    raise self._failed(tasks[i], e) from None
                future.release()
        finally:
            client.cancel([f for f in futures if not f.done()])
        return [r for r in out if r is not None]

    def states(self, tasks: Sequence[StateTask]) -> Iterator[pl.DataFrame]:
        """Materialization shards (``featurepipe.online.materialize.StateTask``): each result
        as it completes, in any order (the states of distinct entities are independent); a
        failed task stops the job. Workers compute, this process writes to Redis."""
        dist = _distributed()
        client = self._client
        run = uuid.uuid4().hex[:8]
        futures = [
            client.submit(
                _compute_states,
                t,
                key=f"featurepipe-materialize-{t.view}-{t.partition}of{t.partitions}-{run}",
                pure=False,
            )
            for t in tasks
        ]
        where = {f.key: i for i, f in enumerate(futures)}
        try:
            for future in dist.as_completed(futures):
                i = where[future.key]
                try:
                    result: pl.DataFrame = future.result()
                except FeaturepipeError:
                    raise
                except Exception as e:
                    raise self._failed(tasks[i], e) from None
                future.release()
                yield result
        finally:
            client.cancel([f for f in futures if not f.done()])

    def _failed(self, task: PartitionTask | StateTask, e: Exception) -> ClusterError:
        what = (
            f"partition {task.partition} of {task.partitions} of view '{task.view}' failed on "
            f"the Dask cluster at {self.address}"
        )
        if type(e).__name__ == "KilledWorker":
            return ClusterError(
                f"{what}: the worker running it died (most often out of memory): use more "
                "partitions, or workers with more memory"
            )
        hint = ""
        if isinstance(e, FileNotFoundError | OSError) or "No such file" in str(e):
            hint = (
                "; the workers read the source files themselves: they must see them at the "
                "same paths as this machine"
            )
        return ClusterError(f"{what}: {type(e).__name__}: {e}{hint}")

    def close(self) -> None:
        """Disconnect; stop the cluster if this runner started it."""
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None
        if self._cluster is not None:
            with contextlib.suppress(Exception):
                self._cluster.close()
            self._cluster = None


@contextlib.contextmanager
def dask_runner(address: str, *, timeout: float = DEFAULT_TIMEOUT_S) -> Iterator[DaskRunner]:
    """A connected ``DaskRunner``, closed (and its local cluster stopped) on exit."""
    runner = DaskRunner(address, timeout=timeout)
    try:
        yield runner
    finally:
        runner.close()


def _local_workers(address: str) -> int:
    _, _, count = address.partition(":")
    if not count:
        return os.cpu_count() or 1
    if not count.isdigit() or int(count) < 1:
        raise ClusterError(
            f"cluster address '{address}': 'local:N' takes a number of worker processes >= 1"
        )
    return int(count)


def _reachable(address: str, timeout: float) -> None:
    """Fail at once, naming the address, when nothing listens there (Dask itself retries until
    its timeout, then says only that it timed out)."""
    from distributed.comm.addressing import parse_address, parse_host_port

    try:
        scheme, location = parse_address(address)
    except (ValueError, TypeError) as e:
        raise ClusterError(f"cluster address '{address}' is not a Dask address ({e})") from None
    if scheme not in ("tcp", "tls"):
        return  # other transports (ucx, inproc) are Dask's own to check
    try:
        host, port = parse_host_port(location, default_port=8786)
    except (ValueError, TypeError) as e:
        raise ClusterError(
            f"cluster address '{address}': expected host:port, e.g. tcp://10.0.0.5:8786 ({e})"
        ) from None
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as e:
        why = e.strerror or str(e) or type(e).__name__
        raise ClusterError(
            f"cannot reach the Dask scheduler at {address}: {why} (is a scheduler running "
            "there, and is its port open from this machine?)"
        ) from None


__all__ = ["ClusterError", "DaskRunner", "dask_runner"]
