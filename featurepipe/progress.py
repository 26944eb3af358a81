"""The one progress bar style of the command line."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def progress_bar(console: Console, label: str) -> Progress:
    """A transient bar: ``label``, bar, done/total, elapsed time."""
    return Progress(
        TextColumn(f"[bold]{escape(label)}[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
