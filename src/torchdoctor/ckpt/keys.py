"""Key prefixes of state dicts (DataParallel, torch.compile, wrappers) and matching keys to a model."""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from torchdoctor.ckpt.structure import dtype_name, is_tensor_like, shape_of
from torchdoctor.codes import make_finding
from torchdoctor.report import Finding, Severity

MODULE_PREFIX = "module."  # nn.DataParallel / DistributedDataParallel keep the model as .module
COMPILE_PREFIX = "_orig_mod."  # torch.compile's OptimizedModule keeps the model as ._orig_mod
WRAPPER_PREFIXES = (MODULE_PREFIX, COMPILE_PREFIX)
WRAPPER_ORIGINS = {MODULE_PREFIX: "saved from nn.DataParallel or DDP", COMPILE_PREFIX: "saved from torch.compile"}

# Where a non-wrapper prefix usually comes from, to say it in the message.
PREFIX_HINTS = {
    "model.": "Lightning's LightningModule attribute",
    "backbone.": "a detector's or segmenter's backbone",
    "encoder.": "an encoder inside a larger model",
    "net.": "a training wrapper's attribute",
    "network.": "a training wrapper's attribute",
    "student.": "self-distillation",
    "teacher.": "self-distillation",
    MODULE_PREFIX: "nn.DataParallel or DDP",
    COMPILE_PREFIX: "torch.compile",
}

SHOWN_KEYS = 5
PREFIX_CANDIDATES = 8
NUM_BATCHES_TRACKED = "num_batches_tracked"

KeysOrMapping = TypeVar("KeysOrMapping", Mapping[str, Any], Sequence[str])


def detect_prefixes(keys: Iterable[str]) -> list[str]:
    """Wrapper prefixes shared by every key, outermost first: ``module._orig_mod.x`` → both."""
    keys = list(keys)
    prefixes: list[str] = []
    while keys:
        prefix = next((p for p in WRAPPER_PREFIXES if all(key.startswith(p) for key in keys)), None)
        if prefix is None:
            break
        prefixes.append(prefix)
        keys = [key[len(prefix):] for key in keys]
    return prefixes


def find_infixes(keys: Iterable[str], infix: str = COMPILE_PREFIX) -> list[str]:
    """Module paths at which ``infix`` occurs (``encoder._orig_mod.w`` → ``"encoder"``; ``""`` = top level).

    A submodule compiled on its own (``model.encoder = torch.compile(model.encoder)``) puts
    ``_orig_mod.`` inside the names of its keys only.
    """
    owners: dict[str, None] = {}
    stem = infix.rstrip(".")
    for key in keys:
        parts = key.split(".")
        for index, part in enumerate(parts[:-1]):
            if part == stem:
                owners.setdefault(".".join(parts[:index]))
    return list(owners)


def strip_prefixes(keys_or_mapping: KeysOrMapping, prefixes: Sequence[str], *,
                   infixes: Sequence[str] = (COMPILE_PREFIX,)) -> KeysOrMapping:
    """Remove leading ``prefixes`` in order and every ``infixes`` component; same type back.

    A mapping keeps its values, and its ``_metadata`` (module versions that ``load_state_dict``
    reads) is renamed alongside. Raises ``ValueError`` when two keys would become one.
    """
    def rename(key: str) -> str:
        return _strip_key(key, prefixes, infixes)

    if isinstance(keys_or_mapping, Mapping):
        return _rename_mapping(keys_or_mapping, rename, lambda path: _rename_module_path(path, rename))
    renamed = [rename(key) for key in keys_or_mapping]
    _check_unique(list(keys_or_mapping), renamed)
    return tuple(renamed) if isinstance(keys_or_mapping, tuple) else renamed  # type: ignore[return-value]


def _strip_key(key: str, prefixes: Sequence[str], infixes: Sequence[str]) -> str:
    for prefix in prefixes:
        key = key.removeprefix(prefix)
    stems = {infix.rstrip(".") for infix in infixes}
    parts = key.split(".")
    return ".".join([part for part in parts[:-1] if part not in stems] + parts[-1:])


def _rename_module_path(path: str, rename: Callable[[str], str]) -> str:
    # "module.0" → "0": rename it as the key "module.0." would be, then drop the dot again
    return rename(path + ".")[:-1] if path else path


