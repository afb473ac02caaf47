"""``probe_loader`` on fixture loaders built the way users build them: one real trigger per finding id."""

from __future__ import annotations

import pytest
import torch
from fixtures import loaders
from fixtures.models import TinyClassifier, TinyConvNet
from torch.utils.data import DataLoader

from torchdoctor.data.api import probe_loader
from torchdoctor.report import Severity

# Whether loading outpaces a step is a measurement of this machine at this moment: on a busy 2-core CI box two
# worker processes really do fall behind a tiny model. It is judged with pure facts (test_checks.py) and a
# loader that is slow everywhere (slow_loader); the healthy loaders must be clean of everything else.
TIMING_IDS = {"dataloader-bottleneck"}

BNModel = loaders.BatchNormClassifier


def ids(report) -> list[str]:
    return [f.id for f in report.findings]


def only(report, finding_id: str):
    found = [f for f in report.findings if f.id == finding_id]
    assert len(found) == 1, ids(report)
    return found[0]


# (fixture, model class, probe_loader keywords, the id it must trigger, its severity)
TRIGGERS = [
    ("labels_one_to_c_loader", TinyClassifier, {}, "label-out-of-range", Severity.ERROR),
    ("float_labels_loader", TinyClassifier, {}, "label-dtype", Severity.ERROR),
    ("int_multi_hot_loader", TinyClassifier, {"loss": "bce"}, "label-dtype", Severity.ERROR),
    ("column_labels_loader", TinyClassifier, {}, "target-shape", Severity.ERROR),
    ("one_hot_labels_loader", TinyClassifier, {}, "target-shape", Severity.ERROR),
    ("healthy_tensor_loader", TinyClassifier, {"loss": "bce"}, "target-shape", Severity.ERROR),
    ("float64_features_loader", TinyClassifier, {}, "input-dtype-mismatch", Severity.ERROR),
    ("uint8_images_loader", TinyConvNet, {}, "uint8-input", Severity.ERROR),
    ("channels_last_loader", TinyConvNet, {}, "channels-last-input", Severity.ERROR),
    ("unnormalized_images_loader", TinyConvNet, {}, "unnormalized-input", Severity.WARNING),
    ("variable_size_loader", TinyConvNet, {}, "variable-size-samples", Severity.ERROR),
    ("nan_features_loader", TinyClassifier, {}, "nonfinite-input", Severity.ERROR),
    ("batchnorm_last_batch_loader", BNModel, {}, "batchnorm-single-sample-batch", Severity.ERROR),
    ("sorted_labels_loader", TinyClassifier, {}, "unshuffled-classes", Severity.WARNING),
    ("negative_strides_loader", None, {}, "negative-strides", Severity.ERROR),
    ("getitem_raises_loader", None, {}, "getitem-failed", Severity.ERROR),
    ("collate_bug_loader", None, {}, "collate-failed", Severity.ERROR),
    ("unknown_sample_type_loader", None, {}, "collate-failed", Severity.ERROR),
    ("unpicklable_spawn_loader", None, {}, "worker-failed", Severity.ERROR),
    ("pinned_loader", TinyClassifier, {}, "pin-memory-without-gpu", Severity.INFO),
    ("slow_loader", TinyClassifier, {"batches": 4}, "dataloader-bottleneck", Severity.WARNING),
    ("wrong_width_loader", TinyClassifier, {}, "training-step-failed", Severity.ERROR),
]


@pytest.mark.parametrize(("fixture", "model", "kwargs", "finding_id", "severity"), TRIGGERS,
                         ids=[f"{t[3]}:{t[0]}" for t in TRIGGERS])
def test_fixture_triggers_its_finding(fixture, model, kwargs, finding_id, severity):
    if finding_id == "pin-memory-without-gpu" and torch.cuda.is_available():
        pytest.skip("pinning is right where CUDA is available")
    report = probe_loader(getattr(loaders, fixture)(), model() if model else None, **kwargs)
    finding = only(report, finding_id)
    assert finding.severity is severity
    assert report.exit_code() == (1 if severity is Severity.ERROR else 0)
    assert report.to_dict()["command"] == "data"


@pytest.mark.parametrize(("fixture", "model"), [("healthy_tuple_loader", TinyClassifier),
                                                ("healthy_dict_loader", TinyConvNet),
                                                ("healthy_tensor_loader", TinyClassifier)])
