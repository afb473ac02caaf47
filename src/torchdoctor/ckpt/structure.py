"""Where the weights live in a checkpoint tree: state dicts, training state, metadata."""

from __future__ import annotations

import enum
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from torchdoctor.codes import make_finding
from torchdoctor.report import Finding

KeyPath = tuple[str | int, ...]

# Names under which training code stores the weights, best first: the model before its EMA
# copy, and the teacher (what DINO-style self-distillation evaluates) before the student.
WEIGHT_KEYS = ("state_dict", "model", "model_state_dict", "net", "network", "weights", "params", "module",
               "ema", "model_ema", "state_dict_ema", "ema_state_dict", "teacher", "student")

CONFIG_KEYS = frozenset({"args", "opt", "config", "cfg", "hparams", "hyper_parameters", "options", "settings"})
# YOLOv5 stores its argparse options as checkpoint["opt"]: that name means optimizer only when
# the value holds tensors.
AMBIGUOUS_NAMES = frozenset({"opt"})

MAX_DEPTH = 16
MAX_STRING = 200
MAX_PLAIN_ITEMS = 100


class TrainingStateKind(str, enum.Enum):
    """What kind of training state a top-level entry holds."""

    OPTIMIZER = "optimizer"
    SCHEDULER = "scheduler"
    SCALER = "scaler"

    @property
    def label(self) -> str:
        return {"optimizer": "optimizer", "scheduler": "LR-scheduler", "scaler": "GradScaler"}[self.value]


TRAINING_STATE_NAMES: Mapping[str, TrainingStateKind] = {
    **dict.fromkeys(("optimizer", "optimizers", "optimizer_states", "optimizer_state_dict", "optim", "opt"),
                    TrainingStateKind.OPTIMIZER),
    **dict.fromkeys(("lr_scheduler", "lr_schedulers", "scheduler", "schedulers", "scheduler_state_dict"),
                    TrainingStateKind.SCHEDULER),
    **dict.fromkeys(("scaler", "grad_scaler", "amp", "amp_scaler"), TrainingStateKind.SCALER),
}


class WeightsKind(str, enum.Enum):
    """Whether the weights are the whole checkpoint or nested inside it."""

    PLAIN = "plain"
    WRAPPED = "wrapped"


@dataclass(frozen=True)
class StateDictLocation:
    """A mapping in the checkpoint tree that looks like a state dict."""

    path: KeyPath
    """Keys from the top of the tree down to the mapping; ``()`` for the top level."""
    num_tensors: int
    num_elements: int
    """Sum of the tensors' element counts: what "largest" means when choosing the weights."""
    training_state: bool = False
    """True when it sits inside optimizer / scheduler / scaler state (e.g. Adam's per-parameter dicts)."""


@dataclass(frozen=True)
class WeightsLocation:
    """The state dict chosen as the model's weights, and the others beside it."""

    path: KeyPath
    state_dict: Mapping[str, Any] = field(repr=False, compare=False)
    kind: WeightsKind
    framework: str | None = None
    """``"lightning"`` for a PyTorch Lightning checkpoint, else None."""
    alternatives: tuple[StateDictLocation, ...] = ()
    """Other state dicts that could be weights too (e.g. ``ema`` beside ``model``)."""
    num_tensors: int = 0


def is_tensor_like(value: Any) -> bool:
    """True for a torch.Tensor, numpy array or a reader's record: ``.shape`` of ints and ``.dtype``."""
    if isinstance(value, type) or not hasattr(value, "dtype"):
        return False
    shape = getattr(value, "shape", None)
    try:
        return shape is not None and all(isinstance(dim, int) for dim in shape)
    except TypeError:
        return False


def dtype_name(value: Any) -> str:
    """``torch.float32`` (or a tensor of it, or ``"torch.float32"``) → ``"float32"``; a name stays."""
    if is_tensor_like(value):
        value = value.dtype
    return str(value).removeprefix("torch.")


def shape_of(value: Any) -> tuple[int, ...]:
    return tuple(int(dim) for dim in value.shape)


def format_path(path: KeyPath) -> str:
    """``("state_dict",)`` → ``checkpoint['state_dict']`` (the Python that reaches it)."""
    return "checkpoint" + "".join(f"[{key!r}]" for key in path)


def path_location(path: KeyPath) -> str:
    """``("model", "state_dict")`` → ``"model.state_dict"``, a finding's location."""
    return ".".join(str(key) for key in path)


def find_state_dicts(tree: Any, *, include_training_state: bool = False) -> list[StateDictLocation]:
    """Every mapping in the tree whose keys are strings and whose values are mostly tensors.

    Optimizer, scheduler and scaler state is skipped unless asked for: Adam's per-parameter
    ``{"step", "exp_avg", "exp_avg_sq"}`` dicts look exactly like small state dicts.
    """
    found = _walk(tree, (), set(), in_training=False)
    return [loc for loc in found if include_training_state or not loc.training_state]