def _check_unique(old: Sequence[str], new: Sequence[str]) -> None:
    sources: dict[str, list[str]] = {}
    for before, after in zip(old, new, strict=True):
        sources.setdefault(after, []).append(before)
    clashes = {after: befores for after, befores in sources.items() if len(befores) > 1}
    if clashes:
        described = "; ".join(f"{' and '.join(map(repr, b))} would both become {a!r}" for a, b in clashes.items())
        raise ValueError(f"Renaming keys would merge different tensors: {described}")


def _rename_mapping(mapping: Mapping[str, Any], rename: Callable[[str], str],
                    rename_module: Callable[[str], str], drop: frozenset[str] = frozenset()) -> Mapping[str, Any]:
    kept = [key for key in mapping if key not in drop]
    renamed = [rename(key) for key in kept]
    _check_unique(kept, renamed)
    metadata = getattr(mapping, "_metadata", None)
    result: dict[str, Any] = OrderedDict() if isinstance(mapping, OrderedDict) or metadata is not None else {}
    result.update((new, mapping[old]) for old, new in zip(kept, renamed, strict=True))
    if metadata is not None:
        # Later entries win: DataParallel's own root "" gives way to the inner model's root.
        result._metadata = OrderedDict(  # type: ignore[attr-defined]
            (rename_module(path), value) for path, value in metadata.items())
    return result


def apply_renames(state_dict: Mapping[str, Any], renames: Mapping[str, str], *,
                  drop: Iterable[str] = ()) -> Mapping[str, Any]:
    """A new state dict with ``renames`` applied (``KeyMatch.renames``) and ``drop`` keys left out."""
    moves = _module_moves(renames)
    return _rename_mapping(state_dict, lambda key: renames.get(key, key), lambda path: _move_module(path, moves),
                           frozenset(drop))


def _module_moves(renames: Mapping[str, str]) -> list[tuple[list[str], list[str]]]:
    """Module-path prefix moves implied by key renames, longest first: ``module.1.w → 1.w`` gives ``module → ''``."""
    moves: dict[tuple[str, ...], list[str]] = {}
    for old, new in renames.items():
        before, after = old.split("."), new.split(".")
        while before and after and before[-1] == after[-1]:
            before.pop()
            after.pop()
        moves[tuple(before)] = after
    return sorted(((list(before), after) for before, after in moves.items()), key=lambda move: -len(move[0]))


def _move_module(path: str, moves: Sequence[tuple[list[str], list[str]]]) -> str:
    # Module versions (``_metadata``) are keyed by module path; they must follow their keys so
    # that load_state_dict still knows e.g. BatchNorm's version.
    parts = path.split(".") if path else []
    for before, after in moves:
        if parts[:len(before)] == before:
            return ".".join(after + parts[len(before):])
    return path


def check_prefixes(keys: Iterable[str]) -> list[Finding]:
    """``module-prefix`` / ``compile-prefix`` for wrapper prefixes (both when nested) and compile infixes."""
    keys = list(keys)
    prefixes = detect_prefixes(keys)
    residual = strip_prefixes(keys, prefixes, infixes=())
    infix_keys = [key for key in residual if find_infixes([key])]
    findings = []
    if MODULE_PREFIX in prefixes:
        findings.append(_wrapper_finding("module-prefix", MODULE_PREFIX, prefixes, len(keys)))
    if COMPILE_PREFIX in prefixes or infix_keys:
        findings.append(_compile_finding(prefixes, len(keys), infix_keys))
    return findings


def _prefix_phrase(prefix: str, prefixes: Sequence[str], count: int) -> str:
    before = "".join(prefixes[:prefixes.index(prefix)])
    where = f"start with '{prefix}'" if not before else f"carry '{prefix}' after '{before}'"
    return f"All {count} keys {where} ({WRAPPER_ORIGINS[prefix]})"


def _wrapper_finding(finding_id: str, prefix: str, prefixes: Sequence[str], count: int) -> Finding:
    return make_finding(finding_id, _prefix_phrase(prefix, prefixes, count),
                        details={"prefixes": list(prefixes), "keys": count})


def _compile_finding(prefixes: Sequence[str], count: int, infix_keys: Sequence[str]) -> Finding:
    owners = find_infixes(infix_keys)
    shown = ", ".join(owner or "the top level" for owner in owners)
    inside = (f"{len(infix_keys)} keys carry '{COMPILE_PREFIX}' inside their names "
              f"(submodules compiled separately: {shown})")
    if COMPILE_PREFIX in prefixes:
        message = _prefix_phrase(COMPILE_PREFIX, prefixes, count) + (f"; {inside}" if infix_keys else "")
    else:
        message = inside[0].upper() + inside[1:]
    carrying = count if COMPILE_PREFIX in prefixes else len(infix_keys)
    return make_finding("compile-prefix", message,
                        details={"prefixes": list(prefixes), "keys": carrying, "infixes": owners,
                                 "infix_keys": len(infix_keys)})


