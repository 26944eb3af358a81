"""The ``featurepipe`` command line: one module per group of commands, all on one typer app."""

from __future__ import annotations

import sys

from rich.markup import escape

from featurepipe.cli import batch, dev, kafka, online  # noqa: F401  (registers the commands)
from featurepipe.cli.app import app
from featurepipe.cli.common import console
from featurepipe.errors import FeaturepipeError


def main() -> None:
    """Entry point: usage errors exit 2 (typer), featurepipe errors print one line and exit 2."""
    try:
        app()
    except FeaturepipeError as e:
        console.print(f"[red]error:[/] {escape(str(e))}")
        sys.exit(2)