def _walk(node: Any, path: KeyPath, seen: set[int], in_training: bool) -> Iterator[StateDictLocation]:
    if not isinstance(node, Mapping | list | tuple) or id(node) in seen or len(path) > MAX_DEPTH:
        return
    seen.add(id(node))  # a tree built by unpickling can share or even cycle containers
    name = path[-1] if path and isinstance(path[-1], str) else None
    in_training = in_training or training_state_kind(name, node) is not None
    if isinstance(node, Mapping) and _looks_like_state_dict(node):
        tensors = [value for value in node.values() if is_tensor_like(value)]
        yield StateDictLocation(path, len(tensors), sum(math.prod(shape_of(t)) for t in tensors), in_training)
        return
    items = node.items() if isinstance(node, Mapping) else enumerate(node)
    for key, child in items:
        yield from _walk(child, (*path, key), seen, in_training)


def _looks_like_state_dict(mapping: Mapping[Any, Any]) -> bool:
    if not mapping or not all(isinstance(key, str) for key in mapping):
        return False
    return 2 * sum(is_tensor_like(value) for value in mapping.values()) > len(mapping)


def training_state_kind(name: str | None, value: Any) -> TrainingStateKind | None:
    """Optimizer / scheduler / scaler state, judged by its content, then by the key it is stored under."""
    if not isinstance(value, Mapping | list | tuple) or not value:
        return None  # an empty list (Lightning without schedulers) or a string option holds no state
    by_content = _kind_by_content(value)
    if by_content is not None or not isinstance(name, str):
        return by_content
    if name.lower() in AMBIGUOUS_NAMES and not _holds_tensors(value, MAX_DEPTH):
        return None
    return TRAINING_STATE_NAMES.get(name.lower())


def _holds_tensors(value: Any, depth: int) -> bool:
    if is_tensor_like(value):
        return True
    if depth <= 0 or not isinstance(value, Mapping | list | tuple):
        return False
    children = value.values() if isinstance(value, Mapping) else value
    return any(_holds_tensors(child, depth - 1) for child in children)


def _kind_by_content(value: Any) -> TrainingStateKind | None:
    if isinstance(value, list | tuple):
        return _kind_by_content(value[0]) if value else None
    if not isinstance(value, Mapping):
        return None
    if "state" in value and "param_groups" in value:
        return TrainingStateKind.OPTIMIZER
    if "last_epoch" in value and ("base_lrs" in value or "_step_count" in value):
        return TrainingStateKind.SCHEDULER
    if "scale" in value and ("growth_factor" in value or "_growth_tracker" in value):
        return TrainingStateKind.SCALER
    return None


def state_file_summary(tree: Any) -> str | None:
    """What a file that is itself training state holds (``torch.save(optimizer.state_dict())``, accelerate's
    optimizer.bin and scheduler.bin), in words; None for anything else."""
    kind = _kind_by_content(tree) if isinstance(tree, Mapping) else None
    if kind is TrainingStateKind.OPTIMIZER:
        groups = tree["param_groups"] if isinstance(tree["param_groups"], list) else []
        return (f"an optimizer state dict: state for {len(tree['state'])} of "
                f"{sum(len(g.get('params', ())) for g in groups if isinstance(g, Mapping))} parameters, "
                f"{len(groups)} param group(s), for optimizer.load_state_dict")
    if kind is not None:
        return f"{'an' if kind.label[0] in 'ALS' else 'a'} {kind.label} state dict"  # an LR-, a GradScaler
    return None


def training_state_kinds(tree: Any) -> dict[str, TrainingStateKind]:
    """Top-level keys holding training state, with what each holds."""
    if not isinstance(tree, Mapping):
        return {}
    kinds = {key: training_state_kind(key, value) for key, value in tree.items() if isinstance(key, str)}
    return {key: kind for key, kind in kinds.items() if kind is not None}


def training_state_keys(tree: Any) -> list[str]:
    """Top-level keys holding optimizer, LR-scheduler or GradScaler state."""
    return list(training_state_kinds(tree))


def detect_framework(tree: Any) -> str | None:
    """``"lightning"`` for a PyTorch Lightning checkpoint (its weights are in ``state_dict``)."""
    if not isinstance(tree, Mapping) or "state_dict" not in tree:
        return None
    if "pytorch-lightning_version" in tree:
        return "lightning"
    # Older or stripped Lightning files may lack the version key; these names are Lightning's own.
    if "global_step" in tree and any(key in tree for key in ("optimizer_states", "callbacks", "loops")):
        return "lightning"
    return None