@dataclass(frozen=True)
class KeyMatch:
    """How a checkpoint's keys map onto a model's ``state_dict()`` keys, and what still differs.

    ``renames`` is authoritative; ``prefix_rule`` describes it for people.
    """

    renames: dict[str, str]
    """Checkpoint key → the model's name for it, for every key whose name changes."""
    prefix_rule: dict[str, Any]
    """``{"strip": [prefixes removed in order], "add": prefix added, "drop_infixes": [...]}``."""
    matched: list[str]
    """Model keys the checkpoint provides (shape-mismatched ones included, as torch counts them)."""
    missing: list[str]
    """Model keys the checkpoint does not provide: ``load_state_dict``'s ``missing_keys``."""
    unexpected: list[str]
    """Checkpoint keys, after renames, the model lacks: ``load_state_dict``'s ``unexpected_keys``."""
    shape_mismatches: list[dict[str, Any]] = field(default_factory=list)
    """``{"key", "checkpoint_key", "checkpoint_shape", "model_shape"}`` per key; ``key`` is the model's."""
    dtype_mismatches: list[dict[str, Any]] = field(default_factory=list)
    """``{"key", "checkpoint_key", "checkpoint_dtype", "model_dtype"}`` per key."""
    strip_prefix: str = ""
    """The non-wrapper prefix removed from checkpoint keys (e.g. Lightning's ``model.``)."""
    add_prefix: str = ""
    """The prefix added to reach the model's names beyond wrappers both sides share (e.g. ``backbone.``)."""
    missing_num_batches_tracked: list[str] = field(default_factory=list)
    """The BatchNorm counters among ``missing``: ``load_state_dict`` fills them with 0 itself when the
    state dict carries no module versions (a plain dict), and reports them missing otherwise."""
    missing_tied: dict[str, str] = field(default_factory=dict)
    """Missing model key → a provided model key it shares memory with (``lm_head.weight`` → the embedding):
    safetensors and ``save_pretrained`` keep one name per tied tensor, and loading fills the other through it."""

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.shape_mismatches)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Canonical:
    names: dict[str, str]  # original key → key without wrapper prefixes and compile infixes
    prefixes: list[str]
    dropped_infix: bool


def _canonical(keys: Sequence[str]) -> _Canonical:
    prefixes = detect_prefixes(keys)
    stripped = strip_prefixes(list(keys), prefixes, infixes=())
    if find_infixes(stripped):
        try:
            return _Canonical(dict(zip(keys, strip_prefixes(list(keys), prefixes), strict=True)), prefixes, True)
        except ValueError:
            pass  # "a._orig_mod.w" beside "a.w": keep the infix rather than merge two tensors
    return _Canonical(dict(zip(keys, stripped, strict=True)), prefixes, False)


@dataclass(frozen=True)
class _Rule:
    strip: str = ""
    add: str = ""

    def apply(self, key: str) -> str:
        return self.add + key.removeprefix(self.strip)


def match_to_model(checkpoint: Mapping[str, Any], model: Mapping[str, Any]) -> KeyMatch:
    """Match a checkpoint's state dict to a model's ``state_dict()`` (names → tensor-likes).

    Wrapper prefixes (``module.``, ``_orig_mod.``) are set aside on both sides; then the extra
    prefix to strip and/or add that matches the most keys (equal shapes first) is chosen.
    """
    ckpt = _canonical(list(checkpoint))
    mod = _canonical(list(model))
    model_by_name = {name: key for key, name in mod.names.items()}
    rule = _best_rule(ckpt.names, model_by_name, checkpoint, model)
    targets = {key: rule.apply(name) for key, name in ckpt.names.items()}
    model_keys = {key: model_by_name.get(target, "".join(mod.prefixes) + target) for key, target in targets.items()}
    pairs = [(key, model_keys[key]) for key, target in targets.items() if target in model_by_name]
    provided = {model_key for _, model_key in pairs}
    missing = [key for key in model if key not in provided]
    return KeyMatch(
        renames={key: new for key, new in model_keys.items() if key != new},
        prefix_rule={"strip": ckpt.prefixes + ([rule.strip] if rule.strip else []),
                     "add": "".join(mod.prefixes) + rule.add,
                     "drop_infixes": [COMPILE_PREFIX] if ckpt.dropped_infix else []},
        matched=[key for key in model if key in provided],
        missing=missing,
        unexpected=[model_keys[key] for key, target in targets.items() if target not in model_by_name],
        shape_mismatches=_shape_mismatches(pairs, checkpoint, model),
        dtype_mismatches=_dtype_mismatches(pairs, checkpoint, model),
        strip_prefix=rule.strip,
        add_prefix=rule.add if mod.prefixes == ckpt.prefixes else "".join(mod.prefixes) + rule.add,
        missing_num_batches_tracked=[key for key in missing if key.split(".")[-1] == NUM_BATCHES_TRACKED],
        missing_tied=_tied_to_provided(missing, provided, model),
    )


