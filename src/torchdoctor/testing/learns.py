"""``assert_learns``: the classic "overfit one batch" test, strengthened with the reason when it does not.

The rule, in numbers: after ``steps`` optimizer steps on the same batch, the mean of the last
``LAST_LOSSES`` losses is at most ``max_loss_ratio`` (default 0.75) times the first loss — the loss
falls by a quarter at least. Besides the loss: every trainable parameter receives a gradient (``params-no-grad``) and
changes (``params-not-updated``), every value stays finite (the nan-hunt finding, with the user's line),
and the watch's checks that a single batch can show hold (a softmax before cross_entropy...).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torchdoctor.testing.failures import raise_for

__all__ = ["DEFAULT_LR", "LAST_LOSSES", "MAX_LOSS_RATIO", "assert_learns"]

# Measured on healthy small models given random labels, as unit tests are written (MLPs, a 32-channel CNN with
# BatchNorm and global pooling, a tanh regressor, a TransformerEncoder): after 50 Adam steps at 1e-2 their losses
# were 0.02-0.69x the first; at 3e-3 and 0.5x most failed. A model whose output ignores its input stays near 1.0x.
# Tiny pooled CNNs on pure-noise images learn slower (8 channels: ~0.8x): give them more steps.
MAX_LOSS_RATIO = 0.75
LAST_LOSSES = 5  # averaged at the end, so one noisy step (dropout) neither passes nor fails the check
DEFAULT_LR = 1e-2  # Adam: overfits one small batch in 50 steps, and stays stable on those models
SAMPLES = 10  # steps the watch samples: enough for its single-batch checks, cheap enough for a unit test
_NAMES_SHOWN = 5


@dataclass
class LearningFacts:
    """What one run on one batch showed, as plain values."""

    losses: list[float] = field(default_factory=list)
    trainable: list[str] = field(default_factory=list)
    got_grad: set[str] = field(default_factory=set)
    in_optimizer: set[str] = field(default_factory=set)
    changed: set[str] = field(default_factory=set)


def assert_learns(model: Any, batch: Any, *, loss_fn: Callable[[Any, Any], Any] | None = None,
                  optimizer: Any = None, steps: int = 50, max_loss_ratio: float = MAX_LOSS_RATIO) -> None:
    """Train a copy of ``model`` on ``batch`` for ``steps`` steps; fail naming every reason it does not learn.

    ``batch`` and ``loss_fn`` are as in ``torchdoctor.run_training_step`` (``(inputs, targets)`` or a dict;
    the loss is inferred when omitted). ``optimizer``: one built on ``model``'s parameters (copied with the
    model, so neither is changed); default Adam(lr=1e-2) on every trainable parameter.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ValueError(f"steps must be an int >= 2, got {steps!r}")
    work, optimizer = copy.deepcopy((model, optimizer))  # one memo: the copied optimizer holds the copied params
    facts, report = _train(work, batch, loss_fn, optimizer, steps)
    raise_for("assert_learns", judge(facts, report, max_loss_ratio))


def judge(facts: LearningFacts, report: Any, max_loss_ratio: float = MAX_LOSS_RATIO) -> list[Any]:
    """Our checks first, then the watch's (its nan hunt's included) under ids we did not report already.

    After a NaN, only the watch's findings count: gradients and losses are then its consequences.
    """
    if report.result.get("first_nonfinite") is not None:
        return list(report.findings)
    ours = check_learning(facts, max_loss_ratio)
    return ours + [f for f in report.findings if f.id not in {mine.id for mine in ours}]


def _train(model: Any, batch: Any, loss_fn: Any, optimizer: Any, steps: int) -> tuple[LearningFacts, Any]:
    """The steps, under ``torchdoctor.watch`` (about ``SAMPLES`` sampled steps); our facts and its report."""
    import torch

    from torchdoctor.batch import as_call
    from torchdoctor.learning.api import watch
    from torchdoctor.step import compute_loss, split_batch

    inputs, targets = split_batch(batch)
    args, kwargs = as_call(inputs)
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    optimizer = optimizer or torch.optim.Adam([p for _, p in named], lr=DEFAULT_LR)
    facts = _initial_facts(named, optimizer)
    before = {name: p.detach().clone() for name, p in named}
    model.train()
    with watch(model, every=max(1, steps // SAMPLES)) as watching, torch.enable_grad():
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            loss, _name = compute_loss(torch, model(*args, **kwargs), targets, loss_fn)
            loss.backward()
            facts.got_grad.update(name for name, p in named if p.grad is not None)
            optimizer.step()
            facts.losses.append(float(loss.detach().float()))
    facts.changed = {name for name, p in named if not torch.equal(before[name], p.detach())}
    return facts, watching.report


def _initial_facts(named: list[tuple[str, Any]], optimizer: Any) -> LearningFacts:
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    return LearningFacts(trainable=[name for name, _ in named],
                         in_optimizer={name for name, p in named if id(p) in in_optimizer})


def check_learning(facts: LearningFacts, max_loss_ratio: float = MAX_LOSS_RATIO) -> list[Any]:
    """Findings from the facts (pure): parameters without gradient, parameters that never moved, a flat loss."""
    findings = []
    no_grad = [name for name in facts.trainable if name not in facts.got_grad]
    if no_grad:
        findings.append(_finding("params-no-grad", f"{len(no_grad)} trainable parameter(s) never received a "
                                 f"gradient: {_names(no_grad)}.", no_grad))
    stuck = [name for name in facts.trainable if name in facts.got_grad and name not in facts.changed]
    if stuck:
        outside = [name for name in stuck if name not in facts.in_optimizer]
        why = f" ({len(outside)} belong to no optimizer)" if outside else ""
        findings.append(_finding("params-not-updated", f"{len(stuck)} trainable parameter(s) received gradients "
                                 f"but never changed{why}: {_names(stuck)}.", stuck))
    flat = _flat_loss(facts.losses, max_loss_ratio)
    if flat is not None:
        findings.append(flat)
    return findings


def _flat_loss(losses: list[float], max_loss_ratio: float) -> Any:
    if not losses or not all(math.isfinite(value) for value in losses):
        return None  # non-finite losses are the nan hunt's finding
    first, last = losses[0], sum(losses[-LAST_LOSSES:]) / len(losses[-LAST_LOSSES:])
    if last <= max_loss_ratio * first:
        return None
    message = (f"Overfitting one batch for {len(losses)} steps took the loss from {first:.4g} to {last:.4g} "
               f"(mean of the last {min(LAST_LOSSES, len(losses))}); it must fall to {max_loss_ratio:g}x "
               f"the first loss or below.")
    return _make("loss-not-decreasing", message, {"first_loss": first, "last_loss": last,
                                                  "max_loss_ratio": max_loss_ratio, "steps": len(losses)})


def _finding(finding_id: str, message: str, names: list[str]) -> Any:
    return _make(finding_id, message, {"parameters": names}, location=names[0])


def _make(finding_id: str, message: str, details: dict[str, Any], location: str | None = None) -> Any:
    from torchdoctor.codes import make_finding
    from torchdoctor.report import Severity

    return make_finding(finding_id, message, severity=Severity.ERROR, location=location, details=details)


def _names(names: list[str]) -> str:
    more = f" and {len(names) - _NAMES_SHOWN} more" if len(names) > _NAMES_SHOWN else ""
    return ", ".join(names[:_NAMES_SHOWN]) + more
