"""``update-explosion``: an optimizer step that threw the weights far away right before the first NaN.

Real runs of ``fixtures/nan_scripts/tiny_gpt_lr.py`` (a nanoGPT-style loop: AdamW or SGD, clip_grad_norm_)
at an absurd lr, at a sane one, and with an op fault at a sane lr; and ``UpdateLog`` measuring ‖Δw‖/‖w‖
of real optimizer steps whose update is known in closed form.
"""

from __future__ import annotations

import math
import runpy
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from torchdoctor.learning.runner import run_watch_script
from torchdoctor.nan.checks import HUGE_UPDATE, HuntFacts, check_hunt
from torchdoctor.nan.hunt import nan_hunt
from torchdoctor.nan.records import NonFinite
from torchdoctor.nan.runner import run_script
from torchdoctor.nan.updates import UpdateJump, UpdateLog

SCRIPTS = Path(__file__).resolve().parents[2] / "fixtures" / "nan_scripts"
GPT = SCRIPTS / "tiny_gpt_lr.py"


def ids(report) -> list[str]:
    return [f.id for f in report.findings]


def finding(report, finding_id: str):
    return next(f for f in report.findings if f.id == finding_id)


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_an_absurd_lr_is_named_as_the_first_update(optimizer, capsys, json_contract):
    report = run_script(GPT, ["--lr", "1e9", "--optimizer", optimizer])
    first = report.result["first_nonfinite"]
    assert first["step"] in (1, 2), first
    assert first["phase"] in ("forward", "backward", "loss"), first
    assert first["op"] and first["source"], first  # where the NaN first showed stays reported
    assert ids(report)[:2] == ["update-explosion", f"nonfinite-{first['phase']}"], ids(report)
    explosion = finding(report, "update-explosion")
    details = explosion.details
    assert details["optimizer"] == {"adamw": "AdamW", "sgd": "SGD"}[optimizer]
    assert details["lr"] == 1e9 and details["param_group"] == 0
    assert details["step"] < first["step"] and details["first_nonfinite_step"] == first["step"]
    assert details["ratio"] > 1e6 and details["param_ratio"] >= details["ratio"]
    assert details["param"] in {name for name, _ in _model_names()}
    assert f"lr {1e9:.3g}" in explosion.message and details["param"] in explosion.message
    assert "already clipped" in explosion.fix and "Lower the learning rate from 1e+09" in explosion.fix
    assert "update-explosion" in finding(report, f"nonfinite-{first['phase']}").fix
    assert report.exit_code() == 1
    json_contract(report)
    capsys.readouterr()


def test_watch_names_it_too(capsys):
    report = run_watch_script(GPT, ["--lr", "1e9", "--steps", "3"])
    assert ids(report)[0] == "update-explosion" and ids(report)[1].startswith("nonfinite-"), ids(report)
    assert finding(report, "update-explosion").details["step"] == 0
    capsys.readouterr()


def _model_names():
    namespace = runpy.run_path(str(GPT))
    return namespace["GPT"]().named_parameters()


def test_a_sane_lr_stays_quiet(capsys):
    report = run_script(GPT, ["--lr", "6e-4", "--steps", "4"])
    assert report.findings == (), ids(report)
    assert report.result["first_nonfinite"] is None
    capsys.readouterr()


def test_an_op_fault_at_a_sane_lr_is_not_blamed_on_the_lr(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [str(GPT), "--fault-at", "2"])
    with nan_hunt() as hunt:
        runpy.run_path(str(GPT), run_name="__main__")
    first = hunt.report.result["first_nonfinite"]
    assert (first["step"], first["phase"], first["op"]) == (2, "forward", "aten.log"), first
    assert ids(hunt.report) == ["nonfinite-forward"]
    assert "Guard the named op" in hunt.report.findings[0].fix
    # the two updates before the fault were measured, and judged small: not a missing measurement
    updates = hunt._facts.updates
    assert [u.step for u in updates] == [0, 1]
    assert all(0 < u.ratio < HUGE_UPDATE / 10 for u in updates), updates
    capsys.readouterr()


