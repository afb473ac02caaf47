"""DataLoader worker probe: a real multi-worker DataLoader pass in a subprocess, and why it failed."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from torchdoctor.codes import make_finding
from torchdoctor.env.child import ChildOutcome, ChildProcess, describe_signal
from torchdoctor.env.shm import shm_fix
from torchdoctor.report import Finding
from torchdoctor.units import format_bytes

CHILD_MODULE = "torchdoctor.env._worker_child"
MAX_ERROR_CHARS = 300

# Checked in order, lowercase key phrases: definite shared-memory errors beat the bus error that
# torch's worker signal handler prints (it also says "shared memory"), which beats generic hints.
_CAUSE_PHRASES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("cuda-fork-init", ("re-initialize cuda in forked subprocess",)),
    ("shm-exhausted", ("no space left on device", "allocate shared memory", "/dev/shm")),
    ("bus-error", ("bus error", "sigbus")),
    ("shm-exhausted", ("shared memory",)),
    ("pickling", ("can't pickle", "cannot pickle", "pickling", "pickle error")),
    ("worker-killed", ("killed by signal", "exited unexpectedly")),
)


def classify_worker_failure(text: str, *, timed_out: bool) -> str:
    """The cause of a failed probe from its error text and stderr: one of the ``cause`` values."""
    if timed_out:
        return "timeout"
    lowered = text.lower()
    for cause, phrases in _CAUSE_PHRASES:
        if any(p in lowered for p in phrases):
            return cause
    return "other"


def _evidence_line(text: str, cause: str) -> str | None:
    """The line of ``text`` that made us decide on ``cause``, trying its most specific phrase first."""
    lines = text.splitlines()
    for phrase in (p for c, ps in _CAUSE_PHRASES if c == cause for p in ps):
        for line in lines:
            if phrase in line.lower():
                return line.strip()
    return None


class WorkerProbe:
    """A running probe subprocess; ``collect()`` waits for it and returns the facts."""

    def __init__(self, argv: list[str], *, timeout_s: float, env: Mapping[str, str] | None,
                 requested: dict[str, int]) -> None:
        self.requested = requested
        self.timeout_s = timeout_s
        self.child = ChildProcess(argv, timeout_s=timeout_s, env=env)
        self._facts: dict[str, Any] | None = None

    @property
    def pid(self) -> int | None:
        return self.child.pid

    def collect(self) -> dict[str, Any]:
        """Wait for the child (up to what is left of the timeout; then kill its group) and return facts."""
        if self._facts is None:
            self._facts = _facts(self, self.child.finish())
        return self._facts


def _facts(probe: WorkerProbe, outcome: ChildOutcome) -> dict[str, Any]:
    code, signame, timed_out = outcome.returncode, outcome.signal, outcome.timed_out
    result = outcome.result or {}
    ok = bool(result.get("ok")) and code == 0 and not timed_out
    facts = {
        "ok": ok,
        "num_workers": result.get("num_workers", probe.requested["num_workers"]),
        "batch_bytes": result.get("batch_bytes", probe.requested["batch_mib"] * 2**20),
        "batches": result.get("batches", probe.requested["batches"]),
        "seconds": result.get("seconds"),
        "mib_per_s": result.get("mib_per_s"),
        "start_method": result.get("start_method"),
        "exit_code": code,
        "signal": signame,
        "timed_out": timed_out,
        "wall_seconds": round(outcome.wall_seconds, 3),
        "cause": None,
        "error": None,
    }
    if not ok:
        facts.update(_failure(probe, result, outcome))
    return facts


def _failure(probe: WorkerProbe, result: Mapping[str, Any], outcome: ChildOutcome) -> dict[str, Any]:
    """``cause`` and ``error`` for a failed probe."""
    stderr, signame = outcome.stderr, outcome.signal
    if outcome.start_error:
        return {"cause": "other", "error": _short(outcome.start_error)}
    if outcome.timed_out:
        # the SIGKILL was ours; the last stderr line (if any) may tell where it hung
        hung = f"no result after {probe.timeout_s:g} s; killed the probe and its workers"
        error = " | ".join(filter(None, [hung, _last_line(stderr)]))
        return {"cause": classify_worker_failure(stderr, timed_out=True), "error": _short(error)}
    text = "\n".join(filter(None, [result.get("error"), stderr]))
    main = _main_line(result, stderr)
    if signame:
        # the child itself died: say so in the words torch uses for dead workers, so that SIGBUS
        # reads "Bus error" and any other signal "killed by signal"
        line = f"probe process killed by signal: {describe_signal(-outcome.returncode)} ({signame})"
        text += "\n" + line
        main = main or line
    cause = classify_worker_failure(text, timed_out=False)
    evidence = _evidence_line(text, cause)
    if evidence and main and evidence not in main:
        main = f"{main} | {evidence}"
    return {"cause": cause, "error": _short(main or f"probe exited with code {outcome.returncode}")}


def _short(text: str) -> str:
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"




def _main_line(result: Mapping[str, Any], stderr: str) -> str | None:
    """Last meaningful line of the child's exception (a worker traceback ends in the real one) or stderr."""
    error = result.get("error")
    if error:
        last = _last_line(error)
        exc_type = result.get("exc_type")
        # a one-line message lacks its type; a re-raised worker traceback ends in "Type: message"
        return f"{exc_type}: {last}" if exc_type and last == error.strip() else last
    return _last_line(stderr)


