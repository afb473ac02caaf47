"""The ``memory`` check: RAM (and the container's memory limit) and free memory on each GPU."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torchdoctor.codes import make_finding
from torchdoctor.env.base import EnvContext
from torchdoctor.report import Finding
from torchdoctor.units import format_bytes

LOW_RAM_BYTES = 1 << 30
LOW_RAM_FRACTION = 0.05
BUSY_GPU_FRACTION = 0.5  # others hold more than half of the card


def collect_memory(context: EnvContext) -> dict[str, Any]:
    meminfo = read_meminfo(context.path("/proc/meminfo"))
    limit = read_cgroup_memory_limit(context.path)
    facts: dict[str, Any] = {
        "ram_total_bytes": meminfo.get("MemTotal"),
        "ram_available_bytes": meminfo.get("MemAvailable"),
        "cgroup_limit_bytes": limit,
        "gpus": _gpu_memory(context.devices),
    }
    return facts


def read_meminfo(meminfo_path: str) -> dict[str, int]:
    """``/proc/meminfo`` fields in bytes."""
    values: dict[str, int] = {}
    try:
        with open(meminfo_path, encoding="utf-8") as meminfo:
            for line in meminfo:
                name, _, rest = line.partition(":")
                parts = rest.split()
                if parts and parts[0].isdigit():
                    values[name] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    except OSError:
        pass
    return values


def read_cgroup_memory_limit(path: Callable[[str], str]) -> int | None:
    for candidate in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path(candidate), encoding="utf-8") as limit_file:
                text = limit_file.read().strip()
        except OSError:
            continue
        # cgroup v1 says "no limit" with a huge number near 2**63
        if text.isdigit() and int(text) < (1 << 60):
            return int(text)
    return None


def _gpu_memory(devices: Mapping[str, Any]) -> list[dict[str, Any]]:
    if not devices.get("devices"):
        return []
    import torch

    gpus = []
    for device in devices["devices"]:
        free, total = torch.cuda.mem_get_info(device["index"])
        gpus.append({"index": device["index"], "free_bytes": int(free), "total_bytes": int(total)})
    return gpus


# ---- judgements (pure) ----------------------------------------------------------------------


def check_memory(facts: Mapping[str, Any]) -> list[Finding]:
    findings = []
    available, total = facts.get("ram_available_bytes"), facts.get("ram_total_bytes")
    if facts.get("cgroup_limit_bytes") and total:
        total = min(total, facts["cgroup_limit_bytes"])
    if available is not None and total and (available < LOW_RAM_BYTES or available < LOW_RAM_FRACTION * total):
        findings.append(make_finding(
            "low-memory",
            f"Only {format_bytes(available)} of {format_bytes(total)} RAM is available.",
            details={"available_bytes": available, "total_bytes": total},
        ))
    for gpu in facts.get("gpus", []):
        if gpu["free_bytes"] < (1 - BUSY_GPU_FRACTION) * gpu["total_bytes"]:
            findings.append(make_finding(
                "gpu-memory-busy",
                f"GPU {gpu['index']} has only {format_bytes(gpu['free_bytes'])} free of "
                f"{format_bytes(gpu['total_bytes'])}: other processes hold the rest.",
                location=f"cuda:{gpu['index']}",
                details=dict(gpu),
            ))
    return findings


def headline_memory(facts: Mapping[str, Any]) -> str:
    parts = []
    if facts.get("ram_total_bytes"):
        parts.append(f"RAM {format_bytes(facts.get('ram_available_bytes') or 0)} available of "
                     f"{format_bytes(facts['ram_total_bytes'])}")
    if facts.get("cgroup_limit_bytes"):
        parts.append(f"container limit {format_bytes(facts['cgroup_limit_bytes'])}")
    for gpu in facts.get("gpus", []):
        parts.append(f"cuda:{gpu['index']} {format_bytes(gpu['free_bytes'])} free")
    return ", ".join(parts) or "memory facts unavailable on this platform"
