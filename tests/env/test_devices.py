"""Device judgements over card facts (fixtures/gpu_facts: transcribed from public outputs until recorded on the
card), and the real CPU facts."""

import json

import pytest

from torchdoctor.env.base import EnvContext
from torchdoctor.env.device_facts import collect_devices, read_driver_version
from torchdoctor.env.devices import arch_supported, check_devices, driver_too_old


def load_facts(repo_root, card: str) -> dict:
    return json.loads((repo_root / "fixtures" / "gpu_facts" / f"{card}.json").read_text())


def ids(findings) -> list[str]:
    return [f.id for f in findings]


@pytest.mark.parametrize("card", ["h100", "a100", "t4", "p100"])
def test_supported_cards_give_no_device_findings(repo_root, card):
    assert check_devices(load_facts(repo_root, card)) == []


def test_k80_is_not_in_a_wheel_starting_at_sm_50(repo_root):
    (finding,) = check_devices(load_facts(repo_root, "k80"))
    assert finding.id == "cuda-arch-unsupported"
    assert finding.severity.value == "error"
    assert "3.7" in finding.message and "sm_50" in finding.message
    assert finding.location == "cuda:0"


def test_v100_is_not_in_a_cu128_wheel_starting_at_sm_75(repo_root):
    (finding,) = check_devices(load_facts(repo_root, "v100"))
    assert finding.id == "cuda-arch-unsupported"
    assert "7.0" in finding.message


def test_driver_too_old_is_named_with_the_minimum(repo_root):
    (finding,) = check_devices(load_facts(repo_root, "driver_too_old"))
    assert finding.id == "cuda-driver-too-old"
    assert "470.182.03" in finding.message and "525.60.13" in finding.message


def test_missing_driver_is_a_cuda_unavailable_warning(repo_root):
    (finding,) = check_devices(load_facts(repo_root, "no_driver"))
    assert finding.id == "cuda-unavailable"
    assert finding.severity.value == "warning"
    assert "Found no NVIDIA driver" in finding.message


def test_empty_cuda_visible_devices_is_named(repo_root):
    facts = {**load_facts(repo_root, "no_driver"), "cuda_visible_devices": "", "cuda_init_error": None,
             "driver_version": "550.90.07"}
    (finding,) = check_devices(facts)
    assert "CUDA_VISIBLE_DEVICES=''" in finding.message


@pytest.mark.parametrize(
    ("capability", "arch_list", "supported"),
    [
        ((8, 6), ["sm_80"], True),  # same major, newer minor runs the sm_80 cubin
        ((8, 0), ["sm_86"], False),  # an older minor cannot run a newer cubin
        ((9, 0), ["sm_80", "compute_80"], True),  # PTX JIT-compiles forward
        ((12, 0), ["sm_90", "sm_100"], False),  # Blackwell consumer needs sm_120
        ((12, 0), ["sm_120"], True),
        ((9, 0), ["sm_90a"], True),
    ],
)
def test_arch_compatibility_rules(capability, arch_list, supported):
    assert arch_supported(capability, arch_list) is supported


def test_driver_version_table():
    assert driver_too_old("470.182.03", "12.4")
    assert not driver_too_old("550.90.07", "12.4")
    assert not driver_too_old(None, "12.4")


def test_read_driver_version_from_proc_text(tmp_path):
    version = tmp_path / "version"
    version.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.90.07  Fri May 31 09:35:42 UTC 2024\n"
                       "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n")
    assert read_driver_version(str(version)) == "550.90.07"
    assert read_driver_version(str(tmp_path / "missing")) is None


def test_this_cpu_only_build_is_judged_info_only():
    facts = collect_devices({}, EnvContext().path)
    findings = check_devices(facts)
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert ids(findings) == ["cuda-unavailable"]
    assert findings[0].severity.value == ("info" if torch.version.cuda is None else "warning")
