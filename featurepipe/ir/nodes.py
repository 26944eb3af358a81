"""The IR: small, immutable, typed nodes. Both compilers translate these and nothing else.

Row-level nodes (``Field``, ``Literal``, ``Call``) describe per-event values. ``Agg`` turns a
row-level expression into a per-entity value at query time. ``FeatureRef`` lets a derived feature
use another feature of the same view. A feature is any node tree whose row-level leaves sit under
an ``Agg``.
"""

from __future__ import annotations

import struct
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from featurepipe.ir.types import DType

Param = tuple[str, Hashable]
Span = tuple[int, int] | None  # (window_us, hop_us) of a windowed aggregation; None: lifetime


def _exact(v: Any) -> Any:
    """A comparison key that tells apart what ``==`` merges: -0.0 and 0.0, NaN payloads (and
    makes NaN equal to itself), True and 1."""
    if isinstance(v, float):
        return ("float", struct.pack(">d", v))
    if isinstance(v, bool):
        return ("bool", v)
    if isinstance(v, tuple):
        return tuple(_exact(x) for x in v)
    return v


@dataclass(frozen=True, slots=True, eq=False)
class Node:
    """Nodes compare bit-exactly: two literals are one node only if both compilers would emit
    the same value for them (``0.0`` and ``-0.0`` are different nodes)."""

    dtype: DType

    def _key(self) -> tuple[Any, ...]:
        return (type(self), *(_exact(getattr(self, f.name)) for f in fields(self)))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Node):
            return NotImplemented
        return self is other or self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def children(self) -> tuple[Node, ...]:
        return ()

    def walk(self) -> Iterator[Node]:
        yield self
        for child in self.children():
            yield from child.walk()


@dataclass(frozen=True, slots=True, eq=False)
class Field(Node):
    """A field of the source event, as declared in its pydantic contract."""

    name: str = ""


@dataclass(frozen=True, slots=True, eq=False)
class Literal(Node):
    value: Any = None


@dataclass(frozen=True, slots=True, eq=False)
class Call(Node):
    """A row-level operation; ``op`` names an entry of ``featurepipe.ir.ops.OPS``."""

    op: str = ""
    args: tuple[Node, ...] = ()
    params: tuple[Param, ...] = ()

    def children(self) -> tuple[Node, ...]:
        return self.args

    def param(self, name: str) -> Any:
        for key, value in self.params:
            if key == name:
                return value
        raise KeyError(name)


@dataclass(frozen=True, slots=True, eq=False)
class Agg(Node):
    """A per-entity aggregation evaluated at query time T over events with start <= ts < T.

    ``window_us`` None means lifetime (every ts < T). A sliding window starts at T - window; a
    hopped one (``hop_us``, which divides the window) at ``T // hop * hop - window``: its tail
    moves in hops, its head is exact (``kernels.window_start``). ``where`` filters events.
    ``default`` replaces a null result (empty window, or no non-null input).
    """

    kind: str = ""
    arg: Node | None = None
    window_us: int | None = None
    where: Node | None = None
    default: Any = None
    hop_us: int | None = None
    # the kind's own parameters (e.g. approx_percentile's q), as (name, value) pairs
    params: tuple[Param, ...] | None = None
    # bucketed aggregation: the kind per value of ``by`` (int, str or bool), as a map
    by: Node | None = None

    def param(self, name: str) -> Any:
        for key, value in self.params or ():
            if key == name:
                return value
        raise KeyError(name)

    @property
    def span(self) -> Span:
        """The window as the compilers key it: None (lifetime) or (window_us, hop_us), hop 1
        for a sliding window (``T // 1 * 1 - w`` is ``T - w``)."""
        if self.window_us is None:
            return None
        return (self.window_us, self.hop_us or 1)

    def children(self) -> tuple[Node, ...]:
        return tuple(n for n in (self.arg, self.where, self.by) if n is not None)


@dataclass(frozen=True, slots=True, eq=False)
class FeatureRef(Node):
    """A reference, from a derived feature, to another feature of the same view."""

    name: str = ""


