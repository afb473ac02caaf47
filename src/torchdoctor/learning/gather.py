"""Turn the collector's live state into plain ``WatchFacts`` (names resolved, losses per step)."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from torchdoctor.learning.activations import FunctionalSite
from torchdoctor.learning.collect import Collector
from torchdoctor.learning.facts import Grouped, LossInputFacts, WatchFacts
from torchdoctor.learning.names import Names


def gather_facts(collector: Collector, names: Names) -> WatchFacts:
    optimizer_mode = collector.mode == "optimizer"
    steps = sorted(collector.samples)
    layers = names.sort_layers({layer for s in collector.samples.values()
                                for layer in (*s.grad_norm, *s.update_ratio)})
    fractions = collector.acts.fractions()
    watched = collector.opt_steps if optimizer_mode else collector.backwards
    if collector.max_steps is not None:
        watched = min(watched, collector.max_steps)
    return WatchFacts(
        steps_watched=watched,
        step_counting=collector.mode,
        optimizers=len(collector.optimizers),
        losses=_step_losses(collector.losses, optimizer_mode),
        sample_steps=steps,
        lrs=[collector.samples[s].lr for s in steps],
        layers=[names.display(m) for m in layers],
        layer_kinds=[type(m).__name__ for m in layers],
        layer_sizes=[sum(p.numel() for p in m.parameters(recurse=False)) for m in layers],
        grad_norm=[[collector.samples[s].grad_norm.get(m) for s in steps] for m in layers],
        update_ratio=[[collector.samples[s].update_ratio.get(m) for s in steps] for m in layers],
        dead_fraction={_unit_name(names, m): v for m, (kind, v) in fractions.items()
                       if kind == "relu" and names.module(_owner(m))},
        saturated_fraction={_unit_name(names, m): v for m, (kind, v) in fractions.items()
                            if kind != "relu" and m not in collector.acts.output_modules and names.module(_owner(m))},
        loss_inputs=[LossInputFacts(kind, list(r.steps), list(r.producers), list(r.flags), dict(r.producer_types))
                     for kind, r in collector.acts.loss_inputs.items()],
        label_counts=collector.acts.label_counts(),
        carried=[(step, [_param_name(names, p, collector) for p in params])
                 for step, params in _carried(collector, names)],
        not_optimized=_not_optimized(collector, names) if optimizer_mode else None,
        never_grad=_never_grad(collector, names, watched) if optimizer_mode else None,
        eval_modules=_eval_modules(collector, names) if optimizer_mode else None,
        failure=collector.failure,
    )


def _carried(collector: Collector, names: Names) -> list[tuple[int, list[Any]]]:
    """Without an optimizer a carried-over gradient counts only when the weights moved in between (a manual
    update): several backward calls with no update in between are deliberate accumulation."""
    if collector.mode == "optimizer":
        return list(collector.carried)
    kept = []
    for step, params in collector.carried:
        ratios = collector.samples[step - 1].update_ratio if step - 1 in collector.samples else {}
        moved = [p for p in params if (names.layer_of(p) or (None,))[0] in ratios
                 and ratios[names.layer_of(p)[0]] > 0]
        if moved:
            kept.append((step, moved))
    return kept


def _step_losses(losses: Iterable[tuple[int, int, float]], optimizer_mode: bool) -> list[tuple[int, float]]:
    """One loss per step: the mean over the step's backward calls (gradient accumulation)."""
    per_step: dict[int, list[float]] = defaultdict(list)
    for opt_steps, backwards, value in losses:
        per_step[opt_steps if optimizer_mode else backwards].append(value)
    return [(step, math.fsum(values) / len(values)) for step, values in sorted(per_step.items())]


def _optimizer_params(collector: Collector) -> list[Any]:
    return [p for opt in collector.optimizers.values() for group in opt.param_groups for p in group["params"]]


def _param_name(names: Names, param: Any, collector: Collector) -> str:
    found = names.param_display(param)
    if found is not None:
        return found
    for number, opt in enumerate(collector.optimizers.values()):
        for g, group in enumerate(opt.param_groups):
            for i, p in enumerate(group["params"]):
                if p is param:
                    return f"optimizer {number} ({type(opt).__name__}) param_groups[{g}]['params'][{i}]"
    return "a parameter outside the watched models"


def _group(names: Names, params: Iterable[Any], collector: Collector) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = defaultdict(list)
    for param in params:
        found = names.layer_of(param)
        module = names.display(found[0]) if found else "(no module)"
        grouped[module].append(found[1] if found else _param_name(names, param, collector))
    return dict(grouped)


def _not_optimized(collector: Collector, names: Names) -> Grouped | None:
    optimized = {id(p) for p in _optimizer_params(collector)}
    seen = [entry for key, entry in collector.grad_params.items() if key not in optimized]
    if not seen or not collector.optimizers:
        return None
    return Grouped(_group(names, [p for p, _, _ in seen], collector),
                   min(first for _, first, _ in seen), max(last for _, _, last in seen))


def _never_grad(collector: Collector, names: Names, watched: int) -> Grouped | None:
    params = list({id(p): p for p in _optimizer_params(collector)}.values())
    # a parameter of no watched model is an orphan (the old head of a replaced layer): params-not-updated says why
    cut = [p for p in params if p.requires_grad and id(p) not in collector.got_grad
           and (names.layer_of(p) is not None or not names.root_list)]
    if not cut or watched < 1:
        return None
    return Grouped(_group(names, cut, collector), 0, watched - 1)


def _eval_modules(collector: Collector, names: Names) -> Grouped | None:
    optimized = {id(p) for p in _optimizer_params(collector)}
    calls = {m: c for m, c in collector.acts.mode_calls.items()
             if c.root_eval or any(key in optimized for key in c.own_params)}
    if not calls:
        return None
    modules = {names.display(m): [type(m).__name__] for m in names.sort_layers(calls) if names.module(m)}
    return Grouped(modules, min(c.first for c in calls.values()), max(c.last for c in calls.values()))


def _owner(key: Any) -> Any:
    return key.module if isinstance(key, FunctionalSite) else key


def _unit_name(names: Names, key: Any) -> str:
    """A module's name; for ``F.relu`` inside a forward, the module with the function and its line."""
    if isinstance(key, FunctionalSite):
        return f"{names.display(key.module)} ({key.function}, line {key.line})"
    return names.display(key)
