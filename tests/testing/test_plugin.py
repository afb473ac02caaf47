"""torchdoctor's pytest plugin in real pytest sessions (pytester): the assertions' texts and torchdoctor_env."""

from __future__ import annotations

import re
from importlib.metadata import entry_points
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def fixtures_importable(monkeypatch):
    """The inner pytest process imports ``fixtures.testing_models`` from this repository."""
    import os

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))


def run_pytest(pytester, *args: str):
    """A real pytest process on pytester's folder, with torchdoctor's plugin loaded once.

    In a subprocess: an in-process run drops the modules it imported afterwards, and importing torch's
    again in one process can crash it. ``-p torchdoctor.testing`` only where the installed entry point
    does not load the plugin already (twice is an error).
    """
    installed = any(ep.value == "torchdoctor.testing" for ep in entry_points(group="pytest11"))
    plugin = [] if installed else ["-p", "torchdoctor.testing"]
    return pytester.runpytest_subprocess(*plugin, "-p", "no:cacheprovider", "-o", "addopts=", "-rs", *args,
                                         timeout=300)


def failures(result) -> dict[str, str]:
    """Test name -> its failure section of the output."""
    text = result.stdout.str()
    sections = re.split(r"^_{3,} (\w+) _{3,}$", text, flags=re.M)
    return dict(zip(sections[1::2], sections[2::2], strict=True))


def test_the_entry_point_is_declared():
    import tomllib

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["pytest11"] == {"torchdoctor": "torchdoctor.testing"}


def test_assert_learns_passes_a_learning_model_and_names_each_reason_a_model_does_not(pytester):
    pytester.makepyfile(test_learns="""
        from fixtures.testing_models import (Classifier, DetachedEncoder, NormalisedClassifier, SoftmaxClassifier,
                                             head_outside_optimizer, one_batch)
        from torchdoctor.testing import assert_learns

        def test_healthy():
            assert_learns(Classifier(), one_batch())

        def test_detached_encoder():
            assert_learns(DetachedEncoder(), one_batch(), steps=20)

        def test_head_outside_the_optimizer():
            model, optimizer = head_outside_optimizer()
            assert_learns(model, one_batch(), optimizer=optimizer, steps=20)

        def test_nan():
            assert_learns(NormalisedClassifier(), one_batch(), steps=20)

        def test_softmax_before_cross_entropy():
            assert_learns(SoftmaxClassifier(), one_batch(), steps=20)
    """)
    result = run_pytest(pytester)
    result.assert_outcomes(passed=1, failed=4)
    failures_ = failures(result)
    assert ("params-no-grad (TD806): 2 trainable parameter(s) never received a gradient: encoder.0.weight"
            in failures_["test_detached_encoder"])
    assert "params-not-updated (TD805)" in failures_["test_head_outside_the_optimizer"]
    assert "(2 belong to no optimizer): head.weight, head.bias" in failures_["test_head_outside_the_optimizer"]
    nan = failures_["test_nan"]
    assert "nonfinite-forward (TD302)" in nan and "testing_models.py:48" in nan and "params-no-grad" not in nan
    assert "double-softmax (TD802)" in failures_["test_softmax_before_cross_entropy"]
    assert all("fix: " in text for text in failures_.values())


def test_the_commands_as_assertions(pytester):
    pytester.makepyfile(test_commands="""
        import torch
        from torch.utils.data import DataLoader, TensorDataset
        from fixtures.testing_models import CLASSES, Classifier, NormalisedClassifier, one_batch
        from torchdoctor.testing import assert_checkpoint_loads, assert_finite_step, assert_loader_ok

        def test_finite_step_healthy():
            assert_finite_step(Classifier(), one_batch())

        def test_finite_step_nan():
            assert_finite_step(NormalisedClassifier(), one_batch())

        def test_checkpoint_loads(tmp_path):
            torch.save(Classifier().state_dict(), tmp_path / "model.pt")
            assert_checkpoint_loads(tmp_path / "model.pt", Classifier())

        def test_checkpoint_of_another_model(tmp_path):
            torch.save(torch.nn.Linear(8, 3).state_dict(), tmp_path / "model.pt")
            assert_checkpoint_loads(tmp_path / "model.pt", Classifier())

        def test_loader_ok():
            x, y = one_batch()
            assert_loader_ok(DataLoader(TensorDataset(x, y), batch_size=4), num_classes=CLASSES)

        def test_env_of_this_machine(torchdoctor_env):  # env's own checks, on a machine that works
            assert torchdoctor_env.command == "env"

        def test_loader_labels_out_of_range():
            x, y = one_batch()
            assert_loader_ok(DataLoader(TensorDataset(x, y + 1), batch_size=4), num_classes=CLASSES)
    """)
    result = run_pytest(pytester)
    result.assert_outcomes(passed=4, failed=3)
    failures_ = failures(result)
    assert "nonfinite-forward (TD302)" in failures_["test_finite_step_nan"]
    assert "missing-keys (TD214)" in failures_["test_checkpoint_of_another_model"]
    assert "label-out-of-range (TD501)" in failures_["test_loader_labels_out_of_range"]


ENV_TEST = """
    def test_needs_a_working_device(torchdoctor_env):
        assert torchdoctor_env.command == "env"
"""
BROKEN_FACTORY = """
    import torch

    def build():
        # takes 5 channels: the env's reference batch has 3, so the training step fails for real on every device
        return torch.nn.Sequential(torch.nn.Conv2d(5, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                   torch.nn.Linear(4, 10))
"""


@pytest.mark.parametrize("option, outcome", [(None, "skipped"), ("--torchdoctor-env-fail", "errors")])
def test_torchdoctor_env_skips_or_fails_when_env_judges_the_device_broken(pytester, option, outcome):
    pytester.makepyfile(test_env=ENV_TEST, models=BROKEN_FACTORY)
    pytester.makeini("[pytest]\ntorchdoctor_env_checks = training\ntorchdoctor_env_model = models.py:build\n")
    result = run_pytest(pytester, *([option] if option else []))
    result.assert_outcomes(**{outcome: 1})  # pytest.fail in a fixture is an error of the test
    result.stdout.fnmatch_lines(["*torchdoctor env judges this machine broken*", "*training-step-failed (TD104)*"])
