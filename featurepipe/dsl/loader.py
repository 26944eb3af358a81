"""Load a definitions package (a directory of Python modules) and collect its objects."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from featurepipe.dsl.definitions import Entity, FeatureView, Source
from featurepipe.errors import DefinitionError


@dataclass
class Definitions:
    views: dict[str, FeatureView] = field(default_factory=dict)
    sources: dict[str, Source] = field(default_factory=dict)
    entities: dict[str, Entity] = field(default_factory=dict)
    fit_requests: list[Any] = field(default_factory=list)

    def add(self, name: str, obj: object, origin: str) -> None:
        if isinstance(obj, FeatureView):
            other = self.views.get(obj.name)
            if other is not None and other is not obj:
                raise DefinitionError(
                    f"duplicate feature view name (again in {origin})", view=obj.name
                )
            self.views[obj.name] = obj
            self.add("", obj.source, origin)
            self.add("", obj.entity, origin)
        elif isinstance(obj, Source):
            other_s = self.sources.get(obj.name)
            if other_s is not None and other_s is not obj:
                raise DefinitionError(f"duplicate source name '{obj.name}' (again in {origin})")
            self.sources[obj.name] = obj
        elif isinstance(obj, Entity):
            other_e = self.entities.get(obj.name)
            if other_e is not None and other_e != obj:
                raise DefinitionError(f"entity '{obj.name}' is declared twice with different keys")
            self.entities[obj.name] = obj

    def view(self, name: str) -> FeatureView:
        try:
            return self.views[name]
        except KeyError:
            raise DefinitionError(
                f"no feature view named '{name}' (have: {', '.join(sorted(self.views))})"
            ) from None


def load_definitions(
    path: str | Path,
    *,
    artifacts: Mapping[str, Mapping[str, Any]] | None = None,
    fitting: bool = False,
) -> Definitions:
    """Import every module of a definitions directory (or a single file) and collect views.

    ``artifacts``: the fitted values frozen by ``featurepipe fit`` (view -> artifact id ->
    value); the caller reads them from the registry (``featurepipe.batch.registry.
    load_definitions`` does both). ``fitting=True`` lets views with unfitted ops build with
    placeholders and records what needs fitting in ``defs.fit_requests``; it starts from no
    artifacts: every fitted op is fitted again.
    """
    from featurepipe.dsl.artifacts import ArtifactContext, artifact_context

    root = Path(path)
    values = {} if fitting else {v: dict(a) for v, a in (artifacts or {}).items()}
    ctx = ArtifactContext(values=values, fitting=fitting)
    with artifact_context(ctx):
        defs = _load(root, path)
    defs.fit_requests = ctx.requests
    return defs


def _load(root: Path, path: str | Path) -> Definitions:
    if not root.exists():
        raise DefinitionError(f"definitions path '{path}' does not exist")
    files = (
        [root]
        if root.is_file()
        else sorted(p for p in root.rglob("*.py") if p.name != "__init__.py")
    )
    defs = Definitions()
    tag = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:8]
    for file in files:
        rel = file.relative_to(root.parent if root.is_file() else root).with_suffix("")
        mod_name = f"_featurepipe_defs_{tag}." + ".".join(rel.parts)
        spec = importlib.util.spec_from_file_location(mod_name, file)
        if spec is None or spec.loader is None:
            raise DefinitionError(f"cannot import {file}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        try:
            spec.loader.exec_module(module)
        except DefinitionError:
            raise
        except Exception as e:
            raise DefinitionError(f"importing {file} failed: {type(e).__name__}: {e}") from e
        for name, obj in vars(module).items():
            if not name.startswith("_"):
                defs.add(name, obj, str(file.name))
    if not defs.views:
        raise DefinitionError(f"no feature views found under '{path}'")
    check_topics(defs.views.values())
    return defs


def check_topics(views: Iterable[FeatureView]) -> None:
    """One Kafka topic feeds views of one entity key.

    The stream worker relies on each message being keyed by its entity, so that all events of
    an entity land in one partition and one worker owns the entity's state (per-entity arrival
    order, single ownership). A message has one key, so the views a topic feeds must share the
    entity key; views keyed otherwise need their own topic, keyed by their entity. Checked when
    the definitions load, so ``plan`` refuses what ``stream`` could not run.
    """
    by_topic: dict[str, list[FeatureView]] = {}
    for view in views:
        if view.source.stream is not None:
            by_topic.setdefault(view.source.stream.topic, []).append(view)
    for topic, fed in by_topic.items():
        keys = {v.entity.key for v in fed}
        if len(keys) > 1:
            listed = ", ".join(f"'{v.name}' (key '{v.entity.key}')" for v in fed)
            raise DefinitionError(
                f"Kafka topic '{topic}' feeds views with different entity keys: {listed}. "
                "A topic's messages are keyed (and partitioned) by one entity key, so that one "
                "stream worker owns each entity: give the views of each other key a topic of "
                "their own, produced keyed by that key"
            )