def _stepped(model: nn.Module, optimizer: torch.optim.Optimizer, log: UpdateLog, step: int) -> None:
    model(torch.ones(3, model.in_features)).sum().backward()
    log.before_step(optimizer, step)
    optimizer.step()
    log.after_step(optimizer)


def test_update_log_measures_the_relative_change_of_each_parameter():
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    nn.init.zeros_(model.bias)  # a zero-sized weight moves infinitely far relative to itself: never named
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    log = UpdateLog()
    weight_before = model.weight.detach().clone()
    _stepped(model, optimizer, log, 0)
    expected = (0.5 * model.weight.grad).norm() / weight_before.norm()  # plain SGD: Δw = lr * grad
    overall = float(math.hypot((0.5 * model.weight.grad).norm(), (0.5 * model.bias.grad).norm()) / weight_before.norm())
    (jump,) = log.jumps(1, {id(model.weight): "weight", id(model.bias): "bias"})
    assert (jump.step, jump.optimizer, jump.param, jump.param_group, jump.lr) == (0, "SGD", "weight", 0, 0.5)
    assert jump.param_ratio == pytest.approx(float(expected), rel=1e-5)
    assert jump.ratio == pytest.approx(overall, rel=1e-5)
    assert log.jumps(0, {}) == []  # only the steps before the first non-finite one


def test_update_log_keeps_the_last_steps_and_stops_after_the_first_nonfinite():
    model = nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    log = UpdateLog()
    for step in range(4):
        optimizer.zero_grad()
        _stepped(model, optimizer, log, step)
    assert [j.step for j in log.jumps(10, {})] == [2, 3]
    assert log.jumps(10, {})[0].param == "param_groups[0].params[0]"  # a parameter of no model seen
    log.stop()
    _stepped(model, optimizer, log, 4)
    assert [j.step for j in log.jumps(10, {})] == [2, 3]


def test_a_tiny_initialised_scale_moving_far_is_named_but_does_not_make_the_step_huge():
    """A layer-scale initialised at 1e-6 (ConvNeXt, CaiT) moves ~1000x itself in Adam's first step at a normal
    lr: the step as a whole, which is judged, still moved the weights by ~1e-2 of their norm."""
    torch.manual_seed(0)
    model = nn.Linear(64, 64)
    model.scale = nn.Parameter(torch.full((64,), 1e-6))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    log = UpdateLog()
    (model(torch.randn(8, 64)) * model.scale).sum().backward()
    log.before_step(optimizer, 0)
    optimizer.step()
    log.after_step(optimizer)
    (jump,) = log.jumps(1, {id(param): name for name, param in model.named_parameters()})
    assert jump.param == "scale" and jump.param_ratio > 100
    assert jump.ratio < HUGE_UPDATE / 10


def _facts(ratio: float, *, phase: str = "forward", step: int = 1) -> HuntFacts:
    first = NonFinite("nan", phase, step, op="aten.log")
    return HuntFacts(first=first, steps=step, updates=[UpdateJump(step - 1, "AdamW", ratio, "w", ratio, 0, 1e3)])


def test_check_update_judges_the_whole_step_and_never_a_data_fault():
    assert ids_of(_facts(2 * HUGE_UPDATE))[0] == "update-explosion"
    assert "update-explosion" not in ids_of(_facts(HUGE_UPDATE / 2))
    assert "update-explosion" not in ids_of(_facts(1e9, phase="input"))  # the batch held NaN: the data's fault
    assert "clipping gradients does not bound" in check_hunt(_facts(1e9))[0].fix  # Adam, no clip seen


def ids_of(facts: HuntFacts) -> list[str]:
    return [f.id for f in check_hunt(facts)]
