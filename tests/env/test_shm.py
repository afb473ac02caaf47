"""Tests for the /dev/shm check: thresholds, container-aware fixes, and real statvfs/container files."""

from __future__ import annotations

import os

import pytest

from torchdoctor.env.shm import check_shm, collect_shm
from torchdoctor.report import Severity
from torchdoctor.units import GIB, MIB, format_bytes


def _facts(free, total=64 * GIB, *, in_container=False, platform="linux", path="/dev/shm"):
    return {
        "path": path,
        "exists": free is not None,
        "total_bytes": None if free is None else total,
        "free_bytes": free,
        "platform": platform,
        "in_container": in_container,
        "container_hints": ["/.dockerenv"] if in_container else [],
    }


@pytest.mark.parametrize(
    ("free", "expected"),
    [
        (0, Severity.ERROR),
        (256 * MIB - 1, Severity.ERROR),
        (256 * MIB, Severity.WARNING),
        (GIB - 1, Severity.WARNING),
        (GIB, None),
        (64 * GIB, None),
    ],
)
def test_severity_thresholds_on_free_space(free, expected):
    findings = check_shm(_facts(free))
    assert [f.severity for f in findings] == ([expected] if expected else [])
    assert all(f.id == "shm-too-small" and f.code == "TD109" for f in findings)


def test_judged_on_free_not_total():
    # a big /dev/shm that is nearly full is as bad as a small one
    [finding] = check_shm(_facts(100 * MIB, total=32 * GIB))
    assert finding.severity is Severity.ERROR
    assert "100.0 MiB free of 32.0 GiB" in finding.message


def test_docker_default_message_and_container_fix():
    [finding] = check_shm(_facts(64 * MIB, total=64 * MIB, in_container=True))
    assert finding.message.startswith("/dev/shm has 64.0 MiB free of 64.0 MiB; DataLoader workers need room")
    assert "num_workers × prefetch_factor" in finding.message
    assert "docker run --shm-size=8g" in finding.fix and "--ipc=host" in finding.fix
    assert "remount" not in finding.fix
    assert finding.location == "/dev/shm"
    assert finding.details["free_bytes"] == 64 * MIB
    assert finding.details["container_hints"] == ["/.dockerenv"]


def test_bare_metal_fix_remounts():
    [finding] = check_shm(_facts(512 * MIB))
    assert "mount -o remount,size=8G /dev/shm" in finding.fix
    assert "--shm-size" not in finding.fix


def test_missing_shm_is_an_error_on_linux():
    [finding] = check_shm(_facts(None, platform="linux"))
    assert finding.severity is Severity.ERROR
    assert finding.details["free_bytes"] == 0
    assert "missing" in finding.message


@pytest.mark.parametrize("platform", ["darwin", "win32"])
def test_missing_shm_is_fine_elsewhere(platform):
    # macOS/Windows have no /dev/shm; PyTorch shares memory through other mechanisms there
    assert check_shm(_facts(None, platform=platform)) == []


def test_collect_on_a_real_directory(tmp_path):
    facts = collect_shm(str(tmp_path), root=str(tmp_path), environ={})
    st = os.statvfs(tmp_path)
    assert facts["exists"] is True
    assert facts["total_bytes"] == st.f_blocks * st.f_frsize
    assert 0 <= facts["free_bytes"] <= facts["total_bytes"]
    assert facts["in_container"] is False and facts["container_hints"] == []


def test_collect_missing_path_then_judged_missing(tmp_path):
    facts = collect_shm(str(tmp_path / "no-shm"), root=str(tmp_path), environ={}, platform="linux")
    assert facts["exists"] is False and facts["free_bytes"] is None and facts["total_bytes"] is None
    assert [f.severity for f in check_shm(facts)] == [Severity.ERROR]


def test_container_detected_from_dockerenv(tmp_path):
    (tmp_path / ".dockerenv").touch()
    facts = collect_shm(str(tmp_path), root=str(tmp_path), environ={})
    assert facts["in_container"] is True
    assert facts["container_hints"] == ["/.dockerenv"]


def test_container_detected_from_podman_file_and_cgroup(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".containerenv").touch()
    (tmp_path / "proc" / "1").mkdir(parents=True)
    (tmp_path / "proc" / "1" / "cgroup").write_text(
        "12:pids:/kubepods/burstable/pod1234/abcdef\n11:memory:/kubepods/burstable/pod1234/abcdef\n"
    )
    facts = collect_shm(str(tmp_path), root=str(tmp_path), environ={})
    assert facts["container_hints"] == ["/run/.containerenv", "/proc/1/cgroup mentions kubepods"]


def test_cgroup_v2_root_is_not_a_container(tmp_path):
    (tmp_path / "proc" / "1").mkdir(parents=True)
    (tmp_path / "proc" / "1" / "cgroup").write_text("0::/\n")
    assert collect_shm(str(tmp_path), root=str(tmp_path), environ={})["in_container"] is False


def test_container_detected_from_environment(tmp_path):
    environ = {"container": "podman", "KUBERNETES_SERVICE_HOST": "10.0.0.1", "HOME": "/root"}
    facts = collect_shm(str(tmp_path), root=str(tmp_path), environ=environ)
    assert facts["container_hints"] == ["env container=podman", "env KUBERNETES_SERVICE_HOST=10.0.0.1"]


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (MIB - 1, "1.0 MiB"),
        (64 * MIB, "64.0 MiB"),
        (256 * MIB, "256.0 MiB"),
        (GIB, "1.0 GiB"),
        (int(7.5 * GIB), "7.5 GiB"),
    ],
)
def test_format_bytes(n, text):
    assert format_bytes(n) == text
