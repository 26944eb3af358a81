"""HTTP statuses of featurepipe's errors: bad input is a 4xx naming the problem, never a 500."""

from __future__ import annotations

from typing import NamedTuple

import redis

from featurepipe.errors import DataError, DefinitionError, FeaturepipeError, StateError
from featurepipe.online.errors import OnlineStoreError
from featurepipe.online.lookup import UnservableEntityError, VersionMismatchError
from featurepipe.online.state_store import StoreIdentityError


class ServeError(FeaturepipeError):
    """A request the server refuses, with its HTTP status and a stable error code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class Problem(NamedTuple):
    """What an error answers: HTTP status, stable code, message."""

    status: int
    code: str
    message: str


# a Redis Cluster resharding or failing over
_CLUSTER_UNAVAILABLE = (
    redis.exceptions.ClusterError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
    redis.exceptions.SlotNotCoveredError,
)


def problem(exc: BaseException) -> Problem | None:
    """The HTTP answer for ``exc``; None for an unexpected error (a bug: 500, logged)."""
    if isinstance(exc, ServeError):
        return Problem(exc.status, exc.code, str(exc))
    if isinstance(exc, VersionMismatchError):
        return Problem(409, "version_mismatch", str(exc))
    if isinstance(exc, DefinitionError):  # unknown view or feature
        return Problem(400, "unknown_feature", str(exc))
    if isinstance(exc, DataError):  # entity keys, request fields, pins
        return Problem(400, "bad_request", str(exc))
    if isinstance(exc, StateError):  # e.g. a request time older than the retention
        return Problem(422, "unanswerable", str(exc))
    if isinstance(exc, UnservableEntityError):  # quarantined: only `recover` helps
        return Problem(422, "unservable_entity", str(exc))
    if isinstance(exc, StoreIdentityError):  # emptied, not initialized, being materialized
        return Problem(503, "store_not_ready", str(exc))
    if isinstance(exc, OnlineStoreError):
        return Problem(503, "store_unavailable", str(exc))
    if isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
        return Problem(503, "store_unavailable", f"the online store cannot be reached: {exc}")
    if isinstance(exc, _CLUSTER_UNAVAILABLE) or (
        # no node reachable: redis-py's bare RedisClusterException, like its client errors
        isinstance(exc, redis.exceptions.RedisClusterException)
        and "cannot be connected" in str(exc)
    ):
        return Problem(503, "store_unavailable", f"the online store is unavailable: {exc}")
    if isinstance(exc, FeaturepipeError):
        return Problem(400, "bad_request", str(exc))
    return None
