"""What a server is started with; handed to worker processes through the environment."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

# worker processes are started afresh (spawn): they read their configuration from here
CONFIG_ENV = "FEATUREPIPE_SERVE_CONFIG"
API_KEY_ENV = "FEATUREPIPE_API_KEY"

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 6566  # Feast's feature server port: clients need no change of address
DEFAULT_MAX_BODY = 1 << 20
DEFAULT_MAX_ENTITIES = 1000


@dataclass(frozen=True)
class ServeConfig:
    """A feature server's settings.

    Parameters
    ----------
    repo:
        The project root (``featurepipe.toml`` there sets definitions, Redis URL, prefix).
    definitions:
        The definitions package, relative to ``repo`` (default: the project's).
    redis_url, prefix:
        The online store (default: as for every other command).
    views:
        The views served (default: every view of the definitions); readiness checks these.
    api_key:
        When set, lookups need ``X-API-Key: <key>`` or ``Authorization: Bearer <key>``.
    max_body_bytes, max_entities:
        Larger requests are refused with 413.
    log_sample, log_dir:
        The share of lookups whose served values are logged, and where the Parquet files go.
    lookup_in:
        ``"thread"``: lookups run in a small thread pool, so the event loop keeps accepting
        and parsing while Redis answers; ``"loop"``: on the event loop itself.
    """

    repo: str = "."
    definitions: str | None = None
    redis_url: str | None = None
    prefix: str | None = None
    views: tuple[str, ...] = ()
    api_key: str | None = field(default=None, repr=False)
    max_body_bytes: int = DEFAULT_MAX_BODY
    max_entities: int = DEFAULT_MAX_ENTITIES
    log_sample: float = 0.0
    log_dir: str | None = None
    log_queue: int = 10_000
    log_flush_rows: int = 50_000
    log_flush_seconds: float = 30.0
    lookup_in: str = "thread"
    lookup_threads: int = 4

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls) -> ServeConfig:
        raw = os.environ.get(CONFIG_ENV)
        if not raw:
            return cls()
        data = json.loads(raw)
        data["views"] = tuple(data.get("views") or ())
        return cls(**data)
