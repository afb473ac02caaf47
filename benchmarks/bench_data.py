"""`probe_loader` overhead vs reading the same batches plus one training step; full label scan of 1M samples.

Goals (issue: data): probing overhead beyond reading the batches and one training step <= 10%; a full label
scan of a 1,000,000-sample TensorDataset <= 0.5 s. Run: ``python benchmarks/bench_data.py [--runs 7]``.

The baseline is what any probe must do anyway: read ``--batches`` batches through the loader and run one
real training step (``run_training_step``, a copy of the model, forward/loss/backward/SGD) on the first.
Both run in this process after a warm-up round (so neither pays torch's one-time start-up), alternating,
and the ratio printed is the median of paired ratios.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from torchdoctor.data.api import probe_loader  # noqa: E402
from torchdoctor.data.fields import BatchLayout  # noqa: E402
from torchdoctor.data.labels import scan_labels, scan_nonfinite  # noqa: E402
from torchdoctor.step import run_training_step  # noqa: E402


class Cifar10Like(Dataset):
    """50,000 32x32 RGB uint8 images with a ``targets`` list, read through crop + flip + ToTensor + Normalize."""

    def __init__(self, count: int = 50_000) -> None:
        rng = np.random.default_rng(0)
        self.data = rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
        self.targets = rng.integers(0, 10, count).tolist()
        self.mean, self.std = np.float32([0.49, 0.48, 0.45]), np.float32([0.25, 0.24, 0.26])

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        image = np.pad(self.data[index], ((4, 4), (4, 4), (0, 0)), mode="reflect")
        top, left = (index * 7) % 9, (index * 5) % 9
        image = image[top:top + 32, left:left + 32]
        if index % 2:
            image = image[:, ::-1]
        image = ((image.astype(np.float32) / 255.0 - self.mean) / self.std).transpose(2, 0, 1)
        return torch.from_numpy(np.ascontiguousarray(image)), self.targets[index]


def small_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(32, 10))


def baseline(loader: DataLoader, model: nn.Module, batches: int) -> None:
    read = list(itertools.islice(loader, batches))
    run_training_step(model, read[0])


def paired(loader: DataLoader, model: nn.Module, batches: int, runs: int) -> tuple[list[float], list[float]]:
    base_times, probe_times = [], []
    baseline(loader, model, batches)  # warm-up: torch's first optimizer step, allocator, kernels
    probe_loader(loader, model, batches=batches)
    for _ in range(runs):
        start = time.perf_counter()
        baseline(loader, model, batches)
        base_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        report = probe_loader(loader, model, batches=batches)
        probe_times.append(time.perf_counter() - start)
        assert report.exit_code() == 0, [f.message for f in report.findings]
    return base_times, probe_times


def report_overhead(name: str, base: list[float], probe: list[float]) -> None:
    ratios = [p / b for b, p in zip(base, probe, strict=True)]
    print(f"{name}: baseline median {statistics.median(base) * 1000:.1f} ms, probe_loader median "
          f"{statistics.median(probe) * 1000:.1f} ms; overhead median of paired ratios "
          f"{(statistics.median(ratios) - 1) * 100:+.1f}% (goal <= +10%)")


def label_scan(samples: int) -> None:
    generator = torch.Generator().manual_seed(0)
    dataset = TensorDataset(torch.randn(samples, 16, generator=generator),
                            torch.randint(0, 1000, (samples,), generator=generator))
    layout = BatchLayout("sequence", 0, 1)
    scan_labels(dataset, layout)
    times, nan_times = [], []
    for _ in range(5):
        start = time.perf_counter()
        scan = scan_labels(dataset, layout)
        times.append(time.perf_counter() - start)
        start = time.perf_counter()
        scan_nonfinite(dataset)
        nan_times.append(time.perf_counter() - start)
    assert scan["samples"] == samples
    print(f"full label scan of a {samples:,}-sample TensorDataset: median {statistics.median(times):.3f} s "
          f"(goal <= 0.5 s; ratio to goal {statistics.median(times) / 0.5:.2f}); NaN/inf scan of its "
          f"{samples * 16:,} features: {statistics.median(nan_times):.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--batches", type=int, default=20)
    args = parser.parse_args()
    torch.manual_seed(0)
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    print(f"torch {torch.__version__}, {torch.get_num_threads()} intra-op thread(s), {os.cpu_count()} CPU(s){load}")
    images = DataLoader(Cifar10Like(), batch_size=32, shuffle=True)
    report_overhead(f"CIFAR-like images, {args.batches} batches of 32, crop+flip+normalise, small CNN",
                    *paired(images, small_cnn(), args.batches, args.runs))
    generator = torch.Generator().manual_seed(0)
    tensors = DataLoader(TensorDataset(torch.randn(10_000, 64, generator=generator),
                                       torch.randint(0, 10, (10_000,), generator=generator)),
                         batch_size=32, shuffle=True)
    mlp = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    report_overhead(f"in-memory TensorDataset (10,000 x 64), {args.batches} batches of 32, MLP (worst case: "
                    "reading costs almost nothing)", *paired(tensors, mlp, args.batches, args.runs))
    label_scan(1_000_000)


if __name__ == "__main__":
    main()
