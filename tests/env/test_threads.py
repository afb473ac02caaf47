"""Thread judgements: pure, and for real in subprocesses with OMP_NUM_THREADS and taskset."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from torchdoctor.env.base import EnvContext
from torchdoctor.env.threads import check_threads, collect_threads, count_physical_cores, read_cgroup_cpu_quota

PROBE = ("import json; from torchdoctor.env.threads import collect_threads, check_threads; "
         "from torchdoctor.env.base import EnvContext; import torch; {setup}"
         "f = collect_threads(EnvContext()); print(json.dumps([f, [x.id for x in check_threads(f)]]))")


def run_probe(env=None, prefix=(), setup=""):
    out = subprocess.run([*prefix, sys.executable, "-c", PROBE.format(setup=setup)], capture_output=True,
                         text=True, env={**os.environ, **(env or {})}, timeout=60, check=True)
    return json.loads(out.stdout)


def facts(**overrides):
    base = {"torch_num_threads": 4, "torch_num_interop_threads": 4, "cpu_count": 8, "affinity_cpus": None,
            "cgroup_cpu_quota": None, "physical_cores": 4, "usable_cpus": 4,
            "env": {"OMP_NUM_THREADS": None, "MKL_NUM_THREADS": None}}
    return {**base, **overrides}


@pytest.mark.slow
def test_omp_num_threads_64_is_oversubscribed_for_real():
    result, found = run_probe({"OMP_NUM_THREADS": "64"})
    assert result["env"]["OMP_NUM_THREADS"] == "64"
    assert found == ["threads-oversubscribed"]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("taskset") is None, reason="taskset not installed")
def test_taskset_one_cpu_with_two_torch_threads_is_oversubscribed_for_real():
    result, found = run_probe(prefix=("taskset", "-c", "0"), setup="torch.set_num_threads(2); ")
    assert result["usable_cpus"] == 1 and result["affinity_cpus"] == [0]
    assert result["torch_num_threads"] == 2
    assert found == ["threads-oversubscribed"]


@pytest.mark.slow
def test_half_the_cores_is_underused_for_real():
    context_facts = collect_threads(EnvContext())
    reference = min(context_facts["usable_cpus"], context_facts["physical_cores"] or 99)
    if reference < 2:
        pytest.skip("needs at least 2 usable cores")
    result, found = run_probe({"OMP_NUM_THREADS": str(reference // 2)})
    assert found == ["threads-underused"]


def test_pure_judgements():
    assert check_threads(facts()) == []
    (over,) = check_threads(facts(torch_num_threads=16))
    assert over.id == "threads-oversubscribed" and "16" in over.message and "4 usable" in over.message
    (env_over,) = check_threads(facts(env={"OMP_NUM_THREADS": "8,2"}))
    assert env_over.details["settings"] == {"OMP_NUM_THREADS": 8}
    (under,) = check_threads(facts(torch_num_threads=2))
    assert under.id == "threads-underused"
    # hyper-threading: torch's default of one thread per physical core is not "underused"
    assert check_threads(facts(usable_cpus=8, physical_cores=4, torch_num_threads=4)) == []


def test_cgroup_quota_v2_and_v1(tmp_path):
    root = tmp_path
    (root / "sys/fs/cgroup").mkdir(parents=True)
    (root / "sys/fs/cgroup/cpu.max").write_text("150000 100000\n")
    assert read_cgroup_cpu_quota(EnvContext(root=str(root)).path) == 1.5
    (root / "sys/fs/cgroup/cpu.max").write_text("max 100000\n")
    assert read_cgroup_cpu_quota(EnvContext(root=str(root)).path) is None
    v1 = tmp_path / "v1"
    (v1 / "sys/fs/cgroup/cpu").mkdir(parents=True)
    (v1 / "sys/fs/cgroup/cpu/cpu.cfs_quota_us").write_text("200000")
    (v1 / "sys/fs/cgroup/cpu/cpu.cfs_period_us").write_text("100000")
    assert read_cgroup_cpu_quota(EnvContext(root=str(v1)).path) == 2.0


def test_container_quota_caps_usable_cpus(tmp_path):
    (tmp_path / "sys/fs/cgroup").mkdir(parents=True)
    (tmp_path / "sys/fs/cgroup/cpu.max").write_text("100000 100000\n")
    result = collect_threads(EnvContext(root=str(tmp_path)), affinity={0, 1, 2, 3})
    assert result["usable_cpus"] == 1
    import torch

    if torch.get_num_threads() > 1:
        assert [f.id for f in check_threads(result)] == ["threads-oversubscribed"]


def test_physical_cores_from_sysfs_topology(tmp_path):
    for cpu, core in [(0, 0), (1, 0), (2, 1), (3, 1)]:  # two hyper-threads per core
        topology = tmp_path / f"sys/devices/system/cpu/cpu{cpu}/topology"
        topology.mkdir(parents=True)
        (topology / "core_id").write_text(str(core))
        (topology / "physical_package_id").write_text("0")
    assert count_physical_cores({0, 1, 2, 3}, EnvContext(root=str(tmp_path)).path) == 2