def test_healthy_loaders_with_a_matching_model_are_clean(fixture, model):
    report = probe_loader(getattr(loaders, fixture)(), model())
    assert [f for f in report.findings if f.severity is not Severity.INFO and f.id not in TIMING_IDS] == []
    assert report.exit_code(strict=True) == 0 or {f.id for f in report.findings} & TIMING_IDS
    step = report.result["step"]
    assert step["ok"] and len(step["losses"]) >= 1 and step["grad_norm"] > 0
    assert report.result["reading"]["read"] > 1


def test_healthy_loaders_read_with_worker_processes():
    loader = loaders.healthy_dict_loader()
    assert loader.num_workers >= 1
    report = probe_loader(loader, TinyConvNet())
    assert report.result["loader"]["num_workers"] == loader.num_workers
    assert report.result["reading"]["layout"] == {"kind": "dict", "input": "image", "target": "label"}
    assert report.result["task"]["num_classes"] == 3


def test_off_by_one_labels_are_named_with_values_and_counts_before_any_step():
    report = probe_loader(loaders.labels_one_to_c_tensor_loader(), num_classes=4)  # no model: no step at all
    finding = only(report, "label-out-of-range")
    assert "1..4" in finding.message and "off by one" in finding.message
    assert finding.details["bad_values"] == {"4": finding.details["bad_values"]["4"]}
    assert finding.details["off_by_one"] is True and "TensorDataset" in finding.details["source"]
    assert report.result["step"] == {"skipped": "no --model given"}


def test_the_real_step_confirms_label_out_of_range():
    report = probe_loader(loaders.labels_one_to_c_loader(), TinyClassifier())
    finding = only(report, "label-out-of-range")
    assert "Target 4 is out of bounds" in finding.details["confirmed_by_step"]
    assert "model's output width" in finding.message


@pytest.mark.parametrize("fixture", ["nan_features_loader", "nan_features_in_workers_loader"])
def test_nonfinite_names_the_data_set_index(fixture):
    report = probe_loader(getattr(loaders, fixture)(), TinyClassifier())
    finding = only(report, "nonfinite-input")
    assert "data-set index 37" in finding.message and finding.details["indices"] == [37]


def test_nonfinite_beyond_the_batches_read_is_found_by_the_scan():
    report = probe_loader(loaders.nan_tensor_dataset_loader(), batches=2)
    finding = only(report, "nonfinite-input")
    assert 900 in finding.details["indices"] and finding.details["whole_data_set"] == 1


def test_variable_size_names_indices_and_shapes():
    finding = only(probe_loader(loaders.variable_size_loader()), "variable-size-samples")
    assert "at index" in finding.message and "[3, " in finding.message
    shapes = finding.details["shapes"]
    assert len(shapes) > 1 and all(isinstance(i, int) for group in shapes.values() for i in group)


def test_negative_strides_name_the_indices():
    finding = only(probe_loader(loaders.negative_strides_loader()), "negative-strides")
    assert finding.details["indices"][:3] == [0, 1, 2] and "-12" in finding.message


def test_getitem_failure_names_the_index_and_the_users_frame_even_when_shuffled():
    finding = only(probe_loader(loaders.getitem_raises_loader()), "getitem-failed")
    assert finding.details["index"] == loaders.MalformedRowDataset.BAD_INDEX
    assert finding.location.endswith(f"loaders.py:{finding.details['user_frame']['line']}")
    assert finding.details["user_frame"]["function"] == "__getitem__"
    assert "could not convert string to float: 'n/a'" in finding.message


def test_getitem_failure_in_a_worker_is_located_through_the_sampler_order():
    report = probe_loader(loaders.getitem_raises_in_worker_loader())
    finding = only(report, "getitem-failed")
    assert finding.details["index"] == loaders.MalformedRowDataset.BAD_INDEX
    assert finding.details["order"] == "sampler" and finding.details["user_frame"]["function"] == "__getitem__"


def test_shuffled_workers_failure_is_located_by_seeded_draws_and_says_so():
    workers = loaders.healthy_workers()
    finding = only(probe_loader(DataLoader(loaders.MalformedRowDataset(), batch_size=8, shuffle=True,
                                           num_workers=workers)), "getitem-failed")
    assert finding.details["index"] == loaders.MalformedRowDataset.BAD_INDEX and finding.details["order"] == "seeded"
    assert "seed 0" in finding.message
    variable = only(probe_loader(DataLoader(loaders.RandomCropDataset(), batch_size=8, shuffle=True,
                                            num_workers=workers)), "variable-size-samples")
    assert "seed 0" in variable.message


