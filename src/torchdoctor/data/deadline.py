"""A time limit on one blocking call into the user's loader: SIGALRM interrupts it where it waits.

A loader that hangs (a ``__getitem__`` blocked on a lock or the network, workers deadlocked after fork)
never raises: without a limit, ``torchdoctor data`` and every CI job running it would hang with it.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

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
    """SIGALRM exists (POSIX), this is the main thread (the only one Python delivers signals to), and SIGALRM is
    not someone else's: no alarm is armed and no handler other than the default is installed (the user's own
    alarms are left alone rather than cancelled)."""
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        return False
    return signal.getsignal(signal.SIGALRM) in (signal.SIG_DFL, signal.SIG_IGN) and \
        signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


class TimeLimit:
    """``call(f, *args)`` raises ``TimedOut`` if ``f`` runs longer than ``seconds`` (None/0, or where
    ``can_time_out`` is false: no limit).

    The SIGALRM handler is installed once for the ``with`` block and each call only arms and disarms the
    timer (one ``setitimer`` each: the probe's per-batch cost stays in microseconds). The handler raises
    where the main thread waits: in ``time.sleep``, a lock, a socket read, or torch's wait on its workers'
    queue (each returns to Python on EINTR to run it).
    """

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds if seconds and can_time_out() else None
        self.previous: Any = None

    def __enter__(self) -> TimeLimit:
        if self.seconds:
            self.previous = signal.signal(signal.SIGALRM, self._expired)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.seconds:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.previous)

    def call(self, function: Callable[..., T], *args: Any) -> T:
        if not self.seconds:
            return function(*args)
        signal.setitimer(signal.ITIMER_REAL, self.seconds)
        try:
            return function(*args)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)

    def _expired(self, signum: int, frame: Any) -> None:
        raise TimedOut(self.seconds or 0.0)
