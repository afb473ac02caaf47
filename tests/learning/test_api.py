"""``torchdoctor.watch()`` as a context manager on loops written in the test: the contract other code builds on."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import torchdoctor
from torchdoctor.learning.api import Watch
from torchdoctor.learning.series import evenly

NAN_SCRIPTS = Path(__file__).resolve().parents[2] / "fixtures" / "nan_scripts"


def train(steps: int, model: nn.Module | None = None, lr: float = 0.1) -> nn.Module:
    torch.manual_seed(0)
    model = model or nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model


def global_hooks() -> tuple[int, ...]:
    from torch.nn.modules import module
    from torch.optim import optimizer

    return (len(module._global_forward_hooks), len(module._global_forward_pre_hooks),
            len(optimizer._global_optimizer_pre_hooks), len(optimizer._global_optimizer_post_hooks),
            id(torch.autograd.backward), id(nn.functional.cross_entropy))


def test_watch_is_the_lazy_api_twin_and_fills_the_series():
    assert torchdoctor.watch is torchdoctor.learning.api.watch
    with torchdoctor.watch(every=5) as w:
        assert w.report is None
        train(20)
        assert w.steps == 20
    result = w.report.result
    assert w.report.command == "watch" and result["steps_watched"] == 20
    assert result["step_counting"] == "optimizer" and result["first_nonfinite"] is None
    series = result["series"]
    assert series["step"] == [0, 5, 10, 15]
    assert series["layers"] == ["0", "2"]  # input -> output
    assert len(series["loss"]) == len(series["lr"]) == 4 and series["lr"] == [0.1] * 4
    assert all(len(row) == 4 and all(v > 0 for v in row) for row in series["grad_norm"] + series["update_ratio"])
    assert list(series["dead_fraction"]) == ["1"] and series["saturated_fraction"] == {}


def test_every_hook_is_removed_on_exit_also_when_entered_and_exited_by_hand():
    before = global_hooks()
    w = Watch()
    w.__enter__()  # as a trainer callback does, in on_train_begin ...
    assert global_hooks() != before
    train(3)
    w.__exit__(None, None, None)  # ... and on_train_end
    assert global_hooks() == before
    assert w.report is not None and w.report.result["steps_watched"] == 3


def test_steps_stops_watching_not_the_training():
    with torchdoctor.watch(steps=4, every=1) as w:
        model = train(10)
    assert w.report.result["steps_watched"] == 4
    assert w.report.result["series"]["step"] == [0, 1, 2, 3]
    assert model is not None  # the loop ran its 10 steps: no exception stopped it


def test_watching_one_model_leaves_others_out():
    watched = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    other = nn.Linear(4, 4)
    with torchdoctor.watch(watched, every=1) as w:
        other(torch.randn(2, 4))
        train(3, watched)
    assert w.report.result["series"]["layers"] == ["0", "2"]


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "3"])
def test_bad_steps_and_every_are_refused(value):
    with pytest.raises(ValueError, match="steps"):
        Watch(steps=value)
    with pytest.raises(ValueError, match="every"):
        Watch(every=value)


def test_a_watch_is_entered_once():
    w = Watch()
    with w:
        pass
    with pytest.raises(RuntimeError):
        w.__enter__()


def test_a_nan_is_reported_exactly_as_nan_hunt_reports_it():
    from torchdoctor.learning.runner import run_watch_script
    from torchdoctor.nan.runner import run_script

    script = str(NAN_SCRIPTS / "norm_no_eps.py")
    hunted = run_script(script).to_dict()
    watched = run_watch_script(script).to_dict()
    assert watched["result"]["first_nonfinite"] == hunted["result"]["first_nonfinite"] is not None
    assert not [f for f in watched["findings"] if f["code"].startswith("TD8")]  # NaN compares false: no dead units
    hunt_ids = [f["id"] for f in hunted["findings"] if f["id"] != "script-failed"]
    assert [f for f in watched["findings"] if f["id"] in hunt_ids] == [
        f for f in hunted["findings"] if f["id"] in hunt_ids]



def test_after_an_early_nan_the_dynamics_headline_says_how_few_steps_were_judged():
    from torchdoctor.learning.runner import run_watch_script

    report = run_watch_script(str(NAN_SCRIPTS / "norm_no_eps.py"))
    step = report.result["first_nonfinite"]["step"]
    (dynamics,) = [section for section in report.sections if section.name == "dynamics"]
    assert step < 20 and "no sign of a run that does not learn" not in dynamics.headline
    assert f"too few to judge how it learns ({step} before the first NaN/inf at step {step})" in dynamics.headline


def test_series_are_downsampled_evenly_to_at_most_500_points():
    assert evenly(5, 500) == [0, 1, 2, 3, 4]
    picked = evenly(2001, 500)
    assert len(picked) == 500 and picked[0] == 0 and picked[-1] == 2000
    gaps = {b - a for a, b in zip(picked, picked[1:], strict=False)}
    assert gaps <= {4, 5}


def test_sparse_gradients_are_left_out_not_fatal():
    model = nn.Sequential(nn.Embedding(10, 4, sparse=True), nn.Linear(4, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with torchdoctor.watch(every=1) as w:
        for _ in range(3):
            optimizer.zero_grad()
            model(torch.randint(0, 10, (8,))).pow(2).mean().backward()
            optimizer.step()
    assert w.report.result["series"]["layers"] == ["1"]


def test_a_failure_of_ours_stops_watching_not_the_training(monkeypatch, capsys):
    from torchdoctor.learning import norms

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(norms, "measure", broken)
    with torchdoctor.watch(every=1) as w:
        train(5)
    assert "torchdoctor watch: stopped watching at step 0: RuntimeError: boom" in capsys.readouterr().err
    assert "stopped watching early: RuntimeError: boom" in w.report.sections[-1].headline


def test_statistics_are_read_back_once_per_sampled_step(monkeypatch):
    """The host reads our tensors only in ``flush`` (once per sampled step) and once at the end."""
    import sys as _sys

    calls = []

    def counting(original, kind):
        def read(self):
            caller = _sys._getframe(1).f_code.co_filename
            if "torchdoctor" in caller and "learning" in caller:  # the nan-hunt engine reads its own
                calls.append(kind)
            return original(self)

        return read

    monkeypatch.setattr(torch.Tensor, "tolist", counting(torch.Tensor.tolist, "tolist"))
    monkeypatch.setattr(torch.Tensor, "item", counting(torch.Tensor.item, "item"))
    monkeypatch.setattr(torch.Tensor, "__float__", counting(torch.Tensor.__float__, "float"))
    monkeypatch.setattr(torch.Tensor, "__bool__", counting(torch.Tensor.__bool__, "bool"))
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Tanh(), nn.Linear(8, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
    with torchdoctor.watch(model, every=5) as w:
        for _ in range(20):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    assert w.report.result["series"]["step"] == [0, 5, 10, 15]
    assert set(calls) == {"tolist"}  # never .item(), float() or bool() of a tensor
    assert 4 <= len(calls) <= 4 + 1 + 2  # a flush per sampled step, a last one, the unit masks and the labels


def test_a_large_layer_is_measured_on_a_slice_close_to_the_whole():
    from torchdoctor.learning.stats import SNAPSHOT_ELEMENTS

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(300, 300), nn.ReLU(), nn.Linear(300, 2))
    assert model[0].weight.numel() > SNAPSHOT_ELEMENTS
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    x, y = torch.randn(64, 300), torch.randint(0, 2, (64,))
    with torchdoctor.watch(every=1) as w:
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        before = [p.detach().clone() for p in model[0].parameters()]
        optimizer.step()
    after = list(model[0].parameters())
    whole = (sum((a - b).pow(2).sum() for a, b in zip(after, before, strict=True)).sqrt()
             / sum(a.pow(2).sum() for a in after).sqrt()).item()
    measured = w.report.result["series"]["update_ratio"][0][0]
    assert measured == pytest.approx(whole, rel=0.25)


def train_with_closure(steps: int, zero_grad: bool) -> None:
    """optimizer.step(closure), as Lightning and LBFGS run it: zero_grad, forward and backward inside step()."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))

    def closure() -> torch.Tensor:
        if zero_grad:
            optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    for _ in range(steps):
        optimizer.step(closure)


@pytest.mark.parametrize("zero_grad", [True, False])
def test_a_step_with_a_closure_is_measured_after_the_closure_ran(zero_grad):
    # before the closure runs, the gradients are the last step's: judged there, every healthy step looked carried
    with torchdoctor.watch(every=2) as w:
        train_with_closure(12, zero_grad)
    ids = [f.id for f in w.report.findings]
    assert ("grad-not-zeroed" in ids) is not zero_grad, ids
    assert w.report.result["steps_watched"] == 12
    assert all(v is not None and v > 0 for v in w.report.result["series"]["grad_norm"][0])


def test_a_layers_gradient_norm_is_summed_without_overflow():
    from torchdoctor.learning import norms

    # each tensor's norm (1.5e19) is finite in float32, but the layer's sum of their squares (4.5e38) is not
    grads = [torch.full((1,), 1.5e19), torch.full((1,), 1.5e19), torch.full((2,), 1.0)]
    measured = norms.measure(grads)
    layers = norms.per_layer(norms.rescued(measured, measured.values.tolist()), [0, 0, 1], 2)
    assert layers[0] == pytest.approx(1.5e19 * 2 ** 0.5, rel=1e-6) and layers[1] == pytest.approx(2 ** 0.5)
