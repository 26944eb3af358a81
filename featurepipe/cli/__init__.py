"""The ``featurepipe`` command line: one module per group of commands, all on one typer app."""

from __future__ import annotations

import sys

from rich.markup import escape

# importing a command module registers its commands
from featurepipe.cli import batch, dev, kafka, monitor, online, project, serve  # noqa: F401
from featurepipe.cli.app import app
from featurepipe.cli.common import console
from featurepipe.errors import FeaturepipeError


def main() -> None:
    """Entry point: usage errors exit 2 (typer); featurepipe errors, and the operating system's
    or Polars' refusals of a user's file (missing, unreadable, not the format it claims, disk
    full), print one line and exit 2. Anything else is a bug and keeps its traceback."""
    import polars.exceptions as ple

    try:
        app()
    except FeaturepipeError as e:
        console.print(f"[red]error:[/] {escape(str(e))}", soft_wrap=True)
        sys.exit(2)
    except (OSError, ple.PolarsError) as e:
        console.print(
            f"[red]error:[/] {escape(type(e).__name__)}: {escape(str(e))}", soft_wrap=True
        )
        sys.exit(2)
