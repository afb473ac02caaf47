"""The model side of ``data --model``: what it expects (first layer, dtype, BatchNorm, output width), the
loss the batches imply, and the real training step on a copy (``run_training_step``)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

from torchdoctor.batch import as_call, prediction_of, to_device
from torchdoctor.data.fields import BatchLayout, split_batch
from torchdoctor.step import run_training_step

PROBE_SAMPLES = 2  # the shape-finding forward runs on this many samples of the first batch


def collect_model_facts(model: Any, batch: Any, layout: BatchLayout) -> dict[str, Any]:
    """Class, parameter dtype and device, first layer, BatchNorm layers, and the output of a no-grad forward."""
    import torch

    params = [p for p in model.parameters() if p.is_floating_point()]
    facts: dict[str, Any] = {
        "class": type(model).__name__,
        "param_dtype": str(params[0].dtype).replace("torch.", "") if params else None,
        "device": str(params[0].device) if params else "cpu",
        "first_layer": _first_layer(model),
        "batchnorm": [name for name, module in model.named_modules()
                      if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)],
    }
    inputs, _target = split_batch(batch, layout)
    facts.update(_probe_forward(model, _head(inputs), torch.device(facts["device"])))
    return facts


def _first_layer(model: Any) -> dict[str, Any] | None:
    from torch import nn

    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return {"name": name, "type": type(module).__name__, "in_channels": module.in_channels}
        if isinstance(module, nn.Linear):
            return {"name": name, "type": "Linear", "in_features": module.in_features}
        if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
            return {"name": name, "type": type(module).__name__, "num_embeddings": module.num_embeddings}
    return None


def _probe_forward(model: Any, inputs: Any, device: Any) -> dict[str, Any]:
    """Output shape from an eval-mode, no-grad forward; modes restored, so the model is left as found.

    no_grad, not inference_mode: a model that caches a tensor in forward would otherwise keep an inference
    tensor that its next training step cannot save for backward. Lazy modules initialise their parameters
    on the first forward, so a model with any gets the probe on a copy.
    """
    import copy

    import torch

    if any(isinstance(p, torch.nn.parameter.UninitializedParameter) for p in model.parameters()):
        model = copy.deepcopy(model)

    from torchdoctor.explain.rules import match_exception

    modes = {module: module.training for module in model.modules()}
    try:
        model.eval()
        args, kwargs = as_call(to_device(inputs, device))
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            output = model(*args, **kwargs)
        prediction = prediction_of(output)
        if not isinstance(prediction, torch.Tensor):
            return {"output": None, "forward_error": None}
        dtype = str(prediction.dtype).replace("torch.", "")
        return {"output": {"shape": [None, *prediction.shape[1:]], "dtype": dtype}, "forward_error": None}
    except Exception as exc:  # the training step will meet the same error and report it
        explained = match_exception(exc)
        return {"output": None, "forward_error": {"exc_type": type(exc).__name__, "message": str(exc).strip()[:500],
                                                  "explained_as": explained.id if explained else None}}
    finally:
        for module, training in modes.items():
            module.training = training


def _head(inputs: Any) -> Any:
    """The first ``PROBE_SAMPLES`` samples of every batched tensor."""
    import torch

    if isinstance(inputs, torch.Tensor):
        return inputs[:PROBE_SAMPLES] if inputs.dim() > 0 else inputs
    if isinstance(inputs, Mapping):
        return {k: _head(v) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(_head(v) for v in inputs) if type(inputs) in (tuple, list) else inputs
    return inputs


# --- the training step ----------------------------------------------------------------------------------


def training_step(model: Any, batch: Any, layout: BatchLayout, loss_fn: Callable | None,
                  device: str) -> tuple[Any, list[str]]:
    """``run_training_step`` on the first batch; returns its result and the warnings raised meanwhile."""
    inputs, target = split_batch(batch, layout)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_training_step(model, (inputs, target), loss_fn=loss_fn, device=device)
    return result, sorted({f"{w.category.__name__}: {w.message}" for w in caught})


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
