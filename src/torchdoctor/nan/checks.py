"""Judgements of a nan-hunt run: recorded facts in, findings out (pure, no torch)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from torchdoctor.codes import make_finding
from torchdoctor.nan.records import NonFinite
from torchdoctor.nan.trends import describe_explosion, loss_explosion
from torchdoctor.nan.updates import UpdateJump
from torchdoctor.report import Finding, Severity

PHASE_IDS = {
    "input": "nonfinite-input",
    "forward": "nonfinite-forward",
    "loss": "nonfinite-loss",
    "backward": "nonfinite-backward",
    "optimizer": "nonfinite-optimizer",
}
# Divergence: the magnitudes just before the bad step rose at least this many times in a row, by this much.
MIN_INCREASES = 2
MIN_GROWTH = 10.0
# GradScaler halves its scale on every skip; this many skips in a row is no longer calibration.
STUCK_SKIPS = 20
# An optimizer step that moved the weights by at least their own norm (‖Δw‖/‖w‖ over all of them): a healthy
# step moves them by 1e-4..1e-2 of it, while nanoGPT at lr 1e9 moves them 1e10 times. Judged over all the
# weights, so one tiny-initialised tensor (a layer-scale of 1e-6) moving 1000x its size at a normal lr is not.
HUGE_UPDATE = 1.0
_DTYPE_MAX = {"float16": 65504.0, "bfloat16": 3.3895313892515355e38}

Point = tuple[int, float]


@dataclass(frozen=True)
class HuntFacts:
    """What a run recorded, as plain values."""

    first: NonFinite | None
    steps: int
    stopped: str | None = None
    later_nonfinite_steps: int = 0
    losses: Sequence[Point] = ()
    grad_norms: Sequence[Point] = ()
    amp_steps: int = 0
    amp_skipped: int = 0
    amp_trailing_skips: int = 0
    no_grad_first: NonFinite | None = None
    no_grad_count: int = 0
    models: Sequence[str] = field(default_factory=tuple)
    first_losses: Sequence[Point] = ()  # the run's first steps, kept apart from the trailing ``losses``
    step_counting: str = "optimizer"  # or "backward": no optimizer stepped, each backward call was a step
    grad_norm_source: str = "gradients"  # "clip_grad_norm_": the norms are what it measured before clipping
    updates: Sequence[UpdateJump] = ()  # the last optimizer updates before the first non-finite value


def check_hunt(facts: HuntFacts) -> list[Finding]:
    """Every finding of a run: the first non-finite value and what explains it, logging NaNs, AMP skips.

    When the run diverged, ``divergence`` is the cause and comes first; the phase finding is its symptom.
    """
    findings = []
    if facts.first is not None:
        cause = check_divergence(facts) or check_update(facts)
        findings.extend([cause] if cause is not None else [])
        findings.append(check_first(facts.first, cause=cause.id if cause is not None else None))
        findings.extend(f for f in (check_overflow(facts.first),) if f is not None)
    else:
        findings.extend(f for f in (check_explosion(facts),) if f is not None)
    if facts.no_grad_first is not None:
        findings.append(check_first(facts.no_grad_first, count=facts.no_grad_count))
    amp = check_amp(facts.amp_steps, facts.amp_skipped, facts.amp_trailing_skips)
    return findings + ([amp] if amp is not None else [])


def check_first(event: NonFinite, count: int = 1, *, cause: str | None = None) -> Finding:
    """The phase finding; only a warning when the forward ran under no_grad (evaluation, logging).

    ``cause``: the id of the finding reported before it as its cause (``divergence``, ``update-explosion``).
    """
    message = describe(event)
    if event.no_grad:
        message += f" It ran under no_grad ({count} time(s)), so training was not affected."
    return make_finding(
        PHASE_IDS[event.phase], message, severity=Severity.WARNING if event.no_grad else None,
        fix=phase_fix(event, cause=cause), location=location(event), details=event.to_dict(),
    )


def phase_fix(event: NonFinite, *, cause: str | None = None) -> str:
    """The fix for the op actually seen ("" = the registry's); never advice the code already follows.

    The registry's loss fix says "use F.cross_entropy instead of log(softmax)": right after ``aten.log``,
    wrong after the fused losses themselves, and beside the point when the run diverged.
    """
    if cause == "divergence":
        return ("A symptom of the divergence reported first: lower the learning rate or clip gradients; "
                f"{event.op or 'the op'} itself is not at fault.")
    if cause is not None:
        return (f"A symptom of the too-large update reported first ({cause}): lower the learning rate; "
                f"{event.op or 'the op'} itself is not at fault.")
    if event.phase != "loss" or event.op is None or _short(event.op) in _LOG_OPS:
        return ""
    if _short(event.op) in STABLE_LOSS_OPS:
        return (f"{event.op} is already the numerically stable form: its input (the model's output) or the "
                "target was out of range; check the targets and the scale of the logits (learning rate, init).")
    return f"Guard {event.op} in the loss: clamp its input (clamp(min=eps)) or add an eps where it divides."


def _short(op: str) -> str:
    """``aten.nll_loss2d_forward.default`` -> ``nll_loss2d_forward``."""
    name = op.removeprefix("aten.")
    return name.split(".")[0]


_LOG_OPS = frozenset({"log", "log2", "log10"})
# ops F.cross_entropy, F.nll_loss, the log-space and with-logits losses run: the stable forms themselves
STABLE_LOSS_OPS = frozenset({
    "_log_softmax", "log_softmax", "nll_loss", "nll_loss_forward", "nll_loss2d", "nll_loss2d_forward",
    "nll_loss_nd", "cross_entropy_loss", "binary_cross_entropy_with_logits", "mse_loss", "l1_loss",
    "smooth_l1_loss", "huber_loss", "logsumexp", "kl_div", "soft_margin_loss", "log_sigmoid_forward",
})


def describe(event: NonFinite) -> str:
    """One sentence naming kind, step, phase, op, module, param and line."""
    what = "NaN" if event.kind == "nan" else "inf"
    op = event.op or "an unidentified op"
    module = f" in module '{event.module}'" if event.module else ""
    at = f" at {location(event)}" if event.source else ""
    dtype = f" ({event.dtype})" if event.dtype else ""
    if event.phase == "input":
        sample = f" (data-set sample {event.sample_index})" if event.sample_index is not None else ""
        text = f"The batch at step {event.step} already held {what}{sample} before the model saw it{at}."
    elif event.phase == "optimizer":
        text = (f"Parameter '{event.param}' turned {what} in {op} at step {event.step}{at}, "
                f"although its gradient was finite.")
    elif event.phase == "backward":
        param = f", reaching the gradient of '{event.param}'" if event.param else ""
        text = f"A gradient first turned {what}{dtype} at step {event.step} in the backward of {op}{module}{at}{param}."
    else:
        text = f"{what}{dtype} first produced at step {event.step} in the {event.phase} by {op}{module}{at}."
    return text + _optimizers(event) + (f" Note: {event.note}." if event.note else "")


def _optimizers(event: NonFinite) -> str:
    """With several optimizers (GANs), which step of which: ``step`` counts the step() calls of all of them."""
    if len(event.optimizer_steps) < 2:
        return ""
    counts = ", ".join(f"optimizer {i} ({name}) had stepped {steps} time{'s' if steps != 1 else ''}"
                       for i, (name, steps) in enumerate(event.optimizer_steps, 1))
    return f" Step {event.step} counts the step() calls of all {len(event.optimizer_steps)} optimizers: {counts}."


def location(event: NonFinite) -> str | None:
    return f"{event.source['file']}:{event.source['line']}" if event.source else None


def check_overflow(event: NonFinite) -> Finding | None:
    """An inf in float16/bfloat16 whose float32 value exceeded the dtype's range."""
    if not event.overflow:
        return None
    limit = _DTYPE_MAX.get(event.dtype or "", float("nan"))
    message = (f"{event.op} overflowed {event.dtype} (largest finite value {limit:g}) at step {event.step}"
               + (f" in module '{event.module}'" if event.module else "") + ".")
    details = {"dtype": event.dtype, "max": limit, "op": event.op, "module": event.module, "step": event.step}
    return make_finding("low-precision-overflow", message, location=location(event), details=details)


def check_divergence(facts: HuntFacts) -> Finding | None:
    """Loss or grad norm grew geometrically in the steps up to the first non-finite one."""
    assert facts.first is not None
    runs = {name: geometric_run(points, facts.first.step)
            for name, points in (("loss", facts.losses), ("grad_norm", facts.grad_norms))}
    grown = {name: run for name, run in runs.items() if run is not None}
    if not grown:
        return None
    name, run = next(iter(grown.items()))
    message = (f"The {name.replace('_', ' ')} grew {run[-1][1] / max(run[0][1], 1e-30):.3g}x over steps "
               f"{run[0][0]}-{run[-1][0]} before the first non-finite value at step {facts.first.step}: "
               "the run diverged.")
    details = {"trajectory": {n: [{"step": s, "value": v} for s, v in r] for n, r in grown.items()},
               "first_nonfinite_step": facts.first.step}
    return make_finding("divergence", message, details=details)


def check_update(facts: HuntFacts) -> Finding | None:
    """An optimizer step right before the first NaN/inf moved the weights by more than their own norm.

    Not for a batch that already held NaN (the data's fault whatever the lr), nor at step 0 (no update yet).
    """
    first = facts.first
    assert first is not None
    huge = [u for u in facts.updates if u.step < first.step and u.ratio >= HUGE_UPDATE]
    if first.phase == "input" or not huge:
        return None
    jump = max(huge, key=lambda u: u.ratio)
    what = "NaN" if first.kind == "nan" else "inf"
    lr = f", lr {jump.lr:.3g}" if jump.lr is not None else ""
    group = f" (param group {jump.param_group}{lr})" if jump.param_group is not None else ""
    largest = (f"; '{jump.param}' moved {jump.param_ratio:.3g}x its own norm" if jump.param is not None
               and jump.param_ratio is not None else "")
    message = (f"{jump.optimizer}.step() at step {jump.step}{group} changed the weights by {jump.ratio:.3g}x "
               f"their own norm (‖Δw‖/‖w‖){largest}, and the first {what} followed at step {first.step}: the "
               "learning rate is far too large for this model, the op named below only overflowed first.")
    details = {**jump.to_dict(), "threshold": HUGE_UPDATE, "first_nonfinite_step": first.step,
               "updates": [u.to_dict() for u in facts.updates if u.step < first.step]}
    fix = update_fix(jump, clipped=facts.grad_norm_source == "clip_grad_norm_")
    return make_finding("update-explosion", message, fix=fix, details=details)


def update_fix(jump: UpdateJump, *, clipped: bool = False) -> str:
    """Adam-like optimizers move each weight by about lr whatever the gradient: clipping cannot bound that.

    Never advice the code already follows: a run that clips (``clip_grad_norm_`` was called) is told so.
    """
    lr = f" from {jump.lr:.3g}" if jump.lr is not None else ""
    if clipped:
        return (f"Lower the learning rate{lr} (10x-100x down first) or warm it up from a small value: the "
                "gradients are already clipped (clip_grad_norm_), and the clipped update is still this large.")
    if "adam" in jump.optimizer.lower() or jump.optimizer in _SIGN_LIKE:
        return (f"Lower the learning rate{lr} (10x-100x down first) or warm it up from a small value: "
                f"{jump.optimizer} moves each weight by about lr whatever the gradient, so clipping gradients "
                "does not bound this update.")
    return (f"Lower the learning rate{lr} (10x-100x down first), add warm-up, or clip gradients "
            "(torch.nn.utils.clip_grad_norm_).")


_SIGN_LIKE = frozenset({"RMSprop", "Adagrad", "Adadelta", "Adafactor", "Rprop", "Lion", "Muon"})


def geometric_run(points: Sequence[Point], until: int) -> list[Point] | None:
    """The trailing run of rising magnitudes up to step ``until``, if long and steep enough to be divergence."""
    values = [(step, abs(v)) for step, v in points if step <= until and math.isfinite(v)]
    run = values[-1:]
    for step, value in reversed(values[:-1]):
        if value >= run[0][1]:
            break
        run.insert(0, (step, value))
    if len(run) > MIN_INCREASES and run[-1][1] >= MIN_GROWTH * max(run[0][1], 1e-30):
        return run
    return None


def check_explosion(facts: HuntFacts) -> Finding | None:
    """A loss that jumped to >= 100x its start and stayed there, all values finite (no first non-finite)."""
    explosion = loss_explosion(facts.first_losses, facts.losses)
    if explosion is None:
        return None
    norms = [norm for step, norm in facts.grad_norms if step <= explosion.last[0]]
    norm = norms[-1] if norms else None
    details = {**explosion.to_dict(), "grad_norm": norm if norm is not None and math.isfinite(norm) else None}
    return make_finding("loss-explosion", describe_explosion(explosion, norm), details=details)


def check_amp(steps: int, skipped: int, trailing: int) -> Finding | None:
    """GradScaler skips: info while calibrating, error when every step was skipped."""
    if not skipped:
        return None
    if skipped == steps:
        severity, tail = Severity.ERROR, " Every step was skipped: nothing trained."
    elif trailing >= STUCK_SKIPS:
        severity, tail = Severity.WARNING, f" The last {trailing} steps in a row were skipped."
    else:
        severity, tail = Severity.INFO, " A few skips while the scale calibrates are normal."
    message = f"GradScaler skipped {skipped} of {steps} optimizer steps (inf/NaN gradients).{tail}"
    details = {"skipped_steps": skipped, "steps": steps, "trailing_skips": trailing}
    return make_finding("amp-skipped-steps", message, severity=severity, details=details)
