"""The facts of a watched run as plain values: what the judges read and what ``result.series`` shows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

Row = Sequence[float | None]


@dataclass(frozen=True)
class LossInputFacts:
    """The sampled calls of one loss function (``cross_entropy``, ``nll_loss``, ...)."""

    kind: str
    steps: Sequence[int]
    producers: Sequence[str | None]
    flags: Sequence[bool]  # per call: the input had the shape of what this loss must NOT get (or must get)
    producer_types: Mapping[str, str] = field(default_factory=dict)  # '3' -> 'Softmax': names alone can be indices


@dataclass(frozen=True)
class Grouped:
    """Parameters of some modules with the steps they were seen at: ``{module: [parameter names]}``."""

    modules: Mapping[str, Sequence[str]]
    first: int
    last: int


@dataclass(frozen=True)
class WatchFacts:
    """Everything the judges need; ``layers`` in model order, ``grad_norm``/``update_ratio`` one row each."""

    steps_watched: int = 0
    step_counting: str = "optimizer"
    optimizers: int = 0
    losses: Sequence[tuple[int, float]] = ()  # every step's loss (the mean over its backward calls)
    sample_steps: Sequence[int] = ()
    lrs: Row = ()
    layers: Sequence[str] = ()
    layer_kinds: Sequence[str] = ()  # the layers' class names (Embedding layers are left out of depth ratios)
    layer_sizes: Sequence[int] = ()  # parameters per layer, to compare gradient RMS rather than norms
    grad_norm: Sequence[Row] = ()
    update_ratio: Sequence[Row] = ()
    dead_fraction: Mapping[str, float] = field(default_factory=dict)
    saturated_fraction: Mapping[str, float] = field(default_factory=dict)
    loss_inputs: Sequence[LossInputFacts] = ()
    label_counts: Sequence[int] | None = None
    carried: Sequence[tuple[int, Sequence[str]]] = ()  # (step, parameters whose gradient was carried over)
    not_optimized: Grouped | None = None
    never_grad: Grouped | None = None
    eval_modules: Grouped | None = None
    failure: str | None = None  # why watching stopped early (a failure of torchdoctor's, not of the training)
