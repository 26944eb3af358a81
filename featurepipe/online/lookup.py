"""Online lookups: read states from Redis in one round trip and finalize windows at request time.

A request is a table of entity keys: one column per entity key (``user_id``, ``merchant_id``,
...), one row per request row. Each view is looked up with its own entity key's column, so one
request can join features of views of different entities, row by row (as Feast does). Entity
values must have the key's declared type (the source field's: ``str`` or ``int``); a value of
another type is refused, not looked up under a key that cannot exist.

A lookup reads every state it needs, with the store's generation and materialization checks, in
one transaction (``StateStore.fetch_states_in_generation``; a pipeline on a cluster or a
server that refuses transactions), then answers each (view, entity) once. ``AnswerCache`` keeps
recent answers: one is reused only for the very state bytes just read and for request times at
which the query cannot differ (``answer_span``), so a reused answer is the computed one, bit for
bit. ``OnlineReader._read_one_by_one`` is the straightforward reading the tests hold this to.

Views with request fields (``fp.request``) also take the request's values, one per request row
(``request={"amount": [12.5, 3.0]}``), checked against the declared types. Their answers depend
on the request: each entity's state is still read and decoded once, then queried once per
request row, and the cache neither serves nor keeps them.
"""

from __future__ import annotations

import numbers
import re
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from operator import itemgetter
from typing import Any, NamedTuple

import polars as pl

from featurepipe.compile.polars_rows import PL_TYPES, edge_type, map_entries
from featurepipe.compile.python_state import NO_TS, REC_TS, State, ViewProgram
from featurepipe.dsl.definitions import FeatureView
from featurepipe.errors import DataError, FeaturepipeError
from featurepipe.ir.aggs import kind_of
from featurepipe.ir.entity_keys import compose_values
from featurepipe.ir.timebase import to_epoch_us
from featurepipe.ir.types import DType
from featurepipe.kernels import last_visible, window_start
from featurepipe.online.errors import OnlineStoreError
from featurepipe.online.state_store import (
    DEFAULT_PREFIX,
    MAX_STATE_BYTES,
    Client,
    StoredState,
    open_store,
)

FOUND = "_found"  # per view: whether the entity had any online state
# what a reader keeps of recent answers by default (OnlineReader(cache_bytes=...); 0: nothing)
DEFAULT_CACHE_BYTES = 64 << 20

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
    parts = view.entity.parts
    if view.entity.composite:
        columns: list[list[Any]] = [[] for _ in parts]
        for v in values:
            if not isinstance(v, tuple | list) or len(v) != len(parts):
                raise DataError(
                    f"view '{view.name}' is keyed by ({', '.join(parts)}): give each entity as a "
                    f"tuple of {len(parts)} values, got {v!r:.80}"
                )
            for column, part in zip(columns, v, strict=True):
                column.append(part)
        return compose_columns(view, dict(zip(parts, columns, strict=True)))
    return check_key_column(view, view.entity.key, values)


def compose_columns(view: FeatureView, columns: Mapping[str, Sequence[Any]]) -> list[Any]:
    """The composite key of each row of ``columns`` (each key part's column, checked)."""
    checked = [check_key_column(view, p, columns[p]) for p in view.entity.parts]
    return [compose_values(row) for row in zip(*checked, strict=True)]


def check_key_column(view: FeatureView, key: str, values: Sequence[Any]) -> list[Any]:
    """``values`` checked against the type of the key field ``key`` of ``view``."""
    dtype = view.source.fields[key][0]
    kind: type[int] | type[str] = int if dtype is DType.INT else str
    out: list[Any] = []
    for v in values:
        if kind is int:
            ok = isinstance(v, numbers.Integral) and not isinstance(v, bool)
            if ok and int(v) not in _INT64:
                raise DataError(
                    f"entity key '{key}' (view '{view.name}') is an int64: "
                    f"{v!r} is out of its range"
                )
            value: Any = int(v) if ok else None
        else:
            ok = isinstance(v, str)
            value = str(v) if ok else None
        if not ok:
            raise DataError(
                f"entity key '{key}' (view '{view.name}') is of type "
                f"{kind.__name__}: got {v!r} ({type(v).__name__})"
            )
        out.append(value)
    return out


