"""The symbolic expressions users write. They record an untyped tree; the view builder types it.

Typing is deferred to view build time so that errors can name the view *and* the feature.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from featurepipe.errors import DefinitionError
from featurepipe.ir.timebase import duration_us


@dataclass(frozen=True, slots=True, eq=False)
class Expr:
    """An untyped expression node. ``kind`` is 'field', 'lit', 'call', 'agg' or 'ref'."""

    kind: str
    op: str = ""
    args: tuple[Expr, ...] = ()
    params: tuple[tuple[str, Hashable], ...] = ()
    value: Any = None

    # -- construction helpers --------------------------------------------------------------
    def _call(self, op: str, *others: Any, **params: Hashable) -> Expr:
        return Expr("call", op, (self, *(wrap(o) for o in others)), tuple(params.items()))

    # -- arithmetic ------------------------------------------------------------------------
    def __add__(self, o: Any) -> Expr:
        return self._call("add", o)

    def __radd__(self, o: Any) -> Expr:
        return wrap(o)._call("add", self)

    def __sub__(self, o: Any) -> Expr:
        return self._call("sub", o)

    def __rsub__(self, o: Any) -> Expr:
        return wrap(o)._call("sub", self)

    def __mul__(self, o: Any) -> Expr:
        return self._call("mul", o)

    def __rmul__(self, o: Any) -> Expr:
        return wrap(o)._call("mul", self)

    def __truediv__(self, o: Any) -> Expr:
        return self._call("truediv", o)

    def __rtruediv__(self, o: Any) -> Expr:
        return wrap(o)._call("truediv", self)

    def __floordiv__(self, o: Any) -> Expr:
        return self._call("floordiv", o)

    def __rfloordiv__(self, o: Any) -> Expr:
        return wrap(o)._call("floordiv", self)

    def __mod__(self, o: Any) -> Expr:
        return self._call("mod", o)

    def __rmod__(self, o: Any) -> Expr:
        return wrap(o)._call("mod", self)

    def __neg__(self) -> Expr:
        return self._call("neg")

    # -- comparison and logic --------------------------------------------------------------
    def __eq__(self, o: Any) -> Expr:  # type: ignore[override]
        return self._call("eq", o)

    def __ne__(self, o: Any) -> Expr:  # type: ignore[override]
        return self._call("ne", o)

    def __lt__(self, o: Any) -> Expr:
        return self._call("lt", o)

    def __le__(self, o: Any) -> Expr:
        return self._call("le", o)

    def __gt__(self, o: Any) -> Expr:
        return self._call("gt", o)

    def __ge__(self, o: Any) -> Expr:
        return self._call("ge", o)

    def __and__(self, o: Any) -> Expr:
        return self._call("and", o)

    def __rand__(self, o: Any) -> Expr:
        return wrap(o)._call("and", self)

    def __or__(self, o: Any) -> Expr:
        return self._call("or", o)

    def __ror__(self, o: Any) -> Expr:
        return wrap(o)._call("or", self)

    def __invert__(self) -> Expr:
        return self._call("not")

    def __bool__(self) -> bool:
        raise DefinitionError(
            "a feature expression has no truth value: use & | ~ instead of and/or/not, "
            "and fp.when(...) instead of if"
        )

    __hash__ = None  # type: ignore[assignment]

    # -- nulls -----------------------------------------------------------------------------
    def fill_null(self, value: Any) -> Expr:
        return self._call("fill_null", value)

    def is_null(self) -> Expr:
        return self._call("is_null")

    def is_not_null(self) -> Expr:
        return self._call("is_null")._call("not")

    def cast(self, to: str) -> Expr:
        return self._call("cast", to=str(to))

    # -- math ------------------------------------------------------------------------------
    def abs(self) -> Expr:
        return self._call("abs")

    def round(self, decimals: int = 0) -> Expr:
        return self._call("round", decimals=decimals)

    def floor(self) -> Expr:
        return self._call("floor")

    def ceil(self) -> Expr:
        return self._call("ceil")

    def sqrt(self) -> Expr:
        return self._call("sqrt")

    def log(self) -> Expr:
        return self._call("log")

    def log1p(self) -> Expr:
        return self._call("log1p")

    def exp(self) -> Expr:
        return self._call("exp")

    def clip(self, lower: float | int, upper: float | int) -> Expr:
        return self._call("clip", lower=lower, upper=upper)

    # -- strings ---------------------------------------------------------------------------
    def lower(self) -> Expr:
        return self._call("lower")

    def upper(self) -> Expr:
        return self._call("upper")

    def strip(self) -> Expr:
        return self._call("strip")

    def len(self) -> Expr:
        return self._call("str_len")

    def contains(self, text: str) -> Expr:
        return self._call("contains", text=text)

    def startswith(self, prefix: str) -> Expr:
        return self._call("startswith", text=prefix)

    def endswith(self, suffix: str) -> Expr:
        return self._call("endswith", text=suffix)

    def slice(self, offset: int, length: int | None = None) -> Expr:
        return self._call("slice", offset=offset, length=length)

    def concat(self, *others: Any) -> Expr:
        return self._call("concat", *others)

    # -- datetimes (UTC) -------------------------------------------------------------------
    def hour(self) -> Expr:
        return self._call("hour")

    def minute(self) -> Expr:
        return self._call("minute")

    def day_of_week(self) -> Expr:
        return self._call("day_of_week")

    def day(self) -> Expr:
        return self._call("day")

    def month(self) -> Expr:
        return self._call("month")

    def year(self) -> Expr:
        return self._call("year")

    def epoch_seconds(self) -> Expr:
        return self._call("epoch_seconds")

    def truncate(self, every: str | timedelta) -> Expr:
        if isinstance(every, timedelta):
            every = _td(every)
        return self._call("truncate", every=every)


def wrap(value: Any) -> Expr:
    """Turn a Python constant into a literal expression (expressions pass through)."""
    if isinstance(value, Expr):
        return value
    if value is None or isinstance(value, bool | int | float | str | datetime):
        return Expr("lit", value=value)
    raise DefinitionError(
        f"cannot use {type(value).__name__} value {value!r} in a feature expression"
    )


def lit(value: Any) -> Expr:
    return wrap(value)


def query_time() -> Expr:
    """The time T the features are read at, as a datetime: the lookup's request time, the
    training row's timestamp. For ages and recencies, e.g. ``fp.query_time() -
    fp.first(t.event_time)`` (a datetime minus a datetime: microseconds, an int)."""
    return Expr("query_time")


def since_last(
    timestamp: Any,
    *,
    window: str | timedelta | None = None,
    where: Any = None,
    hop: Any = None,
) -> Expr:
    """Seconds (float) from the latest event (passing ``where``, in the window) to the query
    time: ``(query_time() - max(timestamp)) / 1e6``; null when there is none. ``timestamp``
    is the event's time field (``t.event_time``)."""
    latest = max(timestamp, window=window, where=where, hop=hop)  # type: ignore[arg-type]
    return (query_time() - latest).cast("float") / 1_000_000.0


