"""The ``threads`` check: intra-op / interop / OpenMP threads against the CPUs this process may use.

Usable CPUs are the smaller of the affinity mask and the cgroup CPU quota: ``os.cpu_count()``
reports the host's cores inside a container, the classic cause of oversubscription.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from typing import Any

from torchdoctor.codes import make_finding
from torchdoctor.env.base import EnvContext
from torchdoctor.report import Finding

THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
                   "NUMEXPR_NUM_THREADS")


def collect_threads(context: EnvContext, affinity: set[int] | None = None) -> dict[str, Any]:
    """Thread settings of this process and the CPUs it can use."""
    import torch

    affinity = affinity if affinity is not None else _affinity()
    quota = read_cgroup_cpu_quota(context.path)
    usable = len(affinity) if affinity else (os.cpu_count() or 1)
    if quota is not None:
        usable = max(1, min(usable, math.ceil(quota)))
    return {
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
        "cpu_count": os.cpu_count(),
        "affinity_cpus": sorted(affinity) if affinity else None,
        "cgroup_cpu_quota": quota,
        "physical_cores": count_physical_cores(affinity or set(), context.path),
        "usable_cpus": usable,
        "env": {name: context.environ.get(name) for name in THREAD_ENV_VARS},
    }


def _affinity() -> set[int] | None:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS and Windows have no affinity API
        return None


def read_cgroup_cpu_quota(path: Callable[[str], str]) -> float | None:
    """CPUs allowed by the cgroup (v2 ``cpu.max`` or v1 ``cfs_quota_us``), None when unlimited."""
    v2 = _read(path("/sys/fs/cgroup/cpu.max"))
    if v2:
        quota, _, period = v2.partition(" ")
        return None if quota == "max" else int(quota) / int(period or 100000)
    quota_us = _read(path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")) or _read(
        path("/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us"))
    period_us = _read(path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")) or _read(
        path("/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us"))
    if quota_us and period_us and int(quota_us) > 0:
        return int(quota_us) / int(period_us)
    return None


def count_physical_cores(cpus: set[int], path: Callable[[str], str]) -> int | None:
    """Distinct (package, core) pairs among ``cpus``: hyper-threads share a core."""
    cores = set()
    for cpu in cpus:
        topology = f"/sys/devices/system/cpu/cpu{cpu}/topology/"
        core_id = _read(path(topology + "core_id"))
        package = _read(path(topology + "physical_package_id"))
        if core_id is None:
            return None
        cores.add((package, core_id))
    return len(cores) or None


def _read(file_path: str) -> str | None:
    try:
        with open(file_path, encoding="utf-8") as handle:
            return handle.read().strip()
    except (OSError, ValueError):
        return None


# ---- judgements (pure) ----------------------------------------------------------------------


def check_threads(facts: Mapping[str, Any]) -> list[Finding]:
    """threads-oversubscribed when any thread setting exceeds usable CPUs; threads-underused when <= half."""
    usable = facts["usable_cpus"]
    excess = _oversubscribed_settings(facts)
    if excess:
        listed = ", ".join(f"{name}={value}" for name, value in excess.items())
        return [make_finding(
            "threads-oversubscribed",
            f"{listed} exceed the {usable} usable CPU(s) of this process.",
            fix=f"export OMP_NUM_THREADS={usable}  (or torch.set_num_threads({usable}))",
            details={"usable_cpus": usable, "settings": excess},
        )]
    threads = facts["torch_num_threads"]
    reference = min(usable, facts.get("physical_cores") or usable)
    if reference >= 2 and threads * 2 <= reference:
        return [make_finding(
            "threads-underused",
            f"PyTorch uses {threads} intra-op thread(s) of {reference} usable core(s).",
            fix=f"export OMP_NUM_THREADS={reference}  (or torch.set_num_threads({reference}))",
            details={"torch_num_threads": threads, "usable_cores": reference},
        )]
    return []


def _oversubscribed_settings(facts: Mapping[str, Any]) -> dict[str, int]:
    usable = facts["usable_cpus"]
    excess = {}
    if facts["torch_num_threads"] > usable:
        excess["torch.get_num_threads()"] = facts["torch_num_threads"]
    for name, value in facts["env"].items():
        number = _leading_int(value)
        if number is not None and number > usable:
            excess[name] = number
    return excess


def _leading_int(value: str | None) -> int | None:
    # OMP_NUM_THREADS may be a nested list like "8,2"; the outer level is what competes for cores
    if not value:
        return None
    head = value.split(",")[0].strip()
    return int(head) if head.isdigit() else None


def headline_threads(facts: Mapping[str, Any]) -> str:
    quota = facts.get("cgroup_cpu_quota")
    quota_text = f", cgroup quota {quota:g}" if quota is not None else ""
    return (f"{facts['torch_num_threads']} intra-op / {facts['torch_num_interop_threads']} interop threads "
            f"on {facts['usable_cpus']} usable CPU(s) (os.cpu_count() {facts['cpu_count']}{quota_text})")
