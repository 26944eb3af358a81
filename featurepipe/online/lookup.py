"""Online lookups: read states from Redis in one round trip and finalize windows at request time.

A request is a table of entity keys: one column per entity key (``user_id``, ``merchant_id``,
...), one row per request row. Each view is looked up with its own entity key's column, so one
request can join features of views of different entities, row by row (as Feast does). Entity
values must have the key's declared type (the source field's: ``str`` or ``int``); a value of
another type is refused, not looked up under a key that cannot exist.
"""

from __future__ import annotations

import numbers
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

import polars as pl

from featurepipe.compile.polars_rows import PL_TYPES
from featurepipe.compile.python_state import State, ViewProgram
from featurepipe.dsl.definitions import FeatureView
from featurepipe.errors import DataError, FeaturepipeError
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

_INT64 = range(-(2**63), 2**63)
_INT_TEXT = re.compile(r"[+-]?[0-9]+")


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


def entity_kind(view: FeatureView) -> type[int] | type[str]:
    """The Python type of ``view``'s entity values: ``int`` or ``str``, as declared."""
    dtype = view.entity_dtype
    if dtype is DType.INT:
        return int
    if dtype is DType.STR:
        return str
    raise DataError(
        f"view '{view.name}': entity key '{view.entity.key}' is declared {dtype}; the online "
        "store serves entity keys of type str or int"
    )


def check_entities(view: FeatureView, values: Sequence[Any]) -> list[Any]:
    """``values`` as entity values of ``view`` (``int`` or ``str``, as declared).

    Integers of other integral types (NumPy's, for instance) become ``int``; any other type
    (a ``str`` for an int key, a float, a bool, None, an int for a str key) raises
    ``DataError`` naming the entity key, the value and the expected type."""
    kind = entity_kind(view)
    out: list[Any] = []
    for v in values:
        if kind is int:
            ok = isinstance(v, numbers.Integral) and not isinstance(v, bool)
            if ok and int(v) not in _INT64:
                raise DataError(
                    f"entity key '{view.entity.key}' (view '{view.name}') is an int64: "
                    f"{v!r} is out of its range"
                )
            value: Any = int(v) if ok else None
        else:
            ok = isinstance(v, str)
            value = str(v) if ok else None
        if not ok:
            raise DataError(
                f"entity key '{view.entity.key}' (view '{view.name}') is of type "
                f"{kind.__name__}: got {v!r} ({type(v).__name__})"
            )
        out.append(value)
    return out


def parse_entity(view: FeatureView, text: str) -> Any:
    """An entity value of ``view`` given as text (the command line): ``"42"`` is the int 42
    for an int key; text that is not a decimal integer raises ``DataError``."""
    kind = entity_kind(view)
    if kind is str:
        return text
    if not _INT_TEXT.fullmatch(text):
        raise DataError(
            f"entity key '{view.entity.key}' (view '{view.name}') is of type int: "
            f"{text!r} is not an integer"
        )
    return check_entities(view, [int(text)])[0]


def entity_columns(entities: Any) -> dict[str, list[Any]]:
    """A request's entity keys as columns (key -> one value per request row).

    Accepted: a mapping of key -> sequence of values (``{"user_id": ["u1", "u2"]}``), a
    Polars or pandas DataFrame, or a sequence of mappings, one per request row, each holding
    the same keys (``[{"user_id": "u1", "merchant_id": "m1"}, ...]``)."""
    if isinstance(entities, pl.DataFrame):
        return {c: entities[c].to_list() for c in entities.columns}
    if type(entities).__module__.startswith("pandas") and hasattr(entities, "columns"):
        return {str(k): list(v) for k, v in entities.to_dict("list").items()}
    if isinstance(entities, Mapping):
        out: dict[str, list[Any]] = {}
        for k, values in entities.items():
            if not _is_column(values):
                raise DataError(
                    f"entities[{k!r}] must be a list of values, one per request row; got "
                    f"{type(values).__name__} {values!r:.80}"
                )
            out[str(k)] = list(values)
        return out
    if isinstance(entities, Sequence) and not isinstance(entities, str | bytes):
        rows = list(entities)
        if not all(isinstance(r, Mapping) for r in rows):
            raise DataError(
                "entities as a list must hold one mapping per request row "
                "(e.g. [{'user_id': 'u1'}, ...])"
            )
        names: list[str] = []
        for r in rows:
            names += [k for k in r if k not in names]
        for i, r in enumerate(rows):
            lacking = [k for k in names if k not in r]
            if lacking:
                raise DataError(
                    f"entity row {i} lacks {', '.join(map(repr, lacking))}: every row must "
                    f"hold the same keys ({', '.join(map(repr, names))})"
                )
        return {k: [r[k] for r in rows] for k in names}
    raise DataError(
        f"entities of type {type(entities).__name__} are not supported: pass a mapping of "
        "entity key -> values, a DataFrame, or a list of mappings (one per request row)"
    )


