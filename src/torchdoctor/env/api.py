"""``run_env``: the Python twin of ``torchdoctor env`` — run the selected checks, return one Report."""

from __future__ import annotations

import traceback
from collections.abc import Callable, Sequence
from typing import Any

from torchdoctor.codes import make_finding
from torchdoctor.env.base import CheckOutcome, EnvCheck, EnvContext
from torchdoctor.errors import UsageError
from torchdoctor.report import Report, Section


def _run_shm(context: EnvContext) -> CheckOutcome:
    from torchdoctor.env.shm import check_shm, collect_shm
    from torchdoctor.units import format_bytes

    facts = collect_shm(context.shm_path, root=context.root, environ=context.environ)
    headline = (f"{context.shm_path}: {format_bytes(facts['free_bytes'])} free of "
                f"{format_bytes(facts['total_bytes'])}" if facts["exists"] else f"{context.shm_path} is missing")
    if facts.get("in_container"):
        headline += " (in a container)"
    return CheckOutcome(facts, check_shm(facts), headline)


def _start_dataloader(context: EnvContext) -> None:
    from torchdoctor.env.workers import start_worker_probe

    context.started_probes["dataloader"] = start_worker_probe(
        python=context.python, timeout_s=context.worker_timeout_s)


def _run_dataloader(context: EnvContext) -> CheckOutcome:
    from torchdoctor.env.workers import check_worker_probe

    probe = context.started_probes.pop("dataloader", None)
    if probe is None:
        _start_dataloader(context)
        probe = context.started_probes.pop("dataloader")
    facts = probe.collect()
    if facts["ok"]:
        headline = (f"{facts['num_workers']} workers moved {facts['batches']} batches of "
                    f"{facts['batch_bytes'] / 2**20:.0f} MiB at {facts['mib_per_s']:.0f} MiB/s "
                    f"({facts['start_method']})")
    else:
        headline = f"worker step failed ({facts.get('cause')})"
    return CheckOutcome(facts, check_worker_probe(facts), headline)


def _lazy(module: str, function: str) -> Callable[[EnvContext], CheckOutcome]:
    def run(context: EnvContext) -> CheckOutcome:
        import importlib

        return getattr(importlib.import_module(f"torchdoctor.env.{module}"), function)(context)

    return run


CHECKS: tuple[EnvCheck, ...] = (
    EnvCheck("build", "PyTorch build", "torch version, CUDA/ROCm/MPS/XPU build flags, loaded cuDNN and NCCL",
             _lazy("build", "run_build")),
    EnvCheck("devices", "Devices", "visible GPUs, compute capability vs the wheel's arch list, driver",
             _lazy("devices", "run_devices")),
    EnvCheck("training", "Training steps", "a real training step per device and precision, checked against "
             "the CPU, in a subprocess", _lazy("training", "run_training"),
             start=_lazy("training", "start_training")),
    EnvCheck("shm", "Shared memory", "/dev/shm size and free space, container detection", _run_shm),
    EnvCheck("dataloader", "DataLoader workers", "a real 2-worker DataLoader step through shared memory, "
             "in a subprocess", _run_dataloader, start=_start_dataloader),
    EnvCheck("threads", "CPU threads", "intra-op/interop/OpenMP threads vs usable CPUs (affinity, cgroup quota)",
             _lazy("threads", "run_threads")),
    EnvCheck("memory", "Memory", "RAM available (and the container limit), free memory per GPU",
             _lazy("memory", "run_memory")),
    EnvCheck("reproducibility", "Reproducibility", "determinism flags and CUBLAS_WORKSPACE_CONFIG",
             _lazy("reproducibility", "run_reproducibility")),
)

CHECK_NAMES = tuple(check.name for check in CHECKS)


def select_checks(names: Sequence[str] | None, checks: Sequence[EnvCheck] = CHECKS) -> list[EnvCheck]:
    """The checks named (in registry order), all when ``names`` is empty; ``UsageError`` for unknown names."""
    if not names:
        return list(checks)
    known = {check.name for check in checks}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise UsageError(f"unknown check {', '.join(map(repr, unknown))}; valid checks: {', '.join(known_order(checks))}",
                         "torchdoctor env --list-checks")
    return [check for check in checks if check.name in names]


def known_order(checks: Sequence[EnvCheck]) -> list[str]:
    return [check.name for check in checks]


def run_env(
    checks: Sequence[str] | None = None,
    *,
    context: EnvContext | None = None,
    registry: Sequence[EnvCheck] = CHECKS,
    on_progress: Callable[[str], None] | None = None,
) -> Report:
    """Run the named env checks (all by default) and judge the machine. Never raises for a crashing check."""
    selected = select_checks(checks, registry)
    context = context or EnvContext()
    for check in selected:  # subprocess probes first, so they overlap with the in-process checks
        if check.start is not None:
            _guarded(check, check.start, context)
    sections, result = [], {}
    for check in selected:
        if on_progress is not None:
            on_progress(check.title)
        outcome = _guarded(check, check.run, context)
        result[check.name] = dict(outcome.facts)
        sections.append(Section(check.name, check.title, outcome.headline, tuple(outcome.findings)))
    result["checks_run"] = [check.name for check in selected]
    findings = tuple(finding for section in sections for finding in section.findings)
    return Report("env", findings, result, tuple(sections))


def _guarded(check: EnvCheck, step: Callable[[EnvContext], Any], context: EnvContext) -> Any:
    """Run one step of a check; an unexpected exception becomes a check-crashed finding, not a traceback."""
    try:
        return step(context)
    except Exception as exc:  # a bug in one check must not hide the others' findings
        trace = traceback.format_exc()
        finding = make_finding(
            "check-crashed",
            f"The {check.name} check crashed: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}",
            location=check.name,
            details={"check": check.name, "exception": type(exc).__name__, "traceback": trace},
        )
        return CheckOutcome({"crashed": True, "error": f"{type(exc).__name__}: {exc}"}, [finding],
                            "check crashed")
