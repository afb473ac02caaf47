"""The build check's facts: real values from this torch, and the collect_env superset contract."""

import torch

from torchdoctor.env.base import EnvContext
from torchdoctor.env.build import (
    COLLECT_ENV_FIELDS,
    COLLECT_ENV_NOT_TORCH,
    collect_build,
    collect_loaded_libraries,
    headline_build,
)


def test_real_build_facts_match_torch():
    facts = collect_build(EnvContext())
    assert facts["torch_version"] == torch.__version__
    assert facts["cuda_compiled_version"] == torch.version.cuda
    assert facts["packages"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert facts["mkldnn_available"] == torch.backends.mkldnn.is_available()
    assert headline_build(facts).startswith(f"torch {torch.__version__}")


def test_every_collect_env_field_is_covered_by_env_result():
    from torch.utils.collect_env import SystemEnv

    from torchdoctor.env.api import run_env

    fields = set(SystemEnv._fields)
    assert fields - COLLECT_ENV_NOT_TORCH == set(COLLECT_ENV_FIELDS), "a new collect_env field needs a home"
    result = run_env(["build", "devices"], context=EnvContext(isolate=False)).result
    for field, path in COLLECT_ENV_FIELDS.items():
        section, key = path.split(".")
        assert key in result[section], f"{field} -> {path} missing"


def test_loaded_libraries_are_read_from_proc_maps(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text(
        "7f0000000000-7f0000001000 r-xp 00000000 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n"
        "7f0000002000-7f0000003000 r-xp 00000000 08:01 2 /opt/venv/nvidia/cudnn/lib/libcudnn.so.9\n"
        "7f0000004000-7f0000005000 r-xp 00000000 08:01 3 /usr/local/cuda/lib64/libcudart.so.12.4.127\n")
    assert collect_loaded_libraries(str(maps)) == {
        "libcudnn.so.9": "/opt/venv/nvidia/cudnn/lib/libcudnn.so.9",
        "libcudart.so.12.4.127": "/usr/local/cuda/lib64/libcudart.so.12.4.127"}
    assert collect_loaded_libraries(str(tmp_path / "missing")) == {}
