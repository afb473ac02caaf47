"""``nan_hunt()``: watch the user's own training and name the first producer of NaN/inf."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from torchdoctor.nan.checks import HuntFacts, check_hunt
from torchdoctor.nan.counting import BACKWARD
from torchdoctor.nan.patches import Patches
from torchdoctor.nan.records import HuntStopped, NonFinite
from torchdoctor.nan.tensors import INF, NAN
from torchdoctor.nan.updates import UpdateJump
from torchdoctor.nan.watch import Watcher
from torchdoctor.report import Finding, Report, Section, json_float

COMMAND = "nan-hunt"

__all__ = ["COMMAND", "HuntStopped", "NanHunt", "nan_hunt"]


class NanHunt:
    """Context manager: install the watchers on enter, remove them all on exit, then hold ``report``.

    ``model``: watch only this model's calls (default: every outermost module call). ``check_inf``:
    inf counts as well as NaN. ``max_steps``: stop cleanly after that many optimizer steps.
    ``keep_going``: do not stop at the first non-finite value; count the later non-finite steps.
    """

    def __init__(self, model: Any = None, *, check_inf: bool = True, max_steps: int | None = None,
                 keep_going: bool = False) -> None:
        if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1):
            raise ValueError(f"max_steps must be a positive int or None, got {max_steps!r}")
        kinds = (NAN, INF) if check_inf else (NAN,)
        self._watcher = Watcher(model, kinds=kinds, max_steps=max_steps, keep_going=keep_going)
        self._patches: Patches | None = None
        self._facts: HuntFacts | None = None  # frozen on exit, so the report no longer needs the model
        self.check_inf = check_inf
        self.max_steps = max_steps
        self.report: Report | None = None

    @property
    def steps(self) -> int:
        """Steps completed so far: optimizer steps, or backward calls where no optimizer is used."""
        return self._watcher.steps

    @property
    def step_counting(self) -> str:
        """What a step is: "optimizer" (its step() calls) or "backward" (weights updated by hand)."""
        return self._watcher.counting.counting

    @property
    def first_nonfinite(self) -> NonFinite | None:
        return self._watcher.first

    def __enter__(self) -> NanHunt:
        if self._patches is not None:
            raise RuntimeError("a NanHunt can be entered only once")
        self._patches = Patches()
        try:
            install(self._watcher, self._patches)
        except BaseException:
            self._patches.undo()
            raise
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        try:
            self._watcher.close()
        finally:
            if self._patches is not None:
                self._patches.undo()
        self._facts = collect_facts(self._watcher)
        self._watcher.release()  # drop models, recorded calls and loss tensors: the facts are plain values
        self.report = self.build_report()
        return isinstance(exc, HuntStopped)

    def build_report(self, extra_findings: Iterable[Finding] = (), extra_result: Mapping[str, Any] | None = None
                     ) -> Report:
        """The run's report; the runner adds its own findings (script-failed, ...) and result keys."""
        facts = self._facts or collect_facts(self._watcher)
        findings = tuple(check_hunt(facts)) + tuple(extra_findings)
        result = {**result_dict(facts, self.check_inf, self.max_steps), **dict(extra_result or {})}
        section = Section("nan-hunt", "NaN hunt", headline(facts, findings), findings)
        return Report(COMMAND, findings, result, (section,))


def nan_hunt(model: Any = None, **kwargs: Any) -> NanHunt:
    """``with torchdoctor.nan_hunt() as hunt: train()`` then read ``hunt.report``."""
    return NanHunt(model, **kwargs)


def install(watcher: Watcher, patches: Patches) -> None:
    """Global module and optimizer hooks, the backward, DataLoader and GradScaler wrappers."""
    import torch
    from torch.nn.modules import module as nn_module
    from torch.optim import optimizer as optim
    from torch.utils.data import dataloader

    patches.handle(nn_module.register_module_forward_pre_hook(watcher.forward_pre))
    # torch's handle forgets _global_forward_hooks_with_kwargs on remove(): clean that dict ourselves.
    post = nn_module.register_module_forward_hook(watcher.forward_post, with_kwargs=True, always_call=True)
    patches.handle(post, nn_module._global_forward_hooks_with_kwargs)
    patches.handle(optim.register_optimizer_step_pre_hook(watcher.step_pre))
    patches.handle(optim.register_optimizer_step_post_hook(watcher.step_post))
    patches.attribute(torch.autograd, "backward", watcher.wrap_backward)
    patches.attribute(dataloader._BaseDataLoaderIter, "_next_index", watcher.batches.wrap_next_index)
    patches.attribute(dataloader._BaseDataLoaderIter, "__next__", watcher.batches.wrap_next)
    patches.attribute(torch.amp.GradScaler, "update", watcher.wrap_scaler_update)
    patches.attribute(torch.nn.utils, "clip_grad_norm_", watcher.wrap_clip)
    for owner, name in ((optim.Optimizer, "__init__"), (optim.Optimizer, "zero_grad"), (torch.amp.GradScaler, "scale")):
        patches.attribute(owner, name, watcher.counting.wrap_optimizer_use)


