"""nan-hunt names modules by their path in the model the user holds, whichever part of it the loop calls.

A loop calling ``model.encoder(x)`` then ``model.head(h)`` (never ``model``) gets ``head.1``, the name
``model.named_modules()`` gives, not ``1``; a fault the exact replay does not reproduce is still named at the
submodule whose output the cheap watch saw go non-finite.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from torchdoctor.nan.hunt import nan_hunt
from torchdoctor.nan.runner import run_script

SCRIPTS = Path(__file__).resolve().parents[2] / "fixtures" / "nan_scripts"


class LogShifted(nn.Module):
    def forward(self, x):
        return torch.log(x - 10.0)  # tanh output minus 10 is negative: NaN


class Distance(nn.Module):
    def forward(self, a):
        return torch.sqrt(((a - a) ** 2).sum(-1))  # finite forward; d sqrt at 0 is inf: NaN gradients


class Parts(nn.Module):
    """Never called itself: the loop calls its encoder, then its head."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 8), nn.Tanh())
        self.head = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), head)


def hunt_parts(head: nn.Module) -> dict:
    torch.manual_seed(0)
    model = Parts(head)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with nan_hunt() as hunt:
        for _ in range(2):
            features = model.encoder(torch.randn(8, 4))
            loss = model.head(features).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return hunt.report.result["first_nonfinite"]


def test_a_forward_producer_in_a_part_called_alone_is_named_by_its_path_in_the_model():
    first = hunt_parts(LogShifted())
    assert (first["phase"], first["op"], first["module"]) == ("forward", "aten.log", "head.2"), first
    assert "head.2" in dict(Parts(LogShifted()).named_modules())


def test_a_backward_producer_names_module_and_parameter_by_their_paths_in_the_model():
    first = hunt_parts(Distance())
    assert (first["phase"], first["op"], first["module"]) == ("backward", "aten.sqrt", "head.2"), first
    assert first["param"] in ("head.0.weight", "head.0.bias"), first


def test_ddp_keeps_its_module_prefix_out_of_the_names():
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = DistributedDataParallel(nn.Sequential(nn.Linear(4, 4), nn.Tanh(), LogShifted()))
        with nan_hunt() as hunt:
            model(torch.randn(8, 4)).mean().backward()
    finally:
        dist.destroy_process_group()
    first = hunt.report.result["first_nonfinite"]
    assert (first["op"], first["module"]) == ("aten.log", "2"), first  # not "module.2"


def test_a_fault_the_replay_misses_is_named_at_the_deepest_module_that_went_nonfinite(monkeypatch, capsys):
    # a global counter decides the fault, so the exact replay (same inputs, same RNG) computes finite values
    monkeypatch.chdir(SCRIPTS)
    report = run_script("flaky_layer.py")
    first = report.result["first_nonfinite"]
    assert (first["phase"], first["step"], first["kind"], first["replay"]) == ("forward", 2, "nan", "missed"), first
    # body.2 (Flaky) made it: its inner linear stayed finite, body and head only passed it on
    assert first["module"] == "body.2" and first["op"] is None
    assert "module 'body.2' (Flaky, in Net)" in first["note"]
    assert report.findings[0].id == "nonfinite-forward" and "in module 'body.2'" in report.findings[0].message


@pytest.mark.parametrize("check_inf", [True, False])
def test_an_output_changed_in_place_afterwards_is_judged_as_it_was_returned(check_inf):
    class Corrupt(nn.Module):
        """Fires once: turns its input NaN in place; the module before it returned a finite tensor."""

        def __init__(self) -> None:
            super().__init__()
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            return x.mul_(float("nan")) if self.calls == 2 else x

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), Corrupt(), nn.Linear(4, 1))
    with nan_hunt(check_inf=check_inf) as hunt:
        for _ in range(3):
            model(torch.randn(8, 4)).mean().backward()
    first = hunt.report.result["first_nonfinite"]
    assert (first["replay"], first["module"]) == ("missed", "1"), first  # not "0", whose output it overwrote
