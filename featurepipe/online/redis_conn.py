"""Opening a checked connection to the online store.

Where the URL comes from, first match wins:

1. the ``url`` argument (the CLI's ``--redis-url``);
2. the environment variable ``REDIS_URL``;
3. the embedded server recorded by ``featurepipe dev up`` (``.featurepipe/dev.json``);
4. ``redis://127.0.0.1:6379/0``.

URLs are handed to redis-py as they are: ``rediss://`` for TLS (``?ssl_cert_reqs=...`` and the
other query options apply), ``redis://user:password@host:port/db`` for AUTH/ACL,
``unix:///path/to/socket``. Passwords are masked in every message, in every form (as written,
percent-encoded or decoded); a password holding an unencoded ``/``, ``?`` or ``#`` is refused
before any client sees it (a URL parser would take part of it for the host or the path, and
print it), with a message saying to percent-encode it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import redis

from featurepipe.online.errors import OnlineStoreError
from featurepipe.project import Project
from featurepipe.settings import configured_redis_url, redact_url, scrub, unencoded_credentials

ENV_VAR = "REDIS_URL"
DEFAULT_URL = "redis://127.0.0.1:6379/0"
SCHEMES = ("redis", "rediss", "unix")


def dev_server_url(project: Project | None = None) -> str | None:
    """URL of the embedded server started by ``featurepipe dev up``, if one is recorded."""
    from featurepipe.settings import dev_redis_url

    return dev_redis_url(project)


def resolve_url(url: str | None = None, project: Project | None = None) -> tuple[str, str]:
    """(URL, where it came from): ``url``, else $REDIS_URL, else the project's ``redis_url``,
    else its ``dev up`` record, else the default. ``project`` defaults to the active one."""
    if url:
        return url, "argument"
    env = os.environ.get(ENV_VAR)
    if env:
        return env, f"${ENV_VAR}"
    configured = configured_redis_url(project)
    if configured:
        return configured, "project configuration"
    dev = dev_server_url(project)
    if dev:
        return dev, "featurepipe dev up"
    return DEFAULT_URL, "default"


def redact(url: str) -> str:
    """The URL with its password and secret query options replaced by ``***``."""
    return redact_url(url)


def connect(
    url: str | None = None, *, timeout: float = 5.0, project: Project | None = None
) -> redis.Redis | redis.RedisCluster:
    """A client for the online store, checked with PING; raises OnlineStoreError naming the URL.

    The URL of a Redis Cluster node gives a cluster client (``redis.RedisCluster``), with which
    the store keeps its keys by Kafka partition (``featurepipe.online.state_store.open_store``;
    docs/online-store.md, "Redis Cluster").

    The client returns bytes (``decode_responses=False``): state values are binary. Without
    ``url`` the URL comes from ``resolve_url`` for ``project``.
    """
    resolved, origin = resolve_url(url, project)
    shown = redact(resolved)
    scheme = resolved.partition("://")[0].lower() if "://" in resolved else ""
    if scheme not in SCHEMES:
        raise OnlineStoreError(
            f"online store URL {shown!r} ({origin}) is not a Redis URL: use "
            "redis://host:port/db, rediss://... (TLS) or unix:///path"
        )
    if unencoded_credentials(resolved):
        raise OnlineStoreError(
            f"online store URL {shown!r} ({origin}): the user name or password holds an "
            "unencoded '/', '?' or '#' (or an '@' follows the host): percent-encode them "
            "('/' as %2F, '?' as %3F, '#' as %23, '@' as %40, '%' as %25)"
        )
    try:
        client = redis.Redis.from_url(
            resolved,
            socket_connect_timeout=timeout,
            socket_timeout=max(timeout, 60.0),
            decode_responses=False,
        )
    except ValueError as e:
        raise OnlineStoreError(
            f"invalid online store URL {shown!r} ({origin}): {scrub(str(e), resolved)}"
        ) from None
    try:
        # one round trip: PING checks the connection (its error is the one reported), INFO
        # cluster and HELLO (no arguments: the protocol stays) tell a cluster node; either may
        # be refused (ACL, an older server) without failing the connection
        pipe = client.pipeline(transaction=False)
        pipe.ping()
        pipe.info("cluster")
        pipe.execute_command("HELLO")  # type: ignore[no-untyped-call]
        pong, info, hello = pipe.execute(raise_on_error=False)
        if isinstance(pong, Exception):
            raise pong
    except redis.exceptions.AuthenticationError as e:
        client.close()
        raise OnlineStoreError(
            f"Redis at {shown} ({origin}) refused the credentials: {scrub(str(e), resolved)}"
        ) from e
    except redis.exceptions.RedisError as e:
        client.close()
        raise OnlineStoreError(
            f"cannot reach Redis at {shown} ({origin}): {scrub(str(e), resolved)}"
        ) from e
    if _cluster_mode(info, hello):
        # a cluster: the store lays its keys out by Kafka partition (docs/online-store.md)
        client.close()
        return _cluster_client(resolved, shown, origin, timeout)
    return client


def _cluster_client(resolved: str, shown: str, origin: str, timeout: float) -> redis.RedisCluster:
    """A cluster client from the URL of any node (it discovers the others), checked."""
    try:
        cluster = redis.RedisCluster.from_url(
            resolved,
            socket_connect_timeout=timeout,
            socket_timeout=max(timeout, 60.0),
            decode_responses=False,
        )
        cluster.ping()
    except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException) as e:
        raise OnlineStoreError(
            f"Redis Cluster at {shown} ({origin}) cannot be used: {scrub(str(e), resolved)} "
            "(a cluster client asks a node for the slot map: the user needs CLUSTER SLOTS, "
            "ACL +cluster|slots, besides reads and writes)"
        ) from e
    return cluster


def _cluster_mode(info: Any, hello: Any) -> bool:
    """Whether the replies to ``INFO cluster`` and ``HELLO`` (either may be an exception: the
    command was refused) say the server runs in cluster mode."""
    if isinstance(info, Mapping) and str(info.get("cluster_enabled", "0")) == "1":
        return True
    if isinstance(hello, list | tuple):  # RESP2: a flat list of names and values
        hello = dict(zip(hello[::2], hello[1::2], strict=False))
    if isinstance(hello, Mapping):
        mode = hello.get(b"mode", hello.get("mode"))
        return (mode.decode() if isinstance(mode, bytes) else mode) == "cluster"
    return False
