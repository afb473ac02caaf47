"""/dev/shm: how much room DataLoader workers have to hand batches over, and whether we run in a container."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

from torchdoctor.codes import make_finding
from torchdoctor.report import Finding, Severity
from torchdoctor.units import GIB, MIB, format_bytes

ERROR_BELOW = 256 * MIB
WARN_BELOW = 1 * GIB

# Files whose mere presence marks a container (Docker, Podman/Buildah).
_CONTAINER_FILES = (".dockerenv", "run/.containerenv")
# Runtime names that show up in PID 1's cgroup paths under cgroup v1 (v2 usually shows just "0::/").
_CGROUP_MARKERS = ("docker", "kubepods", "containerd", "libpod", "lxc")
# `container` is set by systemd-nspawn/podman; Kubernetes sets the service host in every pod.
_CONTAINER_ENV = ("container", "KUBERNETES_SERVICE_HOST")


def collect_shm(
    path: str = "/dev/shm",
    root: str = "/",
    environ: Mapping[str, str] | None = None,
    platform: str = sys.platform,
) -> dict[str, Any]:
    """Size and free space of ``path`` plus container hints read under ``root`` and from ``environ``."""
    total, free = _space(path)
    hints = container_hints(root, os.environ if environ is None else environ)
    return {
        "path": path,
        "exists": os.path.exists(path),
        "total_bytes": total,
        "free_bytes": free,
        "platform": platform,
        "in_container": bool(hints),
        "container_hints": hints,
    }


def _space(path: str) -> tuple[int | None, int | None]:
    try:
        st = os.statvfs(path)
    except OSError:
        return None, None
    # f_bavail, not f_bfree: what an unprivileged process (a DataLoader worker) can actually use
    return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize


def container_hints(root: str, environ: Mapping[str, str]) -> list[str]:
    """Evidence that we run inside a container, e.g. ``["/.dockerenv", "env container=podman"]``."""
    hints = [f"/{name}" for name in _CONTAINER_FILES if os.path.exists(os.path.join(root, name))]
    hints += [f"/proc/1/cgroup mentions {m}" for m in _cgroup_markers(os.path.join(root, "proc/1/cgroup"))]
    hints += [f"env {name}={environ[name]}" for name in _CONTAINER_ENV if environ.get(name)]
    return hints


def _cgroup_markers(cgroup_file: str) -> list[str]:
    try:
        with open(cgroup_file, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return []
    return [m for m in _CGROUP_MARKERS if m in text]


def check_shm(facts: Mapping[str, Any]) -> list[Finding]:
    """``shm-too-small``: error below 256 MiB free, warning below 1 GiB; missing counts only on Linux."""
    path = facts["path"]
    free = facts.get("free_bytes")
    if free is None:
        # macOS and Windows have no /dev/shm: PyTorch shares memory through other mechanisms there
        if not str(facts.get("platform", sys.platform)).startswith("linux"):
            return []
        message = f"{path} is missing (0 B free); DataLoader workers on Linux hand batches over through it"
        return [_shm_finding(message, Severity.ERROR, facts, free=0)]
    if free >= WARN_BELOW:
        return []
    severity = Severity.ERROR if free < ERROR_BELOW else Severity.WARNING
    message = (
        f"{path} has {format_bytes(free)} free of {format_bytes(facts['total_bytes'])}; "
        "DataLoader workers need room for num_workers × prefetch_factor batches"
    )
    return [_shm_finding(message, severity, facts, free=free)]


def _shm_finding(message: str, severity: Severity, facts: Mapping[str, Any], *, free: int) -> Finding:
    return make_finding(
        "shm-too-small",
        message,
        severity=severity,
        fix=shm_fix(facts),
        location=facts["path"],
        details={
            "free_bytes": free,
            "total_bytes": facts.get("total_bytes"),
            "in_container": facts.get("in_container", False),
            "container_hints": list(facts.get("container_hints", [])),
        },
    )


_CONTAINER_FIX = (
    "docker run --shm-size=8g ...  (or --ipc=host; on Kubernetes mount an emptyDir with medium: Memory "
    "at /dev/shm)"
)


def shm_fix(facts: Mapping[str, Any] | None) -> str:
    """How to get more shared memory: a container flag in a container, a remount outside, both if unknown."""
    path = facts.get("path", "/dev/shm") if facts else "/dev/shm"
    remount = f"sudo mount -o remount,size=8G {path}"
    if not facts:
        return f"In a container: {_CONTAINER_FIX}; elsewhere: {remount}"
    if facts.get("in_container"):
        return f"Restart the container with more shared memory: {_CONTAINER_FIX}"
    return f"{remount}  (if missing: sudo mount -t tmpfs -o size=8G tmpfs {path})"


def collect_shm_facts(context: Any) -> dict[str, Any]:
    """The ``shm`` check's facts for an ``EnvContext``."""
    return collect_shm(context.shm_path, root=context.root, environ=context.environ)


def headline_shm(facts: Mapping[str, Any]) -> str:
    if not facts.get("exists") or facts.get("free_bytes") is None:
        return f"{facts['path']} is missing or unreadable"
    where = " (in a container)" if facts.get("in_container") else ""
    return f"{facts['path']}: {format_bytes(facts['free_bytes'])} free of {format_bytes(facts['total_bytes'])}{where}"
