"""Judgements of a watched run: pure functions from ``WatchFacts`` to findings (no torch).

The thresholds are here, and the registry text (docs/findings.md) states them.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Sequence

from torchdoctor.codes import make_finding
from torchdoctor.learning.facts import Grouped, LossInputFacts, WatchFacts
from torchdoctor.learning.series import row_values
from torchdoctor.report import Finding

MIN_LOSS_STEPS = 20  # fewer steps say nothing about a trend
MIN_DECREASE = 0.01  # last quarter's median at least 1% below the first quarter's
CHANCE_TOLERANCE = 0.05
OSCILLATION_FACTOR = 2.0  # median step-to-step change of the loss, up or down
OSCILLATION_TREND = 0.25  # ... while the last quarter stays above this share of the first (no real fall)
RATIO_HIGH = 1e-1
RATIO_LOW = 1e-6
WARMED_UP = 0.5  # a sampled step counts for update ratios once lr >= this share of its maximum
MIN_RATIO_SAMPLES = 3
COLLAPSE = 1e-2  # a layer's gradient after a too-large step, vs at it: the step killed the layer
DEPTH_RATIO = 1e3  # first layer's gradient RMS vs the last layer's
DEAD_SHARE = 0.9
SATURATED_SHARE = 0.5
_MIN_CALLS = {"cross_entropy": 1, "nll_loss": 1, "binary_cross_entropy_with_logits": 2}


def check_watch(facts: WatchFacts, nonfinite_step: int | None = None) -> list[Finding]:
    """Every finding of the run: program bugs (errors) first, then training dynamics (warnings).

    After a NaN/inf (``nonfinite_step``, reported by the nan-hunt engine) the dynamics are judged only on
    the steps before it, and activations not at all: NaN compares false, so every unit would look dead.
    """
    if nonfinite_step is not None:
        facts = before(facts, nonfinite_step)
    findings = [*check_carried(facts), *check_loss_inputs(facts)]
    findings += [f for f in (check_not_optimized(facts.not_optimized), check_never_grad(facts.never_grad),
                             check_eval_mode(facts.eval_modules)) if f is not None]
    findings += [f for f in (check_loss_trend(facts), check_oscillation(facts)) if f is not None]
    findings += [*check_update_ratios(facts), *check_depth(facts), *check_activations(facts)]
    return findings


def before(facts: WatchFacts, step: int) -> WatchFacts:
    """The facts of the steps before ``step``, without the activation shares (gathered over the whole run)."""
    keep = [i for i, sampled in enumerate(facts.sample_steps) if sampled < step]
    return dataclasses.replace(
        facts, losses=[(s, v) for s, v in facts.losses if s < step], sample_steps=[facts.sample_steps[i] for i in keep],
        lrs=[facts.lrs[i] for i in keep], grad_norm=[[row[i] for i in keep] for row in facts.grad_norm],
        update_ratio=[[row[i] for i in keep] for row in facts.update_ratio], dead_fraction={}, saturated_fraction={},
    )


# --- program bugs ---------------------------------------------------------------------------------


def check_carried(facts: WatchFacts) -> list[Finding]:
    if not facts.carried:
        return []
    steps = [step for step, _ in facts.carried]
    params = list(dict.fromkeys(p for _, names in facts.carried for p in names))
    unit = "optimizer step" if facts.step_counting == "optimizer" else "update (no optimizer: between backward calls)"
    message = (f"The gradients of {len(params)} parameter(s), starting with '{params[0]}', were carried over "
               f"into the next {unit} at {len(steps)} sampled step(s) ({steps[0]}-{steps[-1]}): "
               "zero_grad is missing or misplaced, so every step adds up all the old gradients.")
    return [make_finding("grad-not-zeroed", message, location=params[0],
                         details={"steps": [steps[0], steps[-1]], "params": params})]


_LOSS_INPUT_IDS = {
    "cross_entropy": ("double-softmax", "already sums to 1 over the classes in every row (a softmax output), "
                      "and cross_entropy applies log_softmax again"),
    "binary_cross_entropy_with_logits": ("sigmoid-before-logits-loss", "lies in (0, 1) (a sigmoid output), "
                                         "and binary_cross_entropy_with_logits applies a sigmoid again"),
    "nll_loss": ("nll-on-logits", "is no log-probability (values above 0, or rows whose logsumexp is not 0): "
                 "nll_loss expects log_softmax output"),
}


def check_loss_inputs(facts: WatchFacts) -> list[Finding]:
    findings = []
    for record in facts.loss_inputs:
        wrong = _wrong_calls(record)
        if len(wrong) < _MIN_CALLS[record.kind] or len(wrong) < len(record.flags):
            continue
        finding_id, why = _LOSS_INPUT_IDS[record.kind]
        producer = next((p for p in record.producers if p), None)
        kind = record.producer_types.get(producer) if producer else None
        source = f" It comes out of '{producer}'" + (f" ({kind})." if kind else ".") if producer else ""
        message = (f"The input of {record.kind} {why}, in all {len(wrong)} sampled call(s) "
                   f"(steps {wrong[0]}-{wrong[-1]}).{source}")
        findings.append(make_finding(finding_id, message, location=producer,
                                     details={"steps": [wrong[0], wrong[-1]], "loss": record.kind,
                                              "calls": len(wrong), "module": producer}))
    return findings


def _wrong_calls(record: LossInputFacts) -> list[int]:
    """Steps of the calls whose input had the wrong shape (nll_loss: the flag says 'log-probabilities')."""
    wrong = (not f if record.kind == "nll_loss" else f for f in record.flags)
    return [step for step, bad in zip(record.steps, wrong, strict=False) if bad]


def check_not_optimized(group: Grouped | None) -> Finding | None:
    if group is None:
        return None
    module, params = next(iter(group.modules.items()))
    message = (f"{_count(group)} parameter(s) in {len(group.modules)} module(s), starting with '{module}', "
               "receive gradients but belong to no optimizer: they never train (a layer replaced after the "
               "optimizer was built?).")
    return make_finding("params-not-updated", message, location=f"{module}.{params[0]}",
                        details={"steps": [group.first, group.last], "modules": _plain(group)})


def check_never_grad(group: Grouped | None) -> Finding | None:
    if group is None:
        return None
    module, params = next(iter(group.modules.items()))
    message = (f"{_count(group)} parameter(s) given to the optimizer in {len(group.modules)} module(s), starting "
               f"with '{module}', never received a gradient in steps {group.first}-{group.last}: a .detach(), "
               ".data, torch.no_grad() or an unused branch cuts them off the loss.")
    return make_finding("params-no-grad", message, location=module,
                        details={"steps": [group.first, group.last], "modules": _plain(group)})


def check_eval_mode(group: Grouped | None) -> Finding | None:
    if group is None:
        return None
    module, kinds = next(iter(group.modules.items()))
    message = (f"The optimizer stepped while {len(group.modules)} module(s) that behave differently in training, "
               f"starting with '{module}' ({kinds[0]}), were in eval mode (steps {group.first}-{group.last}): "
               "model.train() is missing after an evaluation.")
    return make_finding("eval-mode-training", message, location=module,
                        details={"steps": [group.first, group.last], "modules": _plain(group)})


def _count(group: Grouped) -> int:
    return sum(len(v) for v in group.modules.values())


def _plain(group: Grouped) -> dict[str, list[str]]:
    return {k: list(v) for k, v in group.modules.items()}


# --- training dynamics ----------------------------------------------------------------------------


def _judged_losses(facts: WatchFacts) -> list[tuple[int, float]] | None:
    """The loss series, when it may be judged: one optimizer (a GAN's losses rise and fall by design)."""
    losses = [(s, v) for s, v in facts.losses if math.isfinite(v)]
    if facts.optimizers > 1 or len(losses) < MIN_LOSS_STEPS:
        return None
    return losses


def _quarters(losses: Sequence[tuple[int, float]]) -> tuple[float, float]:
    quarter = max(len(losses) // 4, 1)
    return (statistics.median(v for _, v in losses[:quarter]), statistics.median(v for _, v in losses[-quarter:]))


def check_loss_trend(facts: WatchFacts) -> Finding | None:
    losses = _judged_losses(facts)
    if losses is None:
        return None
    start, end = _quarters(losses)
    chance = chance_level(facts)
    # at chance only when it did not come down to it from well above: a model that learned the label
    # frequencies from a uniform start (a language model's first steps) passes through chance on its way down
    at_chance = (chance is not None and abs(end - chance) <= CHANCE_TOLERANCE * chance
                 and start - end <= CHANCE_TOLERANCE * chance)
    if not at_chance and (end < start - MIN_DECREASE * abs(start) or abs(start) < 1e-6):
        return None
    steps = [losses[0][0], losses[-1][0]]
    message = (f"The loss shows no real downward trend over steps {steps[0]}-{steps[1]}: median {start:.4g} in "
               f"the first quarter, {end:.4g} in the last.")
    details = {"steps": steps, "first_quarter_median": start, "last_quarter_median": end, "chance_level": chance}
    if at_chance:
        message += (f" It sits at the chance level ({chance:.4g} = the entropy of the labels seen): the model "
                    "predicts no better than the label frequencies, so the labels look unrelated to the inputs "
                    "(check that inputs and labels are paired and shuffled together) unless another finding "
                    "says why the model cannot learn.")
        details["at_chance"] = True
    return make_finding("loss-not-decreasing", message, details=details)


def chance_level(facts: WatchFacts) -> float | None:
    """The loss of a model that ignores its inputs: the entropy of the labels seen (ln C for balanced labels)."""
    counts = [c for c in (facts.label_counts or ()) if c > 0]
    total = sum(counts)
    if not total or len(counts) < 2:
        return None
    return -math.fsum(c / total * math.log(c / total) for c in counts)


def check_oscillation(facts: WatchFacts) -> Finding | None:
    """Judged on the last half of the window, so that the first steps' fall (or a warm-up) does not count."""
    losses = _judged_losses(facts)
    if losses is None or any(v <= 0 for _, v in losses):
        return None
    late = losses[len(losses) // 2:]
    jumps = [abs(math.log(b / a)) for (_, a), (_, b) in zip(late, late[1:], strict=False)]
    typical = math.exp(statistics.median(jumps))
    start, end = _quarters(late)
    initial = statistics.median(v for _, v in losses[:3])
    # a loss far below where the run began has converged: near 0, batch noise alone makes large factors
    if typical < OSCILLATION_FACTOR or end < start * OSCILLATION_TREND or end < initial * OSCILLATION_TREND:
        return None
    steps = [late[0][0], late[-1][0]]
    message = (f"The loss jumps by {typical:.3g}x from one step to the next (median) over steps {steps[0]}-{steps[1]} "
               f"without coming down (median {start:.4g} in the first quarter of those steps, {end:.4g} in the "
               "last): the learning rate is too high.")
    return make_finding("loss-oscillating", message,
                        details={"steps": steps, "median_jump": typical, "first_quarter_median": start,
                                 "last_quarter_median": end})


def check_update_ratios(facts: WatchFacts) -> list[Finding]:
    warm = _warm_samples(facts)
    medians, killed = {}, {}
    stalled = check_loss_trend(facts) is not None
    for layer, row, grads in zip(facts.layers, facts.update_ratio, facts.grad_norm, strict=False):
        moved = [i for i in warm if row[i] is not None and math.isfinite(row[i]) and row[i] > 0]
        big = next((i for i in moved if row[i] > RATIO_HIGH), None)
        if stalled and big is not None and _gradient_collapsed(grads, warm, big):
            medians[layer], killed[layer] = row[big], facts.sample_steps[big]
        elif len(moved) >= MIN_RATIO_SAMPLES:
            medians[layer] = statistics.median(row[i] for i in moved)
    findings = []
    for finding_id, test, word in (("update-ratio-high", lambda r: r > RATIO_HIGH, "above 1e-1"),
                                   ("update-ratio-low", lambda r: r < RATIO_LOW, "below 1e-6")):
        flagged = {layer: r for layer, r in medians.items() if test(r)}
        if flagged:
            findings.append(_ratio_finding(finding_id, flagged, word, facts, warm, killed))
    return findings


def _gradient_collapsed(grads: Sequence[float | None], warm: list[int], big: int) -> bool:
    """After a too-large step, the layer's gradient (median of at least two later samples) fell 100x or more:
    the step switched off the ReLUs behind it. Its few remaining tiny moves would otherwise hide that step
    (too few for a median, or a median of near-zero moves); only judged while the loss is stalled."""
    after = [g for i in warm if i > big and (g := grads[i]) is not None and math.isfinite(g)]
    at_step = grads[big]
    return (len(after) >= MIN_RATIO_SAMPLES - 1 and at_step is not None and at_step > 0
            and statistics.median(after) <= COLLAPSE * at_step)


def _warm_samples(facts: WatchFacts) -> list[int]:
    lrs = [lr for lr in facts.lrs if lr is not None]
    peak = max(lrs, default=None)
    return [i for i, lr in enumerate(facts.lrs) if peak is None or (lr is not None and lr >= WARMED_UP * peak)]


def _ratio_finding(finding_id: str, flagged: dict[str, float], word: str, facts: WatchFacts,
                   warm: list[int], killed: dict[str, int]) -> Finding:
    worst = max(flagged, key=lambda k: abs(math.log10(flagged[k]) + 3))
    lr = next((facts.lrs[i] for i in reversed(warm) if facts.lrs[i] is not None), None)
    at_lr = f" at lr {lr:g}" if lr is not None else ""
    steps = [facts.sample_steps[warm[0]], facts.sample_steps[warm[-1]]]
    too = "high" if finding_id.endswith("high") else "low"
    message = (f"|Δw|/|w| per step is {word} in {len(flagged)} layer(s){at_lr}: '{worst}' moves {flagged[worst]:.3g} "
               f"of its weights per step (median of steps {steps[0]}-{steps[1]}; the usual band is around 1e-3). "
               f"The learning rate is too {too}" + (" (or the layer's gradients vanish)." if too == "low" else "."))
    details = {"steps": steps, "lr": lr, "layers": flagged}
    if killed and too == "high":
        first = min(killed, key=killed.get)
        message += (f" After step {killed[first]}, the gradient of {len(killed)} layer(s), starting with '{first}', "
                    "collapsed 100x or more and the loss stopped falling: the large steps switched off the units "
                    "behind them.")
        details["no_gradient_after"] = killed
    return make_finding(finding_id, message, location=worst, details=details)


def check_depth(facts: WatchFacts) -> list[Finding]:
    """Gradient RMS of the first vs the last layer (embeddings and layers without gradients left out)."""
    rms = []
    for layer, kind, size, row in zip(facts.layers, facts.layer_kinds, facts.layer_sizes, facts.grad_norm,
                                      strict=False):
        values = [v for v in row_values(row) if v > 0]
        if values and size and not kind.startswith("Embedding"):
            rms.append((layer, statistics.median(values) / math.sqrt(size)))
    if len(rms) < 2:
        return []
    (first, low), (last, high) = rms[0], rms[-1]
    ratio = low / high
    if 1 / DEPTH_RATIO <= ratio <= DEPTH_RATIO:
        return []
    finding_id = "grad-vanishing" if ratio < 1 else "grad-exploding"
    verb = "vanish" if ratio < 1 else "explode"
    message = (f"Gradients {verb} across depth: the first layer '{first}' gets a gradient RMS of {low:.3g}, the "
               f"last layer '{last}' {high:.3g} (ratio {ratio:.3g}, median over the sampled steps).")
    steps = _sampled_range(facts)
    return [make_finding(finding_id, message, location=first,
                         details={"steps": steps, "first_layer": first, "last_layer": last, "ratio": ratio,
                                  "layer_rms": dict(rms)})]


def check_activations(facts: WatchFacts) -> list[Finding]:
    steps = _sampled_range(facts)
    findings = []
    for finding_id, shares, limit, what in (
            ("dead-relu", facts.dead_fraction, DEAD_SHARE, "output 0 for every sample"),
            ("saturated-activation", facts.saturated_fraction, SATURATED_SHARE, "sit at their bounds for every sample"),
    ):
        for module, share in shares.items():
            if share is not None and share >= limit:
                message = (f"{share:.0%} of the units of '{module}' {what} watched (sampled training steps "
                           f"{steps[0]}-{steps[1]}): no gradient flows through them.")
                findings.append(make_finding(finding_id, message, location=module,
                                             details={"steps": steps, "fraction": share}))
    return findings


def _sampled_range(facts: WatchFacts) -> list[int]:
    if facts.sample_steps:
        return [facts.sample_steps[0], facts.sample_steps[-1]]
    return [0, max(facts.steps_watched - 1, 0)]
