"""The pure judges on hand-built series: each fires on its symptom and stays quiet just inside its threshold."""

from __future__ import annotations

import math

import pytest

from torchdoctor.learning import judge
from torchdoctor.learning.facts import Grouped, LossInputFacts, WatchFacts


def ids(facts: WatchFacts) -> list[str]:
    return [f.id for f in judge.check_watch(facts)]


def losses(values) -> list[tuple[int, float]]:
    return list(enumerate(values))


def layered(rows: dict[str, list[float]], *, ratios=None, lrs=None, kinds=None, sizes=None) -> WatchFacts:
    steps = len(next(iter(rows.values())))
    return WatchFacts(
        steps_watched=steps * 10, optimizers=1, sample_steps=[10 * i for i in range(steps)],
        lrs=lrs or [0.1] * steps, layers=list(rows), layer_kinds=kinds or ["Linear"] * len(rows),
        layer_sizes=sizes or [100] * len(rows), grad_norm=list(rows.values()),
        update_ratio=list((ratios or {k: [1e-3] * steps for k in rows}).values()),
    )


def test_a_falling_loss_is_quiet_and_a_flat_one_is_not():
    assert ids(WatchFacts(optimizers=1, losses=losses([2.0 - 0.03 * i for i in range(40)]))) == []
    flat = judge.check_loss_trend(WatchFacts(optimizers=1, losses=losses([1.0 + 0.001 * (i % 3) for i in range(40)])))
    assert flat.id == "loss-not-decreasing" and flat.details["steps"] == [0, 39]
    assert judge.check_loss_trend(WatchFacts(optimizers=1, losses=losses([1.0] * 19))) is None  # too few steps


def test_chance_level_is_the_entropy_of_the_labels_seen():
    facts = WatchFacts(optimizers=1, losses=losses([math.log(4)] * 30), label_counts=[25, 25, 25, 25])
    assert judge.chance_level(facts) == pytest.approx(math.log(4))
    assert judge.check_loss_trend(facts).details["at_chance"] is True
    skewed = WatchFacts(label_counts=[90, 10])
    assert judge.chance_level(skewed) == pytest.approx(-(0.9 * math.log(0.9) + 0.1 * math.log(0.1)))


def test_several_optimizers_leave_the_loss_unjudged():
    wild = losses([1.0, 5.0] * 20)
    assert "loss-oscillating" in ids(WatchFacts(optimizers=1, losses=wild))
    assert ids(WatchFacts(optimizers=2, losses=wild)) == []


def test_oscillation_needs_large_jumps_without_a_fall():
    assert judge.check_oscillation(WatchFacts(optimizers=1, losses=losses([1.0, 1.8] * 20))) is None  # 1.8x
    falling = [10.0 * 0.8 ** i * (3 if i % 2 else 1) for i in range(40)]
    assert judge.check_oscillation(WatchFacts(optimizers=1, losses=losses(falling))) is None
    converged = [2.0, 1.5, 1.0] + [0.01, 0.05] * 20  # near 0 after learning: batch noise, not oscillation
    assert judge.check_oscillation(WatchFacts(optimizers=1, losses=losses(converged))) is None


def test_update_ratio_bands_after_warm_up():
    rows = {"a": [1.0] * 6, "b": [1.0] * 6}
    high = layered(rows, ratios={"a": [0.3] * 6, "b": [1e-3] * 6})
    finding = next(f for f in judge.check_watch(high) if f.id == "update-ratio-high")
    assert finding.location == "a" and finding.details["lr"] == 0.1 and list(finding.details["layers"]) == ["a"]
    low = layered(rows, ratios={"a": [1e-3] * 6, "b": [1e-8] * 6})
    assert [f.location for f in judge.check_watch(low) if f.id == "update-ratio-low"] == ["b"]
    # warm-up from lr 0: the first samples' tiny ratios do not count
    warm = layered(rows, ratios={"a": [1e-9, 1e-9, 1e-3, 1e-3, 1e-3, 1e-3], "b": [1e-3] * 6},
                   lrs=[0.0, 0.01, 0.1, 0.1, 0.1, 0.1])
    assert ids(warm) == []