def collect_facts(watcher: Watcher) -> HuntFacts:
    """Plain values from the watcher (loss tensors read now, once, not during training)."""
    return HuntFacts(
        first=watcher.first,
        steps=watcher.steps,
        stopped=watcher.stopped,
        later_nonfinite_steps=watcher.later_nonfinite_steps,
        losses=[(step, _scalar(value)) for step, value in watcher.losses],
        first_losses=[(step, _scalar(value)) for step, value in watcher.first_losses],
        step_counting=watcher.counting.counting,
        grad_norms=list(watcher.grad_norms),
        grad_norm_source="clip_grad_norm_" if watcher.clip_seen else "gradients",
        amp_steps=watcher.amp.steps,
        amp_skipped=watcher.amp.skipped,
        amp_trailing_skips=watcher.amp.trailing_skips,
        no_grad_first=watcher.no_grad_first,
        no_grad_count=watcher.no_grad_count,
        models=[f"{type(m).__module__}.{type(m).__qualname__}" for m in watcher.roots.values()],
        updates=_updates(watcher),
    )


def _updates(watcher: Watcher) -> list[UpdateJump]:
    """The optimizer updates before the first non-finite value, read back now (the only read of them)."""
    if watcher.first is None:
        return []
    try:
        return watcher.updates.jumps(watcher.first.step, watcher.locator.param_names())
    except Exception:  # noqa: BLE001 - a parameter gone with its device: the NaN is still reported, just not this
        return []


def result_dict(facts: HuntFacts, check_inf: bool, max_steps: int | None) -> dict[str, Any]:
    return {
        "first_nonfinite": facts.first.to_dict() if facts.first else None,
        "steps": facts.steps,
        "step_counting": facts.step_counting,
        "stopped": facts.stopped,
        "later_nonfinite_steps": facts.later_nonfinite_steps,
        "loss_trajectory": [{"step": s, "loss": json_float(v)} for s, v in facts.losses],
        "grad_norm_trajectory": [{"step": s, "grad_norm": json_float(v)} for s, v in facts.grad_norms],
        "grad_norm_source": facts.grad_norm_source,
        "amp": {"skipped_steps": facts.amp_skipped, "steps": facts.amp_steps},
        "models": list(dict.fromkeys(facts.models)),
        "no_grad_nonfinite": facts.no_grad_first.to_dict() if facts.no_grad_first else None,
        "check_inf": check_inf,
        "max_steps": max_steps,
    }


def headline(facts: HuntFacts, findings: Sequence[Finding] = ()) -> str:
    """The run in a few words; the findings below it say the rest (never repeated word for word)."""
    by_id = {finding.id: finding for finding in findings}
    failed = by_id.get("script-failed")
    if facts.first is not None:
        first = facts.first
        what = "NaN" if first.kind == NAN else "inf"
        where = ", ".join(part for part in (first.op, f"module '{first.module}'" if first.module else None) if part)
        seen = f"first {what} at step {first.step}, in the {first.phase}" + (f" ({where})" if where else "")
        if "update-explosion" in by_id:
            return "an optimizer step threw the weights far away; " + seen
        return ("the run diverged; " + seen) if "divergence" in by_id else seen
    if failed is not None:
        return (f"the script failed with {failed.details.get('exc_type', 'an error')} after {step_count(facts)}, "
                "before any non-finite value")
    ending = " (stopped at max_steps)" if facts.stopped == "max-steps" else ""
    exploded = "; but the loss exploded" if "loss-explosion" in by_id else ""
    return f"no non-finite value in {step_count(facts)}{ending}{exploded}"


def step_count(facts: HuntFacts) -> str:
    """``12 optimizer step(s)``, or, without an optimizer, the backward calls that stood for steps."""
    if facts.step_counting == BACKWARD and facts.steps:
        return f"{facts.steps} step(s) (no optimizer stepped: each backward call counted as a step)"
    return f"{facts.steps} {'optimizer ' if facts.step_counting != BACKWARD else ''}step(s)"


def _scalar(value: Any) -> float:
    try:
        return float(value.float().item())
    except Exception:  # a loss that was no tensor, or is gone with its device
        return math.nan
