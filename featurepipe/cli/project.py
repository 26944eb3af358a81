"""Project commands: init (a runnable skeleton)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from featurepipe.cli.app import app
from featurepipe.cli.common import console


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="Where to create the project.")] = Path("."),
    force: Annotated[
        bool, typer.Option(help="Overwrite the skeleton's files in an existing project.")
    ] = False,
) -> None:
    """Create a runnable project: featurepipe.toml, one contract and view, sample data."""
    from featurepipe.dev.skeleton import create

    sk = create(directory, force=force)
    console.print(
        f"created a featurepipe project in [bold]{escape(str(sk.root))}[/]: "
        f"{sk.events:,} sample orders of {sk.customers:,} customers"
    )
    for f in sk.files:
        console.print(f"  {escape(str(f.relative_to(sk.root)))}")
    cd = "" if sk.root.resolve() == Path.cwd().resolve() else f"cd {sk.root} && "
    console.print("next (also in its README.md):")
    for step in (
        f"{cd}featurepipe plan",
        "featurepipe training-set --entities data/labels.csv --features customer_orders "
        "--out train.parquet",
        "featurepipe dev up",
        f"featurepipe materialize --until {sk.cutover.isoformat()}",
        "featurepipe get --entity customer_id=c0001 --features customer_orders",
    ):
        console.print(f"  {escape(step)}", soft_wrap=True)
