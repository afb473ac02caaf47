"""A Rich progress bar on stderr for long work, only when stdout and stderr are both terminals."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from torchdoctor.cli._output import stderr_console, stdout_console


@contextmanager
def progress_bar(description: str, enabled: bool = True) -> Iterator[Callable[[int, int], None] | None]:
    """Yields an ``on_progress(done, total)`` callback, or None when no bar should be drawn."""
    console = stderr_console()
    if not enabled or not (console.is_terminal and stdout_console().is_terminal):
        yield None
        return
    from rich.progress import Progress

    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        yield update


def item_lines(enabled: bool = True) -> Callable[[int, int, Any, Any], None] | None:
    """``check``'s progress: a line on stderr as each item starts and ends, when stderr is a terminal.

    Lines, not a transient bar: the items take seconds to minutes each, and what finished stays readable.
    """
    console = stderr_console()
    if not enabled or not console.is_terminal:
        return None
    started: dict[int, float] = {}

    def show(number: int, total: int, item: Any, outcome: Any) -> None:
        title = item.kind if item.name == item.kind else f"{item.kind} {item.name}"
        if outcome is None:
            started[number] = time.monotonic()
            console.print(f"[{number}/{total}] {title} …", markup=False, highlight=False)
            return
        seconds = time.monotonic() - started.get(number, time.monotonic())
        console.print(f"[{number}/{total}] {title}: {_outcome_words(outcome)} ({seconds:.1f} s)", markup=False,
                      highlight=False)

    return show


def _outcome_words(outcome: Any) -> str:
    if outcome.report is None:
        return "could not run"
    findings = outcome.report.findings
    counts = [(s, sum(1 for f in findings if f.severity.value == s)) for s in ("error", "warning", "info")]
    words = [f"{n} {s}{'s' if n != 1 else ''}" for s, n in counts if n]
    return ", ".join(words) or "no issues"