def parse_entity(view: FeatureView, text: str, key: str | None = None) -> Any:
    """A value of the key field ``key`` (default: the view's entity key) given as text (the
    command line): ``"42"`` is the int 42 for an int key; text that is not a decimal integer
    raises ``DataError``."""
    key = key or view.entity.key
    if view.source.fields[key][0] is not DType.INT:
        return text
    if not _INT_TEXT.fullmatch(text):
        raise DataError(
            f"entity key '{key}' (view '{view.name}') is of type int: {text!r} is not an integer"
        )
    return check_key_column(view, key, [int(text)])[0]


def entity_columns(entities: Any) -> dict[str, list[Any]]:
    """A request's entity keys as columns (key -> one value per request row).

    Accepted: a mapping of key -> sequence of values (``{"user_id": ["u1", "u2"]}``), a
    Polars or pandas DataFrame, or a sequence of mappings, one per request row, each holding
    the same keys (``[{"user_id": "u1", "merchant_id": "m1"}, ...]``)."""
    columns = _as_columns(entities, "entities")
    if columns is not None:
        return columns
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


def request_columns(request: Any) -> dict[str, list[Any]]:
    """A request's values (``fp.request`` fields) as columns (field -> one value per request
    row): from a mapping of field -> sequence of values (``{"amount": [12.5, 3.0]}``) or a
    Polars or pandas DataFrame."""
    columns = _as_columns(request, "request")
    if columns is not None:
        return columns
    raise DataError(
        f"a request of type {type(request).__name__} is not supported: pass a mapping of "
        "request field -> values (one per request row) or a DataFrame"
    )


def _request_value(dtype: DType, v: Any) -> tuple[bool, Any]:
    """(accepted, value in the IR's representation) of ``v`` for a request field ``dtype``:
    None (null) always; a float or an int (not a bool) for a float; an int (not a bool) within
    int64 for an int; a str for a str; a bool for a bool; an aware datetime for a datetime
    (as epoch microseconds)."""
    if v is None:
        return True, None
    integral = isinstance(v, numbers.Integral) and not isinstance(v, bool)
    if dtype is DType.FLOAT:
        if isinstance(v, float):
            return True, float(v)
        if integral:
            try:
                return True, float(v)
            except OverflowError:  # an int beyond the float range
                return False, None
        return False, None
    if dtype is DType.INT:
        ok = integral and int(v) in _INT64
        return ok, int(v) if ok else None
    if dtype is DType.STR:
        return isinstance(v, str), str(v) if isinstance(v, str) else None
    if dtype is DType.BOOL:
        return isinstance(v, bool), v if isinstance(v, bool) else None
    if isinstance(v, datetime) and v.utcoffset() is not None:
        return True, to_epoch_us(v)
    return False, None


_EXPECTED = {
    DType.FLOAT: "a float or an int",
    DType.INT: "an int within int64",
    DType.STR: "a str",
    DType.BOOL: "a bool",
    DType.DATETIME: "a timezone-aware datetime",
}


