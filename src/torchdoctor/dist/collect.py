"""Collect the facts of a distributed run: backend availability, then torchrun with N ranks, then their event logs.

The launcher runs as a ``ChildProcess`` in its own process group with an overall timeout, so a rank
that hangs past its own watchdog still cannot hang torchdoctor.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torchdoctor.env.child import ChildOutcome, ChildProcess

WORKER_MODULE = "torchdoctor.dist._worker"
ENV_KEYS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")
PHASES = ("init", "all_reduce", "broadcast", "barrier", "bandwidth", "ddp_step", "param_check")


@dataclass
class DistOptions:
    """What to launch and the side effects to use (injectable: tests pass their own)."""

    nproc: int = 2
    backend: str | None = None  # None: nccl when CUDA is available, else gloo
    phase_timeout_s: float = 30.0
    timeout_s: float | None = None  # the whole launch; None: startup allowance + every phase's timeout
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    python: str = sys.executable

    @property
    def launch_timeout_s(self) -> float:
        return self.timeout_s or 60.0 + self.phase_timeout_s * len(PHASES)


def collect_distributed(options: DistOptions) -> dict[str, Any]:
    """Decide the backend, check it is built in, launch the ranks and gather what each recorded."""
    backend = options.backend or default_backend()
    facts: dict[str, Any] = {"backend": backend, "world_size": options.nproc,
                             "availability": collect_availability(backend),
                             "environ": {key: options.environ.get(key) for key in ENV_KEYS},
                             "nccl_env": {k: v for k, v in sorted(options.environ.items()) if k.startswith("NCCL_")}}
    if not all(facts["availability"].values()):
        return facts
    with tempfile.TemporaryDirectory(prefix="torchdoctor-dist-") as folder:
        outcome = ChildProcess(launch_argv(options, backend, folder), timeout_s=options.launch_timeout_s,
                               env=_child_environ(options.environ)).finish()
        facts["ranks"] = read_rank_logs(folder, options.nproc)
    facts["launcher"] = _launcher_facts(outcome)
    return facts


def default_backend() -> str:
    import torch

    return "nccl" if torch.cuda.is_available() else "gloo"


def collect_availability(backend: str) -> dict[str, bool]:
    """Whether this torch build has torch.distributed and the requested backend."""
    import torch.distributed as dist

    if not dist.is_available():
        return {"distributed": False, "backend": False}
    probe = {"gloo": dist.is_gloo_available, "nccl": dist.is_nccl_available, "mpi": dist.is_mpi_available}
    return {"distributed": True, "backend": bool(probe[backend]()) if backend in probe else False}


def launch_argv(options: DistOptions, backend: str, folder: str) -> list[str]:
    return [options.python, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={options.nproc}",
            "--max-restarts=0", "-m", WORKER_MODULE, "--out", folder, "--backend", backend,
            "--phase-timeout", str(options.phase_timeout_s)]


def _child_environ(environ: Mapping[str, str]) -> dict[str, str]:
    # OMP_NUM_THREADS set explicitly silences torchrun's banner; the user's own value wins
    return {"OMP_NUM_THREADS": "1", **environ, "PYTHONUNBUFFERED": "1"}


def read_rank_logs(folder: str, nproc: int) -> dict[str, dict[str, Any]]:
    """Each rank's events folded into its facts: env, per-phase ok/ms, where it stopped and why."""
    ranks = {}
    for rank in range(nproc):
        path = os.path.join(folder, f"rank{rank}.jsonl")
        events = _read_events(path) if os.path.exists(path) else []
        ranks[str(rank)] = fold_events(events)
    return ranks


def _read_events(path: str) -> list[dict[str, Any]]:
    events = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            try:
                events.append(json.loads(line))
            except ValueError:
                continue  # a line cut short by a kill
    return events


def fold_events(events: list[dict[str, Any]]) -> dict[str, Any]:
    """One rank's facts: ``phases`` {name: {ok, ms, ...}}, ``current`` (started, not finished), ``arrived``."""
    rank: dict[str, Any] = {"started": bool(events), "environ": {}, "phases": {}, "current": None,
                            "arrived": False, "error": None, "stalled": None}
    for event in events:
        kind, phase = event.get("event"), event.get("phase")
        if kind == "env":
            rank["environ"] = event.get("environ", {})
        elif kind == "start":
            rank["current"], rank["arrived"] = phase, False
        elif kind == "arrived":
            rank["arrived"] = True
        elif kind == "done":
            facts = {k: v for k, v in event.items() if k not in ("event", "phase", "rank", "t")}
            rank["phases"][phase] = {"ok": True, **facts}
            rank["current"] = None
        elif kind == "error":
            rank["phases"][phase] = {"ok": False}
            rank["error"] = {"phase": phase, "type": event.get("type"), "error": event.get("error"), "t": event["t"]}
        elif kind == "stalled":
            rank["stalled"] = {"phase": phase, "timeout_s": event.get("timeout_s")}
    return rank


def _launcher_facts(outcome: ChildOutcome) -> dict[str, Any]:
    lines = [line for line in outcome.stderr.splitlines() if line.strip() and not set(line) <= {"*"}]
    return {"returncode": outcome.returncode, "timed_out": outcome.timed_out, "start_error": outcome.start_error,
            "wall_s": round(outcome.wall_seconds, 2), "stderr_tail": lines[-8:]}
