"""The typer application every command module registers with."""

from __future__ import annotations

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="featurepipe: declare features once; run them in batch and per event, identically.",
    pretty_exceptions_enable=False,
)
