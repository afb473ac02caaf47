"""A Rich progress bar on stderr for long work, only when stdout and stderr are both terminals."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

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
