"""The ``training`` check: a real training step on every device and precision, judged against the CPU.

A small conv net (so cuDNN convolutions run) takes two SGD steps per mode through the shared
harness (``torchdoctor.step``); each mode's first loss and gradient norm are compared with the
CPU float32 reference, so a GPU that trains but computes wrong numbers is caught too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from contextlib import contextmanager
from typing import Any

from torchdoctor.codes import make_finding
from torchdoctor.env.base import EnvContext
from torchdoctor.explain.rules import match_exception
from torchdoctor.report import Finding

# Relative tolerance of the first-step loss per mode (grad norms get GRAD_TOLERANCE_FACTOR x this).
# float32 allows for cuDNN's default TF32 convolutions on Ampere and newer.
LOSS_TOLERANCE = {"float32": 2e-3, "float32-cudnn-benchmark": 2e-3, "float16-amp": 2e-2, "bfloat16-amp": 5e-2}
GRAD_TOLERANCE_FACTOR = 5
BATCH_SHAPE = (32, 3, 32, 32)
NUM_CLASSES = 10


def build_reference_net() -> Any:
    """The embedded model: conv → BN → ReLU → conv → ReLU → pool → linear, seeded, without touching global RNG."""
    import torch
    from torch import nn

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, NUM_CLASSES),
        )


def build_reference_batch() -> tuple[Any, Any]:
    import torch

    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(BATCH_SHAPE, generator=generator)
    targets = torch.randint(0, NUM_CLASSES, (BATCH_SHAPE[0],), generator=generator)
    return inputs, targets


class MomentumSGD:
    """SGD with momentum in plain in-place tensor ops, shaped like a ``torch.optim`` optimizer for GradScaler.

    Why not ``torch.optim.SGD``: its first use imports ``torch._dynamo`` (about 1 s of pure Python here,
    through torch's ``_disable_dynamo`` wrapper) — a start-up cost of every training script, not a
    property of the device. The update runs the same device kernels (``mul_``/``add_``), so the step is
    as real for the device, and ``torchdoctor env`` stays close to ``collect_env``'s wall time.
    """

    def __init__(self, params: Any, lr: float = 0.01, momentum: float = 0.9) -> None:
        self.param_groups = [{"params": list(params), "lr": lr, "momentum": momentum}]
        self.state: dict[Any, dict[str, Any]] = {}

    def step(self) -> None:
        import torch

        group = self.param_groups[0]
        with torch.no_grad():
            for param in group["params"]:
                if param.grad is None:
                    continue
                buffer = self.state.setdefault(param, {}).get("momentum_buffer")
                if buffer is None:
                    buffer = self.state[param]["momentum_buffer"] = param.grad.detach().clone()
                else:
                    buffer.mul_(group["momentum"]).add_(param.grad)
                param.add_(buffer, alpha=-group["lr"])

    def zero_grad(self, set_to_none: bool = True) -> None:
        for param in self.param_groups[0]["params"]:
            param.grad = None


def plan_modes(devices: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Which (device, precision) steps to run: CPU float32 first (the reference), then every GPU."""
    modes = [_mode("cpu", "float32")]
    for device in devices.get("devices", []):
        name = f"cuda:{device['index']}"
        modes += [_mode(name, "float32"), _mode(name, "float32-cudnn-benchmark"),
                  _mode(name, "float16-amp")]
        if tuple(device["capability"]) >= (8, 0) or devices.get("hip_compiled_version"):
            modes.append(_mode(name, "bfloat16-amp"))
    if devices.get("mps_available"):
        modes.append(_mode("mps", "float32"))
    return modes


def _mode(device: str, mode: str) -> dict[str, Any]:
    return {"device": device, "mode": mode}


def collect_training(context: EnvContext) -> dict[str, Any]:
    """Run every planned mode; facts hold each step's outcome and the TF32 settings."""
    from torchdoctor.step import run_training_step

    model = (context.model_factory or build_reference_net)()
    batch = build_reference_batch()
    steps = []
    for mode in plan_modes(context.devices):
        with _mode_settings(mode["mode"]):
            outcome = run_training_step(model, batch, device=mode["device"], steps=2,
                                        optimizer_factory=MomentumSGD, **_precision(mode["mode"]))
        steps.append({**mode, **_step_facts(outcome)})
    return {"model": _describe(model), "batch_shape": list(BATCH_SHAPE), "steps": steps, "tf32": _tf32_settings(),
            # the judgement needs each GPU's capability even when the devices check is not selected
            "devices": list(context.devices.get("devices", [])),
            "hip_compiled_version": context.devices.get("hip_compiled_version")}


def _precision(mode: str) -> dict[str, Any]:
    if mode == "float16-amp":
        return {"autocast_dtype": "float16", "grad_scaler": True}
    if mode == "bfloat16-amp":
        return {"autocast_dtype": "bfloat16"}
    return {}


@contextmanager
def _mode_settings(mode: str):
    """cudnn.benchmark on for its mode only, restored afterwards (it is process-global state)."""
    import torch

    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = mode == "float32-cudnn-benchmark" or previous
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


def _step_facts(outcome: Any) -> dict[str, Any]:
    return {
        "ok": outcome.ok,
        "loss": outcome.loss,
        "grad_norm": outcome.grad_norm,
        "ms_per_step": outcome.timings_ms.get("total") if outcome.timings_ms else None,
        "timings_ms": dict(outcome.timings_ms or {}),
        "failure": outcome.failure.to_dict() if outcome.failure else None,
    }


def _tf32_settings() -> dict[str, Any]:
    import torch

    return {
        "matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
        "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }


def _describe(model: Any) -> str:
    parameters = sum(p.numel() for p in model.parameters())
    return f"{type(model).__name__} ({parameters} parameters)"


# ---- judgements (pure) ----------------------------------------------------------------------


def check_training(facts: Mapping[str, Any]) -> list[Finding]:
    findings = [_failure_finding(step) for step in facts["steps"] if not step["ok"]]
    reference = next((s for s in facts["steps"] if s["device"] == "cpu" and s["ok"]), None)
    if reference is not None:
        findings += [f for s in facts["steps"] if s is not reference and s["ok"]
                     for f in [_numerics_finding(s, reference)] if f is not None]
    for device in facts["devices"]:
        findings += judge_precision_support(device, facts["tf32"], facts["hip_compiled_version"])
    return findings


def _failure_finding(step: Mapping[str, Any]) -> Finding:
    failure = step["failure"] or {}
    frame = failure.get("user_frame")
    where = f" at {frame['file']}:{frame['line']}" if frame else ""
    explained = match_exception(f"{failure.get('exc_type', 'Error')}: {failure.get('message', '')}", model_errors=True)
    extra = {"explained_by": explained.id} if explained else {}
    return make_finding(
        "training-step-failed",
        f"The {step['mode']} training step on {step['device']} failed in {failure.get('phase', '?')}{where}: "
        f"{failure.get('exc_type', 'Error')}: {_first_line(failure.get('message', ''))}"
        + (f". {explained.sentence}" if explained else ""),
        location=step["device"],
        details={"mode": step["mode"], **failure, **extra},
    )


def _numerics_finding(step: Mapping[str, Any], reference: Mapping[str, Any]) -> Finding | None:
    tolerance = LOSS_TOLERANCE.get(step["mode"], 2e-3)
    loss_diff = relative_difference(step["loss"], reference["loss"])
    grad_diff = relative_difference(step["grad_norm"], reference["grad_norm"])
    if step["mode"] == "float16-amp" and not _finite(step["grad_norm"]):
        grad_diff = 0.0  # GradScaler's first scale (2**16) may overflow; it skips that step by design
    if loss_diff <= tolerance and grad_diff <= tolerance * GRAD_TOLERANCE_FACTOR:
        return None
    return make_finding(
        "numerics-mismatch",
        f"The {step['mode']} step on {step['device']} gave loss {step['loss']:.6g} and grad norm "
        f"{step['grad_norm']:.6g} vs the CPU float32 reference {reference['loss']:.6g} / "
        f"{reference['grad_norm']:.6g} (relative difference {max(loss_diff, grad_diff):.2g}).",
        location=step["device"],
        details={"mode": step["mode"], "loss": step["loss"], "reference_loss": reference["loss"],
                 "grad_norm": step["grad_norm"], "reference_grad_norm": reference["grad_norm"],
                 "loss_relative_difference": loss_diff, "grad_relative_difference": grad_diff,
                 "tolerance": tolerance},
    )


def judge_precision_support(device: Mapping[str, Any], tf32: Mapping[str, Any], hip: str | None) -> list[Finding]:
    """Tensor Cores: fp16 from compute capability 7.0, bf16 and TF32 from 8.0 (NVIDIA only)."""
    if hip:
        return []
    capability = tuple(device["capability"])
    name = f"GPU {device['index']} ({device['name']}, compute capability {capability[0]}.{capability[1]})"
    location = f"cuda:{device['index']}"
    if capability < (7, 0):
        return [make_finding("no-tensor-cores", f"{name} has no Tensor Cores; float16 autocast will save "
                             "memory but little time.", location=location)]
    if capability < (8, 0):
        return [make_finding("amp-unsupported", f"{name} has no bfloat16 Tensor Cores; bfloat16 autocast "
                             "is emulated and slow there.", location=location,
                             details={"dtype": "bfloat16"})]
    if not tf32.get("matmul_allow_tf32") and tf32.get("float32_matmul_precision") == "highest":
        return [make_finding("tf32-disabled", f"{name} supports TF32 but float32 matmuls run in full "
                             "precision (torch.backends.cuda.matmul.allow_tf32 is False).", location=location)]
    return []


def relative_difference(value: float | None, reference: float | None) -> float:
    if value is None or reference is None or not (_finite(value) and _finite(reference)):
        return 0.0 if value == reference else math.inf
    return abs(value - reference) / max(abs(reference), 1e-12)


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def headline_training(facts: Mapping[str, Any]) -> str:
    parts = [f"{s['device']} {s['mode']} {s['ms_per_step']:.1f} ms/step" if s["ok"] and s["ms_per_step"]
             else f"{s['device']} {s['mode']} failed" for s in facts["steps"]]
    return "; ".join(parts)
