"""Count FLOPs and MACs at the ATen op level: PyTorch's ``FlopCounterMode`` and registry, plus our formulas.

Every op that runs is tallied (calls, FLOPs, MACs, kind), FLOPs are attributed to modules by PyTorch's
``ModuleTracker`` (backward included) and split by phase: forward, backward (autograd engine running),
optimizer (between global optimizer step hooks).
"""

from __future__ import annotations

import functools
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torchdoctor.count.compiled import user_name
from torchdoctor.count.formulas import CONTRACTION_OPS, extra_formulas
from torchdoctor.count.layers import FailedLayer, ModuleWatch
from torchdoctor.count.ops import OpKind, classify_op

PHASES = ("forward", "backward", "optimizer")


@dataclass(frozen=True)
class OpTally:
    """One op (overload packet, e.g. ``aten.addmm``) summed over its calls."""

    op: str
    calls: int
    flops: int
    macs: int
    kind: OpKind


@dataclass(frozen=True)
class ForwardFailure:
    """The user's model raised while being counted: where, and what it said."""

    layer: FailedLayer | None
    exc_type: str
    message: str
    phase: str
    exception: BaseException | None = field(default=None, compare=False, repr=False)

    @property
    def headline(self) -> str:
        return next((line.strip() for line in self.message.splitlines() if line.strip()), "")


@dataclass(frozen=True)
class ComputeFacts:
    """What one counted run measured."""

    phases: dict[str, dict[str, int]]
    """``{"forward": {"macs": ..., "flops": ...}, ...}`` for the phases that ran."""
    ops: tuple[OpTally, ...]
    module_counts: dict[str, dict[str, int]]
    """Module name (as in ``named_modules``; ``""`` is the model) -> ``{"macs", "flops"}``, children included."""
    output_shapes: dict[int, Any]
    failure: ForwardFailure | None = None

    @property
    def macs(self) -> int:
        return sum(phase["macs"] for phase in self.phases.values())

    @property
    def flops(self) -> int:
        return sum(phase["flops"] for phase in self.phases.values())

    def of_kind(self, *kinds: OpKind) -> list[OpTally]:
        return [tally for tally in self.ops if tally.kind in kinds]


def collect_forward(model: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any],
                    substitutes: Mapping[str, Any] | None = None) -> ComputeFacts:
    """One forward in eval mode under ``no_grad`` (the inference path, fused fast paths included).

    ``substitutes`` replaces parameters and buffers by name for the call (meta or converted copies), so the
    caller's model is never modified; every module's ``training`` flag is restored afterwards.
    """
    import torch

    mode, watch = _counting_mode_class()(), ModuleWatch()
    training = {module: module.training for module in model.modules()}
    failure = None
    try:
        model.eval()
        with watch, mode, torch.no_grad():
            _call(model, args, kwargs, substitutes)
    except Exception as exc:
        failure = _failure(exc, "forward", watch.failed_layer(model))
    finally:
        for module, flag in training.items():
            module.training = flag
    return _facts(mode, model, watch, failure, phases=("forward",))


def collect_training_step(model: Any, inputs: Any, device: str) -> tuple[ComputeFacts, Any]:
    """A real ``run_training_step`` (forward, surrogate loss, backward, SGD step) on ``model``, counted.

    ``model`` is trained in place on ``device`` (the model's own: moving it would count a different run);
    the caller passes a copy it owns.
    """
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

    from torchdoctor.examples import surrogate_loss
    from torchdoctor.step import run_training_step

    mode, watch = _counting_mode_class()(), ModuleWatch()
    handles = [register_optimizer_step_pre_hook(lambda *_: setattr(mode, "in_optimizer", True)),
               register_optimizer_step_post_hook(lambda *_: setattr(mode, "in_optimizer", False))]
    try:
        with watch, mode:
            outcome = run_training_step(model, (inputs, None), loss_fn=surrogate_loss, copy_model=False,
                                        device=device)
    finally:
        for handle in handles:
            handle.remove()
    failure = None
    if outcome.failure is not None:
        step = outcome.failure
        layer = watch.failed_layer(model) if step.phase == "forward" else None
        failure = ForwardFailure(layer, step.exc_type, step.message, step.phase, step.exception)
    return _facts(mode, model, watch, failure, phases=PHASES), outcome


def substitute_tensors(model: Any, *, dtype: Any = None, meta: bool = False) -> dict[str, Any] | None:
    """Parameters and buffers on the meta device and/or in ``dtype``, by name; None when nothing changes."""
    import torch

    named = [*model.named_parameters(), *model.named_buffers()]
    on_meta = all(tensor.is_meta for _, tensor in named)
    if (not meta or on_meta) and (dtype is None or all(t.dtype == dtype or not t.is_floating_point()
                                                       for _, t in named)):
        return None
    substitutes = {}
    for name, tensor in named:
        kind = dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype
        if meta:
            substitutes[name] = torch.empty(tensor.shape, dtype=kind, device="meta")
        else:
            substitutes[name] = tensor.detach().to(kind)
    return substitutes


