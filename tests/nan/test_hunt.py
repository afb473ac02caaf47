"""nan_hunt on real in-process training loops: each known NaN/inf source is named, healthy loops stay silent."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from torchdoctor.nan.hunt import HuntStopped, NanHunt, nan_hunt
from torchdoctor.paths import display_path

THIS_FILE = __file__


def line_of(marker: str) -> int:
    """The line of this file carrying ``# <marker>`` (so edits above it do not break the tests)."""
    with open(THIS_FILE) as handle:
        lines = [n for n, text in enumerate(handle, 1) if text.rstrip().endswith(f"# {marker}")]
    assert len(lines) == 1, marker
    return lines[0]


def first(hunt: NanHunt) -> dict:
    return hunt.report.result["first_nonfinite"]


def ids(hunt: NanHunt) -> list[str]:
    return [f.id for f in hunt.report.findings]


def assert_source(event: dict, marker: str) -> None:
    assert Path(event["source"]["file"]).resolve() == Path(THIS_FILE).resolve()
    assert event["source"]["line"] == line_of(marker)
    assert marker in event["source"]["code"]


# --- (1) loss: log of an underflowed softmax -------------------------------------------------------


def test_log_of_underflowed_softmax_is_a_loss_producer():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.copy_(torch.tensor([0.0, 200.0, -200.0]))  # class 2's probability underflows to 0
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    target = torch.tensor([[0.0, 0.0, 1.0]] * 8)
    with nan_hunt() as hunt:
        for _ in range(3):
            probs = torch.softmax(model(torch.randn(8, 4)), dim=-1)
            loss = -(target * torch.log(probs)).sum(-1).mean()  # loss-log
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    event = first(hunt)
    assert (event["phase"], event["op"], event["step"], event["module"]) == ("loss", "aten.log", 0, None)
    assert event["kind"] == "inf"  # log(0) = -inf comes first; 0 * -inf = NaN only follows
    assert_source(event, "loss-log")
    assert ids(hunt) == ["nonfinite-loss"]
    assert hunt.report.result["stopped"] == "first-nonfinite"
    assert hunt.report.findings[0].location == f"{display_path(THIS_FILE)}:{line_of('loss-log')}"


class LogLoss(nn.Module):
    def forward(self, prediction):
        return -torch.log(prediction).mean()  # loss-module-log


