"""nan-hunt on the loop shapes real projects use (issue 13 §4): hand-written updates, accumulation, huge norms.

Each loop is written the way its public original is (pytorch/examples' word_language_model updates weights
with ``p.data.add_``; nanoGPT accumulates 4 micro-steps per optimizer step), then judged for real.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from torchdoctor.nan.counting import HAND_UPDATE
from torchdoctor.nan.hunt import nan_hunt
from torchdoctor.nan.runner import run_script

SCRIPTS = Path(__file__).resolve().parents[2] / "fixtures" / "nan_scripts"


def ids(report) -> list[str]:
    return [f.id for f in report.findings]


def marker_line(script: Path, marker: str = "# <-- producer") -> int:
    (line,) = [n for n, text in enumerate(script.read_text().splitlines(), 1) if marker in text]
    return line


@pytest.fixture()
def in_scripts_dir(monkeypatch):
    monkeypatch.chdir(SCRIPTS)


# --- loops without torch.optim: a step is a backward call ----------------------------------------------------


def test_hand_updated_lm_names_the_backward_producer_at_batch_7(in_scripts_dir, capsys):
    report = run_script("hand_update_lm.py")
    first = report.result["first_nonfinite"]
    assert report.result["step_counting"] == "backward"
    assert (first["phase"], first["op"], first["step"]) == ("backward", "aten.sqrt", 7), first
    assert first["source"]["line"] == marker_line(SCRIPTS / "hand_update_lm.py")
    assert ids(report)[0] == "nonfinite-backward" and report.exit_code() == 1
    headline = report.sections[0].headline  # short: the finding below says the rest, not twice
    assert headline.startswith("first ") and "step 7" in headline and "aten.sqrt" in headline
    assert report.findings[0].message not in headline and len(headline) < len(report.findings[0].message)
    assert [p["step"] for p in report.result["loss_trajectory"]] == list(range(8))  # one loss per batch
    assert "batch 6 loss" in capsys.readouterr().out  # the script ran its first 7 batches


def test_hand_updated_lm_without_the_duplicate_is_clean_and_says_how_it_counted(in_scripts_dir, capsys):
    report = run_script("hand_update_lm.py", ["--clean"])
    assert report.findings == () and report.result["steps"] == 12
    assert report.result["step_counting"] == "backward"
    assert all(math.isfinite(p["grad_norm"]) for p in report.result["grad_norm_trajectory"])
    headline = report.sections[0].headline
    assert "12 step(s)" in headline and "each backward call counted as a step" in headline
    assert "optimizer step(s)" not in headline


def hand_update(model: nn.Module, lr: float) -> None:
    for p in model.parameters():
        p.data.add_(p.grad, alpha=-lr)


def test_a_weight_overflowing_in_the_hand_written_update_is_an_optimizer_event_at_its_step():
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    x, y = torch.randn(16, 4), 100 * torch.randn(16, 1)  # gradients ~100
    with nan_hunt() as hunt:
        for step in range(5):
            model.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            hand_update(model, lr=1e38 if step == 2 else 0.01)  # finite grads, the update overflows float32
    first = hunt.report.result["first_nonfinite"]
    assert (first["phase"], first["op"], first["step"], first["kind"]) == ("optimizer", HAND_UPDATE, 2, "inf")
    assert first["param"] in ("weight", "bias") and hunt.report.result["step_counting"] == "backward"
    assert "although its gradient was finite" in hunt.report.findings[0].message


def test_divergence_is_seen_in_a_hand_updated_loop():
    torch.manual_seed(0)
    model = nn.Linear(8, 1)
    x, y = torch.randn(32, 8), torch.randn(32, 1)
    with nan_hunt() as hunt:
        for _ in range(60):
            model.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            hand_update(model, lr=3.0)
    assert ids(hunt.report)[0] == "divergence", ids(hunt.report)
    assert hunt.report.result["first_nonfinite"]["step"] > 5  # counted per backward, not stuck at 0


def test_accumulation_with_an_optimizer_made_before_the_hunt_counts_optimizer_steps():
    torch.manual_seed(0)
    model = nn.Linear(8, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)  # before the hunt: its __init__ is not seen
    with nan_hunt() as hunt:
        for _ in range(3):
            for _micro in range(4):  # nanoGPT's gradient accumulation
                loss = nn.functional.cross_entropy(model(torch.randn(4, 8)), torch.randint(0, 2, (4,))) / 4
                loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    result = hunt.report.result
    assert result["step_counting"] == "optimizer" and result["steps"] == 3 and hunt.report.findings == ()
    assert [p["step"] for p in result["loss_trajectory"]] == [0, 1, 2]


# --- gradient norms in float64 -------------------------------------------------------------------------------


def test_a_finite_gradient_norm_above_float32_range_is_recorded_not_inf():
    model = nn.Linear(1000, 1, bias=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    x = torch.full((1, 1000), 2e19)  # d(sum)/dw = x: every element finite, the norm's squares are not in float32
    with nan_hunt() as hunt:
        for _ in range(3):
            optimizer.zero_grad()
            model(x).sum().backward()
            optimizer.step()
    norms = [p["grad_norm"] for p in hunt.report.result["grad_norm_trajectory"]]
    assert norms == [pytest.approx(2e19 * math.sqrt(1000), rel=1e-6)] * 3
    assert hunt.report.findings == ()


def test_the_trajectory_shows_the_norm_before_clip_grad_norm_as_nanogpt_clips_every_step():
    model = nn.Linear(100, 1, bias=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    with nan_hunt() as hunt:
        for _ in range(2):
            optimizer.zero_grad()
            model(torch.full((1, 100), 3.0)).sum().backward()  # gradient 3 everywhere: norm 30
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
    result = hunt.report.result
    assert [p["grad_norm"] for p in result["grad_norm_trajectory"]] == [pytest.approx(30.0)] * 2
    assert result["grad_norm_source"] == "clip_grad_norm_"


# --- a loss that explodes and stays finite -------------------------------------------------------------------


def train_classifier(lr: float, steps: int = 30):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 8))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    x, y = torch.randn(256, 16), torch.randint(0, 8, (256,))
    with nan_hunt() as hunt:
        for _ in range(steps):
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return hunt.report


def test_a_loss_that_jumps_hundreds_of_times_its_start_and_stays_is_flagged():
    report = train_classifier(lr=1000.0)
    assert report.result["first_nonfinite"] is None and ids(report) == ["loss-explosion"]
    finding = report.findings[0]
    assert finding.details["factor"] >= 20 and finding.details["start"] == pytest.approx(2.1, abs=0.1)
    assert finding.details["last_loss"] > 100 * finding.details["start"]  # ~250x its start at the end
    assert finding.details["last_step"] == 29 and finding.details["grad_norm"] > 0
    assert report.exit_code() == 1 and "the loss exploded" in report.sections[0].headline
    assert finding.message not in report.sections[0].headline


def test_a_healthy_classifier_gives_no_explosion():
    report = train_classifier(lr=0.5)
    assert report.findings == ()


# --- a fault that fires once: the replay misses it, the report keeps what the cheap watch saw ----------------


class FiresOnce(nn.Module):
    """A layer whose output is corrupted on one call only (a flaky kernel, a one-off bad state)."""

    def __init__(self, value: float, at_call: int) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 1)
        self.value, self.at_call, self.calls = value, at_call, 0

    def forward(self, x):
        self.calls += 1
        out = self.linear(x)
        return out + self.value if self.calls == self.at_call else out


@pytest.mark.parametrize(("value", "kind"), [(float("nan"), "nan"), (float("inf"), "inf")])
def test_a_fault_the_replay_does_not_reproduce_keeps_the_model_and_line_and_says_so(value, kind):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), FiresOnce(value, at_call=3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with nan_hunt() as hunt:
        for _ in range(5):
            optimizer.zero_grad()
            loss = nn.functional.mse_loss(model(torch.randn(8, 4)), torch.randn(8, 1))  # <-- model call
            loss.backward()
            optimizer.step()
    first = hunt.report.result["first_nonfinite"]
    assert (first["phase"], first["step"], first["kind"], first["replay"]) == ("forward", 2, kind, "missed"), first
    assert first["model"] == "torch.nn.modules.container.Sequential"
    assert first["source"]["line"] == THIS_LINE_OF_MODEL_CALL
    # the cheap watch saw FiresOnce's output go non-finite (its inner linear's stayed finite): it names that module
    assert first["module"] == "2"
    assert "output of module '2' (FiresOnce, in Sequential)" in first["note"] and "did not reproduce" in first["note"]
    assert "in module '2'" in hunt.report.findings[0].message


THIS_LINE_OF_MODEL_CALL = next(n for n, text in enumerate(Path(__file__).read_text().splitlines(), 1)
                               if text.rstrip().endswith("# <-- model call"))
