"""Every command explains the user's failing code with the same rule table (``details["explained_by"]``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


def _backward_twice() -> BaseException:
    x = torch.ones(2, requires_grad=True)
    y = (x * x).sum()
    y.backward()
    with pytest.raises(RuntimeError) as info:
        y.backward()
    return info.value


def test_nan_script_failure_keeps_its_id_and_gains_the_explanation():
    from torchdoctor.nan.runner import _failure_finding

    finding = _failure_finding(_backward_twice(), Path.cwd())
    assert finding.id == "script-failed" and finding.details["explained_by"] == "backward-twice"
    assert "backward ran twice" in finding.message


def test_env_training_step_failure_gains_the_explanation():
    from torchdoctor.env.training import _failure_finding

    exc = _backward_twice()
    step = {"mode": "float32", "device": "cpu",
            "failure": {"phase": "backward", "exc_type": "RuntimeError", "message": str(exc), "user_frame": None}}
    finding = _failure_finding(step)
    assert finding.id == "training-step-failed" and finding.details["explained_by"] == "backward-twice"
    assert "backward ran twice" in finding.message


def test_unexplained_failures_stay_as_they_were():
    from torchdoctor.nan.runner import _failure_finding

    finding = _failure_finding(KeyError("lr"), Path.cwd())
    assert finding.id == "script-failed" and "explained_by" not in finding.details
