"""The localisation pieces on their own: the producer rules, the mode stack, the cheap checks, the judgements."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode, _get_current_dispatch_mode_stack

from torchdoctor.nan.checks import HuntFacts, check_amp, check_hunt, geometric_run
from torchdoctor.nan.hunt import nan_hunt
from torchdoctor.nan.locate import ProducerWatch, dispatch_mode, overflowed
from torchdoctor.nan.records import NonFinite
from torchdoctor.nan.tensors import bad_kinds, screened_finite, worst_kind
from torchdoctor.nan.window import LossWindow

BOTH = ("nan", "inf")


def watched(fn, kinds=BOTH) -> ProducerWatch:
    watch = ProducerWatch(kinds)
    with dispatch_mode(watch):
        fn()
    return watch


def ops(watch: ProducerWatch) -> list[tuple[str, str]]:
    return [(p.op, p.kind) for p, _ in watch.producers]


# --- producer rules ---------------------------------------------------------------------------------


def test_masked_fill_with_minus_inf_is_on_purpose_but_the_fully_masked_softmax_is_not():
    scores = torch.randn(3, 3)
    mask = torch.tensor([[False, True, True], [True, True, True], [False, False, True]])
    watch = watched(lambda: scores.masked_fill(mask, float("-inf")).softmax(-1))
    assert ops(watch) == [("aten._softmax", "nan")]


def test_multiplying_by_a_nan_constant_is_a_producer():
    x = torch.randn(4)
    assert ops(watched(lambda: x * float("nan"))) == [("aten.mul", "nan")]


def test_propagation_is_not_production_and_an_outside_nan_is_an_inflow():
    poisoned = torch.tensor([1.0, float("nan")])
    watch = watched(lambda: (poisoned * 2).exp().sum())
    assert ops(watch) == []
    assert [(p.op, p.kind) for p, _ in watch.inflows] == [("aten.mul", "nan")]


def test_uninitialised_memory_overwritten_is_no_producer():
    def body():
        scratch = torch.empty(1000)
        scratch.fill_(1.0)
        return scratch.log()

    assert ops(watched(body)) == []


def test_an_in_place_producer_is_judged_on_its_input_before_the_op():
    x = torch.zeros(3)
    assert ops(watched(lambda: x.div_(0.0))) == [("aten.div_", "nan")]


def test_nan_only_mode_ignores_inf_producers():
    x = torch.zeros(3)
    assert ops(watched(lambda: (1.0 / x) - (1.0 / x), kinds=("nan",))) == [("aten.sub", "nan")]
    assert ops(watched(lambda: (1.0 / x) - (1.0 / x)))[0] == ("aten.reciprocal", "inf")


def test_overflow_is_told_apart_from_division_by_zero_in_half():
    big = torch.full((4,), 60000.0, dtype=torch.float16)
    assert overflowed(torch.ops.aten.add.Tensor, (big, big), {}, "float16")
    zero = torch.zeros(4, dtype=torch.float16)
    assert not overflowed(torch.ops.aten.div.Tensor, (big, zero), {}, "float16")


def test_producer_names_the_line_and_dtype():
    x = torch.zeros(2, dtype=torch.float64)
    watch = watched(lambda: torch.log(x))  # locate-log
    producer = watch.producers[0][0]
    assert (producer.op, producer.dtype, producer.kind) == ("aten.log", "float64", "inf")
    assert Path(producer.source["file"]).resolve() == Path(__file__).resolve()
    assert "locate-log" in producer.source["code"]


# --- cheap checks --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.complex64])
def test_screen_and_exact_kinds(dtype):
    clean = torch.ones(10, dtype=dtype)
    assert screened_finite(clean) and bad_kinds([clean], BOTH) == set()
    nan, inf = clean.clone(), clean.clone()
    nan[3] = float("nan")
    inf[7] = float("-inf")
    assert bad_kinds([nan], BOTH) == {"nan"} and bad_kinds([inf], BOTH) == {"inf"}
    assert bad_kinds([inf], ("nan",)) == set()
    assert worst_kind([inf, nan], BOTH) == "nan"


def test_a_finite_tensor_whose_sum_overflows_is_still_finite():
    huge = torch.full((4,), 3e38)
    assert not screened_finite(huge)
    assert bad_kinds([huge], BOTH) == set()


# --- the loss window and the dispatch-mode stack ----------------------------------------------------------


class UserMode(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def test_window_comes_off_the_stack_even_under_a_users_mode():
    window = LossWindow(BOTH)
    window.open()
    user = UserMode()
    user.__enter__()
    window.close()  # ours is not on top: it is taken out from under the user's mode
    stack = _get_current_dispatch_mode_stack()
    assert stack == [user]
    user.__exit__(None, None, None)
    assert _get_current_dispatch_mode_stack() == []


def test_a_nan_computed_for_logging_does_not_take_the_blame_for_the_loss():
    model = nn.Linear(2, 1)
    with nan_hunt() as hunt:
        out = model(torch.randn(4, 2))
        ratio = out.detach() / 0.0 * 0.0  # a logging NaN, not part of the loss
        loss = -torch.log(out.sigmoid() * 0.0).mean()  # window-log
        loss.backward()
    event = hunt.report.result["first_nonfinite"]
    assert (event["phase"], event["op"]) == ("loss", "aten.log")
    assert "window-log" in event["source"]["code"]
    del ratio


def test_parameter_already_nan_is_named_where_it_is_first_read():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    with torch.no_grad():
        model[1].weight[0, 0] = float("nan")
    with nan_hunt() as hunt:
        model(torch.randn(3, 2)).sum().backward()
    event = hunt.report.result["first_nonfinite"]
    assert (event["phase"], event["module"], event["param"]) == ("forward", "1", "1.weight")
    assert "already held" in event["note"]


def test_intentional_minus_inf_logits_are_no_finding():
    class Masked(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 5)

        def forward(self, x):
            return self.fc(x).masked_fill(torch.tensor([False, False, False, True, True]), float("-inf"))

    model = Masked()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with nan_hunt() as hunt:
        for _ in range(3):
            loss = nn.functional.cross_entropy(model(torch.randn(8, 4)), torch.randint(0, 3, (8,)))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    assert hunt.report.findings == () and hunt.steps == 3


def test_fp16_grad_scaler_skips_are_info_not_errors():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40)  # far too high: the first steps overflow
    with nan_hunt() as hunt:
        for _ in range(30):
            with torch.autocast("cpu", dtype=torch.float16):
                loss = nn.functional.cross_entropy(model(torch.randn(16, 8)).float(), torch.randint(0, 3, (16,)))
            optimizer.zero_grad()
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
    amp = hunt.report.result["amp"]
    assert amp["steps"] == 30 and 0 < amp["skipped_steps"] < 30
    assert [(f.id, f.severity.value) for f in hunt.report.findings] == [("amp-skipped-steps", "info")]
    assert hunt.steps == 30 - amp["skipped_steps"]


# --- judgements (pure) ----------------------------------------------------------------------------------


def test_geometric_run_needs_a_steep_rising_tail():
    rising = [(0, 1.0), (1, 3.0), (2, 20.0)]
    assert geometric_run([*rising, (3, float("inf"))], until=3) == rising
    assert geometric_run([(0, 1.0), (1, 1.1), (2, 1.2)], until=2) is None  # rising, but not 10x
    assert geometric_run([(0, 1.0), (1, 50.0)], until=1) is None  # too short
    tail = [(1, 1.0), (2, 2.0), (3, 40.0)]
    assert geometric_run([(0, 5.0), *tail, (4, 1e9)], until=3) == tail  # only up to the bad step


def test_amp_severity_ladder():
    assert check_amp(10, 0, 0) is None
    assert check_amp(10, 3, 0).severity.value == "info"
    assert check_amp(40, 25, 25).severity.value == "warning"
    assert check_amp(5, 5, 5).severity.value == "error"


def test_findings_from_hand_built_facts():
    event = NonFinite("inf", "forward", 7, module="pool", op="aten.sum", dtype="float16", overflow=True,
                      source={"file": "train.py", "line": 12, "code": "x.sum(1)"})
    facts = HuntFacts(first=event, steps=7, losses=[(4, 1.0), (5, 30.0), (6, 900.0)])
    findings = check_hunt(facts)
    # the loss grew geometrically before it: divergence is the cause and comes first (issue 13)
    assert [f.id for f in findings] == ["divergence", "nonfinite-forward", "low-precision-overflow"]
    assert findings[1].location == "train.py:12"
    assert "aten.sum" in findings[1].message and "'pool'" in findings[1].message and "step 7" in findings[1].message
    no_grad = NonFinite("nan", "forward", 2, op="aten.div", no_grad=True)
    findings = check_hunt(HuntFacts(first=None, steps=3, no_grad_first=no_grad, no_grad_count=2))
    assert [(f.id, f.severity.value) for f in findings] == [("nonfinite-forward", "warning")]


def test_importing_the_hunt_does_not_import_torch():
    code = "import sys, torchdoctor.nan.hunt; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
