"""Training-step check: real CPU steps, and GPU judgements over card facts (fixtures/gpu_facts: transcribed
from public outputs until recorded; tests/gpu runs the real GPU steps)."""

import json
import math

import pytest

from torchdoctor.env.base import EnvContext
from torchdoctor.env.training import (
    check_training,
    collect_training,
    judge_precision_support,
    plan_modes,
    relative_difference,
)

CPU_ONLY = {"devices": [], "mps_available": False, "hip_compiled_version": None}
DEFAULT_TF32 = {"matmul_allow_tf32": False, "cudnn_allow_tf32": True, "float32_matmul_precision": "highest"}


class CpuOnly(EnvContext):
    devices = CPU_ONLY


def card(repo_root, name):
    return json.loads((repo_root / "fixtures" / "gpu_facts" / f"{name}.json").read_text())


def test_real_cpu_step_is_clean_and_timed():
    facts = collect_training(CpuOnly())
    (step,) = facts["steps"]
    assert step["device"] == "cpu" and step["mode"] == "float32" and step["ok"]
    assert math.isfinite(step["loss"]) and step["grad_norm"] > 0 and step["ms_per_step"] > 0
    assert check_training(facts) == []


def test_a_model_that_raises_gives_training_step_failed_with_the_user_line(repo_root):
    from fixtures.models import RaisesInForward

    facts = collect_training(CpuOnly(model_factory=RaisesInForward))
    (finding,) = check_training(facts)
    assert finding.id == "training-step-failed" and finding.severity.value == "error"
    assert "forward" in finding.message and "models.py" in finding.message
    assert "boom from forward" in finding.message
    assert finding.details["phase"] == "forward"


def test_the_user_model_is_not_touched():
    import torch

    from torchdoctor.env.training import build_reference_net

    model = build_reference_net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    collect_training(CpuOnly(model_factory=lambda: model))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def _step(device, mode, loss, grad_norm, ok=True):
    return {"device": device, "mode": mode, "ok": ok, "loss": loss, "grad_norm": grad_norm,
            "ms_per_step": 1.0, "timings_ms": {}, "failure": None}


def test_numerics_mismatch_against_the_cpu_reference():
    facts = {"steps": [_step("cpu", "float32", 2.30, 1.0), _step("cuda:0", "float32", 2.30001, 1.00001),
                       _step("cuda:0", "bfloat16-amp", 2.31, 1.02), _step("cuda:0", "float16-amp", 9.9, 1.0)],
             "tf32": {**DEFAULT_TF32, "matmul_allow_tf32": True}, "devices": [], "hip_compiled_version": None}
    (finding,) = check_training(facts)
    assert finding.id == "numerics-mismatch" and finding.details["mode"] == "float16-amp"


def test_nan_loss_on_a_device_is_a_mismatch_but_scaler_overflow_is_not():
    facts = {"steps": [_step("cpu", "float32", 2.3, 1.0), _step("cuda:0", "float32", float("nan"), 1.0),
                       _step("cuda:0", "float16-amp", 2.3, float("inf"))], "tf32": DEFAULT_TF32,
             "devices": [], "hip_compiled_version": None}
    findings = check_training(facts)
    assert [(f.id, f.details["mode"]) for f in findings] == [("numerics-mismatch", "float32")]


def test_relative_difference_edge_cases():
    assert relative_difference(1.0, 1.0) == 0.0
    assert relative_difference(None, 1.0) == math.inf
    assert relative_difference(float("inf"), float("inf")) == 0.0


def test_plan_modes_per_card(repo_root):
    a100 = [(m["device"], m["mode"]) for m in plan_modes(card(repo_root, "a100"))]
    assert a100 == [("cpu", "float32"), ("cuda:0", "float32"), ("cuda:0", "float32-cudnn-benchmark"),
                    ("cuda:0", "float16-amp"), ("cuda:0", "bfloat16-amp")]
    t4 = [m["mode"] for m in plan_modes(card(repo_root, "t4"))]
    assert "bfloat16-amp" not in t4 and "float16-amp" in t4


@pytest.mark.parametrize(
    ("name", "tf32", "expected"),
    [
        ("h100", DEFAULT_TF32, ["tf32-disabled"]),
        ("a100", {**DEFAULT_TF32, "float32_matmul_precision": "high"}, []),
        ("t4", DEFAULT_TF32, ["amp-unsupported"]),
        ("v100", DEFAULT_TF32, ["amp-unsupported"]),
        ("p100", DEFAULT_TF32, ["no-tensor-cores"]),
        ("k80", DEFAULT_TF32, ["no-tensor-cores"]),
    ],
)
def test_precision_support_per_card(repo_root, name, tf32, expected):
    (device,) = card(repo_root, name)["devices"]
    assert [f.id for f in judge_precision_support(device, tf32, None)] == expected


def test_precision_findings_come_from_the_devices_in_the_training_facts(repo_root):
    a100 = card(repo_root, "a100")
    facts = {"steps": [_step("cpu", "float32", 2.3, 1.0)], "tf32": DEFAULT_TF32,
             "devices": a100["devices"], "hip_compiled_version": None}
    assert [f.id for f in check_training(facts)] == ["tf32-disabled"]


def test_momentum_sgd_matches_torch_optim_sgd():
    import torch

    from torchdoctor.env.training import MomentumSGD

    torch.manual_seed(0)
    ours, theirs = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    theirs.load_state_dict(ours.state_dict())
    optimizers = [MomentumSGD(ours.parameters()), torch.optim.SGD(theirs.parameters(), lr=0.01, momentum=0.9)]
    for _ in range(3):
        for model, optimizer in zip((ours, theirs), optimizers, strict=True):
            optimizer.zero_grad()
            model(torch.ones(2, 4)).pow(2).sum().backward()
            optimizer.step()
    assert all(torch.allclose(a, b) for a, b in zip(ours.parameters(), theirs.parameters(), strict=True))
