"""Entities, sources and feature views; building a view types its expressions into the IR."""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Any

from pydantic import BaseModel

from featurepipe.dsl import artifacts
from featurepipe.dsl.expr import Expr
from featurepipe.dsl.monitoring import view_thresholds
from featurepipe.errors import DefinitionError, UnsupportedOperationError
from featurepipe.ir import nodes as ir
from featurepipe.ir.aggs import KINDS
from featurepipe.ir.entity_keys import composite_name
from featurepipe.ir.fingerprint import fingerprint
from featurepipe.ir.fold import fold_constants
from featurepipe.ir.ops import AGGS, OPS
from featurepipe.ir.timebase import to_epoch_us
from featurepipe.ir.types import DType, dtype_of_annotation, map_of, python_type_ok

_WINDOW = re.compile(r"^(\d+)(us|ms|s|m|h|d|w)$")
_UNIT_US = {
    "us": 1,
    "ms": 1_000,
    "s": 1_000_000,
    "m": 60_000_000,
    "h": 3_600_000_000,
    "d": 86_400_000_000,
    "w": 7 * 86_400_000_000,
}
RESERVED = {"event_timestamp", "__seq", "__ts", "__qid", "__arrived"}


def parse_duration(text: Any) -> int:
    """'30m', '1h', '7d' ... -> microseconds. Raises ValueError with a readable message."""
    m = _WINDOW.match(str(text).strip()) if isinstance(text, str) else None
    if m is None or int(m.group(1)) <= 0:
        raise ValueError(
            f"bad duration {text!r}: expected a positive integer and a unit "
            "(us, ms, s, m, h, d, w), e.g. '30m', '1h', '7d'"
        )
    return int(m.group(1)) * _UNIT_US[m.group(2)]


@dataclass(frozen=True, init=False)
class Entity:
    """What features are about, keyed by one source field (``key="user_id"``) or by several
    (``key=("user_id", "merchant_id")``: a composite key, ``featurepipe.ir.entity_keys``)."""

    name: str
    key: str  # the key field, or for a composite key its synthetic column "user_id+merchant_id"
    parts: tuple[str, ...]  # the key fields, in order (one for a plain key)

    def __init__(self, name: str, key: str | Sequence[str]) -> None:
        parts = (key,) if isinstance(key, str) else tuple(key)
        if not parts or not all(isinstance(p, str) and p for p in parts):
            raise DefinitionError(f"entity '{name}': key must be a field name or several")
        if len(set(parts)) != len(parts):
            raise DefinitionError(f"entity '{name}': key {parts!r} names a field twice")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "parts", parts)
        object.__setattr__(self, "key", parts[0] if len(parts) == 1 else composite_name(parts))

    @property
    def composite(self) -> bool:
        return len(self.parts) > 1


@dataclass(frozen=True)
class ParquetSource:
    path: str


@dataclass(frozen=True)
class KafkaSource:
    topic: str


class Source:
    """An event stream with a pydantic contract, readable in batch (Parquet) and stream (Kafka)."""

    def __init__(
        self,
        name: str,
        *,
        schema: type[BaseModel],
        timestamp: str,
        batch: ParquetSource | None = None,
        stream: KafkaSource | None = None,
        arrival: str | None = None,
    ) -> None:
        self.name = name
        self.schema = schema
        self.timestamp = timestamp
        self.batch = batch
        self.stream = stream
        self.arrival = arrival
        fields: dict[str, tuple[DType, bool]] = {}
        for fname, info in schema.model_fields.items():
            mapped = dtype_of_annotation(info.annotation)
            if mapped is None:
                raise DefinitionError(
                    f"source '{name}': field '{fname}' has unsupported type {info.annotation!r} "
                    "(use bool, int, float, str or datetime, optionally | None)"
                )
            fields[fname] = mapped
        self.fields = fields
        for col in (timestamp, arrival):
            if col is not None and fields.get(col, (None, False)) != (DType.DATETIME, False):
                raise DefinitionError(
                    f"source '{name}': timestamp field '{col}' must be a required "
                    f"(not Optional) datetime field of {schema.__name__}"
                )

    def __repr__(self) -> str:
        return f"Source({self.name!r})"