def _last_line(text: str) -> str | None:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else None


def start_worker_probe(
    *,
    python: str = sys.executable,
    timeout_s: float = 60.0,
    env: Mapping[str, str] | None = None,
    batch_mib: int = 8,
    batches: int = 4,
    num_workers: int = 2,
) -> WorkerProbe:
    """Start the probe subprocess now (importing torch takes seconds); ``collect()`` it later."""
    argv = [
        python, "-m", CHILD_MODULE,
        "--batch-mib", str(batch_mib), "--batches", str(batches), "--num-workers", str(num_workers),
    ]
    requested = {"batch_mib": batch_mib, "batches": batches, "num_workers": num_workers}
    return WorkerProbe(argv, timeout_s=timeout_s, env=env, requested=requested)


def run_worker_probe(**kwargs: Any) -> dict[str, Any]:
    """``start_worker_probe(**kwargs).collect()``: run the probe and wait for its facts."""
    return start_worker_probe(**kwargs).collect()


_CAUSE_SENTENCES = {
    "shm-exhausted": "DataLoader workers ran out of shared memory{shm}.",
    "bus-error": "A DataLoader worker died of a bus error (SIGBUS); in workers that almost always means "
                 "shared memory ran out{shm}.",
    "worker-killed": "A DataLoader process was killed by a signal{sig} (SIGKILL usually means the "
                     "out-of-memory killer).",
    "cuda-fork-init": "CUDA was initialized before the DataLoader forked its workers, and a forked "
                      "worker cannot use CUDA.",
    "timeout": "The DataLoader step with {n} workers did not finish in time: a worker hung.",
    "pickling": "The dataset could not be pickled to start worker processes (spawn/forkserver pickle it).",
    "other": "The DataLoader step with {n} workers failed.",
}


def check_worker_probe(facts: Mapping[str, Any], shm_facts: Mapping[str, Any] | None = None) -> list[Finding]:
    """``dataloader-workers-failed`` naming the cause, the real error line, and the fix for that cause."""
    if facts.get("ok"):
        return []
    cause = facts.get("cause") or "other"
    sentence = _CAUSE_SENTENCES.get(cause, _CAUSE_SENTENCES["other"]).format(
        shm=_shm_clause(shm_facts), sig=f" ({facts['signal']})" if facts.get("signal") else "",
        n=facts.get("num_workers"),
    )
    error = facts.get("error")
    message = f"{sentence} {error}" if error else sentence
    details = {key: facts.get(key) for key in ("cause", "exit_code", "signal", "error", "timed_out",
                                                "start_method", "num_workers", "batch_bytes")}
    return [make_finding("dataloader-workers-failed", message, fix=_fix(cause, shm_facts), details=details)]


def _shm_clause(shm_facts: Mapping[str, Any] | None) -> str:
    if not shm_facts or shm_facts.get("free_bytes") is None:
        return ""
    return (f" ({shm_facts['path']} has {format_bytes(shm_facts['free_bytes'])} free of "
            f"{format_bytes(shm_facts['total_bytes'])})")


def _fix(cause: str, shm_facts: Mapping[str, Any] | None) -> str:
    if cause in ("shm-exhausted", "bus-error"):
        # not set_sharing_strategy('file_system'): it still allocates in /dev/shm (tried with a full one)
        return f"{shm_fix(shm_facts)}; or lower num_workers, prefetch_factor or the batch size."
    if cause == "cuda-fork-init":
        return ("Do not touch CUDA (no .cuda(), no torch.cuda calls) before the DataLoader starts its "
                "workers, or pass multiprocessing_context='spawn' to the DataLoader.")
    if cause == "timeout":
        return ("A worker hung: look for deadlocks in the dataset's __getitem__ (locks, open connections, "
                "threads started before fork); try multiprocessing_context='spawn'.")
    if cause == "worker-killed":
        return "Check `dmesg` for the OOM killer; lower num_workers, batch size or prefetch_factor."
    if cause == "pickling":
        return ("Define the dataset, its transforms and collate_fn at module level (no lambdas or local "
                "functions), or use multiprocessing_context='fork' on Linux.")
    return "Rerun with --debug to see the probe's full stderr; as a stopgap use num_workers=0."


def collect_dataloader_facts(context: Any, probe: WorkerProbe | None = None) -> dict[str, Any]:
    """The ``dataloader`` check's facts: the probe's (started now unless given) plus /dev/shm's for the advice."""
    from torchdoctor.env.shm import collect_shm_facts

    probe = probe or start_dataloader_probe(context)
    return {**probe.collect(), "shm": collect_shm_facts(context)}


def start_dataloader_probe(context: Any) -> WorkerProbe:
    return start_worker_probe(python=context.python, timeout_s=context.worker_timeout_s)


def check_dataloader(facts: Mapping[str, Any]) -> list[Finding]:
    return check_worker_probe(facts, facts.get("shm"))


def headline_dataloader(facts: Mapping[str, Any]) -> str:
    if not facts.get("ok"):
        return f"the worker step failed ({facts.get('cause')})"
    return (f"{facts['num_workers']} workers moved {facts['batches']} batches of "
            f"{format_bytes(facts['batch_bytes'])} at {facts['mib_per_s']:.0f} MiB/s ({facts['start_method']})")