_REQUEST_TYPES = {float: "float", int: "int", str: "str", bool: "bool", datetime: "datetime"}


def request(name: str, dtype: type | str) -> Expr:
    """A field of the lookup request, for request-time features: e.g.
    ``fp.request("amount", float) / fp.mean(t.amount, window="7d")``.

    Online lookups take its value from the request (``request={"amount": [...]}``); training
    sets from the label table's column of that name; the parity harness from the scored
    event's field of that name. ``dtype``: float, int, str, bool or datetime."""
    if not isinstance(name, str) or not name.isidentifier() or name.startswith("__"):
        raise DefinitionError(f"fp.request: {name!r} is not a valid request field name")
    type_name = _REQUEST_TYPES.get(dtype) if isinstance(dtype, type) else dtype
    if type_name not in _REQUEST_TYPES.values():
        raise DefinitionError(
            f"fp.request({name!r}): type {dtype!r} is not offered; use float, int, str, bool "
            "or datetime"
        )
    return Expr("request", value=(name, type_name))


def coalesce(*exprs: Any) -> Expr:
    if len(exprs) < 2:
        raise DefinitionError("coalesce needs at least two expressions")
    return Expr("call", "coalesce", tuple(wrap(e) for e in exprs))


class When:
    """``fp.when(cond).then(a).when(cond2).then(b).otherwise(c)``."""

    def __init__(self, branches: tuple[tuple[Expr, Expr], ...], cond: Expr) -> None:
        self._branches = branches
        self._cond = cond

    def then(self, value: Any) -> Then:
        return Then((*self._branches, (self._cond, wrap(value))))


class Then:
    def __init__(self, branches: tuple[tuple[Expr, Expr], ...]) -> None:
        self._branches = branches

    def when(self, cond: Any) -> When:
        return When(self._branches, wrap(cond))

    def otherwise(self, value: Any) -> Expr:
        out = wrap(value)
        for cond, val in reversed(self._branches):
            out = Expr("call", "case", (cond, val, out))
        return out


def when(cond: Any) -> When:
    return When((), wrap(cond))


def encode(
    expr: Any,
    vocabulary: Sequence[str | int] | None = None,
    *,
    top_k: int | None = None,
    min_frequency: int = 1,
) -> Expr:
    """Map categories to integer codes: 0 = null, 1 = out of vocabulary, 2.. = vocabulary order.

    Without ``vocabulary`` the vocabulary is fitted on batch data by ``featurepipe fit``: the
    ``top_k`` most frequent values seen at least ``min_frequency`` times, most frequent first
    (ties by value), frozen in the registry.
    """
    if vocabulary is not None:
        return wrap(expr)._call("encode", vocabulary=tuple(vocabulary))
    return wrap(expr)._call("fit_encode", top_k=top_k, min_frequency=min_frequency)


