"""What every command shares: the console, the project options, time and output helpers."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from featurepipe.project import Project, ProjectConfigError, load_project, use_project

console = Console()

RepoOpt = Annotated[
    Path | None,
    typer.Option(
        "--repo",
        help="Project root (default: the nearest directory upwards with featurepipe.toml or "
        "\\[tool.featurepipe] in pyproject.toml, else the working directory).",
    ),
]
DefsOpt = Annotated[
    str | None,
    typer.Option(
        "--defs",
        help="Definitions package or file, relative to the project root "
        "(default: the project's 'definitions', else feature_defs).",
    ),
]
BootstrapOpt = Annotated[
    str | None,
    typer.Option(
        help="Kafka bootstrap servers (else $KAFKA_BOOTSTRAP_SERVERS, the project's "
        "kafka_bootstrap, dev up, 127.0.0.1:9092)."
    ),
]
AddressOpt = Annotated[
    str | None,
    typer.Option(
        help="With --engine dask: the scheduler's address (e.g. tcp://10.0.0.5:8786); "
        "default: 'local', worker processes on this machine started for the job."
    ),
]
RedisUrlOpt = Annotated[
    str | None,
    typer.Option(help="Online store URL (else $REDIS_URL, the project's redis_url, dev up)."),
]
PrefixOpt = Annotated[
    str | None, typer.Option(help="Key prefix in Redis (default: the project's, else fp).")
]
JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print JSON (for scripts) instead of tables.")
]


def project_for(repo: Path | None, defs: str | None, *, definitions: bool = True) -> Project:
    """The project of this command (``--repo``, ``--defs``), made the one settings come from.

    With ``definitions`` (every command but ``dev``), missing definitions are refused here
    with what to do: outside any project, `featurepipe init` or ``--repo``."""
    project = load_project(repo).with_definitions(defs)
    use_project(project)
    if definitions:
        _check_definitions(project, defs)
    return project


def _check_definitions(project: Project, given: str | None) -> None:
    if not project.definitions.exists():
        if given is not None:
            raise ProjectConfigError(
                f"--defs {given}: no such file or directory ({project.definitions}; relative "
                f"paths resolve against the project root {project.root})"
            )
        if project.config_file is None:
            raise ProjectConfigError(
                f"no featurepipe project here: no featurepipe.toml (or [tool.featurepipe] in "
                f"pyproject.toml) in {project.root} or above it, and no feature_defs/ in it. "
                "Create one with `featurepipe init`, or name it with --repo (or --defs)."
            )
        raise ProjectConfigError(
            f"definitions {project.definitions} do not exist (from 'definitions' in "
            f"{project.config_file}, or its default feature_defs)"
        )


def typed_path(project: Project, typed: str | Path) -> tuple[str, str]:
    """A path option as the user typed it, and a note saying where it resolves when that is
    not where the working directory would put it (else ""): relative paths on the command line
    resolve against the project root."""
    q = Path(typed).expanduser()
    if q.is_absolute() or project.path(typed).resolve() == q.resolve():
        return str(typed), ""
    return str(typed), f" (relative paths resolve against the project root {project.root})"


def typed_and_resolved(project: Project, typed: str | Path) -> str:
    """A path option as the user typed it, with the path it resolves to when that is not
    where the working directory would put it (for a summary line)."""
    shown, note = typed_path(project, typed)
    return f"{shown} ({project.path(typed)})" if note else shown


def event_log_files(project: Project, events: Path) -> list[Path]:
    """The files of an ``--events`` option: the file itself, or the Parquet files of a
    directory (recursively) or a glob, in name order; relative to the project root."""
    from featurepipe.batch.sources import resolve_files
    from featurepipe.errors import DataError, FeaturepipeError

    shown, note = typed_path(project, events)
    glob = any(ch in str(events) for ch in "*?[")
    path = project.path(events)
    if not glob and not path.exists():
        raise FeaturepipeError(f"event log '{shown}' does not exist{note}")
    if not glob and not path.is_dir():
        return [path]
    try:
        return resolve_files(Path(events).expanduser(), project.root)
    except DataError:
        what = "matches no .parquet files" if glob else "is a directory without .parquet files"
        raise FeaturepipeError(f"event log '{shown}' {what}{note}") from None


def load_defs(project: Project, *, fitting: bool = False) -> Any:
    """The project's definitions with the fitted artifacts in force (its registry)."""
    from featurepipe.batch.registry import load_definitions

    return load_definitions(
        project.definitions, registry=project.state_dir / "registry", fitting=fitting
    )


def when(text: str | None, option: str) -> datetime | None:
    """An optional time option; a bad value is a FeaturepipeError naming the option."""
    from featurepipe.ir.timebase import parse_instant

    return None if text is None else parse_instant(text, option)


def print_json(value: Any) -> None:
    """``value`` as JSON on stdout (datetimes as ISO text; floats exactly as Python prints them)."""
    typer.echo(json.dumps(value, default=_json_default, ensure_ascii=False))


def _json_default(v: Any) -> Any:
    if isinstance(v, datetime):
        return v.isoformat()
    if isinstance(v, Path):
        return str(v)
    raise TypeError(f"{type(v).__name__} is not JSON serializable")


def table(*columns: str, title: str | None = None) -> Table:
    """A table that wraps long cells instead of cutting them off."""
    t = Table(title=title)
    for c in columns:
        t.add_column(c, overflow="fold")
    return t
