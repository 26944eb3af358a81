"""Per-event compiler, row level: IR expressions -> generated Python source.

One entry per operation in ``TEMPLATES``; compare with ``polars_rows.TRANSLATIONS``. Generated
code is plain Python over scalars (datetimes as int64 epoch microseconds), printable by
``featurepipe plan``. Ops outside ``NULL_AWARE`` return null when any input is null.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from featurepipe import kernels as k
from featurepipe.ir import nodes as ir
from featurepipe.ir.types import DType

I, F, B, S, D = DType.INT, DType.FLOAT, DType.BOOL, DType.STR, DType.DATETIME

Template = Callable[[ir.Call, list[str], "CodeGen"], str]


def _by_type(int_t: str, float_t: str) -> Template:
    def t(node: ir.Call, a: list[str], g: CodeGen) -> str:
        tpl = float_t if node.dtype is F else int_t
        return tpl.format(*a)

    return t


def _fmt(tpl: str) -> Template:
    return lambda node, a, g: tpl.format(*a)


def _cmp(op: str) -> Template:
    def t(node: ir.Call, a: list[str], g: CodeGen) -> str:
        if node.args[0].dtype is F:
            return f"_k.cmp({op!r}, {a[0]}, {a[1]})"
        sym = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}[op]
        return f"({a[0]} {sym} {a[1]})"

    return t


def _cast(node: ir.Call, a: list[str], g: CodeGen) -> str:
    src, to = node.args[0].dtype, node.dtype
    x = a[0]
    table = {
        (I, F): f"float({x})",
        (F, I): f"_k.float_to_int({x})",
        (B, I): f"int({x})",
        (B, F): f"float({x})",
        (I, S): f"str({x})",
        (I, B): f"({x} != 0)",
        (D, I): x,
    }
    return table.get((src, to), x)


def _clip(node: ir.Call, a: list[str], g: CodeGen) -> str:
    return f"_k.fclip({a[0]}, {node.param('lower')!r}, {node.param('upper')!r})"


def _slice(node: ir.Call, a: list[str], g: CodeGen) -> str:
    return f"_k.slice_str({a[0]}, {node.param('offset')!r}, {node.param('length')!r})"


def _encode(node: ir.Call, a: list[str], g: CodeGen) -> str:
    vocab = node.param("vocabulary")
    name = g.const({v: i + k.FIRST_VOCAB_CODE for i, v in enumerate(vocab)})
    return f"({k.NULL_CODE} if {a[0]} is None else {name}.get({a[0]}, {k.OOV_CODE}))"


def _coalesce(node: ir.Call, a: list[str], g: CodeGen) -> str:
    out = a[-1]
    for x in reversed(a[:-1]):
        out = f"({x} if {x} is not None else {out})"
    return out


TEMPLATES: dict[str, Template] = {
    "add": _by_type("_k.wrap({0} + {1})", "({0} + {1})"),
    "sub": _by_type("_k.wrap({0} - {1})", "({0} - {1})"),
    "mul": _by_type("_k.wrap({0} * {1})", "({0} * {1})"),
    # the kernel (IEEE results of a zero divisor) only when the divisor is 0 or -0.0
    "truediv": _fmt("({0} / {1} if {1} else _k.fdiv({0}, {1}))"),
    "floordiv": _by_type("_k.ifloordiv({0}, {1})", "_k.ffloordiv({0}, {1})"),
    "mod": _by_type("_k.imod({0}, {1})", "_k.fmod({0}, {1})"),
    "neg": _by_type("_k.wrap(-{0})", "(-{0})"),
    "eq": _cmp("eq"),
    "ne": _cmp("ne"),
    "lt": _cmp("lt"),
    "le": _cmp("le"),
    "gt": _cmp("gt"),
    "ge": _cmp("ge"),
    # Kleene logic (``kernels.and3``, ``or3``) inline: false (true) wins over null
    "and": _fmt(
        "(False if {0} is False or {1} is False else (None if {0} is None or {1} is None else True))"
    ),
    "or": _fmt(
        "(True if {0} is True or {1} is True else (None if {0} is None or {1} is None else False))"
    ),
    "not": _fmt("(not {0})"),
    "is_null": _fmt("({0} is None)"),
    "fill_null": _fmt("({1} if {0} is None else {0})"),
    "coalesce": _coalesce,
    "case": _fmt("({1} if {0} is True else {2})"),
    "cast": _cast,
    "abs": _by_type("_k.wrap(abs({0}))", "abs({0})"),
    "round": lambda n, a, g: f"_k.fround({a[0]}, {n.param('decimals')!r})",
    "floor": _fmt("_k.ffloor({0})"),
    "ceil": _fmt("_k.fceil({0})"),
    "sqrt": _fmt("_k.fsqrt({0})"),
    "log": _fmt("_k.flog({0})"),
    "log1p": _fmt("_k.flog1p({0})"),
    "exp": _fmt("_k.fexp({0})"),
    "clip": _clip,
    "lower": _fmt("{0}.lower()"),
    "upper": _fmt("{0}.upper()"),
    "strip": _fmt("{0}.strip(_k.STRIP_CHARS)"),
    "str_len": _fmt("len({0})"),
    "contains": lambda n, a, g: f"({n.param('text')!r} in {a[0]})",
    "startswith": lambda n, a, g: f"{a[0]}.startswith({n.param('text')!r})",
    "endswith": lambda n, a, g: f"{a[0]}.endswith({n.param('text')!r})",
    "slice": _slice,
    "concat": lambda n, a, g: "(" + " + ".join(a) + ")",
    # ``kernels.dt_part`` inline where it is one expression
    "hour": _fmt("({0} // 3600000000 % 24)"),
    "minute": _fmt("({0} // 60000000 % 60)"),
    "day_of_week": _fmt("(({0} // 86400000000 + 3) % 7 + 1)"),
    "day": _fmt("_k.dt_part('day', {0})"),
    "month": _fmt("_k.dt_part('month', {0})"),
    "year": _fmt("_k.dt_part('year', {0})"),
    "epoch_seconds": _fmt("({0} // 1000000)"),
    "truncate": lambda n, a, g: f"_k.truncate_us({a[0]}, {n.param('every')!r})",
    "encode": _encode,
    "hash_bucket": lambda n, a, g: f"_k.hash_bucket({a[0]}, {n.param('buckets')!r})",
    "bucketize": lambda n, a, g: f"_k.bucketize({a[0]}, {n.param('boundaries')!r})",
}

# Ops that see nulls themselves; every other op returns null when an input is null.
NULL_AWARE = {"and", "or", "is_null", "fill_null", "coalesce", "case", "encode"}


class CodeGen:
    """Emits straight-line Python for a set of expressions, sharing common subexpressions."""

    def __init__(self, leaf: Callable[[ir.Node], str | None]) -> None:
        self.lines: list[str] = []
        self.names: dict[ir.Node, str] = {}
        self.consts: dict[str, Any] = {"_k": k}
        self.leaf = leaf

    def const(self, value: Any) -> str:
        name = f"_c{len(self.consts)}"
        self.consts[name] = value
        return name

    def emit(self, node: ir.Node) -> str:
        if node in self.names:
            return self.names[node]
        leaf = self.leaf(node)
        if leaf is not None and leaf.isidentifier():  # a name already: used as it is
            self.names[node] = leaf
            return leaf
        if leaf is not None:
            code = leaf
        elif isinstance(node, ir.Literal):
            # bound to a name so that null checks never test a literal with `is`
            code = self._float(node.value) if isinstance(node.value, float) else repr(node.value)
        elif isinstance(node, ir.Call):
            args = [self.emit(a) for a in node.args]
            code = TEMPLATES[node.op](node, args, self)
            if node.op not in NULL_AWARE:
                nulls = [a for a, n in zip(args, node.args, strict=True) if not _never_null(n)]
                if nulls:
                    cond = " or ".join(f"{a} is None" for a in nulls)
                    code = f"(None if {cond} else {code})"
        else:
            raise TypeError(f"cannot compile {type(node).__name__} at row level")
        name = f"v{len(self.names)}"
        self.names[node] = name
        self.lines.append(f"{name} = {code}")
        return name

    def _float(self, value: float) -> str:
        if value != value or value in (float("inf"), float("-inf")):
            return self.const(value)
        return repr(value)

    def function(
        self, name: str, params: str, outputs: list[str], as_list: bool = False
    ) -> tuple[str, Callable[..., Any]]:
        body = "\n".join(f"    {ln}" for ln in self.lines) or "    pass"
        values = ", ".join(outputs)
        result = f"[{values}]" if as_list else f"({values}{',' if len(outputs) == 1 else ''})"
        src = f"def {name}({params}):\n{body}\n    return {result}\n"
        namespace = dict(self.consts)
        exec(compile(src, f"<featurepipe:{name}>", "exec"), namespace)
        return src, namespace[name]


def _never_null(node: ir.Node) -> bool:
    return isinstance(node, ir.Literal) and node.value is not None
