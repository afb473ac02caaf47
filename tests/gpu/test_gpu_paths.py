"""Every GPU path, for real, on this machine's first CUDA device (marker ``gpu``; skipped without CUDA).

Run on a machine with a GPU: ``python -m pytest tests/gpu -q`` (CONTRIBUTING.md, "GPU paths"). Covers env's
devices and training steps (float32, cuDNN benchmark, float16 + GradScaler, bfloat16, the TF32 judgement),
count --train-step, nan-hunt, data with pin_memory, and the GPU facts recorder.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def ids(findings) -> list[str]:
    return [finding.id for finding in findings]


def ampere_or_newer() -> bool:
    return torch.version.hip is None and torch.cuda.get_device_capability(0) >= (8, 0)


def test_devices_are_seen_and_the_wheel_has_kernels_for_them():
    from torchdoctor.env.base import EnvContext
    from torchdoctor.env.devices import check_devices

    facts = EnvContext().devices
    assert facts["cuda_available"] and facts["devices"][0]["name"] == torch.cuda.get_device_name(0)
    assert not {"cuda-unavailable", "cuda-driver-too-old", "cuda-arch-unsupported"} & set(ids(check_devices(facts)))


def test_env_training_steps_run_on_the_gpu_in_every_precision_and_match_the_cpu():
    from torchdoctor.env.base import EnvContext
    from torchdoctor.env.training import check_training, collect_training

    facts = collect_training(EnvContext())
    modes = {step["mode"] for step in facts["steps"] if step["device"] == "cuda:0"}
    assert {"float32", "float32-cudnn-benchmark", "float16-amp"} <= modes  # the reference net has convolutions
    assert ("bfloat16-amp" in modes) == (ampere_or_newer() or torch.version.hip is not None)
    assert all(step["ok"] for step in facts["steps"]), [s["failure"] for s in facts["steps"] if not s["ok"]]
    assert not {"training-step-failed", "numerics-mismatch"} & set(ids(check_training(facts)))


def test_tf32_off_on_ampere_is_judged_and_on_is_not():
    from torchdoctor.env.base import EnvContext
    from torchdoctor.env.training import check_training, collect_training

    previous = (torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision())
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
        off = collect_training(EnvContext())
        torch.backends.cuda.matmul.allow_tf32 = True
        on = collect_training(EnvContext())
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous[0]
        torch.set_float32_matmul_precision(previous[1])
    assert off["tf32"]["matmul_allow_tf32"] is False and on["tf32"]["matmul_allow_tf32"] is True
    assert ("tf32-disabled" in ids(check_training(off))) == ampere_or_newer()
    assert "tf32-disabled" not in ids(check_training(on))
    assert all(step["ok"] for step in on["steps"])  # TF32 matmuls still train within tolerance


def test_count_train_step_runs_where_the_model_is_or_where_asked():
    from torchdoctor.count import count

    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).cuda()
    report = count(model, torch.randn(4, 16), train_step=True)
    assert report.result["device"] == "cuda:0" and report.result["training_step"]["device"] == "cuda:0"
    assert report.result["training_step"]["ok"] and report.result["phases"]["forward"]["macs"] == 4 * (16 * 32 + 32 * 8)
    moved = count(nn.Linear(16, 8), train_step=True, device="cuda")
    assert moved.result["training_step"]["device"] == "cuda:0"
    on_cpu = count(model, train_step=True, device="cpu")
    assert on_cpu.result["training_step"]["device"] == "cpu" and next(model.parameters()).is_cuda  # not moved


def test_nan_hunt_names_the_first_nonfinite_on_the_gpu():
    from torchdoctor.nan.hunt import nan_hunt

    model = nn.Linear(4, 3).cuda()
    with torch.no_grad():
        model.weight.zero_()
        model.bias.copy_(torch.tensor([0.0, 200.0, -200.0]))  # class 2's probability underflows to 0
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    target = torch.tensor([[0.0, 0.0, 1.0]] * 8, device="cuda")
    with nan_hunt() as hunt:
        for _ in range(3):
            probs = torch.softmax(model(torch.randn(8, 4, device="cuda")), dim=-1)
            loss = -(target * torch.log(probs)).sum(-1).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    event = hunt.report.result["first_nonfinite"]
    assert (event["phase"], event["op"], event["step"]) == ("loss", "aten.log", 0)
    assert ids(hunt.report.findings) == ["nonfinite-loss"]


def test_data_with_pin_memory_trains_its_step_on_the_gpu():
    from torch.utils.data import DataLoader, TensorDataset

    from torchdoctor.data.api import probe_loader

    dataset = TensorDataset(torch.randn(64, 8), torch.randint(0, 3, (64,)))
    loader = DataLoader(dataset, batch_size=16, shuffle=True, pin_memory=True)
    report = probe_loader(loader, nn.Linear(8, 3), batches=4)
    assert not {"pin-memory-without-gpu", "training-step-failed"} & set(ids(report.findings))
    assert report.result["step"]["device"].startswith("cuda") and report.result["step"]["failure"] is None


def test_record_gpu_facts_records_this_card(tmp_path):
    from benchmarks import record_gpu_facts as recorder

    from torchdoctor.env.devices import check_devices

    written = recorder.record(tmp_path, recorder._collect_here, torch.__version__)
    facts = json.loads(written[0].read_text())
    assert facts["provenance"].startswith("Recorded by benchmarks/record_gpu_facts.py")
    assert facts["devices"][0]["name"] == torch.cuda.get_device_name(0)
    assert "cuda-arch-unsupported" not in ids(check_devices(facts))
