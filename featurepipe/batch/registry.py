"""The registry: fitted artifacts and baseline distributions, versioned by content hash.

Layout under ``.featurepipe/registry/<view>/``::

    artifacts-<hash>.json   {"artifacts": {id: value}, "fitted": {start, end, rows, at}}
    baseline-<fingerprint>.json   per-feature distribution of the fitted view
    current.json            {"artifacts": "artifacts-<hash>.json", "history": [...]}

An artifacts file is named by the hash of its content and never rewritten: fitting the same
values again reuses it. ``current.json`` is rewritten by every fit to point at the version in
force (earlier versions stay listed in its history), and a baseline file is rewritten when the
same fingerprint is fitted again.

``load_definitions`` here is how everything above the definitions layer loads a definitions
package: it reads the artifacts in force and hands them to ``featurepipe.dsl.loader``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from featurepipe.dsl import loader
from featurepipe.dsl.loader import Definitions


class Registry:
    def __init__(self, path: Path) -> None:
        self.path = path

    def view_dir(self, view: str) -> Path:
        return self.path / view

    def current_artifacts(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        if not self.path.is_dir():
            return out
        for vdir in sorted(p for p in self.path.iterdir() if p.is_dir()):
            cur = vdir / "current.json"
            if cur.exists():
                pointer = json.loads(cur.read_text())
                blob = json.loads((vdir / pointer["artifacts"]).read_text())
                out[vdir.name] = blob["artifacts"]
        return out

    def save_artifacts(self, view: str, artifacts: dict[str, Any], fitted: dict[str, Any]) -> Path:
        vdir = self.view_dir(view)
        vdir.mkdir(parents=True, exist_ok=True)
        body = json.dumps({"artifacts": artifacts}, sort_keys=True)
        name = f"artifacts-{hashlib.sha256(body.encode()).hexdigest()[:12]}.json"
        target = vdir / name
        if not target.exists():
            target.write_text(
                json.dumps({"artifacts": artifacts, "fitted": fitted}, indent=2, sort_keys=True)
            )
        cur = vdir / "current.json"
        history: list[str] = json.loads(cur.read_text()).get("history", []) if cur.exists() else []
        if name not in history:
            history.append(name)
        cur.write_text(json.dumps({"artifacts": name, "history": history}, indent=2))
        return target

    def save_baseline(self, view: str, fingerprint: str, baseline: dict[str, Any]) -> Path:
        vdir = self.view_dir(view)
        vdir.mkdir(parents=True, exist_ok=True)
        target = vdir / f"baseline-{fingerprint}.json"
        target.write_text(json.dumps(baseline, indent=2, sort_keys=True, default=str))
        return target

    def baseline(self, view: str, fingerprint: str) -> dict[str, Any] | None:
        target = self.view_dir(view) / f"baseline-{fingerprint}.json"
        if not target.exists():
            return None
        out: dict[str, Any] = json.loads(target.read_text())
        return out


def default_path(definitions: str | Path) -> Path:
    """Where ``featurepipe fit`` keeps the registry of a definitions package: ``.featurepipe/
    registry`` beside it."""
    return Path(definitions).resolve().parent / ".featurepipe" / "registry"


def load_definitions(
    path: str | Path,
    *,
    registry: str | Path | None = None,
    fitting: bool = False,
) -> Definitions:
    """Load a definitions package with the fitted artifacts in force in its registry.

    ``registry``: where ``featurepipe fit`` froze fitted artifacts (default: ``default_path``,
    used when it exists). ``fitting=True`` lets views with unfitted ops build with
    placeholders and records what needs fitting in ``defs.fit_requests``.
    """
    reg = Registry(Path(registry) if registry is not None else default_path(path))
    artifacts = {} if fitting else reg.current_artifacts()
    return loader.load_definitions(path, artifacts=artifacts, fitting=fitting)
