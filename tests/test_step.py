"""Tests for the training-step harness: real torch on CPU, tiny models from fixtures/models.py."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from torchdoctor.step import StepFailure, StepResult, run_training_step

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # fixtures/ is a top-level folder, not an installed package
    sys.path.insert(0, str(REPO))

from fixtures import models  # noqa: E402

FIXTURE_FILE = Path(models.__file__).resolve()


def classification_batch(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(n, 8, generator=gen), torch.randint(0, 4, (n,), generator=gen)


def regression_batch(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(2)
    return torch.randn(n, 8, generator=gen), torch.randn(n, 2, generator=gen)


def snapshot(model: torch.nn.Module) -> dict[str, object]:
    """Everything about the model the harness must not change."""
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "grads": {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
        "training": [m.training for m in model.modules()],
        "devices": {p.device for p in model.parameters()},
    }


def assert_same(before: dict[str, object], after: dict[str, object]) -> None:
    assert before["training"] == after["training"]
    assert before["devices"] == after["devices"]
    assert before["state"].keys() == after["state"].keys()
    for key, tensor in before["state"].items():
        assert torch.equal(tensor, after["state"][key]), key
    for name, grad in before["grads"].items():
        other = after["grads"][name]
        assert (grad is None) == (other is None), name
        assert grad is None or torch.equal(grad, other), name


def line_of(needle: str) -> int:
    for number, line in enumerate(FIXTURE_FILE.read_text().splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in {FIXTURE_FILE}")


# --- success paths ----------------------------------------------------------------------------


def test_cross_entropy_is_inferred_for_integer_targets() -> None:
    result = run_training_step(models.TinyClassifier(), classification_batch())
    assert isinstance(result, StepResult)
    assert result.ok and result.failure is None
    assert result.loss_name == "cross_entropy"
    assert result.device == "cpu"
    assert result.loss is not None and math.isfinite(result.loss)
    assert result.grad_norm is not None and result.grad_norm > 0
    assert set(result.timings_ms) == {"forward", "loss", "backward", "optimizer", "total"}
    assert all(v >= 0 for v in result.timings_ms.values())


def test_first_loss_matches_a_hand_computed_loss() -> None:
    model = models.TinyClassifier()
    x, y = classification_batch()
    expected = torch.nn.functional.cross_entropy(model(x), y).item()
    assert run_training_step(model, (x, y)).loss == pytest.approx(expected, rel=1e-6)


def test_mse_is_inferred_for_float_targets_of_the_output_shape() -> None:
    result = run_training_step(models.TinyRegressor(), regression_batch())
    assert result.ok, result.failure
    assert result.loss_name == "mse"


def test_conv_net_trains() -> None:
    x = torch.randn(2, 3, 8, 8)
    result = run_training_step(models.TinyConvNet(), (x, torch.tensor([0, 2])))
    assert result.ok, result.failure
    assert result.loss_name == "cross_entropy"


def test_loss_inference_failure_says_what_it_saw() -> None:
    x = torch.randn(6, 8)
    result = run_training_step(models.TinyClassifier(), (x, torch.randn(6, 3)))
    assert not result.ok
    failure = result.failure
    assert failure.phase == "loss"
    assert failure.exc_type == "LossInferenceError"
    assert "(6, 4)" in failure.message and "(6, 3)" in failure.message
    assert "loss_fn" in failure.message
    assert failure.user_frame is None  # nothing of the user's was running
    assert result.loss is None and result.losses == []


def test_explicit_loss_fn_gets_raw_output_and_is_named() -> None:
    seen = []

    def smooth_l1(output, target):
        seen.append(type(output))
        return torch.nn.functional.smooth_l1_loss(output[0][:, :2], target)

    x, y = regression_batch()
    result = run_training_step(models.TupleOutputModel(), (x, y), loss_fn=smooth_l1)
    assert result.ok, result.failure
    assert result.loss_name == "smooth_l1"
    assert seen == [tuple]


def test_tuple_output_uses_element_zero() -> None:
    result = run_training_step(models.TupleOutputModel(), classification_batch())
    assert result.ok, result.failure
    assert result.loss_name == "cross_entropy"


def test_dict_output_uses_logits() -> None:
    result = run_training_step(models.DictOutputModel(), classification_batch())
    assert result.ok, result.failure
    assert result.loss_name == "cross_entropy"


def test_dict_batch_and_dict_inputs() -> None:
    x, y = classification_batch()
    result = run_training_step(models.TinyClassifier(), {"inputs": x, "labels": y})
    assert result.ok, result.failure
    kwargs = {"x": x, "mask": torch.ones_like(x)}
    result = run_training_step(models.DictInputModel(), (kwargs, y))
    assert result.ok, result.failure
    assert result.loss_name == "cross_entropy"


def test_tuple_inputs_are_positional_args() -> None:
    x, y = classification_batch()
    result = run_training_step(models.DictInputModel(), [(x, torch.ones_like(x)), y])
    assert result.ok, result.failure


@pytest.mark.parametrize(
    "batch",
    [torch.randn(3, 8), (torch.randn(3, 8),), {"x": torch.randn(3, 8)}, ("not a tensor", torch.zeros(3))],
)
def test_malformed_batch_is_a_caller_error(batch: object) -> None:
    with pytest.raises(ValueError):
        run_training_step(models.TinyClassifier(), batch)


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="autocast_dtype"):
        run_training_step(models.TinyClassifier(), classification_batch(), autocast_dtype="float32")
    with pytest.raises(ValueError, match="steps"):
        run_training_step(models.TinyClassifier(), classification_batch(), steps=0)


def test_three_steps_give_three_losses_and_loss_is_the_first() -> None:
    result = run_training_step(models.TinyClassifier(), classification_batch(), steps=3)
    assert result.ok and result.steps == 3
    assert len(result.losses) == 3
    assert result.loss == result.losses[0]
    assert result.losses[2] < result.losses[0]  # SGD on one batch goes down


def test_two_runs_on_the_same_model_agree() -> None:
    class WithDropout(models.TinyClassifier):
        def forward(self, x):
            return torch.nn.functional.dropout(self.fc(x), 0.5, training=self.training)

    model, batch = WithDropout(), classification_batch()
    first = run_training_step(model, batch, steps=2)
    second = run_training_step(model, batch, steps=2)
    assert first.losses == second.losses
    assert first.grad_norm == second.grad_norm


def test_callers_rng_state_is_left_alone() -> None:
    model, batch = models.TinyClassifier(), classification_batch()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    run_training_step(model, batch)
    assert torch.equal(torch.rand(3), expected)


def test_custom_optimizer_factory_is_used() -> None:
    built = []

    def adam(params):
        built.append(torch.optim.Adam(params, lr=1e-3))
        return built[-1]

    result = run_training_step(
        models.TinyClassifier(), classification_batch(), optimizer_factory=adam, steps=2
    )
    assert result.ok and len(built) == 1


def test_no_grad_caller_still_gets_a_backward() -> None:
    with torch.no_grad():
        result = run_training_step(models.TinyClassifier(), classification_batch())
    assert result.ok, result.failure


def test_bf16_autocast_on_cpu() -> None:
    model = models.TinyClassifier()
    result = run_training_step(model, classification_batch(), autocast_dtype=torch.bfloat16)
    assert result.ok, result.failure
    assert result.autocast_dtype == "bfloat16"
    plain = run_training_step(model, classification_batch())
    # bf16 matmuls round differently, but the loss is close to the float32 one
    assert result.loss == pytest.approx(plain.loss, rel=0.05)


def test_grad_scaler_with_float16_autocast_on_cpu() -> None:
    model = models.TinyClassifier()
    plain = run_training_step(model, classification_batch())
    scaled = run_training_step(
        model, classification_batch(), autocast_dtype="fp16", grad_scaler=True, steps=2
    )
    assert scaled.ok, scaled.failure
    assert scaled.grad_scaler and scaled.autocast_dtype == "float16"
    # unscaled before measuring: same order as without a scaler, not 65536x bigger
    assert scaled.grad_norm == pytest.approx(plain.grad_norm, rel=0.05)


# --- failures ---------------------------------------------------------------------------------


def test_forward_failure_points_at_the_users_raise() -> None:
    model = models.RaisesInForward()
    before = snapshot(model)
    result = run_training_step(model, classification_batch())
    assert not result.ok
    failure = result.failure
    assert isinstance(failure, StepFailure)
    assert failure.phase == "forward"
    assert failure.exc_type == "ValueError"
    assert failure.message == "boom from forward"
    assert isinstance(failure.exception, ValueError)
    frame = failure.user_frame
    assert Path(frame["file"]).resolve() == FIXTURE_FILE
    assert frame["line"] == line_of('raise ValueError("boom from forward")')
    assert frame["function"] == "forward"
    assert frame["code"] == 'raise ValueError("boom from forward")'
    assert result.loss is None and result.grad_norm is None
    assert_same(before, snapshot(model))


def test_copy_failure_for_a_model_holding_a_non_leaf_tensor() -> None:
    model = models.NonLeafAttributeModel()
    result = run_training_step(model, classification_batch())
    assert not result.ok
    assert result.failure.phase == "copy"
    assert result.failure.exc_type == "RuntimeError"
    assert "graph leaves" in result.failure.message
    assert result.timings_ms == {}


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a torch build or machine without CUDA")
def test_missing_cuda_is_a_to_device_failure() -> None:
    model = models.TinyClassifier()
    before = snapshot(model)
    result = run_training_step(model, classification_batch(), device="cuda")
    assert not result.ok
    assert result.failure.phase == "to-device"
    assert result.device == "cuda"
    assert result.failure.message  # torch's own words, e.g. "Torch not compiled with CUDA enabled"
    assert result.failure.exception is not None
    assert_same(before, snapshot(model))


def test_backward_failure_when_nothing_requires_grad() -> None:
    result = run_training_step(models.NoParamsModel(), classification_batch())
    assert not result.ok
    assert result.failure.phase == "backward"
    assert result.failure.exc_type == "RuntimeError"
    assert "element 0 of tensors does not require grad" in result.failure.message
    assert result.loss is not None and result.losses == [result.loss]  # computed before the failure
    assert result.grad_norm is None


def test_optimizer_construction_failure_keeps_loss_and_grad_norm() -> None:
    result = run_training_step(
        models.TinyClassifier(),
        classification_batch(),
        optimizer_factory=lambda params: torch.optim.SGD([], lr=0.1),
    )
    assert not result.ok
    assert result.failure.phase == "optimizer"
    assert result.failure.exc_type == "ValueError"
    assert "empty parameter list" in result.failure.message
    assert result.loss is not None and result.grad_norm is not None


def test_optimizer_step_failure_on_a_later_step() -> None:
    calls = []

    class FailsSecondTime(torch.optim.SGD):
        def step(self, closure=None):
            calls.append(1)
            if len(calls) == 2:
                raise RuntimeError("second step exploded")
            return super().step(closure)

    model = models.TinyClassifier()
    before = snapshot(model)
    result = run_training_step(
        model, classification_batch(), optimizer_factory=lambda p: FailsSecondTime(p, lr=0.1), steps=3
    )
    assert not result.ok
    assert result.failure.phase == "optimizer"
    assert result.failure.message == "second step exploded"
    assert result.failure.user_frame["function"] == "step"
    assert len(result.losses) == 2
    assert_same(before, snapshot(model))


def test_failing_loss_fn_is_a_loss_failure_with_the_users_frame() -> None:
    def bad_loss(output, target):
        return output.sum() + target.missing  # AttributeError in user code

    result = run_training_step(models.TinyClassifier(), classification_batch(), loss_fn=bad_loss)
    assert result.failure.phase == "loss"
    assert result.failure.exc_type == "AttributeError"
    assert result.failure.user_frame["function"] == "bad_loss"
    assert Path(result.failure.user_frame["file"]).resolve() == Path(__file__).resolve()


def test_non_scalar_loss_is_a_loss_failure() -> None:
    result = run_training_step(
        models.TinyRegressor(), regression_batch(), loss_fn=lambda out, y: (out - y) ** 2
    )
    assert result.failure.phase == "loss"
    assert "scalar" in result.failure.message


def test_keyboard_interrupt_propagates() -> None:
    class Interrupts(models.TinyClassifier):
        def forward(self, x):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_training_step(Interrupts(), classification_batch())


# --- the caller's model is never touched ------------------------------------------------------


@pytest.mark.parametrize("steps", [1, 3])
def test_users_model_weights_grads_and_mode_are_untouched(steps: int) -> None:
    model = models.TinyConvNet()
    model.eval()
    for param in model.parameters():
        param.grad = torch.full_like(param, 0.5)
    before = snapshot(model)
    result = run_training_step(model, (torch.randn(2, 3, 8, 8), torch.tensor([0, 1])), steps=steps)
    assert result.ok, result.failure
    assert_same(before, snapshot(model))
    assert not model.training


def test_users_model_untouched_when_the_loss_fails() -> None:
    model = models.TinyClassifier()
    before = snapshot(model)
    run_training_step(model, classification_batch(), loss_fn=lambda out, y: 1 / 0)
    assert_same(before, snapshot(model))


def test_copy_model_false_trains_in_place() -> None:
    model = models.TinyClassifier()
    weight = model.fc.weight.detach().clone()
    result = run_training_step(model, classification_batch(), copy_model=False)
    assert result.ok
    assert not torch.equal(weight, model.fc.weight)


# --- serialisation ----------------------------------------------------------------------------


def test_to_dict_is_json_safe_on_success_and_failure() -> None:
    ok = run_training_step(models.TinyClassifier(), classification_batch(), steps=2).to_dict()
    failed = run_training_step(models.RaisesInForward(), classification_batch()).to_dict()
    for data in (ok, failed):
        json.dumps(data, allow_nan=False)
        assert set(data) == {
            "device", "autocast_dtype", "grad_scaler", "ok", "loss", "losses",
            "grad_norm", "timings_ms", "steps", "loss_name", "failure",
        }  # fmt: skip
    assert ok["failure"] is None and len(ok["losses"]) == 2
    assert set(failed["failure"]) == {"phase", "exc_type", "message", "user_frame"}
    assert failed["failure"]["user_frame"]["function"] == "forward"


def test_non_finite_numbers_serialise_as_strings() -> None:
    x, y = classification_batch()
    x[0, 0] = float("nan")
    data = run_training_step(models.TinyClassifier(), (x, y)).to_dict()
    json.dumps(data, allow_nan=False)
    assert data["loss"] == "nan" and data["grad_norm"] == "nan"


def test_importing_the_module_does_not_import_torch() -> None:
    code = "import sys, torchdoctor.step; assert 'torch' not in sys.modules"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)