def test_depth_ratio_names_first_and_last_layer():
    vanishing = layered({"in": [1e-6] * 3, "mid": [1e-3] * 3, "out": [1.0] * 3})
    finding = next(f for f in judge.check_watch(vanishing) if f.id == "grad-vanishing")
    assert (finding.location, finding.details["last_layer"]) == ("in", "out")
    assert finding.details["ratio"] == pytest.approx(1e-6)
    assert "grad-exploding" in ids(layered({"in": [1e4] * 3, "out": [1.0] * 3}))
    assert ids(layered({"in": [2e-3] * 3, "out": [1.0] * 3})) == []  # 500x: inside the band
    # an embedding's sparse gradient is no sign of vanishing
    assert ids(layered({"emb": [1e-9] * 3, "in": [1.0] * 3, "out": [1.0] * 3},
                       kinds=["Embedding", "Linear", "Linear"])) == []


def test_dead_and_saturated_shares():
    facts = WatchFacts(sample_steps=[0, 10], dead_fraction={"relu1": 0.95, "relu2": 0.5},
                       saturated_fraction={"tanh": 0.6, "sig": 0.4})
    found = {(f.id, f.location) for f in judge.check_watch(facts)}
    assert found == {("dead-relu", "relu1"), ("saturated-activation", "tanh")}


def test_loss_input_checks_need_every_sampled_call():
    double = LossInputFacts("cross_entropy", [0, 10], ["head.softmax", "head.softmax"], [True, True])
    assert [(f.id, f.location) for f in judge.check_watch(WatchFacts(loss_inputs=[double]))] == [
        ("double-softmax", "head.softmax")]
    once = LossInputFacts("cross_entropy", [0, 10], [None, None], [True, False])
    assert ids(WatchFacts(loss_inputs=[once])) == []
    single = LossInputFacts("binary_cross_entropy_with_logits", [0], ["sig"], [True])
    assert ids(WatchFacts(loss_inputs=[single])) == []  # one call is not enough for the sigmoid check
    nll_ok = LossInputFacts("nll_loss", [0, 10], ["log_softmax"], [True, True])  # flag: "is log-probabilities"
    assert ids(WatchFacts(loss_inputs=[nll_ok])) == []


def test_program_bug_findings_carry_the_module_and_step_range():
    facts = WatchFacts(carried=[(1, ["fc.weight", "fc.bias"]), (11, ["fc.weight"])],
                       not_optimized=Grouped({"head": ["weight", "bias"]}, 0, 20),
                       never_grad=Grouped({"encoder.0": ["weight"]}, 0, 29),
                       eval_modules=Grouped({"drop": ["Dropout"]}, 10, 20))
    found = {f.id: f for f in judge.check_watch(facts)}
    assert (found["grad-not-zeroed"].location, found["grad-not-zeroed"].details["steps"]) == ("fc.weight", [1, 11])
    assert found["params-not-updated"].location == "head.weight"
    assert found["params-no-grad"].location == "encoder.0"
    assert (found["eval-mode-training"].location, found["eval-mode-training"].details["steps"]) == ("drop", [10, 20])
    assert all(f.severity.value == "error" for f in found.values())


def test_a_loss_that_came_down_to_chance_level_is_learning():
    """A language model's first steps: from ln V (uniform) down to the entropy of the labels, still falling."""
    chance = -(0.7 * math.log(0.7) + 0.3 * math.log(0.3))
    falling = [math.log(2) - (math.log(2) - chance) * i / 30 for i in range(31)] + [chance * 0.99] * 9
    facts = WatchFacts(optimizers=1, losses=losses(falling), label_counts=[70, 30])
    assert judge.check_loss_trend(facts) is None
    stuck = WatchFacts(optimizers=1, losses=losses([chance * 1.01] * 40), label_counts=[70, 30])
    assert judge.check_loss_trend(stuck).details["at_chance"] is True