def standardize(expr: Any) -> Expr:
    """(x - mean) / std with mean and sample std fitted on batch data and frozen."""
    return wrap(expr)._call("fit_standardize")


def hash_bucket(expr: Any, buckets: int) -> Expr:
    """Stable bucket of a category: xxh64 of its UTF-8 text modulo ``buckets``."""
    return wrap(expr)._call("hash_bucket", buckets=buckets)


def bucketize(
    expr: Any, boundaries: Sequence[float | int] | None = None, *, quantiles: int | None = None
) -> Expr:
    """Bucket index = number of boundaries <= value.

    Fixed ``boundaries``, or ``quantiles=q``: q-quantile boundaries fitted on batch data and
    frozen (``featurepipe fit``).
    """
    if boundaries is not None:
        return wrap(expr)._call("bucketize", boundaries=tuple(boundaries))
    if quantiles is None or quantiles < 2:
        raise DefinitionError("bucketize needs boundaries=[...] or quantiles >= 2")
    return wrap(expr)._call("fit_quantiles", quantiles=quantiles)


def feature(name: str) -> Expr:
    """Reference another feature of the same view from a derived feature."""
    return Expr("ref", value=name)


def _agg(
    kind: str,
    arg: Any,
    window: str | timedelta | None,
    where: Any,
    default: Any,
    hop: Any = None,
    by: Any = None,
) -> Expr:
    args: tuple[Expr, ...] = ()
    if arg is not None:
        args = (wrap(arg),)
    params: tuple[tuple[str, Hashable], ...] = (
        ("window", window if not isinstance(window, timedelta) else _td(window)),
        ("hop", hop if not isinstance(hop, timedelta) else _td(hop)),
        ("default", default if not isinstance(default, list) else tuple(default)),
        ("has_where", where is not None),
    )
    if by is not None:  # the bucket expression, then where: the last arguments
        args += (wrap(by),)
        params += (("has_by", True),)
    w = () if where is None else (wrap(where),)
    return Expr("agg", kind, args + w, params)


def _td(td: timedelta) -> str:
    return f"{duration_us(td)}us"


def count(
    expr: Any = None,
    *,
    window: str | None = None,
    where: Any = None,
    hop: Any = None,
    by: Any = None,
) -> Expr:
    """Number of events (or of non-null values of ``expr``) in the window; 0 when empty.
    ``by=``: one count per bucket, a map (see ``sum``)."""
    return _agg("count", expr, window, where, 0 if by is None else None, hop, by)


def sum(
    expr: Any,
    *,
    window: str | None = None,
    where: Any = None,
    default: Any = None,
    hop: Any = None,
    by: Any = None,
) -> Expr:
    """Exact sum of the non-null values (docs/semantics.md). ``by=t.category``: one sum per
    bucket value, a map {bucket: sum} ordered by bucket, over events whose bucket is not null
    (Chronon's bucketed aggregation); null when no event has one."""
    return _agg("sum", expr, window, where, default, hop, by)


def mean(
    expr: Any,
    *,
    window: str | None = None,
    where: Any = None,
    default: Any = None,
    hop: Any = None,
    by: Any = None,
) -> Expr:
    """``by=``: one value per bucket, a map (see ``sum``)."""
    return _agg("mean", expr, window, where, default, hop, by)


def min(
    expr: Any,
    *,
    window: str | None = None,
    where: Any = None,
    default: Any = None,
    hop: Any = None,
    by: Any = None,
) -> Expr:
    """``by=``: one value per bucket, a map (see ``sum``)."""
    return _agg("min", expr, window, where, default, hop, by)


def max(
    expr: Any,
    *,
    window: str | None = None,
    where: Any = None,
    default: Any = None,
    hop: Any = None,
    by: Any = None,
) -> Expr:
    """``by=``: one value per bucket, a map (see ``sum``)."""
    return _agg("max", expr, window, where, default, hop, by)


def var(
    expr: Any,
    *,
    window: str | None = None,
    where: Any = None,
    default: Any = None,
    hop: Any = None,
    by: Any = None,
) -> Expr:
    """Sample variance (ddof=1); null below two non-null values. ``by=``: per bucket, a map (see ``sum``)."""
    return _agg("var", expr, window, where, default, hop, by)


def std(
    expr: Any,
    *,
    window: str | None = None,
    where: Any = None,
    default: Any = None,
    hop: Any = None,
    by: Any = None,
) -> Expr:
    """``by=``: one value per bucket, a map (see ``sum``)."""
    return _agg("std", expr, window, where, default, hop, by)


