"""What watching relu/sigmoid/tanh called as functions (``torch.relu(x)``, ``x.tanh()``, ``F.sigmoid(x)``) costs.

``watch`` wraps those nine functions for the whole run; outside sampled steps a wrapper only tests a flag.
Worst case for it: a model made of tiny layers (6 x ``Linear(64, 64)``, batch 32), each followed by one
functional activation (torch.relu, x.tanh(), F.sigmoid in turn: 8 wrapped calls per step, F.sigmoid calling
Tensor.sigmoid), 200 SGD steps per round, ``every=10``, in one process, one thread, CPU time, rounds
interleaved, medians:

- plain: the loop alone
- watch, no wrappers (the baseline): ``torchdoctor.watch()`` with ``ACTIVATION_FUNCTIONS = ()``
- watch: ``torchdoctor.watch()`` as shipped

Goal: watch / watch-without-wrappers <= 1.10 (per training step).
Run: ``python benchmarks/bench_watch_activations.py [--rounds 15]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn
from torch.nn import functional as F

import torchdoctor
from torchdoctor.learning import api

STEPS = 200
WRAPPED = api.ACTIVATION_FUNCTIONS


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(64, 64) for _ in range(6))
        self.out = nn.Linear(64, 4)

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            h = layer(x)
            if i % 3 == 0:
                x = torch.relu(h)
            elif i % 3 == 1:
                x = h.tanh()
            else:
                x = F.sigmoid(h)
        return self.out(x)


def train(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    for _ in range(STEPS):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()


def timed(mode: str) -> float:
    """CPU seconds per step of one round (CPU time: the machine is shared)."""
    torch.manual_seed(0)
    model = Tiny()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(32, 64), torch.randint(0, 4, (32,))
    api.ACTIVATION_FUNCTIONS = () if mode == "watch, no wrappers" else WRAPPED
    start = time.process_time()
    if mode == "plain":
        train(model, optimizer, x, y)
    else:
        with torchdoctor.watch(every=10):
            train(model, optimizer, x, y)
    api.ACTIVATION_FUNCTIONS = WRAPPED
    return (time.process_time() - start) / STEPS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)
    modes = ("plain", "watch, no wrappers", "watch")
    for mode in modes:  # warm-up: first calls, lazy imports
        timed(mode)
    samples: dict[str, list[float]] = {mode: [] for mode in modes}
    for _ in range(args.rounds):
        for mode in modes:
            samples[mode].append(timed(mode))
    for mode, values in samples.items():
        print(f"{mode:<20} {statistics.median(values) * 1e3:.3f} ms/step (min {min(values) * 1e3:.3f})")
    ratio = statistics.median(w / b for w, b in zip(samples["watch"], samples["watch, no wrappers"], strict=True))
    print(f"watch / watch without the activation wrappers {ratio:.3f}x  (goal: <= 1.10x)")


if __name__ == "__main__":
    main()
