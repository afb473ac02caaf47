"""Example inputs for a count: given ones, ones built from shapes, or a guess from the model's first layer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torchdoctor.errors import UsageError

DTYPE_ALIASES = {
    "float32": "float32", "fp32": "float32", "float": "float32",
    "float16": "float16", "fp16": "float16", "half": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float64": "float64", "fp64": "float64", "double": "float64",
}

# models that take keyword inputs (an encoder-decoder's decoder_input_ids) cannot be fed by shapes alone
GUESSED_HINT = ("pass --input-shape with the shape the model expects (e.g. --input-shape 1,3,64,64), or --input "
                "file.py:make_inputs returning the inputs (a dict for keyword inputs such as decoder_input_ids)")
_NO_SHAPE_HINT = "pass --input-shape, e.g. --input-shape 1,3,224,224 (repeat it for each input), or --input SPEC"


def parse_dtype(value: Any) -> Any:
    """``"bf16"`` / ``torch.bfloat16`` -> ``torch.bfloat16``; None stays None; anything else is a usage error."""
    if value is None:
        return None
    import torch

    if isinstance(value, torch.dtype):
        return value
    name = DTYPE_ALIASES.get(str(value).lower().removeprefix("torch."))
    if name is None:
        raise UsageError(f"unknown --dtype {value!r}", hint=f"one of: {', '.join(sorted(set(DTYPE_ALIASES)))}")
    return getattr(torch, name)


def build_inputs(model: Any, shapes: Sequence[Sequence[int]] | None, *, dtype: Any = None,
                 device: str = "cpu") -> tuple[Any, ...]:
    """Tensors of ``shapes`` (token ids when the model starts with an embedding), or a batch-1 guess from the
    first layer like ``ckpt inspect`` makes; ``UsageError`` (exit 2) when neither is possible."""
    import torch

    from torchdoctor.examples import example_inputs, token_vocabulary

    guess = example_inputs(model, None)
    if not shapes:
        if guess is None:
            raise UsageError(f"cannot infer an input shape for {type(model).__name__}: its first layer is not a "
                             "convolution, linear or embedding layer", hint=_NO_SHAPE_HINT)
        # A guess is batch 1: the smallest call, and a count per sample is what a user compares.
        return tuple(_convert(tensor[:1], dtype, device) for tensor in guess)
    vocabulary = token_vocabulary(model)  # the same choice as ckpt's training step makes for given shapes
    generator = torch.Generator().manual_seed(0)
    tensors = []
    for index, shape in enumerate(shapes):
        if index == 0 and vocabulary is not None:
            tensors.append(_token_ids(torch, tuple(shape), vocabulary, device, generator))
        elif device == "meta":
            tensors.append(torch.empty(tuple(shape), dtype=dtype or torch.float32, device="meta"))
        else:
            tensors.append(torch.randn(tuple(shape), generator=generator, dtype=dtype or torch.float32))
    return tuple(_convert(tensor, None, device) for tensor in tensors)


def _token_ids(torch, shape: tuple[int, ...], vocabulary: int, device: str, generator) -> Any:
    if device == "meta":
        return torch.empty(shape, dtype=torch.long, device="meta")
    return torch.randint(0, vocabulary, shape, generator=generator)  # moved to the device by the caller


def prepare_inputs(inputs: Any, *, dtype: Any = None, device: str | None = None) -> Any:
    """Floating tensors converted to ``dtype`` and every tensor moved to ``device``, in nested containers."""
    import torch

    if isinstance(inputs, torch.Tensor):
        return _convert(inputs, dtype, device)
    if isinstance(inputs, Mapping):
        return {key: prepare_inputs(value, dtype=dtype, device=device) for key, value in inputs.items()}
    if isinstance(inputs, (tuple, list)) and type(inputs) in (tuple, list):
        return type(inputs)(prepare_inputs(value, dtype=dtype, device=device) for value in inputs)
    return inputs


def _convert(tensor: Any, dtype: Any, device: str | None) -> Any:
    if dtype is not None and tensor.is_floating_point():
        tensor = tensor.to(dtype)
    return tensor.to(device) if device is not None else tensor


def describe_inputs(args: Sequence[Any], kwargs: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``[{"name": "0", "shape": [1, 3, 224, 224], "dtype": "float32"}]`` for every tensor argument."""
    named = [(str(i), value) for i, value in enumerate(args)] + list(kwargs.items())
    described = []
    for name, value in named:
        for suffix, tensor in _tensor_leaves(value):
            described.append({"name": name + suffix, "shape": list(tensor.shape),
                              "dtype": str(tensor.dtype).removeprefix("torch.")})
    return described


def _tensor_leaves(value: Any, suffix: str = "") -> list[tuple[str, Any]]:
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return [(suffix, value)]
    if isinstance(value, Mapping):
        return [leaf for key, item in value.items() for leaf in _tensor_leaves(item, f"{suffix}.{key}")]
    if isinstance(value, (tuple, list)):
        return [leaf for i, item in enumerate(value) for leaf in _tensor_leaves(item, f"{suffix}.{i}")]
    return []
