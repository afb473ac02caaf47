from torchdoctor.env.base import EnvContext
from torchdoctor.env.memory import check_memory, collect_memory, read_cgroup_memory_limit

GIB = 1 << 30


def write_meminfo(root, total_kb, available_kb):
    (root / "proc").mkdir(parents=True, exist_ok=True)
    (root / "proc/meminfo").write_text(f"MemTotal:       {total_kb} kB\nMemFree:  1 kB\n"
                                       f"MemAvailable:   {available_kb} kB\n")


class NoDevices(EnvContext):
    devices = {"devices": []}  # memory facts of GPUs come from device facts; none here


def test_low_memory_from_a_recorded_meminfo(tmp_path):
    write_meminfo(tmp_path, 16 * 1024 * 1024, 512 * 1024)  # 16 GiB total, 512 MiB available
    facts = collect_memory(NoDevices(root=str(tmp_path)))
    assert facts["ram_available_bytes"] == 512 * 1024 * 1024
    (finding,) = check_memory(facts)
    assert finding.id == "low-memory" and "512.0 MiB" in finding.message


def test_plenty_of_memory_is_fine(tmp_path):
    write_meminfo(tmp_path, 16 * 1024 * 1024, 8 * 1024 * 1024)
    assert check_memory(collect_memory(NoDevices(root=str(tmp_path)))) == []


def test_cgroup_limit_is_read_and_v1_unlimited_ignored(tmp_path):
    (tmp_path / "sys/fs/cgroup").mkdir(parents=True)
    (tmp_path / "sys/fs/cgroup/memory.max").write_text("max\n")
    assert read_cgroup_memory_limit(EnvContext(root=str(tmp_path)).path) is None
    (tmp_path / "sys/fs/cgroup/memory.max").write_text(str(4 * GIB))
    assert read_cgroup_memory_limit(EnvContext(root=str(tmp_path)).path) == 4 * GIB


def test_busy_gpu_from_recorded_facts():
    facts = {"ram_total_bytes": 64 * GIB, "ram_available_bytes": 60 * GIB, "cgroup_limit_bytes": None,
             "gpus": [{"index": 0, "free_bytes": 2 * GIB, "total_bytes": 80 * GIB},
                      {"index": 1, "free_bytes": 79 * GIB, "total_bytes": 80 * GIB}]}
    (finding,) = check_memory(facts)
    assert finding.id == "gpu-memory-busy" and finding.location == "cuda:0"


def test_real_machine_memory_facts():
    facts = collect_memory(EnvContext())
    assert facts["ram_total_bytes"] > 0 and facts["ram_available_bytes"] > 0
