"""Run a probe in a child process with a timeout, so a crash or hang in torch cannot take torchdoctor down.

The env checks that run real work (DataLoader workers, training steps on every device) start a
child ``python -m torchdoctor.env._..._child`` early, overlap it with the in-process checks, and
read back the one JSON object it prints.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO, Any


@dataclass(frozen=True)
class ChildOutcome:
    """How a child ended: its JSON result (None if it printed none), exit, signal, timeout, output."""

    result: dict[str, Any] | None
    returncode: int | None
    signal: str | None
    timed_out: bool
    start_error: str | None
    stdout: str
    stderr: str
    wall_seconds: float


class ChildProcess:
    """A child started now; ``finish()`` waits up to the rest of ``timeout_s``, then kills its whole group."""

    def __init__(self, argv: list[str], *, timeout_s: float, env: Mapping[str, str] | None = None) -> None:
        self.argv = argv
        self.timeout_s = timeout_s
        self.started = time.monotonic()
        self.start_error: str | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._outcome: ChildOutcome | None = None
        # Temporary files, not pipes: DataLoader workers that outlive the child keep pipes open,
        # so reading to EOF could block even though the child has exited.
        self._out: IO[bytes] = tempfile.TemporaryFile()
        self._err: IO[bytes] = tempfile.TemporaryFile()
        try:
            # its own session = its own process group, so a hang is killed with every worker in it
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=self._out, stderr=self._err,
                env=None if env is None else dict(env), start_new_session=True,
            )
        except OSError as exc:
            self.start_error = f"could not start {argv[0]}: {exc}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def finish(self) -> ChildOutcome:
        """Wait (once; later calls return the same outcome) and collect what the child left."""
        if self._outcome is None:
            self._outcome = self._wait()
        return self._outcome

    def _wait(self) -> ChildOutcome:
        timed_out = False
        if self.proc is not None:
            remaining = max(0.0, self.started + self.timeout_s - time.monotonic())
            try:
                self.proc.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                timed_out = True
            kill_group(self.proc)  # also on success: reap workers the child left behind in its group
            self.proc.wait()
        code = self.proc.returncode if self.proc else None
        stdout, stderr = _read(self._out), _read(self._err)
        return ChildOutcome(
            result=last_json_object(stdout), returncode=code,
            signal=signal_name(-code) if code is not None and code < 0 else None,
            timed_out=timed_out, start_error=self.start_error, stdout=stdout, stderr=stderr,
            wall_seconds=time.monotonic() - self.started,
        )


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    if not hasattr(os, "killpg"):  # Windows: no process groups to kill, only the child
        proc.kill()
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # the whole group is already gone


def _read(handle: IO[bytes]) -> str:
    handle.seek(0)
    text = handle.read().decode("utf-8", errors="replace")
    handle.close()
    return text


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:  # real-time signals have no name
        return f"signal {number}"


def describe_signal(number: int) -> str:
    return signal.strsignal(number) or signal_name(number)


def last_json_object(stdout: str) -> dict[str, Any] | None:
    """The child's result: the last line of stdout that parses as a JSON object."""
    for line in reversed(stdout.splitlines()):
        try:
            result = json.loads(line)
        except ValueError:
            continue
        if isinstance(result, dict):
            return result
    return None