def check_request(
    fields: Mapping[str, Sequence[tuple[str, DType]]],
    request: Mapping[str, Sequence[Any]] | None,
    n: int,
    allowed: Mapping[str, Sequence[tuple[str, DType]]] | None = None,
) -> dict[tuple[str, DType], list[Any]]:
    """The request fields the views read (``fields``: view name -> its (field, declared type)
    pairs, ``ViewIR.request_fields``), taken from ``request`` (field -> one value per request
    row, ``n`` rows): (field, declared type) -> its values in the IR's representation
    (datetimes as epoch microseconds; None is null).

    Raises ``DataError`` for a field a view reads that the request lacks (naming the view, the
    field and its type), a field no view reads (a typo would otherwise pass silently; fields
    in ``allowed``, read by the views but not by the requested features, are ignored), a
    column of another length than ``n``, and a value not of the declared type (naming the
    field, the row and the value)."""
    given = request or {}
    needed: dict[str, list[tuple[str, DType]]] = {}
    for view, declared in fields.items():
        for field, dtype in declared:
            needed.setdefault(field, []).append((view, dtype))
    if not needed and not given:
        return {}
    # fields of the views that the requested features do not read: not required, but checked
    # when given (a wrong value is a mistake even where it is not used)
    known = {f: list(users) for f, users in needed.items()}
    for view, declared in (allowed or {}).items():
        for field, dtype in declared:
            if field in given and (view, dtype) not in known.setdefault(field, []):
                known[field].append((view, dtype))
    unknown = [f for f in given if f not in known]
    if unknown:
        s = "s" if len(unknown) > 1 else ""
        read = "; ".join(
            f"'{f}' ({', '.join(f'{d} in {v}' for v, d in users)})" for f, users in needed.items()
        )
        others = ", ".join(repr(f) for fs in (allowed or {}).values() for f, _ in fs)
        raise DataError(
            f"unknown request field{s} {', '.join(map(repr, unknown))}: the requested views "
            + (
                f"read {read}"
                if needed
                else f"read no request field for these features (theirs: {others})"
                if others
                else "read no request field"
            )
        )
    for field, users in needed.items():
        if field not in given:
            reader, dtype = users[0]
            raise DataError(
                f"view '{reader}' reads the request field '{field}' ({dtype}): the request lacks "
                f"it (give one value per request row: request={{'{field}': [...]}}, on the "
                f"command line --request {field}=<{dtype}>)"
            )
    out: dict[tuple[str, DType], list[Any]] = {}
    for field, users in known.items():
        if field not in given:
            continue
        values = given[field]
        if len(values) != n:
            raise DataError(
                f"request field '{field}' gives {len(values)} value(s) for {n} request row(s): "
                "give one value per request row"
            )
        for reader, dtype in users:
            if (field, dtype) in out:
                continue
            column: list[Any] = []
            for i, v in enumerate(values):
                ok, value = _request_value(dtype, v)
                if not ok:
                    raise DataError(
                        f"request field '{field}' (view '{reader}') is declared {dtype}: row {i} "
                        f"holds {v!r:.80} ({type(v).__name__}); expected {_EXPECTED[dtype]} "
                        "or None"
                    )
                column.append(value)
            out[(field, dtype)] = column
    return out


def parse_request_value(field: str, dtype: DType, text: str) -> Any:
    """A value of the request field ``field`` declared ``dtype``, given as text (the command
    line): an int, a float, ``true``/``false``, text as is, or an ISO-8601 date-time with a
    timezone (an aware ``datetime``). Text that is not of the type raises ``DataError``."""
    what = f"request field '{field}' is declared {dtype}"
    if dtype is DType.STR:
        return text
    if dtype is DType.INT:
        if _INT_TEXT.fullmatch(text.strip()) and int(text) in _INT64:
            return int(text)
        raise DataError(f"{what}: {text!r} is not an integer within int64")
    if dtype is DType.FLOAT:
        try:
            return float(text)
        except ValueError:
            raise DataError(f"{what}: {text!r} is not a number") from None
    if dtype is DType.BOOL:
        lowered = text.strip().lower()
        if lowered in ("true", "false"):
            return lowered == "true"
        raise DataError(f"{what}: {text!r} is not true or false")
    try:
        t: datetime | None = datetime.fromisoformat(text.strip())
    except ValueError:
        t = None
    if t is None or t.utcoffset() is None:
        reason = "is not an ISO-8601 date-time" if t is None else "has no timezone"
        raise DataError(
            f"{what}: {text!r} {reason} (e.g. 2026-01-15T08:30:00Z or 2026-01-15T08:30:00+01:00)"
        )
    return t


def _as_columns(obj: Any, what: str) -> dict[str, list[Any]] | None:
    """A Polars or pandas DataFrame, or a mapping of name -> values, as columns; None for
    another type. ``what`` names the argument in errors."""
    if isinstance(obj, pl.DataFrame):
        return {c: obj[c].to_list() for c in obj.columns}
    if type(obj).__module__.startswith("pandas") and hasattr(obj, "columns"):
        return {str(k): list(v) for k, v in obj.to_dict("list").items()}
    if isinstance(obj, Mapping):
        out: dict[str, list[Any]] = {}
        for k, values in obj.items():
            if not _is_column(values):
                raise DataError(
                    f"{what}[{k!r}] must be a list of values, one per request row; got "
                    f"{type(values).__name__} {values!r:.80}"
                )
            out[str(k)] = list(values)
        return out
    return None


def _is_column(values: Any) -> bool:
    """A list, tuple, Series or array of values (not a string or a mapping, nor a set)."""
    if isinstance(values, str | bytes | Mapping):
        return False
    return isinstance(values, Sequence | pl.Series) or hasattr(values, "__array__")


