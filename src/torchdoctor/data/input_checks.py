"""Judgements of the inputs: dtype against the weights, raw uint8, channels last, scale, NaN/inf (pure).

With a model, a structural suspicion (uint8, [B, H, W, C], float64) is an error only when the model's
forward really failed on the batch: a model that converts its input itself is not wrong. Without a model
the suspicion is reported as a warning, since the model might convert it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torchdoctor.codes import make_finding
from torchdoctor.report import Finding, Severity

Facts = Mapping[str, Any]
IMAGE_CHANNELS = (1, 3, 4)
UNNORMALIZED_ABS = 50.0  # standardised data rarely leaves ±10; raw pixels reach 255, raw features more
MAX_LISTED = 10


def check_input_dtype(facts: Facts) -> list[Finding]:
    """input-dtype-mismatch: float64 (numpy) or integer input into float32 weights; float into an embedding."""
    field, model = _input(facts), facts.get("model")
    if field is None or model is None or not _forward_failed(model) or field["dtype"] in ("uint8", "bool"):
        return []
    dtype, weights, first = field["dtype"], model["param_dtype"], model.get("first_layer") or {}
    name = facts["reading"]["input"]
    if first.get("type") in ("Embedding", "EmbeddingBag"):
        if dtype.startswith("float"):
            return [_dtype_finding(f"The input ({name}) is {dtype} but the first layer is an embedding, which needs "
                                   "integer token ids.", dtype, weights, "x.long() in the Dataset")]
        return []
    if dtype != weights and weights is not None:
        source = " (numpy's default float64)" if dtype == "float64" else ""
        return [_dtype_finding(f"The input ({name}) is {dtype}{source} but the model's weights are {weights}.", dtype,
                               weights, f"torch.from_numpy(x.astype(np.{weights})) or x.to(torch.{weights}) in "
                                        "the Dataset")]
    return []


def check_uint8_input(facts: Facts) -> list[Finding]:
    """uint8-input: raw uint8 images reach the model (error when its forward fails on them)."""
    field, model = _input(facts), facts.get("model")
    if field is None or field["dtype"] != "uint8":
        return []
    name, shape = facts["reading"]["input"], field["shape"]
    if model is None:
        if len(shape) < 3:
            return []
        return [make_finding("uint8-input", f"The input ({name}) {shape} is raw uint8 (values {_range(field)}); unless "
                             "the model converts it, scale it to float first (pass --model to check).",
                             severity=Severity.WARNING, details={"shape": shape})]
    if (model.get("first_layer") or {}).get("type") in ("Embedding", "EmbeddingBag") or not _forward_failed(model):
        return []
    return [make_finding("uint8-input", f"The input ({name}) {shape} is raw uint8 (values {_range(field)}) and the "
                         f"model's first layer needs float input.", details={"shape": shape})]


def check_channels_last(facts: Facts) -> list[Finding]:
    """channels-last-input: [B, H, W, C] images where the first convolution wants [B, C, H, W]."""
    field, model = _input(facts), facts.get("model")
    if field is None or field["shape"] is None or len(field["shape"]) != 4:
        return []
    shape, name = field["shape"], facts["reading"]["input"]
    fix = "x.permute(0, 3, 1, 2) (or permute(2, 0, 1) per sample in the Dataset; ToTensor does it)"
    if model is None:
        if shape[-1] in IMAGE_CHANNELS and shape[1] > 4 and shape[2] > 4:
            return [make_finding("channels-last-input", f"The input ({name}) {shape} looks like [B, H, W, C] images; "
                                 "PyTorch convolutions want [B, C, H, W] (pass --model to check).", fix=fix,
                                 severity=Severity.WARNING, details={"shape": shape})]
        return []
    first = model.get("first_layer") or {}
    channels = first.get("in_channels")
    if first.get("type") != "Conv2d" or shape[-1] != channels or shape[1] == channels or not _forward_failed(model):
        return []
    return [make_finding("channels-last-input", f"The input ({name}) {shape} is [B, H, W, C]; the first convolution "
                         f"({first['name']}) expects {channels} channels in dim 1.", fix=fix,
                         details={"shape": shape, "in_channels": channels})]


def check_unnormalized(facts: Facts) -> list[Finding]:
    """unnormalized-input: float inputs in 0..255 or far outside a normalised range."""
    field = _input(facts)
    if field is None or not field["dtype"].startswith("float") or field.get("min") is None:
        return []
    low, high = field["min"], field["max"]
    if max(abs(low), abs(high)) <= UNNORMALIZED_ABS:
        return []
    pixels = low >= 0 and high <= 255.5
    what = "0..255 pixel values" if pixels else "values far outside a normalised range"
    fix = ("x / 255 then Normalize(mean, std) (ToTensor scales to [0, 1])" if pixels
           else "standardise the features: (x - mean) / std computed on the training set")
    return [make_finding("unnormalized-input", f"The input ({facts['reading']['input']}) holds {what}: range "
                         f"{_range(field)}, mean {field['mean']:.3g}, std {field['std']:.3g}.", fix=fix,
                         details={"min": low, "max": high, "mean": field["mean"], "std": field["std"]})]


def check_nonfinite(facts: Facts) -> list[Finding]:
    """nonfinite-input: NaN/inf in the data, named by data-set index when the order or a scan allows it."""
    scan, batches = facts.get("dataset_nonfinite") or {}, facts.get("nonfinite") or {}
    located = {int(index) for index, leaves in ((facts.get("located") or {}).get("samples") or {}).items()
               if any(leaf["nonfinite"] for leaf in leaves)}
    if not scan.get("count") and not batches and not located:
        return []
    from_batches = {i for field in batches.values() for i in field["indices"] or () if i is not None}
    indices = sorted(from_batches | set(scan.get("indices", ())) | located)
    parts = [f"NaN/inf in the data at {_where(indices, batches)}"]
    if scan.get("count"):
        parts.append(f"{scan['count']} such sample(s) in the whole data set")
    if batches:
        parts.append("in the batches read: " + ", ".join(f"{name} {f['nan']} NaN, {f['inf']} inf"
                                                         for name, f in batches.items()))
    return [make_finding("nonfinite-input", "; ".join(parts) + ".",
                         details={"indices": indices[: MAX_LISTED * 2], "whole_data_set": scan.get("count"),
                                  "fields": batches})]


def _where(indices: list[int], batches: Mapping[str, Any]) -> str:
    if indices:
        more = f" and {len(indices) - MAX_LISTED} more" if len(indices) > MAX_LISTED else ""
        return "data-set index " + ", ".join(map(str, indices[:MAX_LISTED])) + more
    positions = [f"batch {b} position {p}" for field in batches.values() for b, p in field["positions"][:3]]
    return (", ".join(positions) + " (the sampler is not sequential, so the data-set index is unknown; "
            "shuffle=False names it)")


def _input(facts: Facts) -> Mapping[str, Any] | None:
    reading = facts["reading"]
    name = reading.get("input")
    return reading["fields"].get(name) if name else None


def _forward_failed(model: Mapping[str, Any]) -> bool:
    return model.get("forward_error") is not None


def _range(field: Mapping[str, Any]) -> str:
    return f"{field['min']:g}..{field['max']:g}" if field.get("min") is not None else "unknown"


def _dtype_finding(message: str, dtype: str, weights: str | None, fix: str) -> Finding:
    return make_finding("input-dtype-mismatch", message, fix=fix, details={"input_dtype": dtype,
                                                                           "weight_dtype": weights})
