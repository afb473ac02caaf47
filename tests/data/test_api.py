"""``probe_loader`` as a Python API: leaves no trace, reads any batch layout, refuses bad arguments clearly."""

from __future__ import annotations

import json

import pytest
import torch
from fixtures import loaders
from fixtures.models import TinyClassifier
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from torchdoctor.data.api import probe_loader
from torchdoctor.errors import UsageError
from torchdoctor.render.json import render_json


def test_leaves_model_loader_and_rng_as_found():
    model = loaders.BatchNormClassifier().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loader = loaders.healthy_tuple_loader()
    rng = torch.get_rng_state()
    report = probe_loader(loader, model)
    assert report.result["step"]["ok"]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN running stats included
    assert not model.training and not any(m.training for m in model.modules())
    assert torch.equal(torch.get_rng_state(), rng)
    assert sum(len(batch[0]) for batch in loader) == 96  # still a working loader


def test_a_lazy_model_stays_lazy():
    model = torch.nn.Sequential(torch.nn.LazyLinear(4))
    report = probe_loader(loaders.healthy_tensor_loader(), model)
    assert report.exit_code(strict=True) == 0 and report.result["task"]["num_classes"] == 4
    assert isinstance(model[0].weight, torch.nn.parameter.UninitializedParameter)


def test_persistent_workers_loader_gets_its_iterator_back():
    loader = DataLoader(loaders.CsvDataset(loaders.csv_text()), batch_size=16, num_workers=1,
                        persistent_workers=True)
    probe_loader(loader, batches=2)
    assert loader._iterator is None
    assert len(list(loader)) == 6


def test_dict_batches_with_custom_keys():
    class Custom(Dataset):
        def __len__(self):
            return 40

        def __getitem__(self, index):
            return {"pixels": torch.randn(8), "cls": index % 4, "path": f"img_{index}.png"}

    report = probe_loader(DataLoader(Custom(), batch_size=8), TinyClassifier(), input_key="pixels", target_key="cls")
    assert report.result["reading"]["layout"] == {"kind": "dict", "input": "pixels", "target": "cls"}
    assert report.result["step"]["ok"] and report.exit_code() == 0
    with pytest.raises(UsageError, match="'image' is not a key"):
        probe_loader(DataLoader(Custom(), batch_size=8), input_key="image")


def test_dict_batch_without_an_input_key_passes_the_other_keys_as_keywords():
    class Masked(Dataset):
        def __len__(self):
            return 32

        def __getitem__(self, index):
            return {"tokens": torch.randn(8), "mask": torch.ones(8), "label": index % 4}

    class KeywordModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(8, 4)

        def forward(self, tokens, mask):
            return self.fc(tokens * mask)

    report = probe_loader(DataLoader(Masked(), batch_size=8), KeywordModel())
    assert report.result["reading"]["layout"] == {"kind": "dict", "input": "(other keys)", "target": "label"}
    assert report.result["step"]["ok"] and report.exit_code(strict=True) == 0


def test_iterable_dataset_is_read_without_indices():
    class Stream(IterableDataset):
        def __iter__(self):
            for index in range(40):
                features = torch.randn(8)
                if index == 21:
                    features[0] = float("nan")
                yield features, index % 4

    report = probe_loader(DataLoader(Stream(), batch_size=8), TinyClassifier())
    finding = next(f for f in report.findings if f.id == "nonfinite-input")
    assert "batch 2 position 5" in finding.message


def test_tuple_positions_as_keys():
    dataset = TensorDataset(torch.randint(0, 4, (64,)), torch.randn(64, 8))  # (label, features)
    report = probe_loader(DataLoader(dataset, batch_size=16), TinyClassifier(), input_key=1, target_key=0)
    assert report.result["reading"]["layout"] == {"kind": "sequence", "input": "[1]", "target": "[0]"}
    assert report.result["step"]["ok"]


def test_json_report_is_strict_json(validate_report):
    report = probe_loader(loaders.nan_features_loader(), TinyClassifier())
    validate_report(json.loads(render_json(report)))


@pytest.mark.parametrize("kwargs", [{"batches": 0}, {"num_classes": 0}, {"batch_size": 0}])
def test_bad_arguments_are_usage_errors(kwargs):
    with pytest.raises(UsageError):
        probe_loader(loaders.healthy_tensor_loader(), **kwargs)


def test_not_a_loader_is_refused():
    with pytest.raises(TypeError, match="DataLoader or Dataset"):
        probe_loader([1, 2, 3])
    with pytest.raises(UsageError, match="torch.nn.Module"):
        probe_loader(loaders.healthy_tensor_loader(), model="not a model")


def test_a_custom_loss_callable_and_module():
    report = probe_loader(loaders.healthy_tensor_loader(), TinyClassifier(), loss=torch.nn.CrossEntropyLoss())
    assert report.result["task"]["name"] == "ce" and report.result["step"]["loss_name"] == "CrossEntropyLoss"
    report = probe_loader(loaders.healthy_tensor_loader(), TinyClassifier(),
                          loss=lambda output, target: torch.nn.functional.cross_entropy(output, target))
    assert report.result["step"]["ok"] and report.exit_code(strict=True) == 0