def locate_weights(tree: Any) -> WeightsLocation | None:
    """The state dict holding the model's weights; None when the tree holds none."""
    found = find_state_dicts(tree)
    if not found:
        return None
    best = min(found, key=_rank)
    kind = WeightsKind.PLAIN if best.path == () else WeightsKind.WRAPPED
    return WeightsLocation(path=best.path, state_dict=_get(tree, best.path), kind=kind,
                           framework=detect_framework(tree),
                           alternatives=tuple(loc for loc in found if loc is not best),
                           num_tensors=best.num_tensors)


def _rank(location: StateDictLocation) -> tuple[int, int, int, int]:
    names = [key.lower() for key in location.path if isinstance(key, str)]
    known = min((WEIGHT_KEYS.index(name) for name in names if name in WEIGHT_KEYS), default=len(WEIGHT_KEYS))
    return known, -location.num_elements, -location.num_tensors, len(location.path)


def _get(tree: Any, path: KeyPath) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def metadata_of(tree: Any) -> dict[str, Any]:
    """Top-level scalars and strings (epoch, step, versions); configs as plain data or their type name."""
    if not isinstance(tree, Mapping):
        return {}
    metadata = {}
    # In a plain state dict, 0-d tensors are buffers (num_batches_tracked), not facts about the run.
    weights = _looks_like_state_dict(tree)
    for key, value in tree.items():
        if not isinstance(key, str) or (weights and is_tensor_like(value)) or training_state_kind(key, value):
            continue
        if _is_scalar(value):
            metadata[key] = _scalar(value)
        elif key.lower() in CONFIG_KEYS:
            plain = _to_plain(value, [MAX_PLAIN_ITEMS])
            metadata[key] = plain if plain is not _NOT_PLAIN else type(value).__name__
    return metadata


def _is_scalar(value: Any) -> bool:
    if value is None or isinstance(value, bool | int | float | str):
        return True
    # best_acc is often saved as a 0-d tensor
    return is_tensor_like(value) and shape_of(value) == () and callable(getattr(value, "item", None))


def _scalar(value: Any) -> Any:
    if is_tensor_like(value):
        return value.item()
    if isinstance(value, str) and len(value) > MAX_STRING:
        return value[:MAX_STRING] + "…"
    return value


_NOT_PLAIN = object()


def _to_plain(value: Any, budget: list[int]) -> Any:
    """A JSON-safe copy of small nested dicts/lists of scalars, else ``_NOT_PLAIN``."""
    budget[0] -= 1
    if budget[0] < 0:
        return _NOT_PLAIN
    if value is None or isinstance(value, bool | int | float | str):
        return _scalar(value)
    if isinstance(value, list | tuple):
        items = [_to_plain(item, budget) for item in value]
        return _NOT_PLAIN if any(item is _NOT_PLAIN for item in items) else items
    if isinstance(value, Mapping) and all(isinstance(key, str) for key in value):
        plain = {key: _to_plain(item, budget) for key, item in value.items()}
        return _NOT_PLAIN if any(item is _NOT_PLAIN for item in plain.values()) else plain
    return _NOT_PLAIN


def check_structure(tree: Any) -> list[Finding]:
    """``nested-state-dict`` when the weights are not at the top level; ``training-state-present``."""
    findings = []
    location = locate_weights(tree)
    if location is not None and location.kind is WeightsKind.WRAPPED:
        findings.append(_nested_finding(location))
    kinds = training_state_kinds(tree)
    if kinds:
        findings.append(_training_state_finding(kinds))
    return findings


FRAMEWORK_NAMES = {"lightning": "Lightning"}


def _nested_finding(location: WeightsLocation) -> Finding:
    where = format_path(location.path)
    framework = f" ({FRAMEWORK_NAMES[location.framework]})" if location.framework else ""
    others = [format_path(alt.path) for alt in location.alternatives]
    also = f"; other state dicts: {', '.join(others)}" if others else ""
    return make_finding(
        "nested-state-dict",
        f"The weights are in {where}{framework}, not at the top level{also}",
        fix=f"torchdoctor ckpt fix PATH  (unwraps to a plain state dict), or model.load_state_dict({where})",
        location=path_location(location.path),
        details={"path": list(location.path), "alternatives": [list(alt.path) for alt in location.alternatives],
                 "framework": location.framework, "tensors": location.num_tensors},
    )


def _training_state_finding(kinds: Mapping[str, TrainingStateKind]) -> Finding:
    labels = list(dict.fromkeys(kind.label for kind in kinds.values()))
    what = labels[0] if len(labels) == 1 else ", ".join(labels[:-1]) + " and " + labels[-1]
    return make_finding(
        "training-state-present",
        f"{what[0].upper()}{what[1:]} state is stored beside the weights ({', '.join(kinds)})",
        details={"keys": list(kinds), "kinds": {key: kind.value for key, kind in kinds.items()}},
    )
