"""Gradient and update norms past 1.8e19 (where float32 sums of squares overflow) stay numbers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import torchdoctor
from torchdoctor.learning import norms

BIG = 3e19  # its square (9e38) is past float32's largest value (3.4e38); the value itself is not


def test_a_tensor_whose_float32_norm_overflows_is_measured_again():
    tensors = [torch.full((1000,), BIG), torch.full((10,), 2.0)]
    measured = norms.measure(tensors)
    read = measured.values.tolist()
    assert read[0] == math.inf  # the problem is real: torch's float32 norm of finite values
    assert norms.rescued(measured, read) == [pytest.approx(BIG * 1000 ** 0.5, rel=1e-6), pytest.approx(40 ** 0.5)]


def test_half_precision_gradients_past_65504_are_measured_again():
    measured = norms.measure([torch.full((64,), 60000.0, dtype=torch.float16)])
    assert norms.rescued(measured, measured.values.tolist()) == [pytest.approx(60000.0 * 8, rel=1e-3)]


def test_inf_values_and_tensors_changed_since_keep_their_inf():
    infinite, changed = torch.tensor([math.inf, 1.0]), torch.full((4,), BIG)
    measured = norms.measure([infinite, changed])
    read = measured.values.tolist()
    changed.zero_()  # the user's zero_grad() came between measuring and reading back: its old values are gone
    assert norms.rescued(measured, read) == [math.inf, math.inf]


def test_layers_are_summed_on_the_host_without_overflow():
    assert norms.per_layer([BIG, BIG, 3.0, 4.0], [0, 0, 1, 1], 2) == [pytest.approx(BIG * 2 ** 0.5), 5.0]
    assert norms.ratios([1.0, 0.0, 2.0], [4.0, 0.0, 0.0])[0] == 0.25
    assert math.isnan(norms.ratios([0.0], [0.0])[0]) and norms.ratios([2.0], [0.0]) == [math.inf]


def test_a_diverging_runs_gradient_norms_stay_numbers_in_the_series():
    """Real gradients of a real backward: a layer whose weight gradient alone is past 1.8e19."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2))
    with torch.no_grad():
        model[1].weight.mul_(1e22)  # a run that has been diverging for a while
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-30)
    x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
    with torchdoctor.watch(every=1) as w:
        for _ in range(3):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            assert torch.linalg.vector_norm(model[0].weight.grad).item() == math.inf  # float32 overflows
            assert model[0].weight.grad.isfinite().all()
            optimizer.step()
    first = w.report.result["series"]["grad_norm"][0]
    assert all(value is not None and 1.8e19 < value < 1e30 for value in first), first
