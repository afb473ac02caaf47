"""Every watch finding produced for real by a fixture script run in-process; the healthy scripts stay quiet."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from torchdoctor.learning.runner import run_watch_script

SCRIPTS = Path(__file__).resolve().parents[2] / "fixtures" / "watch_scripts"

# script -> (finding id, the module or parameter it must name; None: about the loss, not a layer)
BUGGY = {
    "grad_not_zeroed.py": ("grad-not-zeroed", "0.weight"),
    "manual_sgd_no_zero.py": ("grad-not-zeroed", "0.weight"),  # no optimizer: a step is a backward call
    "clipped_no_zero.py": ("grad-not-zeroed", "wte.weight"),  # clip_grad_norm_ rescales the piled-up grads
    "double_softmax.py": ("double-softmax", "3"),
    "split_calls.py": ("double-softmax", "head.1"),  # the loop calls model.encoder, then model.head
    "sigmoid_logits_loss.py": ("sigmoid-before-logits-loss", "prob"),
    "nll_on_logits.py": ("nll-on-logits", "2"),
    "nll_diverging.py": ("nll-on-logits", "fc2"),  # and grads past float32 norms: see below
    "head_replaced.py": ("params-not-updated", "head.weight"),
    "detached_encoder.py": ("params-no-grad", "encoder.0"),
    "eval_mode.py": ("eval-mode-training", "1"),
    "shuffled_labels.py": ("loss-not-decreasing", None),
    "lr_too_high.py": ("update-ratio-high", "2"),
    "lr_kills_relus.py": ("update-ratio-high", "fc1"),  # one huge step, then (near) zero gradients
    "lr_too_low.py": ("update-ratio-low", "0"),
    "deep_sigmoid.py": ("grad-vanishing", "0"),
    "exploding_init.py": ("grad-exploding", "0"),
    "dead_relu.py": ("dead-relu", "3"),
    "dead_functional_relu.py": ("dead-relu", "Net (F.relu, line 18)"),  # F.relu in forward: no module to hook
    "dead_torch_relu.py": ("dead-relu", "Net (torch.relu, line 18)"),
    "saturated_tensor_sigmoid.py": ("saturated-activation", "SensorNet (Tensor.sigmoid, line 16)"),
    "saturated_functional_tanh.py": ("saturated-activation", "Net (F.tanh, line 17)"),
    "saturated_tanh.py": ("saturated-activation", "1"),
    "oscillating.py": ("loss-oscillating", None),
}
HEALTHY = ["healthy_cnn.py", "healthy_transformer.py", "healthy_frozen_backbone.py", "healthy_accumulation.py",
           "healthy_gan.py", "healthy_relu_mlp.py", "healthy_losses.py", "healthy_manual_sgd.py",
           "healthy_manual_accumulation.py", "healthy_char_lm.py", "healthy_functional_activations.py"]


@functools.cache
def watch_script(name: str, every: int = 10):
    """Each script runs once per session (several tests read its report)."""
    return run_watch_script(str(SCRIPTS / name), every=every)


def is_layer_name(location: str, layers: list[str]) -> bool:
    return location in layers or location.rpartition(".")[0] in layers


@pytest.mark.parametrize("script", sorted(BUGGY))
def test_each_bug_names_its_finding_and_the_module(script, validate_report):
    finding_id, location = BUGGY[script]
    report = watch_script(script)
    validate_report(report.to_dict())
    found = [f for f in report.findings if f.id == finding_id]
    assert found, f"{script}: {[f.id for f in report.findings]}"
    finding = found[0]
    assert finding.location == location
    first, last = finding.details["steps"]
    assert 0 <= first <= last < report.result["steps_watched"]
    assert report.result["exit_code"] == 0 and not report.result["script_failed"]
    assert report.exit_code() == (1 if finding.severity.value == "error" else 0)


@pytest.mark.parametrize("script", ["lr_too_high.py", "lr_too_low.py", "deep_sigmoid.py", "exploding_init.py",
                                    "dead_relu.py", "dead_functional_relu.py", "saturated_tanh.py",
                                    "dead_torch_relu.py", "saturated_tensor_sigmoid.py",
                                    "saturated_functional_tanh.py"])
def test_layer_findings_name_a_layer_or_activation_of_the_series(script):
    report = watch_script(script)
    series = report.result["series"]
    finding = next(f for f in report.findings if f.id == BUGGY[script][0])
    names = [*series["layers"], *series["dead_fraction"], *series["saturated_fraction"]]
    assert is_layer_name(finding.location, names)


def test_the_numbers_behind_the_dynamics_findings():
    by_id = {f.id: f for f in watch_script("shuffled_labels.py").findings}
    assert by_id["loss-not-decreasing"].details["at_chance"] is True  # 4 random classes: ln 4
    assert by_id["loss-not-decreasing"].details["chance_level"] == pytest.approx(1.386, abs=0.02)
    low = next(f for f in watch_script("lr_too_low.py").findings if f.id == "update-ratio-low")
    assert low.details["lr"] == pytest.approx(1e-7)
    vanishing = next(f for f in watch_script("deep_sigmoid.py").findings if f.id == "grad-vanishing")
    assert vanishing.details["last_layer"] == "26" and vanishing.details["ratio"] < 1e-3


@pytest.mark.parametrize("script", HEALTHY)
def test_healthy_runs_have_no_warning_and_exit_0(script, validate_report):
    report = watch_script(script)
    validate_report(report.to_dict())
    assert [(f.id, f.message) for f in report.findings if f.severity.value != "info"] == []
    assert report.exit_code(strict=True) == 0
    assert report.result["exit_code"] == 0
    assert report.result["series"]["layers"]


def test_a_diverging_run_that_zeroes_its_gradients_is_no_grad_not_zeroed():
    """Gradients of 1e20 and more: float32 norms overflow to inf, and inf <= inf once made this fire."""
    report = watch_script("nll_diverging.py")
    assert min(v for v in report.result["series"]["loss"] if v is not None) < -1e20  # the run got that far
    assert "grad-not-zeroed" not in [f.id for f in report.findings]


def test_a_diverging_runs_gradient_norms_stay_numbers_past_float32_sums_of_squares():
    """Per-layer norms past 1.8e19 (a float32 square's limit): measured again, not left as inf (None)."""
    rows = watch_script("nll_diverging.py").result["series"]["grad_norm"]
    assert all(value is not None for row in rows for value in row), rows
    assert max(max(row) for row in rows) > 1e20


def test_a_step_that_kills_the_relus_is_named_as_too_high_a_learning_rate():
    high = next(f for f in watch_script("lr_kills_relus.py").findings if f.id == "update-ratio-high")
    assert list(high.details["no_gradient_after"]) == ["conv1", "fc1"]
    assert high.details["lr"] == pytest.approx(100.0)


def test_a_run_without_optimizer_counts_backward_calls():
    result = watch_script("healthy_manual_sgd.py", every=5).result
    assert result["step_counting"] == "backward"
    assert result["steps_watched"] == 40
    assert result["series"]["step"] == list(range(0, 40, 5))
    assert all(v is not None for v in result["series"]["update_ratio"][0])


def test_a_gan_names_both_models_layers():
    layers = watch_script("healthy_gan.py").result["series"]["layers"]
    assert len(layers) == 4 and layers[0].startswith("Sequential#1.") and layers[-1].startswith("Sequential#2.")


def test_a_loop_calling_the_models_parts_names_layers_by_their_path_in_the_model():
    result = watch_script("split_calls.py").result
    # model.encoder(x) and model.head(h) are called, never model: names are still model.named_modules()'
    assert result["series"]["layers"] == ["encoder.0", "head.0"]
    assert list(result["series"]["dead_fraction"]) == ["encoder.1"]


def test_a_loss_input_finding_names_the_class_of_a_module_known_only_by_its_index():
    (finding,) = [f for f in watch_script("double_softmax.py").findings if f.id == "double-softmax"]
    assert finding.location == "3" and "It comes out of '3' (Softmax)." in finding.message


def test_a_crash_on_the_users_assert_names_its_condition(monkeypatch):
    # nanoGPT's block_size check, bare: watch reports the crash as nan-hunt does, the condition included
    scripts = SCRIPTS.parent / "nan_scripts"
    monkeypatch.chdir(scripts)
    report = run_watch_script("block_size_assert.py", ["--bare"])
    (failed,) = [f for f in report.findings if f.id == "script-failed"]
    assert failed.message.startswith("AssertionError: assert t <= self.block_size failed at block_size_assert.py:")
    assert report.result["script_failed"] is True and report.exit_code() == 1
