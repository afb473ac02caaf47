"""Pure judgements over recorded series: loss explosion, divergence ordering, fixes chosen from the op seen."""

from __future__ import annotations

import pytest

from torchdoctor.nan.checks import HuntFacts, check_hunt, phase_fix
from torchdoctor.nan.records import NonFinite
from torchdoctor.nan.trends import EXPLOSION_FACTOR, loss_explosion

START = [(0, 4.2), (1, 4.1), (2, 4.3)]


def series(*values: float, first_step: int = 3) -> list[tuple[int, float]]:
    return START + [(first_step + i, v) for i, v in enumerate(values)]


def test_a_jump_to_400x_that_stays_is_an_explosion_from_the_step_it_crossed():
    points = series(3.9, 3.5, 1700.0, 1650.0, 1680.0, 1690.0)
    explosion = loss_explosion(START, points)
    assert explosion is not None and (explosion.start, explosion.start_step, explosion.crossed_step) == (4.1, 1, 5)
    assert explosion.factor == pytest.approx(1650.0 / 4.1) and explosion.last == (8, 1690.0)


@pytest.mark.parametrize("values", [
    (3.0, 2.0, 1.5, 1.2, 1.0),  # healthy: falling
    (3.0, 2.0, 1.5, 1.2, 900.0, 950.0),  # a spike in the last two steps only: not yet "stayed"
    (3.0, 900.0, 950.0, 2.0, 1.9, 1.8),  # jumped and came back
    (30.0, 40.0, 50.0, 60.0),  # worse, but below 20x
])
def test_no_explosion(values):
    assert loss_explosion(START, series(*values)) is None


def test_a_start_that_is_zero_or_negative_is_not_judged_and_short_runs_are_not_judged():
    assert loss_explosion([(0, 0.0), (1, 0.0), (2, 0.0)], [(i, 5.0) for i in range(3, 9)]) is None
    assert loss_explosion([(0, -2.0), (1, -1.0), (2, -1.5)], [(i, 500.0) for i in range(3, 9)]) is None
    assert loss_explosion(START[:2], series(900.0, 900.0, 900.0)) is None
    assert loss_explosion(START, START) is None
    jumped_at_1 = [(0, 5.3), (1, 1e8), (2, 5e8), (3, 1.1e9), (4, 9e8)]  # word_language_model at lr 1e9
    explosion = loss_explosion(jumped_at_1[:3], jumped_at_1)
    assert explosion is not None and (explosion.start_step, explosion.crossed_step) == (0, 1)


def test_explosion_only_without_a_first_nonfinite_and_the_threshold_is_documented():
    facts = HuntFacts(first=None, steps=9, first_losses=START, losses=series(*[EXPLOSION_FACTOR * 5] * 4),
                      grad_norms=[(6, 4e15)])
    (finding,) = check_hunt(facts)
    assert finding.id == "loss-explosion" and "4e+15" in finding.message
    nan = NonFinite("nan", "forward", 8, op="aten.add")
    assert "loss-explosion" not in [f.id for f in check_hunt(HuntFacts(first=nan, steps=8, first_losses=START,
                                                                        losses=facts.losses))]


def test_divergence_comes_first_and_the_phase_fix_says_it_is_a_symptom():
    event = NonFinite("nan", "loss", 6, op="aten._log_softmax")
    facts = HuntFacts(first=event, steps=6, losses=[(3, 2.0), (4, 300.0), (5, 9e4)])
    findings = check_hunt(facts)
    assert [f.id for f in findings] == ["divergence", "nonfinite-loss"]
    assert "cross_entropy" not in findings[1].fix and "divergence" in findings[1].fix


@pytest.mark.parametrize(("op", "says", "never"), [
    ("aten.log", "F.cross_entropy", None),  # the registry's advice fits log(softmax)
    ("aten._log_softmax", "already the numerically stable form", "F.cross_entropy"),  # F.cross_entropy's own op
    ("aten.nll_loss_forward", "already the numerically stable form", "F.cross_entropy"),
    ("aten.div", "Guard aten.div", "F.cross_entropy"),
])
def test_the_loss_fix_follows_the_op_seen(op, says, never):
    fix = phase_fix(NonFinite("nan", "loss", 0, op=op), cause=None)
    finding = check_hunt(HuntFacts(first=NonFinite("nan", "loss", 0, op=op), steps=0))[0]
    assert says in finding.fix and (never is None or never not in finding.fix)
    assert fix in ("", finding.fix)