@dataclass(frozen=True, slots=True, eq=False)
class Request(Node):
    """A field of the lookup request (``fp.request``): given by the caller at lookup time, by
    the label table's column of that name in a training set. Feature level only."""

    name: str = ""


@dataclass(frozen=True, slots=True, eq=False)
class QueryTime(Node):
    """The time T a feature is read at (``fp.query_time()``): the lookup's request time, the
    training row's timestamp, the parity harness's query point. Feature level only."""


@dataclass(frozen=True, slots=True)
class Feature:
    name: str
    expr: Node


@dataclass(frozen=True, slots=True)
class ViewIR:
    """A whole feature view, normalized: what both compilers and the fingerprint see."""

    name: str
    entity: str
    entity_key: str
    source: str
    timestamp: str
    fields: tuple[tuple[str, DType], ...]
    features: tuple[Feature, ...]
    lateness_us: int
    artifacts: tuple[tuple[str, Hashable], ...] = field(default=())
    # a composite entity key: its fields in order (entity_key is then their synthetic column)
    entity_parts: tuple[str, ...] | None = None

    def feature(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(name)

    @property
    def request_fields(self) -> tuple[tuple[str, DType], ...]:
        """The request fields the view's features read, in order of first use."""
        seen: dict[str, DType] = {}
        for f in self.features:
            for node in f.expr.walk():
                if isinstance(node, Request):
                    seen.setdefault(node.name, node.dtype)
        return tuple(seen.items())

    def request_fields_read(self, feats: Sequence[str]) -> tuple[tuple[str, DType], ...]:
        """The request fields (in ``request_fields`` order) that the features ``feats`` read,
        directly or through the features they reference."""
        read = {
            node.name
            for name in self.reached(feats)
            for node in self.feature(name).expr.walk()
            if isinstance(node, Request)
        }
        return tuple((f, d) for f, d in self.request_fields if f in read)

    def reached(self, feats: Sequence[str]) -> set[str]:
        """The features ``feats`` and every feature they reference, directly or not."""
        seen: set[str] = set()
        todo = list(feats)
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            todo += [n.name for n in self.feature(name).expr.walk() if isinstance(n, FeatureRef)]
        return seen

    def restricted_to(self, feats: Sequence[str]) -> ViewIR:
        """The view with only the features ``feats`` and those they reference, in view order:
        the same values for those features from fewer aggregations (a training set of a few
        features of a wide view computes only what they need)."""
        keep = self.reached(feats)
        return replace(self, features=tuple(f for f in self.features if f.name in keep))

    @property
    def fields_read(self) -> frozenset[str]:
        """The source fields the view's aggregations read (their values, filters, buckets)."""
        return frozenset(n.name for a in self.aggs for n in a.walk() if isinstance(n, Field))

    @property
    def reads_query_time(self) -> bool:
        """Whether a feature reads the query time (its value moves with T, not only at
        window edges)."""
        return any(isinstance(n, QueryTime) for f in self.features for n in f.expr.walk())

    @property
    def aggs(self) -> tuple[Agg, ...]:
        """Distinct aggregations used anywhere in the view, in a stable order."""
        seen: dict[Agg, None] = {}
        for f in self.features:
            for node in f.expr.walk():
                if isinstance(node, Agg):
                    seen.setdefault(node, None)
        return tuple(seen)

    def dependency_order(self) -> list[Feature]:
        """Features ordered so that each comes after every feature it references."""
        done: dict[str, Feature] = {}

        def visit(f: Feature) -> None:
            if f.name in done:
                return
            for n in f.expr.walk():
                if isinstance(n, FeatureRef):
                    visit(self.feature(n.name))
            done[f.name] = f

        for f in self.features:
            visit(f)
        return list(done.values())

    @property
    def max_window_us(self) -> int:
        """How far behind a query time the oldest event it can see lies: the longest window
        (plus hop - 1 for a hopped one, whose tail trails T - window by up to that)."""
        spans = [a.span for a in self.aggs if a.span is not None]
        return max((w + h - 1 for w, h in spans), default=0)
