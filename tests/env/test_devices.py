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


def _pci_device(root, name: str, vendor: str, device_class: str) -> None:
    device = root / name
    device.mkdir(parents=True)
    (device / "vendor").write_text(vendor + "\n")
    (device / "class").write_text(device_class + "\n")


def test_nvidia_gpus_are_counted_from_sysfs_without_a_driver(tmp_path):
    from torchdoctor.env.device_facts import count_nvidia_pci_devices

    devices = tmp_path / "sys" / "bus" / "pci" / "devices"
    _pci_device(devices, "0000:00:02.0", "0x8086", "0x030000")  # an Intel iGPU
    _pci_device(devices, "0000:00:1f.3", "0x10de", "0x040300")  # an NVIDIA audio function, not a GPU
    assert count_nvidia_pci_devices(str(devices)) == 0
    _pci_device(devices, "0000:17:00.0", "0x10de", "0x030200")  # a data-centre GPU is a 3D controller
    assert count_nvidia_pci_devices(str(devices)) == 1
    assert count_nvidia_pci_devices(str(tmp_path / "missing")) is None
    facts = collect_devices({}, EnvContext(root=str(tmp_path)).path)
    assert facts["nvidia_pci_devices"] == 1


CPU_ONLY = {"cuda_compiled_version": None, "hip_compiled_version": None, "driver_version": None,
            "cuda_available": False, "devices": [], "arch_list": []}


def test_no_nvidia_device_at_all_is_a_plain_fact_without_install_advice():
    for build in (None, "12.8"):  # the CPU-only wheel, or Linux's default CUDA wheel on a CPU machine
        (finding,) = check_devices({**CPU_ONLY, "cuda_compiled_version": build, "nvidia_pci_devices": 0})
        assert finding.id == "cuda-unavailable" and finding.severity.value == "info"
        assert finding.fix is None and "no NVIDIA GPU" in finding.message


def test_an_nvidia_card_with_a_cpu_only_build_still_gets_the_install_advice():
    (finding,) = check_devices({**CPU_ONLY, "nvidia_pci_devices": 1})
    assert finding.message == "This PyTorch build is CPU-only, so no GPU can be used."
    assert "Install a CUDA build" in finding.fix
    (unknown,) = check_devices(CPU_ONLY)  # sysfs unread: no claim about the hardware
    assert "Install a CUDA build" in unknown.fix


def test_a_driver_without_a_visible_pci_device_is_not_called_no_gpu(repo_root):
    facts = {**load_facts(repo_root, "no_driver"), "nvidia_pci_devices": 0, "driver_version": "550.90.07"}
    (finding,) = check_devices(facts)
    assert "no NVIDIA GPU" not in finding.message