def _tied_to_provided(missing: Sequence[str], provided: Iterable[str], model: Mapping[str, Any]) -> dict[str, str]:
    """Each missing key whose tensor is the same memory as a provided key's (tied weights), mapped to it."""
    def where(value: Any) -> tuple[Any, ...] | None:
        # meta and fake tensors have no address to compare: their ties stay unknown
        pointer = value.data_ptr() if hasattr(value, "data_ptr") and value.device.type != "meta" else 0
        return (pointer, tuple(value.shape), tuple(value.stride())) if pointer else None

    by_place = {where(model[key]): key for key in provided if where(model[key]) is not None}
    return {key: by_place[where(model[key])] for key in missing if where(model[key]) in by_place}


def _best_rule(ckpt_names: Mapping[str, str], model_by_name: Mapping[str, str],
               checkpoint: Mapping[str, Any], model: Mapping[str, Any]) -> _Rule:
    strips = ["", *_prefix_candidates(ckpt_names.values())]
    adds = ["", *_prefix_candidates(model_by_name)]
    scored = []
    for rule in (_Rule(strip, add) for strip in strips for add in adds):
        score = _score(rule, ckpt_names, model_by_name, checkpoint, model)
        if score is not None:
            scored.append((score, rule))
    # max() keeps the first of equal scores, and the simplest rule comes first
    return max(scored, key=lambda pair: pair[0])[1] if scored else _Rule()


def _prefix_candidates(names: Iterable[str]) -> list[str]:
    """The most common one- and two-component prefixes (``"model."``, ``"model.backbone."``)."""
    counts: Counter[str] = Counter()
    for name in names:
        parts = name.split(".")
        counts.update(".".join(parts[:depth]) + "." for depth in (1, 2) if len(parts) > depth)
    return [prefix for prefix, _ in counts.most_common(PREFIX_CANDIDATES)]


def _score(rule: _Rule, ckpt_names: Mapping[str, str], model_by_name: Mapping[str, str],
           checkpoint: Mapping[str, Any], model: Mapping[str, Any]) -> tuple[int, int, int] | None:
    targets = {key: rule.apply(name) for key, name in ckpt_names.items()}
    if len(set(targets.values())) < len(targets):
        return None  # the rule would merge two checkpoint tensors
    pairs = [(key, model_by_name[target]) for key, target in targets.items() if target in model_by_name]
    same_shape = sum(_same_shape(checkpoint[key], model[model_key]) for key, model_key in pairs)
    return same_shape, len(pairs), -(bool(rule.strip) + bool(rule.add))


def _same_shape(left: Any, right: Any) -> bool:
    return is_tensor_like(left) and is_tensor_like(right) and shape_of(left) == shape_of(right)


def _compared(pairs: Iterable[tuple[str, str]], checkpoint: Mapping[str, Any],
              model: Mapping[str, Any]) -> Iterable[tuple[str, str, Any, Any]]:
    for key, model_key in pairs:
        left, right = checkpoint[key], model[model_key]
        if is_tensor_like(left) and is_tensor_like(right):  # _extra_state can be any object
            yield key, model_key, left, right