class _Answer(NamedTuple):
    """Every feature of a view computed from the state bytes ``blob``: the answer at any request
    time T with ``after < T <= until`` (``answer_span``)."""

    blob: bytes
    after: int
    until: int
    values: tuple[Any, ...]


class AnswerCache:
    """Recent answers per (view, entity), least recently used dropped first, within ``budget``
    bytes (estimated from the state bytes held and the number of values).

    An answer is reused only for the very state bytes it was computed from, which each lookup
    reads from Redis anyway (so a rewritten, quarantined or deleted state is never answered from
    here), and only at request times for which the query gives the same values (``answer_span``).
    Safe to share between threads."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.used = 0
        self.reused = 0  # answers served from here
        self.computed = 0  # answers computed from a state (and offered to the cache)
        self._answers: dict[tuple[str, Any], _Answer] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._answers)

    def get(self, keys: Sequence[tuple[str, Any]]) -> list[_Answer | None]:
        with self._lock:
            answers = self._answers
            out = [answers.pop(k, None) for k in keys]
            for k, a in zip(keys, out, strict=True):
                if a is not None:
                    answers[k] = a  # most recently used: last
        return out

    def put(self, items: Sequence[tuple[tuple[str, Any], _Answer]], reused: int = 0) -> None:
        """Keep ``items``; ``reused`` answers of the same lookup came from here."""
        with self._lock:
            self.reused += reused
            self.computed += len(items)
            answers = self._answers
            for k, a in items:
                old = answers.pop(k, None)
                if old is not None:
                    self.used -= _cost(old)
                cost = _cost(a)
                if cost > self.budget:
                    continue
                answers[k] = a
                self.used += cost
            while self.used > self.budget:
                self.used -= _cost(answers.pop(next(iter(answers))))


def _cost(a: _Answer) -> int:
    return len(a.blob) + 40 * len(a.values) + 200  # user_spend: the real size is ~0.85x this


_BEFORE_ALL, _AFTER_ALL = -(2**64), 2**64


def query_windows(prog: ViewProgram) -> tuple[tuple[int, int], ...]:
    """The distinct windows (window, hop) of ``prog``'s aggregations, lifetime ones left out."""
    return tuple(sorted({a.span for a in prog.aggs if a.span is not None}))


