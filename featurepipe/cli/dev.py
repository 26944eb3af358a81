"""Development commands: dev up/down/status, demo."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from featurepipe.cli.app import app
from featurepipe.cli.common import RepoOpt, console, project_for

dev_app = typer.Typer(help="Embedded Kafka-compatible broker and Redis-compatible server.")
app.add_typer(dev_app, name="dev")


@dev_app.command("up")
def dev_up(
    kafka_port: Annotated[
        int,
        typer.Option(min=0, max=65535, help="The broker's port on 127.0.0.1 (0: a free port)."),
    ] = 0,
    redis_port: Annotated[
        int,
        typer.Option(min=0, max=65535, help="The store's port on 127.0.0.1 (0: a free port)."),
    ] = 0,
    repo: RepoOpt = None,
) -> None:
    """Start (or find) the embedded broker and store on loopback ports (free ones unless given;
    a port in use is an error naming it)."""
    from featurepipe.dev import infra
    from featurepipe.settings import redact_url

    project = project_for(repo, None, definitions=False)
    s = infra.up(
        workdir=project.state_dir, kafka_port=kafka_port or None, redis_port=redis_port or None
    )
    console.print(f"kafka  {s.kafka_bootstrap}  (pid {s.kafka_pid})")
    console.print(f"redis  {redact_url(s.redis_url)}  (pid {s.redis_pid})")
    console.print(
        f"recorded in {escape(str(project.state_dir / 'dev.json'))} (mode 0600, with the "
        "store's password); the project's commands find them there",
        soft_wrap=True,
    )


@dev_app.command("down")
def dev_down(repo: RepoOpt = None) -> None:
    """Stop the project's embedded services."""
    from featurepipe.dev import infra

    project = project_for(repo, None, definitions=False)
    console.print("stopped" if infra.down(workdir=project.state_dir) else "nothing was running")


@dev_app.command("status")
def dev_status(repo: RepoOpt = None) -> None:
    """Show whether the project's embedded services run and answer."""
    from featurepipe.dev import infra

    project = project_for(repo, None, definitions=False)
    st = infra.status(workdir=project.state_dir)
    if not st["running"]:
        console.print("not running (featurepipe dev up)")
        raise typer.Exit(1)
    for name in ("kafka", "redis"):
        info = st[name]
        ok = info["alive"] and info["reachable"]
        where = info.get("bootstrap") or info.get("url")
        console.print(
            f"{name:6} {where}  pid {info['pid']}  " + ("[green]up[/]" if ok else "[red]down[/]")
        )
    if not all(st[n]["alive"] and st[n]["reachable"] for n in ("kafka", "redis")):
        raise typer.Exit(1)


@app.command()
def demo(
    events: Annotated[int, typer.Option(help="Events to generate.")] = 100_000,
    workdir: Annotated[Path, typer.Option(help="Where to write the demo repository.")] = Path(
        "data/demo"
    ),
) -> None:
    """The whole story: generate, fit, training set, materialize, stream, look up, parity, drift."""
    from featurepipe.dev.demo import run_demo

    if not run_demo(console, events=events, workdir=workdir):
        raise typer.Exit(1)
