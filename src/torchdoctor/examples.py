"""What a training step needs when the user gives no data: guessed example inputs and a label-free loss.

Shared by ``ckpt inspect --model``, ``ckpt fix``'s verification step and ``count`` (input guessing and
``--train-step``), so every command guesses the same inputs and trains on the same surrogate loss.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def example_inputs(model: Any, input_shapes: Sequence[Sequence[int]] | None) -> tuple[Any, ...] | None:
    """Inputs for one step: the given shapes, or a guess from the first layer (conv, linear, embedding).

    Given shapes follow the guess's dtype: a model that starts with an embedding gets token ids below its
    ``num_embeddings`` as its first input (random floats would fail its lookup), the other inputs floats.
    """
    import torch

    generator = torch.Generator().manual_seed(0)
    if input_shapes:
        vocabulary = token_vocabulary(model)
        return tuple(torch.randint(0, vocabulary, tuple(shape), generator=generator)
                     if index == 0 and vocabulary is not None else torch.randn(tuple(shape), generator=generator)
                     for index, shape in enumerate(input_shapes))
    first = _first_layer(model)
    if isinstance(first, torch.nn.Embedding):
        return (torch.randint(0, first.num_embeddings, (2, 16), generator=generator),)
    if isinstance(first, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)):
        spatial = (32,) * (first.weight.dim() - 2)
        return (torch.randn((2, first.in_channels, *spatial), generator=generator),)
    if isinstance(first, torch.nn.Linear):
        return (torch.randn((2, first.in_features), generator=generator),)
    return None


def token_vocabulary(model: Any) -> int | None:
    """The first layer's ``num_embeddings`` when it is an embedding (the model takes token ids), else None."""
    import torch

    first = _first_layer(model)
    return first.num_embeddings if isinstance(first, torch.nn.Embedding) else None


def _first_layer(model: Any) -> Any:
    """The first conv, linear or embedding in ``model.modules()`` order: what decides the input's kind."""
    import torch

    kinds = (torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear)
    return next((module for module in model.modules() if isinstance(module, kinds)), None)


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
