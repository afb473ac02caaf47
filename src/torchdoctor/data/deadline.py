"""A time limit on one blocking call into the user's loader: SIGALRM interrupts it where it waits.

A loader that hangs (a ``__getitem__`` blocked on a lock or the network, workers deadlocked after fork)
never raises: without a limit, ``torchdoctor data`` and every CI job running it would hang with it.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# A batch that takes a minute is a hang for a probe of the first batches (a slow first batch, with workers
# starting, takes seconds); users with slower storage raise it with --timeout.
DEFAULT_TIMEOUT_S = 60.0


class TimedOut(BaseException):
    """The call did not return in time.

    A BaseException, like KeyboardInterrupt: a dataset that retries with ``except Exception`` must not
    swallow it and go back to waiting.
    """

    def __init__(self, seconds: float) -> None:
        super().__init__(f"no result within {seconds:g} s")
        self.seconds = seconds


def can_time_out() -> bool:
    """SIGALRM exists (POSIX) and this is the main thread, the only one Python delivers signals to."""
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


@contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise ``TimedOut`` in the block after ``seconds``; no limit for None/0 or where ``can_time_out`` is false.

    The handler raises where the main thread waits: in ``time.sleep``, a lock, a socket read, or torch's
    wait on its workers' queue (all of them return to Python on EINTR to run it).
    """
    if not seconds or not can_time_out():
        yield
        return

    def expired(signum: int, frame: Any) -> None:
        raise TimedOut(seconds)

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
