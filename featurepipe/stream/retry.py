"""Riding out online-store and network outages: retry with capped exponential backoff."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import redis

from featurepipe.stream.errors import StreamError

log = logging.getLogger("featurepipe.stream")
T = TypeVar("T")

# a paused or restarting Redis must not kill the worker: it waits, then resumes the batch; so
# must a Redis Cluster moving a slot or failing over (redis-py follows MOVED/ASK and retries
# TRYAGAIN itself, then gives up with ClusterError)
TRANSIENT = (
    redis.ConnectionError,
    redis.TimeoutError,
    OSError,
    redis.exceptions.ClusterError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
    redis.exceptions.SlotNotCoveredError,  # a slot no master serves (during a failover)
)


def transient(e: BaseException) -> bool:
    """Whether ``e`` is an outage to wait out. redis-py raises "no node of the cluster can be
    reached" as a bare ``RedisClusterException`` (not a RedisError), the class of its
    deterministic client errors too (keys of different slots): only the former is waited for."""
    if isinstance(e, TRANSIENT):
        return True
    return isinstance(e, redis.exceptions.RedisClusterException) and "cannot be connected" in str(e)


class Backoff:
    """Calls an operation until it stops failing with a transient error.

    Delays double from ``first`` up to ``cap`` seconds. A stop request turns the next failure
    into ``StreamError`` so that SIGTERM is not blocked by an outage.
    """

    def __init__(
        self,
        stop: threading.Event,
        on_retry: Callable[[], None] = lambda: None,
        *,
        first: float = 0.1,
        cap: float = 5.0,
    ) -> None:
        self.stop = stop
        self.on_retry = on_retry
        self.first = first
        self.cap = cap

    def __call__(self, fn: Callable[[], T]) -> T:
        delay = self.first
        while True:
            try:
                return fn()
            except Exception as e:
                if not transient(e):
                    raise
                self.on_retry()
                log.warning("online store unavailable (%s); retrying in %.1fs", e, delay)
                if self.stop.is_set():
                    raise StreamError(f"stopped while the online store was unavailable: {e}") from e
                time.sleep(delay)
                delay = min(delay * 2, self.cap)