def _shape_mismatches(pairs: Iterable[tuple[str, str]], checkpoint: Mapping[str, Any],
                      model: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [{"key": model_key, "checkpoint_key": key, "checkpoint_shape": list(shape_of(left)),
             "model_shape": list(shape_of(right))}
            for key, model_key, left, right in _compared(pairs, checkpoint, model)
            if shape_of(left) != shape_of(right)]


def _dtype_mismatches(pairs: Iterable[tuple[str, str]], checkpoint: Mapping[str, Any],
                      model: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [{"key": model_key, "checkpoint_key": key, "checkpoint_dtype": dtype_name(left),
             "model_dtype": dtype_name(right)}
            for key, model_key, left, right in _compared(pairs, checkpoint, model)
            if dtype_name(left) != dtype_name(right)]


def check_match(match: KeyMatch) -> list[Finding]:
    """``key-prefix``, ``missing-keys``, ``unexpected-keys``, one ``shape-mismatch`` per key, ``dtype-mismatch``."""
    findings = []
    if match.strip_prefix or match.add_prefix:
        findings.append(_key_prefix_finding(match))
    if match.missing:
        findings.append(_missing_finding(match))
    if match.unexpected:
        findings.append(make_finding("unexpected-keys",
                                     f"{_keys(len(match.unexpected))} not in the model: {_first(match.unexpected)}",
                                     details={"keys": list(match.unexpected), "count": len(match.unexpected)}))
    findings.extend(_shape_finding(mismatch) for mismatch in match.shape_mismatches)
    if match.dtype_mismatches:
        findings.append(_dtype_finding(match.dtype_mismatches))
    return findings


def _keys(count: int) -> str:
    return "1 checkpoint key is" if count == 1 else f"{count} checkpoint keys are"


def _first(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:SHOWN_KEYS])
    return shown + (f", … ({len(keys) - SHOWN_KEYS} more)" if len(keys) > SHOWN_KEYS else "")


def _key_prefix_finding(match: KeyMatch) -> Finding:
    strip, add = match.strip_prefix, match.add_prefix
    if strip and add:
        message = f"Keys carry the prefix '{strip}' where the model's keys carry '{add}'"
    elif strip:
        message = f"Keys carry the prefix '{strip}' that the model lacks{_hint(strip)}"
    else:
        message = f"The model's keys carry the prefix '{add}' that the checkpoint lacks{_hint(add)}"
    return make_finding("key-prefix", message,
                        details={"strip": strip, "add": add, "renamed": len(match.renames),
                                 "prefix_rule": dict(match.prefix_rule)})


def _hint(prefix: str) -> str:
    hint = PREFIX_HINTS.get(prefix) or PREFIX_HINTS.get(prefix.split(".")[0] + ".")
    return f" ({hint})" if hint else ""


def _missing_finding(match: KeyMatch) -> Finding:
    missing, counters = match.missing, match.missing_num_batches_tracked
    count = "1 model key is" if len(missing) == 1 else f"{len(missing)} model keys are"
    message = f"{count} missing from the checkpoint: {_first(missing)}"
    severity = None
    tied, fix = match.missing_tied, ""
    if len(counters) == len(missing):
        # Only BatchNorm step counters: load_state_dict fills them itself for a plain dict.
        message += " (only BatchNorm num_batches_tracked counters, which torch can fill with 0)"
        severity = Severity.WARNING
    elif tied and set(missing) <= set(tied) | set(counters):
        # safetensors keeps one name per tied tensor: loading the other name fills this one too
        key = next(iter(tied))
        message += (f" (only tied weights: {key} is the same tensor as {tied[key]}, which the checkpoint provides, "
                    "so it loads through it; this is how safetensors and save_pretrained save tied weights)")
        severity = Severity.WARNING
        fix = ("Nothing is lost: load with from_pretrained, or load_state_dict(..., strict=False) and check that "
               "missing_keys lists only the tied names (strict=True refuses them).")
    return make_finding("missing-keys", message, severity=severity, fix=fix,
                        details={"keys": list(missing), "count": len(missing), "num_batches_tracked": list(counters),
                                 "tied": dict(tied)})


def _shape_finding(mismatch: Mapping[str, Any]) -> Finding:
    return make_finding(
        "shape-mismatch",
        f"{mismatch['key']}: checkpoint {mismatch['checkpoint_shape']} vs model {mismatch['model_shape']}",
        location=mismatch["key"], details=dict(mismatch))


def _dtype_finding(mismatches: Sequence[Mapping[str, Any]]) -> Finding:
    pairs = Counter(f"{m['checkpoint_dtype']} -> {m['model_dtype']}" for m in mismatches)
    summary = ", ".join(f"{pair} ({count})" for pair, count in pairs.most_common())
    tensors = "1 tensor differs" if len(mismatches) == 1 else f"{len(mismatches)} tensors differ"
    return make_finding("dtype-mismatch", f"{tensors} in dtype from the model: {summary}",
                        details={"pairs": dict(pairs), "keys": [m["key"] for m in mismatches]})
