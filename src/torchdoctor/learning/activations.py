"""What a sampled training forward shows: dead ReLU units, saturated tanh/sigmoid units, loss inputs, eval mode.

Everything stays a tensor until the collector reads its pending values back (once per sampled step) or
until the end of the run (the per-unit masks).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

from torchdoctor.learning import stats

LOSS_KINDS = ("cross_entropy", "nll_loss", "binary_cross_entropy_with_logits")


@dataclass
class LossInput:
    """The sampled calls of one loss function: per call the step, the input's producer and its shape flag."""

    steps: list[int] = field(default_factory=list)
    producers: list[str | None] = field(default_factory=list)
    flags: list[bool] = field(default_factory=list)
    producer_types: dict[str, str] = field(default_factory=dict)  # producer name -> its class ('3' -> 'Softmax')


@dataclass(frozen=True)
class FunctionalSite:
    """``F.relu(x)``, ``torch.tanh(x)``, ``x.sigmoid()`` ... called in a module's method (no module of its own to
    hook): its units are judged per call line."""

    module: Any  # the module whose method called it (compared by identity, as modules are)
    function: str  # as the user spells it: "F.relu", "torch.tanh", "Tensor.sigmoid"
    line: int


@dataclass
class ModeCall:
    """A train/eval-dependent module that ran in eval mode inside a training forward."""

    first: int
    last: int
    root_eval: bool
    own_params: tuple[int, ...]


class Activations:
    """Per-module unit masks and loss-input checks, fed by the collector's forward hook and loss wrappers."""

    def __init__(self) -> None:
        self.masks: dict[Any, list[Any]] = {}  # module -> [kind, units ever alive/free (bool tensor)]
        self.broken: set[Any] = set()  # modules reused at different widths: no per-unit meaning
        self.output_modules: set[Any] = set()  # produce the model's output: judged by the loss, not here
        self.producers: dict[int, tuple[Any, Any]] = {}  # id(tensor) -> (tensor, innermost module)
        self.site_outputs: dict[int, tuple[Any, FunctionalSite]] = {}  # id(tensor) -> (tensor, its call site)
        self.model_outputs: dict[int, Any] = {}  # id(tensor) -> a tensor a model returned this step
        self.loss_inputs: dict[str, LossInput] = {}
        self.labels: list[Any] = []  # [classes, counts tensor]
        self.mode_calls: dict[Any, ModeCall] = {}
        self.eval_seen: dict[Any, Any] = {}  # this step's eval-mode modules -> their model

    def unit_stats(self, module: Any, kind: str, output: Any) -> None:
        if module in self.broken:
            return
        units = stats.active_units(output) if kind == "relu" else stats.free_units(output, kind)
        entry = self.masks.get(module)
        if entry is None:
            self.masks[module] = [kind, units]
        elif entry[1].shape != units.shape:
            self.broken.add(module)
            del self.masks[module]
        else:
            entry[1] = entry[1] | units

    def produced(self, module: Any, output: Any) -> None:
        # setdefault: the innermost module wins (a Sequential returns its last child's very tensor)
        self.producers.setdefault(id(output), (output, module))

    def functional(self, site: FunctionalSite, kind: str, output: Any) -> None:
        """A sampled call of a relu/sigmoid/tanh function: its units, and its output in case the model returns it."""
        self.unit_stats(site, kind, output)
        self.site_outputs[id(output)] = (output, site)

    def model_output(self, output: Any) -> None:
        self.model_outputs[id(output)] = output
        for found in (self.producers.get(id(output)), self.site_outputs.get(id(output))):
            if found is not None and found[0] is output:
                self.output_modules.add(found[1])

    def is_model_output(self, tensor: Any) -> bool:
        """True for a tensor a model returned this step (``torch.sigmoid(model(x))`` in a training_step)."""
        return self.model_outputs.get(id(tensor)) is tensor

    def producer(self, tensor: Any) -> Any | None:
        found = self.producers.get(id(tensor))
        return found[1] if found is not None and found[0] is tensor else None

    def eval_mode(self, module: Any, root: Any) -> None:
        """Noted now, judged at the optimizer step: a forward with grad in eval mode may be an evaluation."""
        self.eval_seen[module] = root

    def commit_eval_mode(self, step: int) -> None:
        """At the optimizer step: the modules that ran in eval mode this step and still are, count."""
        for module, root in self.eval_seen.items():
            if module.training:
                continue  # evaluated (with grad) and then switched back with train(): fine
            call = self.mode_calls.get(module)
            if call is None:
                own = tuple(id(p) for p in module.parameters(recurse=False) if p.requires_grad)
                self.mode_calls[module] = ModeCall(step, step, not root.training, own)
            else:
                call.last = step
                call.root_eval = call.root_eval or not root.training
        self.eval_seen.clear()

    def loss_flag(self, kind: str, scores: Any, target: Any) -> Any | None:
        """The 0-d bool tensor for this call (None when the input cannot be judged); counts integer labels."""
        with contextlib.suppress(Exception):  # an odd input is the loss's own business to reject
            if kind == "binary_cross_entropy_with_logits":
                # small raw logits can all lie in (0, 1) too: only a sigmoid's own output counts
                return stats.is_in_unit_interval(scores) & stats.computed_by(scores, "SigmoidBackward0")
            self._count_labels(scores, target)
            if kind == "cross_entropy":
                return stats.is_probabilities(scores)
            return stats.is_log_probabilities(scores)
        return None

    def _count_labels(self, scores: Any, target: Any) -> None:
        classes = scores.shape[stats.class_dim(scores)]
        counts = stats.label_counts(target, classes) if hasattr(target, "dtype") else None
        if counts is None:
            return
        if not self.labels:
            self.labels = [classes, counts]
        elif self.labels[0] == classes:
            self.labels[1] = self.labels[1] + counts.to(self.labels[1].device)

    def end_step(self) -> None:
        self.producers.clear()
        self.site_outputs.clear()
        self.model_outputs.clear()

    def forget_step(self) -> None:
        self.end_step()
        self.eval_seen.clear()

    def fractions(self) -> dict[Any, tuple[str, float]]:
        """module -> (kind, share of units never alive / never free): one read-back for all modules."""
        import torch

        modules = list(self.masks)
        if not modules:
            return {}
        shares = [1 - self.masks[m][1].float().mean().to(self.masks[modules[0]][1].device) for m in modules]
        values = torch.stack(shares).tolist()
        return {m: (self.masks[m][0], v) for m, v in zip(modules, values, strict=False)}

    def label_counts(self) -> list[int] | None:
        return self.labels[1].tolist() if self.labels else None
