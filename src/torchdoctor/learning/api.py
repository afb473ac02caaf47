"""``torchdoctor.watch()``: watch the user's own training and say why it does not learn.

Built on the nan-hunt engine: a ``NanHunt`` (keep-going, so training is never stopped) reports NaN/inf
exactly as ``nan-hunt`` does, and the collector adds its own hooks next to the hunt's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from torchdoctor.codes import section_of
from torchdoctor.learning.collect import Collector
from torchdoctor.learning.facts import WatchFacts
from torchdoctor.learning.gather import gather_facts
from torchdoctor.learning.judge import check_watch
from torchdoctor.learning.names import Names
from torchdoctor.learning.series import result_series
from torchdoctor.nan.hunt import NanHunt
from torchdoctor.nan.patches import Patches
from torchdoctor.report import Finding, Report, Section

COMMAND = "watch"
LOSS_FUNCTIONS = ("cross_entropy", "nll_loss", "binary_cross_entropy_with_logits")
# Each is also a function of torch.nn.functional and of torch, and a Tensor method, in place too (x.relu_(),
# torch.relu_(x), F.relu_(x)): every spelling is watched.
ACTIVATION_FUNCTIONS = ("relu", "sigmoid", "tanh")

__all__ = ["COMMAND", "Watch", "watch"]


class Watch:
    """Context manager: hooks installed on enter, all removed on exit; then ``report`` holds the verdict.

    ``model``: watch only this model (default: every model the run calls). ``steps``: stop watching
    (not the training) after that many steps. ``every``: sample one step in this many; statistics are
    read back to the host at most once per sampled step. Entering and exiting may happen in different
    callbacks (``w.__enter__()`` ... ``w.__exit__(None, None, None)``).
    """

    def __init__(self, model: Any = None, *, steps: int | None = None, every: int = 10) -> None:
        _check_positive("steps", steps, allow_none=True)
        _check_positive("every", every, allow_none=False)
        self._hunt = NanHunt(model, keep_going=True)
        watcher = self._hunt._watcher  # its roots: the models the run calls, found by the hunt's hooks
        # names start from the outermost model holding what is called (the LightningModule, not its self.body)
        roots = (lambda: [model]) if model is not None else (lambda: list(watcher.roots.values()))
        self._names = Names(roots, place=watcher.place_of)
        self._collector = Collector(self._names, every=every, max_steps=steps, on_done=self._stop_hunt)
        self._patches: Patches | None = None
        self.facts: WatchFacts | None = None
        self.every = every
        self.max_steps = steps
        self.report: Report | None = None

    @property
    def steps(self) -> int:
        """Steps seen so far (optimizer steps; backward calls when the run has no optimizer)."""
        collector = self._collector
        return collector.opt_steps if collector.mode == "optimizer" else collector.backwards

    def __enter__(self) -> Watch:
        if self._patches is not None:
            raise RuntimeError("a Watch can be entered only once")
        self._hunt.__enter__()
        self._patches = Patches()
        try:
            install(self._collector, self._patches)
        except BaseException:
            self._patches.undo()
            self._hunt.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        try:
            self._collector.close()
        finally:
            if self._patches is not None:
                self._patches.undo()
            handled = self._hunt.__exit__(exc_type, exc, tb)
        self.facts = gather_facts(self._collector, self._names)
        self._release()
        self.report = self.build_report()
        return bool(handled)

    def build_report(self, extra_findings: Iterable[Finding] = (), extra_result: Mapping[str, Any] | None = None
                     ) -> Report:
        """The run's report; the script runner adds its own findings (script-failed, ...) and result keys."""
        facts = self.facts or gather_facts(self._collector, self._names)
        hunt = self._hunt.report or self._hunt.build_report()
        first = hunt.result.get("first_nonfinite")
        findings = (tuple(hunt.findings) + tuple(check_watch(facts, first["step"] if first else None))
                    + tuple(extra_findings))
        result = {
            "script": None, "args": [], "exit_code": None, "script_failed": False,
            "steps_watched": facts.steps_watched,
            "step_counting": facts.step_counting,
            "first_nonfinite": hunt.result.get("first_nonfinite"),
            "series": result_series(facts),
            **dict(extra_result or {}),
        }
        sections_ = sections(facts, findings, hunt.sections[0].headline, first["step"] if first else None)
        return Report(COMMAND, findings, result, sections_)

    def _stop_hunt(self) -> None:
        """``steps`` reached: the hunt stops watching too (its callbacks return early once ``stopped``)."""
        self._hunt._watcher.stopped = self._hunt._watcher.stopped or "watch-steps"

    def _release(self) -> None:
        """Forget the user's models, optimizers and tensors: the facts are plain values now."""
        self._names = Names(lambda: [])
        self._collector = Collector(self._names, every=self.every, max_steps=self.max_steps)
        self._collector.mode = self.facts.step_counting if self.facts else "optimizer"


