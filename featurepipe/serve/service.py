"""Lookups for the HTTP endpoints, through the code path of ``FeatureStore.get_online_features``.

``FeatureStore.get_online_features`` resolves the references (``FeatureStore.resolve``), takes
the entity and request columns (``entity_columns``, ``request_columns``) and reads them with an
``OnlineReader`` (``read_keyed``). The server does exactly that, with one reader over every
served view, made once and shared by every request (the facade keeps one reader per set of
views, rebuilt when a lookup asks for another set, and is not meant to be shared by threads).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from featurepipe.dsl.definitions import FeatureView
from featurepipe.ir.types import DType
from featurepipe.online.lookup import OnlineReader, entity_columns, request_columns
from featurepipe.online.served_log import Lookup as Lookup  # what the log records
from featurepipe.serve.config import ServeConfig
from featurepipe.serve.errors import ServeError
from featurepipe.store import FeatureStore


class LookupService:
    """The served views of a project and the reader over them."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.store = FeatureStore(
            config.repo, config.definitions, redis_url=config.redis_url, prefix=config.prefix
        )
        names = list(config.views) or sorted(self.store.definitions.views)
        self.views: dict[str, FeatureView] = {n: self.store.definitions.view(n) for n in names}
        self.dtypes = {
            name: {f: v.ir.feature(f).expr.dtype for f in v.feature_names}
            for name, v in self.views.items()
        }
        self.request_fields = {name: dict(v.ir.request_fields) for name, v in self.views.items()}
        self._reader: OnlineReader | None = None
        self._lock = threading.Lock()

    @property
    def prefix(self) -> str:
        return self.store.prefix

    def reader(self) -> OnlineReader:
        """The shared reader, connected on first use (a server starts without Redis, then
        answers 503 until Redis is reachable)."""
        reader = self._reader
        if reader is None:
            with self._lock:
                if self._reader is None:
                    from featurepipe.online.redis_conn import connect

                    client = connect(self.store.redis_url, project=self.store.project)
                    self._reader = OnlineReader(client, list(self.views.values()), self.prefix)
                reader = self._reader
        return reader

    def resolve(self, features: Sequence[Any]) -> dict[str, list[str]]:
        """``FeatureStore.resolve`` of the references, limited to the served views."""
        if not features:
            raise ServeError(400, "bad_request", "'features' is empty: name at least one")
        bad = [f for f in features if not isinstance(f, str)]
        if bad:
            raise ServeError(
                400,
                "bad_request",
                f"'features' must hold 'view:feature' or 'view' strings; got {bad[0]!r:.80}",
            )
        wanted = self.store.resolve(features)
        stray = [v for v in wanted if v not in self.views]
        if stray:
            raise ServeError(
                400,
                "unknown_feature",
                f"view {stray[0]!r} is not served here (served: {', '.join(self.views)})",
            )
        return wanted

    def fields_of(self, wanted: Mapping[str, Sequence[str]]) -> dict[str, DType]:
        """Every request field the views of ``wanted`` declare, with its type."""
        out: dict[str, DType] = {}
        for name in wanted:
            for field, dtype in self.request_fields[name].items():
                out.setdefault(field, dtype)
        return out

    def lookup(
        self,
        wanted: dict[str, list[str]],
        entities: Any,
        *,
        request: Any = None,
        at_us: int | None = None,
        pins: Mapping[str, str] | None = None,
        max_entities: int | None = None,
    ) -> Lookup:
        """Read ``wanted`` for the request rows of ``entities`` (checked as the facade does)."""
        keys = entity_columns(entities)
        n = max((len(c) for c in keys.values()), default=0)
        limit = self.config.max_entities if max_entities is None else max_entities
        if n > limit:
            raise ServeError(
                413,
                "too_many_entities",
                f"{n} entity rows in one request; at most {limit} are served per request "
                "(split the request)",
            )
        req = None if request is None else request_columns(request)
        t = at_us if at_us is not None else time.time_ns() // 1000
        rows = self.reader().read_keyed(
            keys, wanted, at_us=t, fingerprints=dict(pins or {}), request=req
        )
        served = {name: self.views[name].fingerprint for name in wanted}
        return Lookup(wanted, keys, req, t, rows, served)