class Row:
    """The typed symbolic row handed to a feature-view function: ``t.amount`` is a field."""

    def __init__(self, source: Source, view: str) -> None:
        object.__setattr__(self, "_source", source)
        object.__setattr__(self, "_view", view)

    def __getattr__(self, name: str) -> Expr:
        source: Source = object.__getattribute__(self, "_source")
        if name.startswith("__"):
            raise AttributeError(name)
        if name not in source.fields:
            raise DefinitionError(
                f"unknown field '{name}' of source '{source.name}' "
                f"(fields: {', '.join(sorted(source.fields))})",
                view=object.__getattribute__(self, "_view"),
            )
        return Expr("field", value=name)

    def __setattr__(self, name: str, value: Any) -> None:
        raise DefinitionError("the event row is read-only")


class FeatureView:
    """A compiled-ready feature view: its IR, fingerprint and where its data comes from."""

    def __init__(
        self,
        name: str,
        entity: Entity,
        source: Source,
        outputs: Mapping[str, Any],
        lateness_us: int,
        monitor: Mapping[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.entity = entity
        self.source = source
        self.ir = build_view_ir(name, entity, source, outputs, lateness_us)
        # alarm thresholds per feature for `featurepipe monitor`: not in the fingerprint
        self.monitoring = view_thresholds(name, self.feature_names, monitor)

    @cached_property
    def fingerprint(self) -> str:
        return fingerprint(self.ir)

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.ir.features]

    @property
    def entity_dtype(self) -> DType:
        """The declared type of the entity key: its field's type in the source's schema (str
        for a composite key, whose value is text)."""
        if self.entity.composite:
            return DType.STR
        return self.source.fields[self.entity.key][0]

    def part_dtypes(self) -> list[DType]:
        """The declared types of the key fields, in order."""
        return [self.source.fields[p][0] for p in self.entity.parts]

    def __repr__(self) -> str:
        return f"FeatureView({self.name!r}, features={len(self.ir.features)})"


def feature_view(
    *,
    entity: Entity,
    source: Source,
    name: str | None = None,
    lateness: str = "1h",
    monitor: Mapping[str, Any] | None = None,
) -> Callable[[Callable[[Any], Mapping[str, Any]]], FeatureView]:
    """Declare a feature view from a function of the symbolic event row.

    ``lateness`` bounds how far behind the newest event of an entity a late event (or a query)
    may be and still be answered exactly from online state; see docs/semantics.md.
    ``monitor``: alarm thresholds of `featurepipe monitor` per feature,
    ``{"amount_sum_24h": fp.monitor(psi=0.3), "first_seen_at": fp.monitor(skip=True)}``.
    """

    def decorate(fn: Callable[[Any], Mapping[str, Any]]) -> FeatureView:
        view_name = name or fn.__name__
        try:
            lateness_us = parse_duration(lateness)
        except ValueError as e:
            raise DefinitionError(f"lateness: {e}", view=view_name) from None
        outputs = fn(Row(source, view_name))
        if not isinstance(outputs, Mapping) or not outputs:
            raise DefinitionError(
                "a feature view must return a non-empty dict of feature name -> expression",
                view=view_name,
            )
        return FeatureView(view_name, entity, source, outputs, lateness_us, monitor)

    return decorate


# ---- typing: untyped DSL tree -> IR ---------------------------------------------------------


class _Typer:
    def __init__(self, view: str, source: Source, outputs: Mapping[str, Any]) -> None:
        self.view = view
        self.source = source
        self.outputs = outputs
        self.done: dict[str, ir.Node] = {}
        self.visiting: list[str] = []
        self.requests: dict[str, DType] = {}

    def feature(self, name: str) -> ir.Node:
        if name in self.done:
            return self.done[name]
        if name in self.visiting:
            cycle = " -> ".join([*self.visiting[self.visiting.index(name) :], name])
            raise DefinitionError(f"derived features form a cycle: {cycle}", view=self.view)
        if name not in self.outputs:
            raise DefinitionError(
                f"fp.feature('{name}') names no feature of this view",
                view=self.view,
                feature=self.visiting[-1] if self.visiting else None,
            )
        self.visiting.append(name)
        value = self.outputs[name]
        if not isinstance(value, Expr):
            raise DefinitionError(
                f"expected a feature expression, got {type(value).__name__}",
                view=self.view,
                feature=name,
            )
        try:
            node = self.node(value, level="feature")
        except (TypeError, ValueError) as e:
            raise DefinitionError(str(e), view=self.view, feature=name) from None
        except UnsupportedOperationError as e:
            raise UnsupportedOperationError(str(e), view=self.view, feature=name) from None
        if not any(
            isinstance(n, ir.Agg | ir.FeatureRef | ir.Request | ir.QueryTime) for n in node.walk()
        ):
            raise DefinitionError(
                "a feature must aggregate events (fp.count, fp.sum, fp.last, ...), derive "
                "from other features or read the request (fp.request)",
                view=self.view,
                feature=name,
            )
        self.visiting.pop()
        self.done[name] = node
        return node

    def node(self, e: Expr, level: str) -> ir.Node:
        """Type one node. ``level`` is 'row' inside an aggregation, 'feature' above it."""
        if e.kind == "field":
            if level != "row":
                raise TypeError(
                    f"field '{e.value}' is used outside an aggregation: wrap it in fp.last(...), "
                    "fp.sum(...), ..."
                )
            dtype, _ = self.source.fields[e.value]
            return ir.Field(dtype, e.value)
        if e.kind == "lit":
            return _literal(e.value)
        if e.kind == "ref":
            if level == "row":
                raise TypeError("fp.feature(...) cannot be used inside an aggregation")
            target = self.feature(str(e.value))
            return ir.FeatureRef(target.dtype, str(e.value))
        if e.kind == "agg":
            if level == "row":
                raise TypeError("aggregations cannot be nested")
            return self.agg(e)
        if e.kind == "request":
            return self.request(e, level)
        if e.kind == "query_time":
            if level == "row":
                raise TypeError(
                    "fp.query_time() is the time features are read at: it has no value per "
                    "event, so it cannot be used inside an aggregation"
                )
            return ir.QueryTime(DType.DATETIME)
        return self.call(e, level)

    def request(self, e: Expr, level: str) -> ir.Request:
        name, type_name = e.value
        if level == "row":
            raise TypeError(
                f"fp.request({name!r}) is a field of the lookup request: it exists when features "
                "are read, not per event, so it cannot be used inside an aggregation"
            )
        dtype = DType(type_name)
        known = self.requests.setdefault(name, dtype)
        if known is not dtype:
            raise TypeError(f"fp.request({name!r}) is declared both {known} and {dtype}")
        return ir.Request(dtype, name)

    def agg(self, e: Expr) -> ir.Agg:
        params = dict(e.params)
        if "error" in params:
            raise UnsupportedOperationError(str(params["error"]))
        has_where, has_by = bool(params["has_where"]), bool(params.get("has_by"))
        rest = list(e.args)  # (input), (by), (where)
        where = self.node(rest.pop(), "row") if has_where else None
        by = self.node(rest.pop(), "row") if has_by else None
        arg_exprs = rest
        arg = self.node(arg_exprs[0], "row") if arg_exprs else None
        if where is not None and where.dtype is not DType.BOOL:
            raise TypeError(f"where= needs a boolean expression, got {where.dtype}")
        if e.op != "count" and arg is None:
            raise TypeError(f"{e.op} needs an input expression")
        bare_null = bool(arg_exprs) and arg_exprs[0].kind == "lit" and arg_exprs[0].value is None
        if bare_null:
            raise TypeError(f"{e.op} of a bare null literal has no type")
        dtype = AGGS[e.op](None if arg is None else arg.dtype)
        if by is not None:
            dtype = _bucketed(e.op, by, dtype, params["default"])
        if e.op in ("var", "std") and arg is not None and arg.dtype is DType.INT:
            arg = _cast(arg, DType.FLOAT)
        window = params["window"]
        window_us = None
        if window is not None:
            try:
                window_us = parse_duration(window)
            except ValueError as err:
                raise ValueError(f"window: {err}") from None
        hop_us = _hop(params.get("hop"), window_us)
        if KINDS[e.op].needs_query_time and (window_us is None or hop_us is not None):
            raise ValueError(
                f"{e.op} weighs each event by its age at the query time: it needs a window= "
                "and takes no hop="
            )
        if hop_us is not None and not KINDS[e.op].mergeable:
            raise UnsupportedOperationError(
                f"hop= is not offered for {e.op} (its accumulators cannot be merged per hop)"
            )
        default = params["default"]
        if default is not None:
            if dtype is DType.FLOAT and isinstance(default, int) and not isinstance(default, bool):
                default = float(default)
            if not python_type_ok(dtype, default):
                raise TypeError(f"default={default!r} does not fit the feature's type {dtype}")
        kind_params = tuple(_kind_param(k, v) for k, v in e.params if k not in _AGG_OPTIONS) or None
        return ir.Agg(dtype, e.op, arg, window_us, where, default, hop_us, kind_params, by)

    def call(self, e: Expr, level: str) -> ir.Node:
        op = e.op
        params = dict(e.params)
        args = [self.node(a, level) for a in e.args]
        args = _type_nulls(op, args)
        for a in args:
            if a.dtype.is_collection and op != "is_null":
                raise TypeError(
                    f"{op} cannot take a {a.dtype} value: list and map features are served as "
                    "they are (no row operation reads them)"
                )
        if op.startswith("fit_"):
            return self.fitted(op, args[0], params)
        if op not in OPS:
            raise UnsupportedOperationError(f"operation '{op}' is not offered")
        if op == "encode" and params.get("vocabulary") is None:
            raise UnsupportedOperationError(
                "encode() has no vocabulary: pass vocabulary=[...] (fitting from batch data "
                "comes with `featurepipe fit`)"
            )
        _check_params(op, params)
        dtypes = tuple(a.dtype for a in args)
        result = OPS[op](dtypes, params)
        args = _promote(op, args, result)
        if op == "round" and not isinstance(params.get("decimals"), int):
            raise TypeError("round(decimals=) needs an integer")
        if op == "truncate":
            params["every"] = parse_duration(params["every"])
        if op in ("clip",):
            kind = args[0].dtype
            lo, hi = params["lower"], params["upper"]
            if kind is DType.FLOAT:
                params["lower"], params["upper"] = float(lo), float(hi)  # type: ignore[arg-type]
            elif not all(isinstance(v, int) and not isinstance(v, bool) for v in (lo, hi)):
                raise TypeError("clip bounds of an int expression must be ints")
        if op == "encode":
            want = str if args[0].dtype is DType.STR else int
            vocab = params["vocabulary"]
            if not all(type(v) is want for v in vocab):  # type: ignore[attr-defined]
                raise TypeError(
                    f"encode vocabulary must hold {want.__name__} values for a "
                    f"{args[0].dtype} input (got {vocab!r})"
                )
        # a call on literals only becomes one literal (see featurepipe.ir.fold)
        return fold_constants(ir.Call(result, op, tuple(args), tuple(sorted(params.items()))))

    def fitted(self, op: str, arg: ir.Node, params: dict[str, Any]) -> ir.Node:
        """Expand a fitted op into plain IR with the frozen artifact's values as literals."""
        kind = op.removeprefix("fit_")
        need = {
            "encode": (DType.STR, DType.INT),
            "standardize": (DType.INT, DType.FLOAT),
            "quantiles": (DType.INT, DType.FLOAT),
        }[kind]
        if arg.dtype not in need:
            raise TypeError(f"{kind} needs {'/'.join(map(str, need))}, got {arg.dtype}")
        placeholder: Any = {"encode": [], "standardize": [0.0, 1.0], "quantiles": [0.0]}[kind]
        value = artifacts.lookup(self.view, kind, arg, params, placeholder)
        if value is None:
            raise UnsupportedOperationError(
                f"{kind} is fitted on batch data and no fitted artifact is in the registry: "
                "run `featurepipe fit --start ... --end ...`"
            )
        if kind == "encode":
            node = ir.Call(DType.INT, "encode", (arg,), (("vocabulary", tuple(value)),))
            return node
        x = _cast(arg, DType.FLOAT)
        if kind == "standardize":
            mean, std = float(value[0]), float(value[1])
            centered = ir.Call(DType.FLOAT, "sub", (x, ir.Literal(DType.FLOAT, mean)))
            return ir.Call(DType.FLOAT, "truediv", (centered, ir.Literal(DType.FLOAT, std)))
        bounds = tuple(sorted({float(b) for b in value if b == b}))
        return ir.Call(DType.INT, "bucketize", (x,), (("boundaries", bounds or (0.0,)),))


def _check_params(op: str, p: dict[str, Any]) -> None:
    if op in ("contains", "startswith", "endswith") and not isinstance(p.get("text"), str):
        raise TypeError(f"{op} needs a string literal")
    if op == "slice":
        off, length = p.get("offset"), p.get("length")
        if (
            not isinstance(off, int)
            or off < 0
            or (length is not None and (not isinstance(length, int) or length < 0))
        ):
            raise UnsupportedOperationError(
                "slice needs offset >= 0 and length >= 0 (negative offsets are not offered)"
            )
    if op == "hash_bucket" and (not isinstance(p.get("buckets"), int) or p["buckets"] < 1):
        raise TypeError("hash_bucket needs buckets >= 1")
    if op == "bucketize":
        b = p.get("boundaries")
        if not b or list(b) != sorted(b) or any(x != x for x in b):
            raise TypeError("bucketize needs a non-empty sorted list of boundaries")
        p["boundaries"] = tuple(float(x) for x in b)
    if op == "round" and not (0 <= int(p.get("decimals", 0)) <= 15):
        raise TypeError("round(decimals=) must be between 0 and 15")
    if op == "clip" and p["lower"] > p["upper"]:
        raise TypeError("clip needs lower <= upper")
    if op == "encode":
        v = p["vocabulary"]
        if len(set(v)) != len(v):
            raise TypeError("encode vocabulary has duplicates")


def _literal(value: Any) -> ir.Literal:
    if value is None:
        return ir.Literal(DType.STR, None)  # retyped from context by _type_nulls
    if isinstance(value, bool):
        return ir.Literal(DType.BOOL, value)
    if isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise TypeError(f"integer literal {value} does not fit in int64")
        return ir.Literal(DType.INT, value)
    if isinstance(value, float):
        return ir.Literal(DType.FLOAT, value)
    if isinstance(value, str):
        return ir.Literal(DType.STR, value)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise TypeError("datetime literals must be timezone-aware (UTC)")
        return ir.Literal(DType.DATETIME, to_epoch_us(value))
    raise TypeError(f"unsupported literal {value!r}")


def _type_nulls(op: str, args: list[ir.Node]) -> list[ir.Node]:
    """Give bare ``None`` literals the type of their siblings."""
    typed = [a for a in args if not (isinstance(a, ir.Literal) and a.value is None)]
    if len(typed) == len(args) or not typed:
        return args
    start = 1 if op == "case" else 0
    ref = typed[-1] if op == "case" else typed[0]
    return [
        ir.Literal(ref.dtype, None)
        if i >= start and isinstance(a, ir.Literal) and a.value is None
        else a
        for i, a in enumerate(args)
    ]


_PROMOTING = {"add", "sub", "mul", "floordiv", "mod", "fill_null", "coalesce"}
_TO_FLOAT = {"truediv", "sqrt", "log", "log1p", "exp"}
_COMPARE = {"eq", "ne", "lt", "le", "gt", "ge"}


def _cast(node: ir.Node, to: DType) -> ir.Node:
    if node.dtype is to:
        return node
    if isinstance(node, ir.Literal):
        return ir.Literal(to, None if node.value is None else float(node.value))
    return ir.Call(to, "cast", (node,), (("to", str(to)),))


def _promote(op: str, args: list[ir.Node], result: DType) -> list[ir.Node]:
    """Make numeric operands homogeneous with explicit casts, so each op sees one type."""
    if op in _TO_FLOAT:
        return [_cast(a, DType.FLOAT) for a in args]
    if op in _PROMOTING and result is DType.FLOAT:
        return [_cast(a, DType.FLOAT) for a in args]
    if op in _COMPARE and {a.dtype for a in args} == {DType.INT, DType.FLOAT}:
        return [_cast(a, DType.FLOAT) for a in args]
    if op == "case" and result is DType.FLOAT:
        return [args[0], *(_cast(a, DType.FLOAT) for a in args[1:])]
    return args


def build_view_ir(
    name: str, entity: Entity, source: Source, outputs: Mapping[str, Any], lateness_us: int
) -> ir.ViewIR:
    for part in entity.parts:
        if part not in source.fields:
            raise DefinitionError(
                f"entity '{entity.name}' key '{part}' is not a field of source '{source.name}'",
                view=name,
            )
        key_type = source.fields[part][0]
        if key_type not in (DType.INT, DType.STR):
            # keys name Redis entries, Kafka message keys and join columns: only exact types do
            raise DefinitionError(
                f"entity '{entity.name}' key '{part}' is declared {key_type} in source "
                f"'{source.name}'; an entity key must be int or str",
                view=name,
            )
    if entity.composite and entity.key in source.fields:
        raise DefinitionError(
            f"entity '{entity.name}': the composite key's column name '{entity.key}' is a field "
            f"of source '{source.name}'",
            view=name,
        )
    for fname in outputs:
        if not isinstance(fname, str) or not fname.isidentifier():
            raise DefinitionError(f"feature name {fname!r} is not an identifier", view=name)
        if fname == entity.key or fname in RESERVED:
            raise DefinitionError(
                "feature name clashes with the entity key or a reserved column",
                view=name,
                feature=fname,
            )
    typer = _Typer(name, source, outputs)
    features = tuple(ir.Feature(f, typer.feature(f)) for f in outputs)
    if entity.key in typer.requests:
        raise DefinitionError(
            f"fp.request({entity.key!r}) has the name of the entity key: a lookup gives the "
            "entity apart from the request fields; name the request field differently",
            view=name,
        )
    return ir.ViewIR(
        name=name,
        entity=entity.name,
        entity_key=entity.key,
        entity_parts=entity.parts if entity.composite else None,
        source=source.name,
        timestamp=source.timestamp,
        fields=tuple(sorted((k, v[0]) for k, v in source.fields.items())),
        features=features,
        lateness_us=lateness_us,
    )


_AGG_OPTIONS = frozenset({"window", "hop", "default", "has_where", "has_by", "error"})
BUCKETED_KINDS = ("count", "sum", "mean", "min", "max", "var", "std")


def _bucketed(kind: str, by: ir.Node, value: DType, default: Any) -> DType:
    """The map type of a bucketed aggregation (``by=``): keys of the bucket's type, values of
    the kind's."""
    if kind not in BUCKETED_KINDS:
        raise UnsupportedOperationError(
            f"by= is offered for {', '.join(BUCKETED_KINDS)}, not {kind}"
        )
    if by.dtype not in (DType.INT, DType.STR, DType.BOOL):
        raise TypeError(
            f"by= needs an int, str or bool expression (the map's keys), got {by.dtype}"
        )
    if default is not None:
        raise TypeError(f"{kind}(by=...) takes no default: a bucket is there only with its events")
    if value not in (DType.INT, DType.FLOAT):
        raise UnsupportedOperationError(
            f"{kind}(by=...) gives a map of numbers; {kind} of a {value} input per bucket is not "
            "offered"
        )
    return map_of(by.dtype, value)


def _kind_param(name: str, value: Any) -> tuple[str, Hashable]:
    """A kind's own parameter as the IR holds it (durations in micros)."""
    if name == "half_life":
        try:
            return "half_life_us", parse_duration(value)
        except ValueError as err:
            raise ValueError(f"half_life: {err}") from None
    return name, value


def _hop(hop: Any, window_us: int | None) -> int | None:
    """The hop of a hopped window, in micros: a positive duration that divides the window
    (so every window start is a multiple of the hop and tiles fit the window exactly)."""
    if hop is None:
        return None
    if window_us is None:
        raise ValueError("hop= needs a window= (a lifetime aggregation has no window to hop)")
    try:
        hop_us = parse_duration(hop)
    except ValueError as err:
        raise ValueError(f"hop: {err}") from None
    if hop_us <= 0:
        raise ValueError(f"hop={hop!r} must be a positive duration")
    if hop_us > window_us or window_us % hop_us:
        raise ValueError(
            f"hop={hop!r} must divide the window ({window_us // 1_000_000:,}s): e.g. "
            "window='7d', hop='1h'"
        )
    return hop_us