def watch(model: Any = None, *, steps: int | None = None, every: int = 10) -> Watch:
    """``with torchdoctor.watch() as w: train()`` then read ``w.report``."""
    return Watch(model, steps=steps, every=every)


def install(collector: Collector, patches: Patches) -> None:
    """Global forward and optimizer hooks, and wrappers of backward, the three loss functions and the
    activation functions (``F.relu``, ``torch.relu``, ``Tensor.relu``, in place too, and the same for sigmoid
    and tanh)."""
    import torch
    from torch.nn import functional
    from torch.nn.modules import module as nn_module
    from torch.optim import optimizer as optim

    patches.handle(nn_module.register_module_forward_hook(collector.forward_post))
    patches.handle(optim.register_optimizer_step_pre_hook(collector.step_pre))
    patches.handle(optim.register_optimizer_step_post_hook(collector.step_post))
    patches.attribute(torch.autograd, "backward", collector.wrap_backward)
    for name in LOSS_FUNCTIONS:
        patches.attribute(functional, name, collector.wrap_loss(name))
    builtins = _torchscript_builtins()  # built from the originals before any is wrapped
    for kind in ACTIVATION_FUNCTIONS:
        for name in (kind, f"{kind}_"):
            for owner, prefix in ((functional, "F"), (torch, "torch"), (torch.Tensor, "Tensor")):
                if hasattr(owner, name):  # F has relu_, not sigmoid_ or tanh_
                    patches.attribute(owner, name, collector.wrap_activation(kind, f"{prefix}.{name}"))
                    _scripted_as(patches, builtins, getattr(owner, name), f"aten::{name}")


def _torchscript_builtins() -> dict[int, str]:
    """TorchScript's table of functions it compiles as ATen ops, keyed by id; built on its first use, from
    whatever ``torch.relu`` is then: built during the watch, it would miss the originals for good."""
    from torch.jit import _builtins

    return _builtins._get_builtin_table()


def _scripted_as(patches: Patches, builtins: dict[int, str], wrapper: Any, op: str) -> None:
    """A model scripted during the watch (``torch.jit.script`` after training) compiles our wrapper as the op
    it wraps instead of failing on its ``*args``; the entry goes when the watch ends."""
    builtins[id(wrapper)] = op
    patches.handle(_Removal(lambda: builtins.pop(id(wrapper), None)))


@dataclass(frozen=True)
class _Removal:
    """What ``Patches.handle`` takes back: anything with ``remove()``."""

    remove: Callable[[], Any]


SECTIONS = (("run", "Run and NaN/inf"), ("bugs", "Program bugs"), ("dynamics", "Training dynamics"))


def sections(facts: WatchFacts, findings: tuple[Finding, ...], run_headline: str,
             first_nonfinite_step: int | None = None) -> tuple[Section, ...]:
    """The three groups of the human report, each finding in the one the registry names for ``watch``."""
    placed = {name: tuple(f for f in findings if section_of(f.id, COMMAND) == name) for name, _ in SECTIONS}
    bugs = len(placed["bugs"])
    headlines = {
        "run": run_headline,
        "bugs": f"{bugs} program bug(s) found" if bugs else "no program bug found",
        "dynamics": headline(facts, placed["dynamics"], first_nonfinite_step),
    }
    return tuple(Section(name, title, headlines[name], placed[name]) for name, title in SECTIONS)


# Fewer steps than this before the first NaN/inf leave the loss and update-ratio judges nothing to go on.
FEW_STEPS_TO_JUDGE = 20


def headline(facts: WatchFacts, findings: Iterable[Finding], first_nonfinite_step: int | None = None) -> str:
    unit = "optimizer step(s)" if facts.step_counting == "optimizer" else "backward call(s) (no optimizer)"
    problems = sum(1 for f in findings if f.severity.value != "info")
    verdict = f"{problems} warning(s)" if problems else "no sign of a run that does not learn"
    if first_nonfinite_step is not None:  # after a NaN every statistic is NaN: only the steps before it count
        judged = min(first_nonfinite_step, facts.steps_watched)
        if not problems and judged < FEW_STEPS_TO_JUDGE:
            verdict = (f"too few to judge how it learns ({judged} before the first NaN/inf at step "
                       f"{first_nonfinite_step})")
        else:
            verdict += f" in the {judged} step(s) before the first NaN/inf (step {first_nonfinite_step})"
    if facts.failure:
        verdict += f" (torchdoctor stopped watching early: {facts.failure})"
    return f"watched {facts.steps_watched} {unit}: {verdict}"


def _check_positive(name: str, value: Any, *, allow_none: bool) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int{' or None' if allow_none else ''}, got {value!r}")
