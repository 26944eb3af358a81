"""The project: its root directory and its configuration file.

A project is a directory holding ``featurepipe.toml`` or a ``pyproject.toml`` with a
``[tool.featurepipe]`` table (Feast users know this as ``feature_store.yaml``)::

    definitions = "feature_defs"        # the definitions package, relative to the root
    data_root = "."                     # relative source paths resolve against it
    redis_url = "redis://127.0.0.1:6379/0"
    kafka_bootstrap = "127.0.0.1:9092"
    prefix = "fp"                       # key prefix in the online store
    group = "featurepipe"               # the stream workers' consumer group

Every key is optional. The root is found from the working directory upwards (the first
directory with either file); without one, the working directory is the root and every
setting has its default. ``--repo`` on any command names the root explicitly.

One rule for paths: every relative path, in this file or on the command line (``--defs``,
``--events``, ``--entities``, ``--out``), and the sources' relative Parquet paths (through
``data_root``) are relative to the project root, as with ``git -C``; absolute paths stay as
they are. Run from the project root, that is simply the working directory.

Where a setting comes from, first match wins: the command's argument, the environment
(``REDIS_URL``, ``KAFKA_BOOTSTRAP_SERVERS``), this file, ``featurepipe dev up``'s record, the
default.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from featurepipe.errors import FeaturepipeError

CONFIG_FILE = "featurepipe.toml"
PYPROJECT = "pyproject.toml"
KEYS = ("definitions", "data_root", "redis_url", "kafka_bootstrap", "prefix", "group")
# tables of settings read by one command, which checks their content (`featurepipe monitor`)
TABLES = ("monitor",)


class ProjectConfigError(FeaturepipeError):
    """The project's configuration file cannot be read or holds an unknown or mistyped key."""


@dataclass(frozen=True)
class Project:
    """A project root and its settings (absolute paths)."""

    root: Path
    definitions: Path
    data_root: Path
    redis_url: str | None = None
    kafka_bootstrap: str | None = None
    prefix: str = "fp"
    group: str = "featurepipe"
    config_file: Path | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def state_dir(self) -> Path:
        """``.featurepipe/`` under the root: registry, quarantine, the dev services' record."""
        return self.root / ".featurepipe"

    def path(self, p: str | Path) -> Path:
        """``p`` relative to the root (an absolute path unchanged)."""
        q = Path(p).expanduser()
        return q if q.is_absolute() else self.root / q

    def with_definitions(self, defs: str | Path | None) -> Project:
        """This project with ``--defs`` applied (relative to the root)."""
        if defs is None:
            return self
        return Project(
            root=self.root,
            definitions=self.path(defs),
            data_root=self.data_root,
            redis_url=self.redis_url,
            kafka_bootstrap=self.kafka_bootstrap,
            prefix=self.prefix,
            group=self.group,
            config_file=self.config_file,
            settings=self.settings,
        )


def _read_table(path: Path) -> dict[str, Any] | None:
    """The featurepipe table of ``path`` (None: a pyproject.toml without one)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ProjectConfigError(f"cannot read project configuration {path}: {e}") from None
    if path.name == PYPROJECT:
        table = data.get("tool", {}).get("featurepipe")
        if table is None:
            return None
        if not isinstance(table, dict):
            raise ProjectConfigError(f"{path}: [tool.featurepipe] must be a table")
        return table
    return data


def find_config(start: Path) -> tuple[Path, dict[str, Any]] | None:
    """The nearest configuration file at or above ``start`` and its table."""
    here = start.resolve()
    for d in (here, *here.parents):
        for name in (CONFIG_FILE, PYPROJECT):
            f = d / name
            if f.is_file():
                table = _read_table(f)
                if table is not None:
                    return f, table
    return None


def load_project(repo: str | Path | None = None) -> Project:
    """The project at ``repo`` (its configuration file, if any), else the one found from the
    working directory upwards, else the working directory with defaults."""
    if repo is not None:
        root = Path(repo).expanduser().resolve()
        if not root.is_dir():
            raise ProjectConfigError(f"--repo {repo}: no such directory")
        found = None
        for name in (CONFIG_FILE, PYPROJECT):
            f = root / name
            if f.is_file():
                table = _read_table(f)
                if table is not None:
                    found = (f, table)
                    break
    else:
        found = find_config(Path.cwd())
        root = found[0].parent if found else Path.cwd().resolve()
    config_file, table = found if found else (None, {})
    where = str(config_file) if config_file else "project configuration"
    unknown = sorted(set(table) - set(KEYS) - set(TABLES))
    if unknown:
        raise ProjectConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(KEYS + TABLES)})"
        )
    for key, value in table.items():
        if key in TABLES:
            if not isinstance(value, dict):
                raise ProjectConfigError(f"{where}: '{key}' must be a table ([{key}])")
            continue
        if not isinstance(value, str) or not value:
            raise ProjectConfigError(f"{where}: '{key}' must be a non-empty string, got {value!r}")

    def rel(p: str) -> Path:
        q = Path(p).expanduser()
        return q if q.is_absolute() else root / q

    return Project(
        root=root,
        definitions=rel(table.get("definitions", "feature_defs")),
        data_root=rel(table.get("data_root", ".")),
        redis_url=table.get("redis_url"),
        kafka_bootstrap=table.get("kafka_bootstrap"),
        prefix=table.get("prefix", "fp"),
        group=table.get("group", "featurepipe"),
        config_file=config_file,
        settings=dict(table),
    )


_active: Project | None = None


def use_project(project: Project | None) -> None:
    """Make ``project`` the one settings are read from (the CLI does this per command)."""
    global _active
    _active = project


def active_project() -> Project:
    """The project in use: set by ``use_project``, else found from the working directory."""
    return _active if _active is not None else load_project()
