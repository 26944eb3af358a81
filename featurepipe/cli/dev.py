"""Development commands: dev up/down/status, demo."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from featurepipe.cli.app import app
from featurepipe.cli.common import console

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
) -> None:
    """Start (or find) the embedded broker and store on loopback ports (free ones unless given;
    a port in use is an error naming it)."""
    from featurepipe.dev import infra
    from featurepipe.settings import redact_url

    s = infra.up(kafka_port=kafka_port or None, redis_port=redis_port or None)
    console.print(f"kafka  {s.kafka_bootstrap}  (pid {s.kafka_pid})")
    console.print(f"redis  {redact_url(s.redis_url)}  (pid {s.redis_pid})")
    console.print(
        "recorded in .featurepipe/dev.json (mode 0600, with the store's password); "
        "other commands find them there"
    )


@dev_app.command("down")
def dev_down() -> None:
    """Stop the embedded services."""
    from featurepipe.dev import infra

    console.print("stopped" if infra.down() else "nothing was running")


@dev_app.command("status")
def dev_status() -> None:
    """Show whether the embedded services run and answer."""
    from featurepipe.dev import infra

    st = infra.status()
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
