from torchdoctor.env.base import EnvContext
from torchdoctor.env.reproducibility import check_reproducibility, collect_reproducibility


def test_real_facts_on_this_machine():
    facts = collect_reproducibility(EnvContext(environ={"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}))
    assert facts["cublas_workspace_config"] == ":4096:8"
    assert facts["deterministic_algorithms"] is False


def test_real_deterministic_mode_is_seen_and_restored():
    import torch

    torch.use_deterministic_algorithms(True)
    try:
        assert collect_reproducibility(EnvContext())["deterministic_algorithms"] is True
    finally:
        torch.use_deterministic_algorithms(False)


def test_cublas_workspace_unset_only_matters_with_cuda():
    with_gpu = {"cuda_available": True, "cublas_workspace_config": None}
    (finding,) = check_reproducibility(with_gpu)
    assert finding.id == "cublas-workspace-unset" and finding.severity.value == "info"
    assert check_reproducibility({**with_gpu, "cublas_workspace_config": ":16:8"}) == []
    assert check_reproducibility({"cuda_available": False, "cublas_workspace_config": None}) == []