def test_worker_failed_names_pickling_under_spawn():
    finding = only(probe_loader(loaders.unpicklable_spawn_loader()), "worker-failed")
    assert finding.details["cause"] == "pickling" and "'spawn'" in finding.message and "lambda" in finding.message


def test_worker_failed_names_a_bus_error():
    # the worker gets SIGBUS, the signal a full /dev/shm delivers; torch reports only "exited unexpectedly"
    finding = only(probe_loader(loaders.bus_error_worker_loader()), "worker-failed")
    assert finding.details["cause"] == "bus-error" and finding.details["signals"] == ["SIGBUS"]
    assert "/dev/shm" in finding.message


def test_too_many_workers():
    with pytest.warns(UserWarning, match="worker"):  # torch's own constructor warning, at DataLoader(...)
        loader = loaders.too_many_workers_loader()
    report = probe_loader(loader, TinyClassifier())
    finding = only(report, "too-many-workers")
    assert finding.details["num_workers"] > finding.details["usable_cpus"]
    assert report.exit_code() == 0 and report.exit_code(strict=True) == 1


def test_uint8_without_a_model_is_a_warning_only():
    finding = only(probe_loader(loaders.uint8_images_loader()), "uint8-input")
    assert finding.severity is Severity.WARNING and "--model" in finding.message


def test_a_dataset_is_wrapped_in_a_loader_of_32():
    report = probe_loader(loaders.CsvDataset(loaders.csv_text(100)), TinyClassifier())
    assert report.result["loader"]["wrapped"] is True and report.result["loader"]["batch_size"] == 32
    assert report.result["reading"]["batch_sizes"] == [32, 32, 32, 4]
    assert report.exit_code(strict=True) == 0  # the sorted order and the odd last batch are ours, not the user's


def test_training_step_failure_shows_the_error_plainly_with_the_users_frame():
    finding = only(probe_loader(loaders.wrong_width_loader(), TinyClassifier()), "training-step-failed")
    assert "mat1 and mat2 shapes cannot be multiplied" in finding.message
    assert finding.details["phase"] == "forward" and finding.location.endswith("models.py:17")


def test_step_error_explained_by_a_data_finding_is_not_repeated():
    report = probe_loader(loaders.float64_features_loader(), TinyClassifier())
    assert ids(report) == ["input-dtype-mismatch"]
    assert "Double" in report.findings[0].details["confirmed_by_step"]


def collate_bug_line() -> int:
    import inspect

    lines, first = inspect.getsourcelines(loaders.labels_as_column_collate)
    return first + next(i for i, line in enumerate(lines) if "# the bug" in line)


@pytest.mark.parametrize("fixture", ["collate_bug_loader", "collate_bug_in_workers_loader"])
def test_a_collate_fn_error_names_the_collate_fn_its_line_and_the_original_error(fixture):
    finding = only(probe_loader(getattr(loaders, fixture)()), "collate-failed")
    assert finding.message.startswith("Collating batch 0 failed: collate_fn ")
    assert "labels_as_column_collate raised RuntimeError at " in finding.message
    assert "Caught RuntimeError in DataLoader worker" not in finding.message  # the worker's wrapper is unwrapped
    assert "is invalid for input of size 8" in finding.message
    assert finding.location.endswith(f"loaders.py:{collate_bug_line()}")
    samples = finding.details["samples"]
    assert len(samples) == 8 and next(iter(samples.values()))[0]["shape"] == [loaders.FEATURES]


def test_default_collate_on_an_unknown_sample_type_says_what_to_return():
    finding = only(probe_loader(loaders.unknown_sample_type_loader()), "collate-failed")
    assert finding.message.startswith("Collating batch 0 failed in torch's default_collate: default_collate "
                                      "cannot batch ")
    assert finding.message.endswith("Record objects: __getitem__ returns a type it does not know.")
    assert "pass a collate_fn that knows your sample type" in finding.fix


def test_an_error_in_getitem_is_not_called_a_collate_error():
    report = probe_loader(loaders.getitem_raises_loader())
    assert report.result["reading"]["failure"]["stage"] == "fetch"
    assert "collate-failed" not in [f.id for f in report.findings]