def _is_column(values: Any) -> bool:
    """A list, tuple, Series or array of values (not a string or a mapping, nor a set)."""
    if isinstance(values, str | bytes | Mapping):
        return False
    return isinstance(values, Sequence | pl.Series) or hasattr(values, "__array__")


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
        """One dict per entity: requested features (and ``<view>_found``), as of ``at_us``.

        Every view of ``wanted`` is looked up with ``entities`` (views of one entity key;
        ``read_keyed`` serves views of several)."""
        per_view = {name: check_entities(self.views[name], entities) for name in wanted}
        return self._read(per_view, len(entities), wanted, at_us, fingerprints)

    def keys_of(self, wanted: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
        """The entity keys of the views in ``wanted``, in request order, each with its views."""
        out: dict[str, list[str]] = {}
        for name in wanted:
            out.setdefault(self.views[name].entity.key, []).append(name)
        return out

    def check_keys(
        self, keys: Mapping[str, Sequence[Any]], wanted: Mapping[str, Sequence[str]]
    ) -> dict[str, list[Any]]:
        """``keys`` checked against the views of ``wanted``: exactly their entity keys, one
        value per request row each, of the declared types. Returns the normalized columns
        in the order of ``keys_of``."""
        needed = self.keys_of(wanted)
        known = "; ".join(f"'{k}' ({', '.join(names)})" for k, names in needed.items())
        unknown = [k for k in keys if k not in needed]
        if unknown:
            raise DataError(
                f"unknown entity key {', '.join(map(repr, unknown))}: the requested views are "
                f"keyed by {known}"
            )
        missing = [k for k in needed if k not in keys]
        if missing:
            raise DataError(
                f"entities lack {', '.join(map(repr, missing))}: the requested views are keyed "
                f"by {known} (got {', '.join(map(repr, keys)) or 'no key'})"
            )
        lengths = {k: len(keys[k]) for k in needed}
        if len(set(lengths.values())) > 1:
            raise DataError(
                "the entity keys must give one value per request row each; got "
                + ", ".join(f"{n} for '{k}'" for k, n in lengths.items())
            )
        return {k: check_entities(self.views[names[0]], keys[k]) for k, names in needed.items()}

    def read_keyed(
        self,
        keys: Mapping[str, Sequence[Any]],
        wanted: Mapping[str, Sequence[str]],
        *,
        at_us: int | None = None,
        fingerprints: Mapping[str, str] | None = None,
    ) -> list[dict[str, Any]]:
        """One dict per request row: requested features (and ``<view>_found``), as of ``at_us``.

        ``keys`` maps each entity key of the views of ``wanted`` to its column (one value per
        request row); each view is looked up with its own key's column. The keys are not
        repeated in the rows. Every view's states are read in one Redis round trip."""
        return self._read_columns(self.check_keys(keys, wanted), wanted, at_us, fingerprints)

    def _read_columns(
        self,
        columns: Mapping[str, list[Any]],
        wanted: Mapping[str, Sequence[str]],
        at_us: int | None = None,
        fingerprints: Mapping[str, str] | None = None,
    ) -> list[dict[str, Any]]:
        per_view = {name: columns[self.views[name].entity.key] for name in wanted}
        n = len(next(iter(columns.values()), []))
        return self._read(per_view, n, wanted, at_us, fingerprints)

    def _read(
        self,
        per_view: Mapping[str, list[Any]],
        n: int,
        wanted: Mapping[str, Sequence[str]],
        at_us: int | None,
        fingerprints: Mapping[str, str] | None,
    ) -> list[dict[str, Any]]:
        """``per_view``: each view's entity of every request row (checked values)."""
        t = at_us if at_us is not None else time.time_ns() // 1000
        _check_columns([], wanted)
        _check_pins(fingerprints or {}, wanted)
        for name in wanted:
            view = self.views[name]
            pinned = (fingerprints or {}).get(name)
            if pinned is not None and pinned != view.fingerprint:
                raise VersionMismatchError(
                    f"view '{name}': version {pinned} was requested but {view.fingerprint} is served"
                )
        # each (view, entity) once; every view in the same round trip
        order = list(dict.fromkeys((name, e) for name in wanted for e in per_view[name]))
        # an emptied or uninitialized store raises here: its "not found" would be a lie
        stored = self.store.read_states_in_generation(
            [(self.views[name], e) for name, e in order], self.generation
        )
        answers: dict[tuple[str, Any], tuple[dict[str, Any], bool]] = {}
        for (name, e), got in zip(order, stored, strict=True):
            view = self.views[name]
            prog = self.programs[name]
            served = got.fingerprint if got is not None else None
            if served is not None and served != view.fingerprint:
                raise VersionMismatchError(
                    f"view '{name}': the online store serves version {served} for entity {e!r}, "
                    f"the loaded definitions are {view.fingerprint}. To serve "
                    f"{view.fingerprint}, run `featurepipe materialize --until <cut-over>` (or "
                    "`featurepipe recover --until <cut-over>` when a stream worker feeds the "
                    f"store); to keep serving {served}, look up with that version's definitions "
                    "(`--defs`)"
                )
            state = None if got is None else _decode(prog, name, e, got)
            # a read further than the view's lateness behind the entity's newest event raises
            # StateError (naming the view and the times) rather than answering another instant
            values = prog.query(state, t)
            answers[(name, e)] = (
                dict(zip(prog.feature_names, values, strict=True)),
                got is not None,
            )
        rows: list[dict[str, Any]] = [{} for _ in range(n)]
        for name in wanted:
            for row, e in zip(rows, per_view[name], strict=True):
                feats, found = answers[(name, e)]
                for f in wanted[name]:
                    row[f] = feats[f]
                row[f"{name}{FOUND}"] = found
        return rows

    def frame(
        self,
        keys: Mapping[str, Sequence[Any]],
        wanted: Mapping[str, Sequence[str]],
        **kwargs: Any,
    ) -> pl.DataFrame:
        """``read_keyed`` as a DataFrame: one row per request row; the entity key columns (in
        the order of the requested views), then per view its features and ``<view>_found``."""
        columns = self.check_keys(keys, wanted)
        _check_columns(list(columns), wanted)
        rows = self._read_columns(columns, wanted, **kwargs)
        schema: dict[str, Any] = {
            k: PL_TYPES[self.views[names[0]].entity_dtype]
            for k, names in self.keys_of(wanted).items()
        }
        for name, feats in wanted.items():
            view = self.views[name]
            for f in feats:
                dtype = view.ir.feature(f).expr.dtype
                schema[f] = PL_TYPES[dtype]
            schema[f"{name}{FOUND}"] = pl.Boolean
        df = pl.DataFrame(
            [{**{k: col[i] for k, col in columns.items()}, **r} for i, r in enumerate(rows)],
            schema=schema,
        )
        for name, feats in wanted.items():
            for f in feats:
                if self.views[name].ir.feature(f).expr.dtype is DType.DATETIME:
                    df = df.with_columns(pl.col(f).cast(pl.Datetime("us", "UTC")))
        return df


def _check_pins(pins: Mapping[str, str], wanted: Mapping[str, Sequence[str]]) -> None:
    """Every pinned view is a requested one: a pin of another view (a typo, or a view left out
    of the request) would otherwise pin nothing."""
    stray = {name: fp for name, fp in pins.items() if name not in wanted}
    if stray:
        s = "s" if len(stray) > 1 else ""
        raise DataError(
            f"fingerprint pin{s} {', '.join(f'{k}={v}' for k, v in stray.items())}: no "
            f"requested view of that name (the requested views are "
            f"{', '.join(map(repr, wanted))}); pin one of them, or request the view"
        )


def _check_columns(keys: list[str], wanted: Mapping[str, Sequence[str]]) -> None:
    """Every output column once: a feature named like another view's feature (or a key, or a
    ``<view>_found`` column) would overwrite it."""
    seen: dict[str, str] = {k: "an entity key" for k in keys}
    for name, feats in wanted.items():
        for col in [*feats, f"{name}{FOUND}"]:
            if col in seen:
                raise DataError(
                    f"column '{col}' of view '{name}' clashes with {seen[col]} in the same "
                    "lookup: request these views in separate lookups"
                )
            seen[col] = f"view '{name}'"
