"""Online lookups: read states from Redis in one round trip and finalize windows at request time."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import polars as pl

from featurepipe.compile.polars_rows import PL_TYPES
from featurepipe.compile.python_state import State, ViewProgram
from featurepipe.dsl.definitions import FeatureView
from featurepipe.errors import FeaturepipeError
from featurepipe.ir.types import DType
from featurepipe.online.errors import OnlineStoreError
from featurepipe.online.state_store import (
    DEFAULT_PREFIX,
    MAX_STATE_BYTES,
    Client,
    StateStore,
    StoredState,
)

FOUND = "_found"  # per view: whether the entity had any online state


class VersionMismatchError(FeaturepipeError):
    """The caller pinned a view version that is not the one served."""


class UnservableEntityError(OnlineStoreError):
    """An entity's stored state cannot be served (quarantined or undecodable): the lookup
    refuses it rather than answering defaults or a partial value."""


def _decode(prog: ViewProgram, view: str, entity: Any, got: StoredState) -> State:
    if got.state is None:
        raise UnservableEntityError(
            f"view '{view}', entity {entity!r}: quarantined ({got.quarantine}); "
            "`featurepipe recover` rebuilds it"
        )
    if len(got.state) > MAX_STATE_BYTES:
        raise UnservableEntityError(
            f"view '{view}', entity {entity!r}: the stored state is {len(got.state):,} bytes, "
            f"more than the {MAX_STATE_BYTES:,} a reader decodes"
        )
    try:
        return prog.loads(got.state)
    except Exception as e:  # any decoding failure: corrupt bytes, wrong shape
        raise UnservableEntityError(
            f"view '{view}', entity {entity!r}: the stored state ({len(got.state):,} bytes) "
            f"cannot be decoded ({type(e).__name__}); `featurepipe recover` rebuilds it"
        ) from None


class OnlineReader:
    """Reads features of many entities of several views in one Redis round trip."""

    def __init__(
        self,
        client: Client,
        views: Sequence[FeatureView],
        prefix: str = DEFAULT_PREFIX,
        *,
        generation: str | None = None,
    ) -> None:
        """``generation`` pins the store epoch: a lookup in any other raises."""
        self.client = client
        self.generation = generation
        self.store = StateStore(client, prefix)
        self.views = {v.name: v for v in views}
        self.programs = {v.name: ViewProgram(v.ir) for v in views}

    def read(
        self,
        entities: Sequence[Any],
        wanted: Mapping[str, Sequence[str]],
        *,
        at_us: int | None = None,
        fingerprints: Mapping[str, str] | None = None,
    ) -> list[dict[str, Any]]:
        """One dict per entity: requested features (and ``<view>_found``), as of ``at_us``."""
        t = at_us if at_us is not None else time.time_ns() // 1000
        order = [(name, e) for name in wanted for e in entities]
        # an emptied or uninitialized store raises here: its "not found" would be a lie
        stored = self.store.read_states_in_generation(
            [(self.views[name], e) for name, e in order], self.generation
        )
        rows: list[dict[str, Any]] = [{} for _ in entities]
        index: dict[Any, list[int]] = {}
        for i, e in enumerate(entities):
            index.setdefault(e, []).append(i)
        for (name, e), got in zip(order, stored, strict=True):
            view = self.views[name]
            prog = self.programs[name]
            served = got.fingerprint if got is not None else None
            if served is not None and served != view.fingerprint:
                raise VersionMismatchError(
                    f"view '{name}': the online store serves version {served} for entity {e!r}, "
                    f"the loaded definitions are {view.fingerprint}"
                )
            pinned = (fingerprints or {}).get(name)
            if pinned is not None and pinned != view.fingerprint:
                raise VersionMismatchError(
                    f"view '{name}': version {pinned} was requested but {view.fingerprint} is served"
                )
            state = None if got is None else _decode(prog, name, e, got)
            # a read further than the view's lateness behind the entity's newest event raises
            # StateError (naming the view and the times) rather than answering another instant
            values = prog.query(state, t)
            feats = dict(zip(prog.feature_names, values, strict=True))
            for pos in index[e]:
                row = rows[pos]
                for f in wanted[name]:
                    row[f] = feats[f]
                row[f"{name}{FOUND}"] = got is not None
        return rows

    def frame(
        self,
        key: str,
        entities: Sequence[Any],
        wanted: Mapping[str, Sequence[str]],
        **kwargs: Any,
    ) -> pl.DataFrame:
        rows = self.read(entities, wanted, **kwargs)
        schema: dict[str, Any] = {
            key: pl.String if entities and isinstance(entities[0], str) else pl.Int64
        }
        for name, feats in wanted.items():
            view = self.views[name]
            for f in feats:
                dtype = view.ir.feature(f).expr.dtype
                schema[f] = PL_TYPES[dtype]
            schema[f"{name}{FOUND}"] = pl.Boolean
        df = pl.DataFrame(
            [{key: e, **r} for e, r in zip(entities, rows, strict=True)], schema=schema
        )
        for name, feats in wanted.items():
            for f in feats:
                if self.views[name].ir.feature(f).expr.dtype is DType.DATETIME:
                    df = df.with_columns(pl.col(f).cast(pl.Datetime("us", "UTC")))
        return df