def _call(model: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any], substitutes: Mapping[str, Any] | None):
    if substitutes is None:
        return model(*args, **kwargs)
    from torch.func import functional_call

    return functional_call(model, dict(substitutes), args, dict(kwargs), tie_weights=True, strict=False)


def _failure(exc: Exception, phase: str, layer: FailedLayer | None) -> ForwardFailure:
    # The frames hold activations (and the model's tensors); keep the message, drop their locals.
    traceback.clear_frames(exc.__traceback__)
    return ForwardFailure(layer, type(exc).__name__, str(exc).strip(), phase, exc)


@functools.cache
def _counting_mode_class() -> type:
    """``FlopCounterMode`` that also tallies every op's calls and splits FLOPs by phase (built on first use,
    so importing this module does not import torch)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    class CountingMode(FlopCounterMode):
        def __init__(self) -> None:
            super().__init__(display=False, custom_mapping=extra_formulas())
            self.calls: dict[Any, int] = {}
            self.phase_flops: dict[str, dict[Any, int]] = {}
            self.in_optimizer = False
            self._graph_task_id = torch._C._current_graph_task_id

        # Overrides FlopCounterMode's per-op hook (torch/utils/flop_counter.py, ``_count_flops``): every op
        # that executes passes here, formula or not, so tallying calls and phases costs a dict update each.
        def _count_flops(self, packet: Any, out: Any, args: Any, kwargs: Any) -> Any:
            self.calls[packet] = self.calls.get(packet, 0) + 1
            formula = self.flop_registry.get(packet)
            if formula is None:
                return out
            flops = formula(*args, **kwargs, out_val=out)
            for parent in set(self.mod_tracker.parents):
                self.flop_counts[parent][packet] += flops
            phase = self.phase_flops.setdefault(self._phase(), {})
            phase[packet] = phase.get(packet, 0) + flops
            return out

        def _phase(self) -> str:
            if self.in_optimizer:
                return "optimizer"
            return "backward" if self._graph_task_id() != -1 else "forward"

    return CountingMode


# --- turning the counter's state into facts ------------------------------------------------------------


def _facts(mode: Any, root: Any, watch: ModuleWatch, failure: ForwardFailure | None,
           phases: tuple[str, ...]) -> ComputeFacts:
    names = {packet: op_name(packet) for packet in mode.calls}
    totals = {phase: {"macs": _macs(mode.phase_flops.get(phase, {}), names),
                      "flops": sum(mode.phase_flops.get(phase, {}).values())} for phase in phases}
    ops = []
    for packet, calls in mode.calls.items():
        counted = packet in mode.flop_registry
        flops = sum(counts.get(packet, 0) for counts in mode.phase_flops.values())
        view, tags = _schema_facts(packet)
        kind = classify_op(names[packet], counted=counted, is_view=view, tags=tags)
        macs = flops // 2 if names[packet] in CONTRACTION_OPS else 0
        ops.append(OpTally(names[packet], calls, flops, macs, kind))
    ops.sort(key=lambda tally: (-tally.flops, -tally.calls, tally.op))
    return ComputeFacts(totals, tuple(ops), _module_counts(mode.flop_counts, root, names),
                        dict(watch.output_shapes), failure)


def _macs(counts: Mapping[Any, int], names: Mapping[Any, str]) -> int:
    return sum(flops // 2 for packet, flops in counts.items() if names.get(packet, op_name(packet)) in CONTRACTION_OPS)


def _module_counts(flop_counts: Mapping[str, Mapping[Any, int]], root: Any,
                   names: Mapping[Any, str]) -> dict[str, dict[str, int]]:
    """ModuleTracker names (``ResNet.layer1.0``) -> ``named_modules`` names (``layer1.0``); a compiled part
    and its wrapper (``Net.body``, ``Net.body._orig_mod``) ran the same ops and share the user's name."""
    root_name = type(root).__name__
    counts = {}
    for tracker_name, per_op in flop_counts.items():
        if tracker_name == "Global":
            continue
        tracker_name = user_name(tracker_name)
        name = "" if tracker_name == root_name else tracker_name.removeprefix(root_name + ".")
        counts[name] = {"macs": _macs(per_op, names), "flops": sum(per_op.values())}
    return counts


def op_name(packet: Any) -> str:
    """``aten.addmm`` for ATen ops, ``mylib.op`` for custom ones, the name of a higher-order op."""
    import torch

    if isinstance(packet, torch._ops.OpOverloadPacket):
        return str(packet)
    name = getattr(packet, "name", None)
    return name() if callable(name) else getattr(packet, "__name__", str(packet))


def _schema_facts(packet: Any) -> tuple[bool, list[str]]:
    """Whether any overload of the op is a view, and the union of their tags (``pointwise``, ...)."""
    overloads = [getattr(packet, name) for name in getattr(packet, "overloads", lambda: [])()]
    is_view = any(getattr(overload, "is_view", False) for overload in overloads)
    tags = {getattr(tag, "name", str(tag)) for overload in overloads for tag in getattr(overload, "tags", ())}
    return is_view, sorted(tags)