def first(
    expr: Any, *, window: str | None = None, where: Any = None, default: Any = None, hop: Any = None
) -> Expr:
    """Value of the earliest event in the window (ties: earliest arrival); may be null."""
    return _agg("first", expr, window, where, default, hop)


def last(
    expr: Any, *, window: str | None = None, where: Any = None, default: Any = None, hop: Any = None
) -> Expr:
    """Value of the latest event in the window (ties: latest arrival); may be null."""
    return _agg("last", expr, window, where, default, hop)


def approx_percentile(
    expr: Any,
    q: float,
    *,
    window: str | None = None,
    where: Any = None,
    default: Any = None,
    hop: Any = None,
) -> Expr:
    """The q-quantile (0 <= q <= 1, nearest rank: the ceil(q * n)-th smallest of the n non-null
    values) of a numeric input, from a log-scale sketch: within a relative 2**-7 (0.78%) of the
    exact value, rounded toward zero (docs/semantics.md); null when empty."""
    if isinstance(q, bool) or not isinstance(q, int | float) or not 0.0 <= q <= 1.0:
        raise DefinitionError(f"approx_percentile: q={q!r} must be a number in [0, 1]")
    out = _agg("approx_percentile", expr, window, where, default, hop)
    return Expr(out.kind, out.op, out.args, (*out.params, ("q", float(q))))


def decayed_sum(
    expr: Any,
    *,
    half_life: str | timedelta,
    window: str | timedelta,
    where: Any = None,
    default: Any = None,
) -> Expr:
    """Sum of x * 2**(-(T - ts) / half_life) over the window's events (T: the query time): an
    exponentially decayed sum. Null when the window holds no non-null value."""
    h = half_life if not isinstance(half_life, timedelta) else _td(half_life)
    out = _agg("decayed_sum", expr, window, where, default)
    return Expr(out.kind, out.op, out.args, (*out.params, ("half_life", h)))


def decayed_count(
    *, half_life: str | timedelta, window: str | timedelta, where: Any = None
) -> Expr:
    """Events weighted by 2**(-(T - ts) / half_life): an exponentially decayed count (0 when
    the window is empty)."""
    return decayed_sum(lit(1.0), half_life=half_life, window=window, where=where, default=0.0)


def mode(
    expr: Any, *, window: str | None = None, where: Any = None, default: Any = None, hop: Any = None
) -> Expr:
    """The most frequent non-null value in the window (ties: the smallest value); null when
    empty."""
    return _agg("mode", expr, window, where, default, hop)


def _positive(what: str, n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= _MAX_K:
        raise DefinitionError(f"{what}={n!r} must be an integer from 1 to {_MAX_K}")
    return n


_MAX_K = 10_000  # a list or map feature is state per entity and a value per lookup


def _k_agg(kind: str, expr: Any, k: int, window: Any, where: Any, hop: Any) -> Expr:
    out = _agg(kind, expr, window, where, None, hop)
    return Expr(out.kind, out.op, out.args, (*out.params, ("k", _positive(f"{kind}: k", k))))


def last_k(
    expr: Any, k: int, *, window: str | None = None, where: Any = None, hop: Any = None
) -> Expr:
    """The values of the k newest events with a non-null input (by event time, then arrival),
    newest first: a list of at most k values; null when there is none."""
    return _k_agg("last_k", expr, k, window, where, hop)


def first_k(
    expr: Any, k: int, *, window: str | None = None, where: Any = None, hop: Any = None
) -> Expr:
    """The values of the k oldest events with a non-null input, oldest first; null when there
    is none."""
    return _k_agg("first_k", expr, k, window, where, hop)


def last_distinct_k(
    expr: Any, k: int, *, window: str | None = None, where: Any = None, hop: Any = None
) -> Expr:
    """The k most recently seen distinct non-null values, newest first (each value placed by
    its newest event); null when there is none."""
    return _k_agg("last_distinct_k", expr, k, window, where, hop)


def count_by(
    expr: Any,
    *,
    top_k: int | None = None,
    window: str | None = None,
    where: Any = None,
    hop: Any = None,
) -> Expr:
    """Events per distinct non-null value: a map {value: count} ordered by count descending,
    then value ascending; ``top_k`` keeps its first k entries. Null when there is none."""
    out = _agg("count_by", expr, window, where, None, hop)
    if top_k is None:
        return out
    return Expr(
        out.kind, out.op, out.args, (*out.params, ("top_k", _positive("count_by: top_k", top_k)))
    )


def count_distinct(
    expr: Any, *, window: str | None = None, where: Any = None, hop: Any = None
) -> Expr:
    """Number of distinct non-null values in the window; 0 when empty."""
    return _agg("count_distinct", expr, window, where, 0, hop)
