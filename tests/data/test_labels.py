"""Whole-data-set scans: labels from a TensorDataset or a ``targets`` attribute, NaN rows of a TensorDataset."""

from __future__ import annotations

import time

import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from torchdoctor.data.fields import BatchLayout
from torchdoctor.data.labels import scan_labels, scan_nonfinite

TUPLE = BatchLayout("sequence", 0, 1)


def test_full_label_scan_of_a_million_samples_is_fast():
    generator = torch.Generator().manual_seed(0)
    dataset = TensorDataset(torch.randn(1_000_000, 4, generator=generator),
                            torch.randint(0, 10, (1_000_000,), generator=generator))
    scan_labels(dataset, TUPLE)  # first call pays one-time kernel set-up
    start = time.perf_counter()
    scan = scan_labels(dataset, TUPLE)
    elapsed = time.perf_counter() - start
    assert scan["samples"] == 1_000_000 and scan["classes"] == 10 and sum(scan["histogram"].values()) == 1_000_000
    assert elapsed <= 0.5, f"label scan took {elapsed:.3f} s (goal <= 0.5 s)"


def test_subset_of_a_tensor_dataset_scans_only_its_indices():
    dataset = TensorDataset(torch.zeros(6, 2), torch.tensor([0, 1, 2, 3, 4, 5]))
    scan = scan_labels(Subset(dataset, [1, 3]), TUPLE)
    assert scan["histogram"] == {1: 1, 3: 1} and scan["source"] == "Subset of TensorDataset"


class WithTargets(Dataset):
    """Like torchvision's datasets: a ``targets`` list beside the samples."""

    def __init__(self, shift: int = 0) -> None:
        self.targets = [i % 3 + 1 for i in range(30)]
        self.shift = shift

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        return torch.zeros(2), self.targets[index] - self.shift


def test_targets_attribute_is_scanned_when_getitem_agrees_with_it():
    scan = scan_labels(WithTargets(), TUPLE)
    assert scan["source"] == "WithTargets.targets" and scan["min"] == 1 and scan["max"] == 3


def test_targets_attribute_is_distrusted_when_getitem_changes_the_labels():
    assert scan_labels(WithTargets(shift=1), TUPLE) is None  # __getitem__ returns label - 1


def test_float_labels_that_are_not_whole_numbers_are_not_classes():
    dataset = TensorDataset(torch.zeros(4, 2), torch.tensor([0.5, 1.0, 2.0, 3.0]))
    assert scan_labels(dataset, TUPLE)["integral"] is False


def test_nonfinite_scan_names_rows_of_any_floating_tensor():
    features = torch.zeros(50, 3)
    features[7, 1], features[42, 0] = float("nan"), float("-inf")
    scan = scan_nonfinite(TensorDataset(features, torch.zeros(50, dtype=torch.long)))
    assert scan == {"count": 2, "indices": [7, 42]}
    assert scan_nonfinite(TensorDataset(torch.zeros(5, 2))) == {"count": 0, "indices": []}
    assert scan_nonfinite(WithTargets()) is None  # not a TensorDataset: no cheap scan