def test_loss_module_called_at_top_level_counts_as_loss_not_model():
    model = nn.Sequential(nn.Linear(3, 2), nn.ReLU())
    with torch.no_grad():
        model[0].bias.fill_(-100.0)  # relu gives exact zeros
    criterion = LogLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with nan_hunt() as hunt:
        loss = criterion(model(torch.randn(4, 3)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    event = first(hunt)
    assert (event["phase"], event["op"], event["module"]) == ("loss", "aten.log", None)
    assert_source(event, "loss-module-log")
    assert hunt.report.result["models"] == ["torch.nn.modules.container.Sequential"]


# --- (2) backward: sqrt at zero --------------------------------------------------------------------


class Distance(nn.Module):
    def forward(self, a):
        return torch.sqrt(((a - a) ** 2).sum(-1))  # backward-sqrt


class Siamese(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(4, 4)
        self.head = Distance()

    def forward(self, x):
        return self.head(self.encoder(x))


def test_sqrt_at_zero_is_a_backward_producer_naming_op_line_and_param():
    torch.manual_seed(0)
    model = Siamese()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    with nan_hunt(model) as hunt:
        for _ in range(3):
            loss = model(torch.randn(8, 4)).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    event = first(hunt)
    assert (event["phase"], event["op"], event["module"], event["step"]) == ("backward", "aten.sqrt", "head", 0)
    assert event["param"] in ("encoder.weight", "encoder.bias")
    assert_source(event, "backward-sqrt")
    assert ids(hunt) == ["nonfinite-backward"]
    # stopped before optimizer.step: NaN never reached the weights, and the replay left .grad as backward made it
    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
    assert torch.isnan(model.encoder.weight.grad).all()


# --- (3) forward: normalisation without eps ----------------------------------------------------------


class Standardise(nn.Module):
    def forward(self, x):
        return (x - x.mean(0)) / x.std(0)  # forward-div


class Regressor(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 3), Standardise(), nn.Linear(3, 1))

    def forward(self, x):
        return self.body(x)


def test_normalisation_without_eps_on_a_constant_batch_is_a_forward_producer():
    torch.manual_seed(0)
    model = Regressor()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    batches = [torch.randn(6, 3), torch.randn(6, 3), torch.ones(6, 3)]  # the third is constant
    with nan_hunt() as hunt:
        for x in batches:
            loss = model(x).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    event = first(hunt)
    assert (event["phase"], event["op"], event["module"], event["step"]) == ("forward", "aten.div", "body.1", 2)
    assert (event["kind"], event["dtype"]) == ("nan", "float32")
    assert_source(event, "forward-div")
    assert event["model"].endswith("Regressor")
    assert ids(hunt) == ["nonfinite-forward"]
    assert hunt.steps == 2


# --- (4) divergence: exploding learning rate ----------------------------------------------------------


def test_exploding_learning_rate_is_divergence_plus_the_first_nonfinite_step():
    torch.manual_seed(0)
    model = nn.Linear(8, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e6)
    x, y = torch.randn(32, 8), torch.randn(32, 1)
    with nan_hunt() as hunt:
        for _ in range(50):
            loss = nn.functional.mse_loss(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    event = first(hunt)
    assert event["phase"] in ("optimizer", "forward", "loss")
    assert "divergence" in ids(hunt)
    divergence = next(f for f in hunt.report.findings if f.id == "divergence")
    values = next(iter(divergence.details["trajectory"].values()))
    assert len(values) >= 3 and values[-1]["value"] > 10 * values[0]["value"]
    # the step is where it first went non-finite: every earlier step had a finite loss
    losses = hunt.report.result["loss_trajectory"]
    assert all(isinstance(p["loss"], float) and math.isfinite(p["loss"]) for p in losses if p["step"] < event["step"])
    assert hunt.steps == event["step"] + (1 if event["phase"] == "optimizer" else 0)


# --- (5) low precision: a half model overflows ---------------------------------------------------------


def test_half_model_overflow_is_forward_inf_plus_low_precision_overflow():
    model = nn.Linear(8, 4).half()
    with torch.no_grad():
        model.weight.fill_(1.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    with nan_hunt() as hunt:
        for _ in range(2):
            x = (torch.rand(4, 8) * 0.5 + 0.5).half() * 1e4  # each output sums 8 values >= 5e3: beyond 65504
            loss = model(x).float().pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    event = first(hunt)
    assert (event["phase"], event["kind"], event["dtype"], event["step"]) == ("forward", "inf", "float16", 0)
    assert event["op"] in ("aten.addmm", "aten.mm", "aten.linear")
    assert event["overflow"] is True
    assert ids(hunt) == ["nonfinite-forward", "low-precision-overflow"]


# --- (6) attention: fully masked row ---------------------------------------------------------------


class MaskedAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.query = nn.Linear(4, 4)

    def forward(self, x, mask):
        scores = self.query(x) @ x.transpose(-1, -2)
        scores = scores.masked_fill(mask, float("-inf"))
        return torch.softmax(scores, dim=-1)  # attention-softmax


class Attender(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = MaskedAttention()

    def forward(self, x, mask):
        return self.attn(x, mask) @ x


def _train_attention(mask: torch.Tensor) -> NanHunt:
    torch.manual_seed(0)
    model = Attender()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with nan_hunt() as hunt:
        for _ in range(3):
            loss = model(torch.randn(2, 5, 4), mask).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return hunt


def test_fully_masked_attention_row_is_a_softmax_producer():
    mask = torch.zeros(5, 5, dtype=torch.bool)
    mask[3] = True  # query 3 may attend nowhere
    hunt = _train_attention(mask)
    event = first(hunt)
    assert (event["phase"], event["op"], event["module"], event["kind"]) == ("forward", "aten._softmax", "attn", "nan")
    assert_source(event, "attention-softmax")


def test_partly_masked_attention_gives_no_finding():
    mask = torch.triu(torch.ones(5, 5, dtype=torch.bool), diagonal=1)  # causal: every row keeps itself
    hunt = _train_attention(mask)
    assert hunt.report.findings == ()
    assert first(hunt) is None and hunt.steps == 3


# --- (7) input: a corrupt sample in the data set ---------------------------------------------------


def test_corrupt_sample_is_an_input_event_with_its_index_and_step():
    torch.manual_seed(0)
    features = torch.randn(16, 3)
    features[6, 1] = float("nan")
    dataset = torch.utils.data.TensorDataset(features, torch.randn(16, 1))
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, shuffle=False)
    model = nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with nan_hunt() as hunt:
        for x, y in loader:
            loss = nn.functional.mse_loss(model(x), y)  # input-call
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    event = first(hunt)
    assert (event["phase"], event["step"], event["sample_index"], event["kind"]) == ("input", 1, 6, "nan")
    assert_source(event, "input-call")
    assert ids(hunt) == ["nonfinite-input"]
    assert "sample 6" in hunt.report.findings[0].message


def test_nan_target_is_an_input_event_found_in_the_loss():
    torch.manual_seed(0)
    targets = torch.randn(8, 1)
    targets[5] = float("nan")
    dataset = torch.utils.data.TensorDataset(torch.randn(8, 2), targets)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4)
    model = nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with nan_hunt() as hunt:
        for x, y in loader:
            loss = nn.functional.mse_loss(model(x), y)  # target-loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    event = first(hunt)
    assert (event["phase"], event["step"], event["sample_index"]) == ("input", 1, 5)
    assert event["op"].startswith("aten.")
    assert_source(event, "target-loss")


# --- (8) a healthy loop stays silent and leaves the training bit-identical -------------------------


class Healthy(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 8)
        self.norm = nn.BatchNorm1d(6)
        self.drop = nn.Dropout(0.2)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = self.drop(self.norm(self.proj(x)))
        scratch = torch.empty_like(h)  # uninitialised, then overwritten
        scratch.copy_(h)
        scores = scratch @ scratch.transpose(-1, -2)
        causal = torch.triu(torch.ones(6, 6, dtype=torch.bool), diagonal=1)
        attn = torch.softmax(scores.masked_fill(causal, float("-inf")), dim=-1)
        return self.head(attn @ h).mean(1)


def _healthy_run(hunted: bool) -> tuple[dict, torch.Tensor, NanHunt | None]:
    torch.manual_seed(0)
    model = Healthy()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu")
    data = torch.randn(5, 4, 6, 8)
    labels = torch.randint(0, 3, (5, 4))

    def train() -> None:
        for x, y in zip(data, labels, strict=True):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = nn.functional.cross_entropy(model(x).float(), y)
            optimizer.zero_grad()
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            with torch.no_grad():
                model.eval()
                model(data[0])  # an evaluation call between steps
                model.train()

    hunt = None
    if hunted:
        with nan_hunt() as hunt:
            train()
    else:
        train()
    return {k: v.clone() for k, v in model.state_dict().items()}, torch.get_rng_state(), hunt


def test_healthy_amp_dropout_batchnorm_masked_loop_gives_no_findings_and_is_bit_identical():
    plain_state, plain_rng, _ = _healthy_run(hunted=False)
    state, rng, hunt = _healthy_run(hunted=True)
    assert hunt.report.findings == ()
    assert hunt.report.result["first_nonfinite"] is None and hunt.report.result["stopped"] is None
    assert hunt.steps == 5 and hunt.report.result["amp"] == {"skipped_steps": 0, "steps": 5}
    assert state.keys() == plain_state.keys()
    assert all(torch.equal(state[k], plain_state[k]) for k in state)
    assert torch.equal(rng, plain_rng)


class Log(nn.Module):
    def forward(self, x):
        return torch.log(x)  # negative after BatchNorm: NaN


def test_a_replay_leaves_batchnorm_stats_and_rng_as_without_it():
    """A forward replay (keep_going) must not advance BatchNorm stats or the RNG a second time."""

    def run(hunted: bool):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), Log(), nn.Dropout(0.5))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        batches = [torch.randn(6, 3) for _ in range(3)]
        hunt = NanHunt(keep_going=True)
        with hunt if hunted else torch.enable_grad():
            for x in batches:
                loss = torch.nan_to_num(model(x), nan=0.0, neginf=0.0).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        return model.state_dict(), torch.get_rng_state(), hunt

    plain_state, plain_rng, _ = run(False)
    state, rng, hunt = run(True)
    assert (first(hunt)["phase"], first(hunt)["op"], first(hunt)["step"]) == ("forward", "aten.log", 0)
    assert hunt.report.result["later_nonfinite_steps"] == 2
    assert all(torch.equal(state[k], plain_state[k]) for k in state)
    assert torch.equal(rng, plain_rng)


# --- (9) everything removed afterwards, even when the body raises ------------------------------------


def _global_state() -> dict:
    from torch.nn.modules import module as m
    from torch.optim import optimizer as o
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack
    from torch.utils.data import dataloader as d

    return {
        "forward_hooks": dict(m._global_forward_hooks),
        "forward_hooks_kwargs": dict(m._global_forward_hooks_with_kwargs),
        "forward_hooks_always": dict(m._global_forward_hooks_always_called),
        "forward_pre_hooks": dict(m._global_forward_pre_hooks),
        "optimizer_pre": dict(o._global_optimizer_pre_hooks),
        "optimizer_post": dict(o._global_optimizer_post_hooks),
        "autograd_backward": torch.autograd.backward,
        "tensor_backward": torch.Tensor.backward,
        "next_index": d._BaseDataLoaderIter.__dict__["_next_index"],
        "next": d._BaseDataLoaderIter.__dict__["__next__"],
        "scaler_update": torch.amp.GradScaler.__dict__["update"],
        "dispatch_modes": list(_get_current_dispatch_mode_stack()),
    }


def test_hooks_and_patches_are_removed_even_when_the_body_raises():
    before = _global_state()
    model = nn.Linear(2, 1)
    with pytest.raises(ValueError, match="user bug"), nan_hunt(model):
        assert _global_state() != before
        model(torch.randn(3, 2)).sum()  # leaves the loss window open
        raise ValueError("user bug")
    assert _global_state() == before


def test_hooks_are_removed_after_a_stop_inside_the_loss_window():
    before = _global_state()
    model = nn.Linear(2, 1)
    with nan_hunt() as hunt:
        out = model(torch.randn(3, 2))
        (out * float("nan")).sum().backward()
    assert first(hunt)["phase"] == "loss"
    assert _global_state() == before


# --- (10) stopping: not swallowed by user code; max_steps --------------------------------------------


def test_hunt_stopped_is_not_swallowed_by_except_exception():
    model = nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    attempts = 0
    with nan_hunt() as hunt:
        for _ in range(5):
            try:
                attempts += 1
                loss = model(torch.full((3, 2), float("nan"))).sum()
                loss.backward()
                optimizer.step()
            except Exception:  # the user's own catch-all must not hide the stop
                pass
    assert attempts == 1
    assert first(hunt)["phase"] == "input"
    assert issubclass(HuntStopped, BaseException) and not issubclass(HuntStopped, Exception)


def test_max_steps_ends_the_run_cleanly_after_n_steps():
    model = nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    iterations = 0
    with nan_hunt(max_steps=3) as hunt:
        for _ in range(10):
            iterations += 1
            loss = model(torch.randn(4, 2)).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    assert (iterations, hunt.steps, hunt.report.result["stopped"]) == (3, 3, "max-steps")
    assert hunt.report.findings == () and "max_steps" in hunt.report.sections[0].headline


def test_keep_going_reports_the_first_and_counts_later_steps():
    model = nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with nan_hunt(keep_going=True) as hunt:
        for step in range(5):
            x = torch.randn(4, 2)
            if step == 1:
                x[0, 0] = float("nan")
            loss = model(x).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    result = hunt.report.result
    assert (first(hunt)["phase"], first(hunt)["step"]) == ("input", 1)
    assert result["stopped"] is None and hunt.steps == 5
    assert result["later_nonfinite_steps"] == 3  # the NaN weights poison steps 2, 3 and 4


def test_no_inf_ignores_infinities():
    model = nn.Linear(2, 1)
    x = torch.tensor([[float("inf"), 1.0]])
    with nan_hunt(check_inf=False) as hunt:
        for _ in range(2):
            model.zero_grad()
            model(x).sum().backward()  # inf output, inf loss, inf grads: no NaN anywhere
    assert first(hunt) is None and hunt.report.findings == ()
    with nan_hunt() as hunt:
        model(x).sum().backward()
    assert (first(hunt)["phase"], first(hunt)["kind"]) == ("input", "inf")


# --- (11) NaN under no_grad for logging is at most a warning ------------------------------------------


def test_nan_under_no_grad_for_logging_is_at_most_a_warning():
    torch.manual_seed(0)
    model = Regressor()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with nan_hunt() as hunt:
        for _ in range(3):
            loss = model(torch.randn(6, 3)).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                logged = model(torch.ones(6, 3)).mean()  # a constant probe batch: NaN, only logged
                ratio = logged / 0.0
            del ratio
    assert "error" not in {f.severity.value for f in hunt.report.findings}
    assert hunt.steps == 3 and hunt.report.result["stopped"] is None
    warning = hunt.report.findings[0]
    assert warning.id == "nonfinite-forward" and warning.severity.value == "warning"
    assert warning.details["no_grad"] is True and warning.details["op"] == "aten.div"
    assert hunt.report.exit_code() == 0


# --- optimizer phase ------------------------------------------------------------------------------------


def test_param_turning_nan_in_the_optimizer_is_an_optimizer_event():
    model = nn.Linear(2, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1, eps=0.0)
    with nan_hunt() as hunt:
        for _ in range(3):
            loss = (model(torch.randn(4, 2)) * 0.0).sum()  # zero grads: Adam divides 0 by sqrt(0) + 0
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()  # optimizer-step
    event = first(hunt)
    assert (event["phase"], event["op"], event["step"]) == ("optimizer", "Adam.step", 0)
    assert event["param"] in ("weight", "bias")
    assert_source(event, "optimizer-step")
    assert ids(hunt) == ["nonfinite-optimizer"] and hunt.steps == 1


# --- the report contract -----------------------------------------------------------------------------


def test_reports_follow_the_schema_and_are_json_safe(validate_report):
    import json

    torch.manual_seed(0)
    model = nn.Linear(8, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e6)
    x, y = torch.randn(32, 8), torch.randn(32, 1)
    with nan_hunt() as hunt:
        for _ in range(50):
            loss = nn.functional.mse_loss(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    report = json.loads(json.dumps(hunt.report.to_dict(), allow_nan=False))
    validate_report(report)
    assert report["command"] == "nan-hunt" and report["status"] == "error"
    assert set(report["result"]["first_nonfinite"]) >= {"kind", "phase", "step", "module", "op", "source", "dtype",
                                                        "param"}
    extra = hunt.build_report(extra_result={"script": {"path": "x.py"}})
    assert extra.result["script"] == {"path": "x.py"} and extra.findings == hunt.report.findings


def test_the_hunt_keeps_no_reference_to_the_model_afterwards():
    import gc
    import weakref

    model = nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with nan_hunt() as hunt:
        model(torch.randn(3, 2)).sum().backward()
        optimizer.step()
    ref = weakref.ref(model)
    del model, optimizer
    gc.collect()
    assert ref() is None
    assert hunt.report.result["models"] == ["torch.nn.modules.linear.Linear"] and hunt.build_report().result


@pytest.mark.parametrize("keyword", [False, True])
def test_a_nan_gradient_inside_a_closure_step_is_named_in_backward(keyword):
    # optimizer.step(closure) (LBFGS, Lightning) runs forward and backward inside step(): the gradients are
    # judged once the closure ran, whether the closure is passed by position or by keyword
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(4, 3)

    def closure():
        optimizer.zero_grad()
        loss = torch.sqrt(model(x) * 0.0).sum()  # closure-sqrt: d sqrt(0) = inf, then NaN
        loss.backward()
        return loss

    with nan_hunt() as hunt:
        for _ in range(2):
            optimizer.step(closure=closure) if keyword else optimizer.step(closure)
    event = first(hunt)
    assert (event["phase"], event["step"]) == ("backward", 0), event
    assert ids(hunt) == ["nonfinite-backward"]