def answer_span(
    state: State, t: int, windows: Sequence[tuple[int, int]], lateness: int
) -> tuple[int, int]:
    """(after, until): ``prog.query(state, T)`` equals ``prog.query(state, t)`` for every T with
    after < T <= until, ``state`` answering at ``t``, for the ``ViewProgram`` ``prog`` with
    these ``windows`` (``query_windows``) and ``lateness``.

    The query sees T only through the number of retained events with ts < T, the number with
    ts < window_start(T) for each window (bisections of the buffer,
    ``ViewProgram._compile_query``) and the lateness check T >= max_ts - lateness: each is
    constant between consecutive event times, for a window between consecutive
    ``last_visible`` times of the events (ts + w for a sliding one). A hopped window's tiles
    (events kept pre-aggregated per hop) change only at hop boundaries."""
    ts = [rec[REC_TS] for rec in state.buffer]
    hi = bisect_left(ts, t)
    after = ts[hi - 1] if hi else _BEFORE_ALL
    until = ts[hi] if hi < len(ts) else _AFTER_ALL
    for w, h in windows:
        if h > 1:  # tiles of older events enter and leave the window at hop boundaries
            after = max(after, t // h * h - 1)
            until = min(until, t // h * h + h - 1)
        lo = bisect_left(ts, window_start(t, w, h), 0, hi)
        if lo:
            after = max(after, last_visible(ts[lo - 1], w, h))
        if lo < len(ts):
            until = min(until, last_visible(ts[lo], w, h))
    if state.max_ts != NO_TS:
        after = max(after, state.max_ts - lateness - 1)
    return after, until


class OnlineReader:
    """Reads features of many entities of several views in one Redis round trip."""

    def __init__(
        self,
        client: Client,
        views: Sequence[FeatureView],
        prefix: str = DEFAULT_PREFIX,
        *,
        generation: str | None = None,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        """``generation`` pins the store epoch: a lookup in any other raises.

        ``cache_bytes`` bounds the answers kept for reuse (``AnswerCache``; 0 keeps none): a
        lookup still reads every state from Redis, and reuses an answer only when the state
        bytes are those it was computed from and the request time changes no window."""
        self.client = client
        self.generation = generation
        self.store = open_store(client, prefix)
        self.views = {v.name: v for v in views}
        self.programs = {v.name: ViewProgram(v.ir) for v in views}
        self.cache = AnswerCache(cache_bytes) if cache_bytes > 0 else None
        self._windows = {name: query_windows(prog) for name, prog in self.programs.items()}
        self._reads: dict[tuple[str, tuple[str, ...]], tuple[tuple[str, DType], ...]] = {}
        self._collections = {
            v.name: any(f.expr.dtype.is_collection for f in v.ir.features) for v in views
        }
        # values that move with T between window edges (the query time, decayed sums)
        self._reads_query_time = {
            v.name: v.ir.reads_query_time or any(kind_of(a).needs_query_time for a in v.ir.aggs)
            for v in views
        }

    def read(
        self,
        entities: Sequence[Any],
        wanted: Mapping[str, Sequence[str]],
        *,
        at_us: int | None = None,
        fingerprints: Mapping[str, str] | None = None,
        request: Mapping[str, Sequence[Any]] | None = None,
    ) -> list[dict[str, Any]]:
        """One dict per entity: requested features (and ``<view>_found``), as of ``at_us``.

        Every view of ``wanted`` is looked up with ``entities`` (views of one entity key;
        ``read_keyed`` serves views of several). ``request``: the values of the request fields
        the views read (``fp.request``), one column per field, one value per entity
        (``check_request``)."""
        per_view = {name: check_entities(self.views[name], entities) for name in wanted}
        return self._read(per_view, len(entities), wanted, at_us, fingerprints, request)

    def keys_of(self, wanted: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
        """The entity keys of the views in ``wanted``, in request order, each with its views."""
        out: dict[str, list[str]] = {}
        for name in wanted:
            for part in self.views[name].entity.parts:  # a composite key: each of its fields
                out.setdefault(part, []).append(name)
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
        return {
            k: check_key_column(self.views[names[0]], k, keys[k]) for k, names in needed.items()
        }

    def read_keyed(
        self,
        keys: Mapping[str, Sequence[Any]],
        wanted: Mapping[str, Sequence[str]],
        *,
        at_us: int | None = None,
        fingerprints: Mapping[str, str] | None = None,
        request: Mapping[str, Sequence[Any]] | None = None,
    ) -> list[dict[str, Any]]:
        """One dict per request row: requested features (and ``<view>_found``), as of ``at_us``.

        ``keys`` maps each entity key of the views of ``wanted`` to its column (one value per
        request row); each view is looked up with its own key's column. The keys are not
        repeated in the rows. Every view's states are read in one Redis round trip.
        ``request`` maps each request field the views read (``fp.request``) to its column, one
        value per request row, of the declared type (``check_request``)."""
        return self._read_columns(
            self.check_keys(keys, wanted), wanted, at_us, fingerprints, request
        )

    def _read_columns(
        self,
        columns: Mapping[str, list[Any]],
        wanted: Mapping[str, Sequence[str]],
        at_us: int | None = None,
        fingerprints: Mapping[str, str] | None = None,
        request: Mapping[str, Sequence[Any]] | None = None,
    ) -> list[dict[str, Any]]:
        per_view = {}
        for name in wanted:
            view = self.views[name]
            per_view[name] = (
                [
                    compose_values(row)
                    for row in zip(*(columns[p] for p in view.entity.parts), strict=True)
                ]
                if view.entity.composite
                else columns[view.entity.key]
            )
        n = len(next(iter(columns.values()), []))
        return self._read(per_view, n, wanted, at_us, fingerprints, request)

    def _read(
        self,
        per_view: Mapping[str, list[Any]],
        n: int,
        wanted: Mapping[str, Sequence[str]],
        at_us: int | None,
        fingerprints: Mapping[str, str] | None,
        request: Mapping[str, Sequence[Any]] | None = None,
    ) -> list[dict[str, Any]]:
        """``per_view``: each view's entity of every request row (checked values).

        Each (view, entity) is read and answered once, every view's states in one server-side
        read (``StateStore.fetch_states_in_generation``); rows are assembled from the answers.
        A view with request fields is answered per request row instead (its state decoded
        once per entity, queried with each row's request values), never from the cache.
        The values, and every refusal, are those of ``_read_one_by_one``, the straightforward
        per-entity reading kept as the reference (tests compare the two)."""
        t = at_us if at_us is not None else time.time_ns() // 1000
        self._check_request(wanted, fingerprints)
        reads = self._request_fields(wanted)
        values = check_request(reads, request, n, self._allowed(wanted))
        entities = {name: list(dict.fromkeys(per_view[name])) for name in wanted}
        # an emptied or uninitialized store raises here: its "not found" would be a lie
        stored = self.store.fetch_states_in_generation(
            [(name, e) for name in wanted for e in entities[name]], self.generation
        )
        columns: list[tuple[tuple[str, ...], Sequence[Any], dict[Any, tuple[Any, ...]]]] = []
        at = 0
        for name, feats in wanted.items():
            ents = entities[name]
            got = stored[at : at + len(ents)]
            at += len(ents)
            names = (*feats, f"{name}{FOUND}")
            if reads[name]:  # answered per request row, by row index
                fields = [(f, values[(f, d)]) for f, d in reads[name]]
                answers = self._answer_rows(name, ents, got, t, feats, per_view[name], fields)
                columns.append((names, range(n), answers))
            else:
                answers = self._answer(name, ents, got, t, feats)
                columns.append((names, per_view[name], answers))
        if len(columns) == 1:
            names, column, answers = columns[0]
            rows = [dict(zip(names, answers[e], strict=True)) for e in column]
        else:
            rows = [{} for _ in range(n)]
            for names, column, answers in columns:
                for row, e in zip(rows, column, strict=True):
                    row.update(zip(names, answers[e], strict=True))
        if any(self._collections[name] for name in wanted):
            # two rows of one entity share its answer: each row gets its own lists and maps
            rows = [{k: copied(v) for k, v in row.items()} for row in rows]
        return rows

    def _answer(
        self,
        name: str,
        entities: Sequence[Any],
        stored: Sequence[StoredState | None],
        t: int,
        feats: Sequence[str],
    ) -> dict[Any, tuple[Any, ...]]:
        """entity -> (requested features..., found) for view ``name`` at ``t``."""
        view = self.views[name]
        prog = self.programs[name]
        query = prog.query
        fingerprint = view.fingerprint
        pick = _projection(prog.feature_names, feats)
        # a feature of the query time moves with T between window edges: never reused
        cache = None if self._reads_query_time[name] else self.cache
        windows = self._windows[name]
        keys = [(name, e) for e in entities]
        memos = cache.get(keys) if cache is not None else [None] * len(keys)
        fresh: list[tuple[tuple[str, Any], _Answer]] = []
        answers: dict[Any, tuple[Any, ...]] = {}
        absent: tuple[Any, ...] | None = None
        reused = 0
        for key, got, memo in zip(keys, stored, memos, strict=True):
            e = key[1]
            if got is None:
                if absent is None:  # no state: the same answer for every entity, at any T
                    absent = (*pick(query(None, t)), False)
                answers[e] = absent
                continue
            if got.fingerprint != fingerprint:
                raise _served_version(view, got.fingerprint, e)
            blob = got.state
            if memo is not None and memo.blob == blob and memo.after < t <= memo.until:
                values = memo.values  # computed from these very bytes, for the same windows
                reused += 1
            else:
                state = _decode(prog, name, e, got)  # quarantined, too large, undecodable: raise
                # a read further than the view's lateness behind the entity's newest event
                # raises StateError (naming the view and the times) rather than answering
                # another instant
                values = query(state, t)
                if cache is not None and blob is not None:
                    span = answer_span(state, t, windows, prog.lateness)
                    fresh.append((key, _Answer(blob, *span, values)))
            answers[e] = (*pick(values), True)  # lists and maps copied per row (_read)
        if cache is not None and (fresh or reused):
            cache.put(fresh, reused)
        return answers

    def _answer_rows(
        self,
        name: str,
        entities: Sequence[Any],
        stored: Sequence[StoredState | None],
        t: int,
        feats: Sequence[str],
        column: Sequence[Any],
        fields: Sequence[tuple[str, list[Any]]],
    ) -> dict[Any, tuple[Any, ...]]:
        """request row -> (requested features..., found) for view ``name``, which reads request
        fields, at ``t``: each entity's state (``entities``: those of ``column``, once each, in
        order) decoded once, then queried with the request values of each of its rows. Not
        cached: the answers depend on the request."""
        view = self.views[name]
        prog = self.programs[name]
        query = prog.query
        pick = _projection(prog.feature_names, feats)
        rows_of: dict[Any, list[int]] = {}
        for i, e in enumerate(column):
            rows_of.setdefault(e, []).append(i)
        answers: dict[Any, tuple[Any, ...]] = {}
        for e, got in zip(entities, stored, strict=True):
            state: State | None = None
            if got is not None:
                if got.fingerprint != view.fingerprint:
                    raise _served_version(view, got.fingerprint, e)
                state = _decode(prog, name, e, got)  # quarantined, too large, undecodable: raise
            found = got is not None
            for i in rows_of[e]:
                # a read further than the view's lateness behind the entity's newest event
                # raises StateError (naming the view and the times)
                values = query(state, t, {f: col[i] for f, col in fields})
                answers[i] = (*pick(values), found)
        return answers

    def _read_one_by_one(
        self,
        per_view: Mapping[str, list[Any]],
        n: int,
        wanted: Mapping[str, Sequence[str]],
        at_us: int | None,
        fingerprints: Mapping[str, str] | None,
        request: Mapping[str, Sequence[Any]] | None = None,
    ) -> list[dict[str, Any]]:
        """``_read`` the straightforward way, the reference the tests hold it to: one pipelined
        HMGET per (view, entity), then each entity decoded, queried (once per request row of
        the entity for a view with request fields) and copied into its rows."""
        t = at_us if at_us is not None else time.time_ns() // 1000
        self._check_request(wanted, fingerprints)
        reads = self._request_fields(wanted)
        request_values = check_request(reads, request, n, self._allowed(wanted))
        rows_of: dict[tuple[str, Any], list[int]] = {}
        for name in wanted:
            for i, e in enumerate(per_view[name]):
                rows_of.setdefault((name, e), []).append(i)
        # each (view, entity) once; every view in the same round trip
        order = list(dict.fromkeys((name, e) for name in wanted for e in per_view[name]))
        # an emptied or uninitialized store raises here: its "not found" would be a lie
        stored = self.store.read_states_in_generation(
            [(self.views[name], e) for name, e in order], self.generation
        )
        answers: dict[tuple[str, Any], tuple[dict[str, Any], bool]] = {}
        row_answers: dict[tuple[str, int], tuple[dict[str, Any], bool]] = {}
        for (name, e), got in zip(order, stored, strict=True):
            view = self.views[name]
            prog = self.programs[name]
            served = got.fingerprint if got is not None else None
            if served is not None and served != view.fingerprint:
                raise _served_version(view, served, e)
            state = None if got is None else _decode(prog, name, e, got)
            # a read further than the view's lateness behind the entity's newest event raises
            # StateError (naming the view and the times) rather than answering another instant
            if reads[name]:  # one answer per request row of the entity
                for i in rows_of[(name, e)]:
                    req = {f: request_values[(f, d)][i] for f, d in reads[name]}
                    values = prog.query(state, t, req)
                    row_answers[(name, i)] = (
                        dict(zip(prog.feature_names, values, strict=True)),
                        got is not None,
                    )
                continue
            values = prog.query(state, t)
            answers[(name, e)] = (
                dict(zip(prog.feature_names, values, strict=True)),
                got is not None,
            )
        rows: list[dict[str, Any]] = [{} for _ in range(n)]
        for name in wanted:
            per_row = bool(reads[name])
            for i, (row, e) in enumerate(zip(rows, per_view[name], strict=True)):
                feats, found = row_answers[(name, i)] if per_row else answers[(name, e)]
                for f in wanted[name]:
                    row[f] = feats[f]
                row[f"{name}{FOUND}"] = found
        return rows

    def _allowed(
        self, wanted: Mapping[str, Sequence[str]]
    ) -> dict[str, tuple[tuple[str, DType], ...]]:
        """Every request field of the requested views (read by any of their features)."""
        return {name: self.programs[name].request_fields for name in wanted}

    def _request_fields(
        self, wanted: Mapping[str, Sequence[str]]
    ) -> dict[str, tuple[tuple[str, DType], ...]]:
        """view -> the request fields its requested features read (through the features they
        derive from too), for the views of ``wanted``. A request for features that read none
        takes the plain path: the others are computed with null requests and not returned."""
        out = {}
        for name, feats in wanted.items():
            key = (name, tuple(feats))
            reads = self._reads.get(key)
            if reads is None:
                reads = self._reads[key] = self.views[name].ir.request_fields_read(feats)
            out[name] = reads
        return out

    def _check_request(
        self, wanted: Mapping[str, Sequence[str]], fingerprints: Mapping[str, str] | None
    ) -> None:
        """Features of the views, output columns distinct, pins of requested views only,
        pinned versions served."""
        for name, feats in wanted.items():
            known = self.views[name].feature_names
            unknown = [f for f in feats if f not in known]
            if unknown:
                raise DataError(
                    f"view '{name}' has no feature {', '.join(map(repr, unknown))}; its features "
                    f"are {', '.join(known)}"
                )
        _check_columns([], wanted)
        _check_pins(fingerprints or {}, wanted)
        for name in wanted:
            view = self.views[name]
            pinned = (fingerprints or {}).get(name)
            if pinned is not None and pinned != view.fingerprint:
                raise VersionMismatchError(
                    f"view '{name}': version {pinned} was requested but {view.fingerprint} is served"
                )

    def frame(
        self,
        keys: Mapping[str, Sequence[Any]],
        wanted: Mapping[str, Sequence[str]],
        *,
        request: Mapping[str, Sequence[Any]] | None = None,
        on_rows: Callable[[list[dict[str, Any]]], None] | None = None,
        **kwargs: Any,
    ) -> pl.DataFrame:
        """``read_keyed`` as a DataFrame: one row per request row; the entity key columns (in
        the order of the requested views), then per view its features and ``<view>_found``.
        ``request``: as for ``read_keyed`` (the request values are not repeated in the
        frame). ``on_rows``: given the rows as ``read_keyed`` returns them (the served-feature
        log), before the frame is made."""
        columns = self.check_keys(keys, wanted)
        _check_columns(list(columns), wanted)
        rows = self._read_columns(columns, wanted, request=request, **kwargs)
        if on_rows is not None:
            on_rows(rows)
        schema: dict[str, Any] = {
            k: PL_TYPES[self.views[names[0]].source.fields[k][0]]
            for k, names in self.keys_of(wanted).items()
        }
        maps: list[str] = []
        for name, feats in wanted.items():
            view = self.views[name]
            for f in feats:
                dtype = view.ir.feature(f).expr.dtype
                schema[f] = PL_TYPES[dtype]
                if dtype.is_map:
                    maps.append(f)
            schema[f"{name}{FOUND}"] = pl.Boolean
        if maps:  # a map's column form: a list of {key, value} entries
            rows = [{**r, **{f: map_entries(r[f]) for f in maps}} for r in rows]
        df = pl.DataFrame(
            [{**{k: col[i] for k, col in columns.items()}, **r} for i, r in enumerate(rows)],
            schema=schema,
        )
        edges = {
            f: edge_type(dtype)
            for name, feats in wanted.items()
            for f in feats
            if edge_type(dtype := self.views[name].ir.feature(f).expr.dtype) != PL_TYPES[dtype]
        }
        return df.with_columns(pl.col(f).cast(t) for f, t in edges.items()) if edges else df


def copied(value: Any) -> Any:
    """A list or map value as a new object (its items are immutable scalars); others as is."""
    if type(value) is list:
        return list(value)
    if type(value) is dict:
        return dict(value)
    return value


def _served_version(view: FeatureView, served: str | None, entity: Any) -> VersionMismatchError:
    return VersionMismatchError(
        f"view '{view.name}': the online store serves version {served} for entity {entity!r}, "
        f"the loaded definitions are {view.fingerprint}. To serve "
        f"{view.fingerprint}, run `featurepipe materialize --until <cut-over>` (or "
        "`featurepipe recover --until <cut-over>` when a stream worker feeds the "
        f"store); to keep serving {served}, look up with that version's definitions "
        "(`--defs`)"
    )


def _projection(
    names: Sequence[str], feats: Sequence[str]
) -> Callable[[tuple[Any, ...]], tuple[Any, ...]]:
    """A function picking ``feats`` (in that order) from a tuple of every feature ``names``."""
    position = {name: i for i, name in enumerate(names)}
    index = [position[f] for f in feats]
    if index == list(range(len(names))):
        return _same
    if len(index) == 1:
        i = index[0]
        return lambda values: (values[i],)
    return itemgetter(*index)


def _same(values: tuple[Any, ...]) -> tuple[Any, ...]:
    return values


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
