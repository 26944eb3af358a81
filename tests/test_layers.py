"""Imports point down the layers only, and no module imports another module's private names.

Every module under ``featurepipe/`` is parsed with ``ast``; every import counts, including the
ones inside functions and under ``TYPE_CHECKING``. The layers, lowest first:

    foundation  errors, kernels (scalar semantics), progress (a rich progress bar), project
                (the project root and its configuration file), settings (where the services are)
    ir          types, timebase, nodes, ops, fingerprint, describe, fold, ...
    definitions dsl: entities, sources, feature views, the loader
    compilers   compile: IR -> Polars plan, IR -> per-event Python
    runtimes    batch, stream, online (see RUNTIME_LINKS for the imports allowed between them)
    parity      parity: replay through both paths and compare
    facade      store (FeatureStore), testing (assert_parity), the package's public API
    services    serve (the HTTP feature server), monitoring (drift, consistency): built on
                the facade
    tools       cli, dev (embedded services, demo, data generator)

A module may import from its own layer or any layer below it, never from a layer above.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "featurepipe"

LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "foundation",
        (
            "featurepipe.errors",
            "featurepipe.kernels",
            "featurepipe.progress",
            "featurepipe.project",
            "featurepipe.settings",
        ),
    ),
    ("ir", ("featurepipe.ir",)),
    ("definitions", ("featurepipe.dsl",)),
    ("compilers", ("featurepipe.compile",)),
    ("runtimes", ("featurepipe.batch", "featurepipe.stream", "featurepipe.online")),
    ("parity", ("featurepipe.parity",)),
    ("facade", ("featurepipe.store", "featurepipe.testing", "featurepipe")),
    ("services", ("featurepipe.serve", "featurepipe.monitoring")),
    ("tools", ("featurepipe.cli", "featurepipe.dev")),
]

# The three runtimes are peers; these are the only imports allowed between them.
RUNTIME_LINKS: dict[tuple[str, str], str] = {
    ("featurepipe.online.materialize", "featurepipe.batch.sources"): (
        "materialize reads a source's Parquet through the batch runtime: one reader, so the "
        "same contract checks, quarantine and arrival order as training sets"
    ),
    ("featurepipe.online.cli_materialize", "featurepipe.batch.registry"): (
        "the materialize command loads the definitions with the fitted artifacts in force"
    ),
    ("featurepipe.online.cli_materialize", "featurepipe.batch.distributed"): (
        "the materialize command runs the shards on a Dask cluster with the training sets' runner"
    ),
    ("featurepipe.batch.distributed", "featurepipe.online.materialize"): (
        "the Dask runner computes materialization shards (a type only: a task computes itself)"
    ),
    ("featurepipe.stream", "featurepipe.online"): (
        "the stream worker keeps the online store current: it writes states and offsets "
        "through the online store's own modules (keys, commits)"
    ),
}
RUNTIMES = ("featurepipe.batch", "featurepipe.stream", "featurepipe.online")


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _owner(module: str, prefixes: tuple[str, ...] | list[str]) -> str | None:
    """The longest prefix that ``module`` falls under."""
    found = [p for p in prefixes if _within(module, p)]
    return max(found, key=len) if found else None


def layer_of(module: str) -> int:
    prefixes = [p for _, ps in LAYERS for p in ps]
    owner = _owner(module, prefixes)
    assert owner is not None, f"{module} is in no layer: add it to LAYERS"
    return next(i for i, (_, ps) in enumerate(LAYERS) if owner in ps)


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(name: str, root: Path) -> bool:
    rel = Path(*name.split(".")[1:]) if "." in name else Path()
    base = root / rel
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def imports(path: Path, root: Path) -> list[tuple[int, str, str | None]]:
    """(line, imported featurepipe module, imported name or None) for every import of ``path``."""
    package = root.name
    me = module_name(path, root)
    tree = ast.parse(path.read_text(), filename=str(path))
    out: list[tuple[int, str, str | None]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _within(alias.name, package):
                    out.append((node.lineno, alias.name, None))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = me.split(".")
                if path.name != "__init__.py":
                    anchor = anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            if not _within(base, package):
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if _is_module(sub, root):
                    out.append((node.lineno, sub, None))
                else:
                    out.append((node.lineno, base, alias.name))
    return out


def _private_attributes(path: Path, root: Path) -> list[tuple[int, str]]:
    """``mod._name`` where ``mod`` is bound by an import of a featurepipe module."""
    package = root.name
    tree = ast.parse(path.read_text(), filename=str(path))
    bound: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname and _within(alias.name, package):
                    bound[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and _within(node.module, package):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                if _is_module(sub, root):
                    bound[alias.asname or alias.name] = sub
    found = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in bound
            and _private(node.attr)
        ):
            found.append((node.lineno, f"{bound[node.value.id]}.{node.attr}"))
    return found


def _runtime_link_allowed(importer: str, target: str) -> bool:
    for (src, dst), _why in RUNTIME_LINKS.items():
        if _within(importer, src) and _within(target, dst):
            return True
    return False


def violations(root: Path = PACKAGE) -> list[str]:
    """Every upward import, unlisted import between runtimes and private cross-module import."""
    found: list[str] = []
    for path in sorted(root.rglob("*.py")):
        me = module_name(path, root)
        where = path.relative_to(root.parent)
        mine = layer_of(me)
        for line, target, name in imports(path, root):
            theirs = layer_of(target)
            if theirs > mine:
                found.append(
                    f"{where}:{line}: {me} ({LAYERS[mine][0]}) imports {target} "
                    f"({LAYERS[theirs][0]}), a higher layer"
                )
            my_rt, their_rt = _owner(me, RUNTIMES), _owner(target, RUNTIMES)
            if (
                my_rt is not None
                and their_rt is not None
                and my_rt != their_rt
                and not _runtime_link_allowed(me, target)
            ):
                found.append(
                    f"{where}:{line}: runtime {me} imports runtime {target}: not in RUNTIME_LINKS"
                )
            if name is not None and _private(name) and target != me:
                found.append(f"{where}:{line}: {me} imports the private name {target}.{name}")
        for line, dotted in _private_attributes(path, root):
            found.append(f"{where}:{line}: {me} uses the private name {dotted}")
    return found


def test_no_upward_or_private_imports() -> None:
    found = violations()
    assert not found, "layer violations:\n" + "\n".join(found)


def test_every_module_has_a_layer() -> None:
    for path in PACKAGE.rglob("*.py"):
        layer_of(module_name(path, PACKAGE))


def test_the_check_finds_violations(tmp_path: Path) -> None:
    """The checker is not vacuous: a fake package with each kind of violation is caught."""
    pkg = tmp_path / "featurepipe"
    for sub in ("ir", "dsl", "batch", "online", "stream", "compile"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "errors.py").write_text("")
    (pkg / "cli.py").write_text("def _describe(n):\n    return str(n)\n")
    (pkg / "ir" / "nodes.py").write_text("X = 1\n_HIDDEN = 2\n")
    (pkg / "ir" / "timebase.py").write_text("from featurepipe.ir.nodes import X\n")
    (pkg / "dsl" / "loader.py").write_text(
        "def load():\n    from featurepipe.batch.registry import Registry\n    return Registry\n"
    )
    (pkg / "batch" / "registry.py").write_text(
        "from featurepipe.stream.validate import MIN\nclass Registry: ...\n"
    )
    (pkg / "stream" / "validate.py").write_text("MIN = 0\n")
    (pkg / "compile" / "rows.py").write_text(
        "from featurepipe.ir.nodes import _HIDDEN\nfrom featurepipe.ir import nodes\n"
        "Y = nodes._HIDDEN\n"
    )
    (pkg / "online" / "lookup.py").write_text("from . import materialize\n")
    (pkg / "online" / "materialize.py").write_text("from ..cli import _describe\n")
    found = "\n".join(violations(pkg))
    assert "featurepipe.dsl.loader (definitions) imports featurepipe.batch.registry" in found
    assert "runtime featurepipe.batch.registry imports runtime featurepipe.stream.validate" in found
    assert "imports the private name featurepipe.ir.nodes._HIDDEN" in found
    assert "uses the private name featurepipe.ir.nodes._HIDDEN" in found
    assert "featurepipe.online.materialize (runtimes) imports featurepipe.cli (tools)" in found
    assert "imports the private name featurepipe.cli._describe" in found
    assert "featurepipe.ir.timebase" not in found  # a same-layer import is fine
    assert "featurepipe.online.lookup" not in found  # within one runtime is fine
    assert len(found.splitlines()) == 6, found
