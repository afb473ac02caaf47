"""What a training step needs when the user gives no data: guessed example inputs and a label-free loss.

Shared by ``ckpt inspect --model``, ``ckpt fix``'s verification step and ``count`` (input guessing and
``--train-step``), so every command guesses the same inputs and trains on the same surrogate loss.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def example_inputs(model: Any, input_shapes: Sequence[Sequence[int]] | None) -> tuple[Any, ...] | None:
    """Inputs for one step: the given shapes, or a guess from the first layer (conv, linear, embedding)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    if input_shapes:
        return tuple(torch.randn(tuple(shape), generator=generator) for shape in input_shapes)
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding):
            return (torch.randint(0, module.num_embeddings, (2, 16), generator=generator),)
        if isinstance(module, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)):
            spatial = (32,) * (module.weight.dim() - 2)
            return (torch.randn((2, module.in_channels, *spatial), generator=generator),)
        if isinstance(module, torch.nn.Linear):
            return (torch.randn((2, module.in_features), generator=generator),)
    return None


def surrogate_loss(output: Any, _targets: Any) -> Any:
    """Mean square of every floating output: a loss for any model, so the step needs no labels."""
    import torch

    if isinstance(output, Mapping):
        leaves = list(output.values())
    else:
        leaves = list(output) if isinstance(output, (list, tuple)) else [output]
    terms = [leaf.float().pow(2).mean() for leaf in leaves
             if isinstance(leaf, torch.Tensor) and leaf.is_floating_point()]
    return torch.stack(terms).sum()
