"""``example_inputs``: what every command feeds a model when the user gives shapes or nothing."""

from __future__ import annotations

import torch
from fixtures.models import TiedLM, TinyClassifier
from torch import nn

from torchdoctor.examples import example_inputs, token_vocabulary


class _LMWithMask(nn.Module):
    """Token ids and a float mask: only the first input is the embedding's."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(7, 4)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.embed(ids) * mask.unsqueeze(-1)


def test_given_shapes_for_a_language_model_are_token_ids_below_its_vocabulary():
    ids, mask = example_inputs(_LMWithMask(), [(64, 9), (64, 9)])
    assert ids.dtype == torch.int64 and ids.shape == (64, 9) and 0 <= ids.min() and ids.max() < 7
    assert ids.unique().numel() > 1 and mask.is_floating_point()
    _LMWithMask()(ids, mask).sum().backward()  # the shapes the user gave run as the guess does
    (guessed,) = example_inputs(TiedLM(), None)
    (given,) = example_inputs(TiedLM(), [(3, 5)])
    assert given.dtype == guessed.dtype == torch.int64 and given.shape == (3, 5)


def test_a_model_that_does_not_start_with_an_embedding_gets_floats():
    assert token_vocabulary(TinyClassifier()) is None and token_vocabulary(TiedLM()) == 20
    (x,) = example_inputs(TinyClassifier(), [(2, 8)])
    assert x.is_floating_point() and x.shape == (2, 8)
