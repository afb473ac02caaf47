"""Pure judgements over hand-built facts: thresholds and corner cases without reading any data."""

from __future__ import annotations

import copy

import pytest

from torchdoctor.data.checks import MIN_BOTTLENECK_MS, check_data, needs_warm_step
from torchdoctor.data.label_checks import check_label_range, check_target_shape
from torchdoctor.report import Severity

BASE = {
    "loader": {"wrapped": False, "dataset_class": "D", "map_style": True, "dataset_len": 100, "batch_size": 10,
               "drop_last": False, "shuffle": True, "sampler": "RandomSampler", "batch_sampler": "BatchSampler",
               "num_batches": 10, "last_batch_size": 10, "num_workers": 0, "pin_memory": False,
               "persistent_workers": False, "multiprocessing_context": None, "collate_fn": "default_collate",
               "default_collate": True},
    "usable_cpus": 4,
    "cuda_available": False,
    "reading": {"requested": 20, "read": 10, "start_ms": 0.1, "batch_ms": [1.0] * 10, "batch_sizes": [10] * 10,
                "layout": {"kind": "sequence", "input": "[0]", "target": "[1]"},
                "fields": {"[0]": {"shape": [10, 8], "shapes_vary": False, "dtype": "float32", "min": -3.0,
                                   "max": 3.0, "mean": 0.0, "std": 1.0, "nan": 0, "inf": 0,
                                   "nonfinite_positions": []}},
                "input": "[0]", "target_field": "[1]",
                "target": {"shape": [10], "dtype": "int64", "min": 0, "max": 3, "integral": True,
                           "histogram": {0: 25, 1: 25, 2: 25, 3: 25}, "classes_per_batch": [4] * 10,
                           "first_batch_classes": [0, 1, 2, 3], "one_hot_rows": False},
                "failure": None, "warnings": []},
    "located": None, "dataset_labels": None, "dataset_nonfinite": None, "nonfinite": {},
    "model": {"class": "M", "param_dtype": "float32", "device": "cpu",
              "first_layer": {"name": "fc", "type": "Linear", "in_features": 8}, "batchnorm": [],
              "output": {"shape": [None, 4], "dtype": "float32"}, "forward_error": None},
    "task": {"name": "ce", "source": "inferred", "num_classes": 4, "num_classes_source": "the model's output width",
             "ignore_index": -100, "loss": None},
    "step": {"ok": True, "device": "cpu", "losses": [1.3], "grad_norm": 0.5,
             "timings_ms": {"forward": 1.0, "loss": 0.1, "backward": 1.0, "optimizer": 0.1, "total": 2.2},
             "failure": None, "timing": "first step", "warnings_explained": []},
}


def facts(**changes):
    """BASE with dotted-path changes: facts(**{"loader.num_workers": 8})."""
    result = copy.deepcopy(BASE)
    for path, value in changes.items():
        *parents, last = path.split(".")
        node = result
        for key in parents:
            node = node[key]
        node[last] = value
    return result


def ids(findings) -> list[str]:
    return [f.id for f in findings]


def test_base_facts_are_clean():
    assert check_data(facts()) == []


def test_too_many_workers_uses_the_usable_cpu_count():
    assert ids(check_data(facts(**{"loader.num_workers": 4}))) == []
    assert ids(check_data(facts(**{"loader.num_workers": 5}))) == ["too-many-workers"]


def test_pin_memory_only_without_cuda():
    assert ids(check_data(facts(**{"loader.pin_memory": True}))) == ["pin-memory-without-gpu"]
    assert ids(check_data(facts(**{"loader.pin_memory": True, "cuda_available": True}))) == []


@pytest.mark.parametrize(("load_ms", "step_ms", "expected"), [
    (MIN_BOTTLENECK_MS * 2, MIN_BOTTLENECK_MS, ["dataloader-bottleneck"]),
    (MIN_BOTTLENECK_MS * 2, MIN_BOTTLENECK_MS * 3, []),  # the step is slower: no bottleneck
    (MIN_BOTTLENECK_MS / 2, MIN_BOTTLENECK_MS / 10, []),  # too fast to matter, and noise dominates
])
def test_bottleneck_threshold(load_ms, step_ms, expected):
    timings = {"forward": step_ms / 2, "loss": 0.0, "backward": step_ms / 2, "optimizer": 1000.0}
    changed = facts(**{"reading.batch_ms": [50.0] + [load_ms] * 5, "step.timings_ms": timings})
    assert ids(check_data(changed)) == expected


@pytest.mark.parametrize(("load_ms", "first_ms", "device", "expected"), [
    (MIN_BOTTLENECK_MS / 2, 100.0, "cpu", False),  # loading too fast to matter
    (20.0, 10.0, "cpu", False),  # even the first step beats loading: the bottleneck is proven without it
    (20.0, 40.0, "cpu", True),  # could go either way: measure a warm step
    (20.0, 1000.0, "cpu", False),  # far slower than loading on the CPU: no warm step gets under it
    (20.0, 1000.0, "cuda:0", True),  # a first GPU step pays cuBLAS/cuDNN set-up: measure
])
def test_warm_step_only_when_the_comparison_needs_it(load_ms, first_ms, device, expected):
    first = {"forward": first_ms, "loss": 0.0, "backward": 0.0, "optimizer": 900.0}
    assert needs_warm_step(load_ms, first, device) is expected


def test_label_range_respects_ignore_index_and_flags_negatives_without_a_class_count():
    with_ignore = facts(**{"reading.target.histogram": {-100: 5, 0: 10, 3: 10}})
    assert check_label_range(with_ignore) == []
    negative = facts(**{"reading.target.histogram": {-1: 2, 0: 10}, "task.num_classes": None})
    finding = check_label_range(negative)[0]
    assert finding.details["bad_values"] == {"-1": 2} and "0 or more" in finding.message


def test_label_range_prefers_the_whole_data_set_scan():
    scanned = facts(dataset_labels={"source": "TensorDataset", "integral": True, "histogram": {0: 9, 7: 1},
                                    "classes": 2, "min": 0, "max": 7})
    finding = check_label_range(scanned)[0]
    assert finding.details["bad_values"] == {"7": 1} and "whole data set" in finding.message
    assert finding.details["off_by_one"] is False


def test_mse_targets_that_broadcast_are_a_target_shape_error():
    regression = facts(**{"task.name": "mse", "reading.target.dtype": "float32", "reading.target.shape": [10],
                          "model.output": {"shape": [None, 1], "dtype": "float32"}})
    assert ids(check_target_shape(regression)) == ["target-shape"]


def test_unshuffled_needs_two_single_class_batches_and_two_classes():
    sorted_batches = {"loader.shuffle": False, "reading.target.classes_per_batch": [1, 1, 1, 2]}
    assert ids(check_data(facts(**sorted_batches))) == ["unshuffled-classes"]
    one_class = facts(**sorted_batches, **{"reading.target.histogram": {0: 40}})
    assert ids(check_data(one_class)) == []
    assert ids(check_data(facts(**{**sorted_batches, "loader.shuffle": True}))) == []


def test_batchnorm_with_batch_size_one():
    changed = facts(**{"loader.batch_size": 1, "model.batchnorm": ["bn"]})
    assert ids(check_data(changed)) == ["batchnorm-single-sample-batch"]


def test_channels_last_without_a_model_is_a_warning():
    images = facts(model=None, step={"skipped": "no --model given"},
                   **{"reading.fields": {"[0]": {**BASE["reading"]["fields"]["[0]"], "shape": [10, 32, 32, 3]}}})
    finding = check_data(images)[0]
    assert finding.id == "channels-last-input" and finding.severity is Severity.WARNING


@pytest.mark.parametrize(("cause", "signals", "words"), [
    ("bus-error", ["SIGBUS"], "/dev/shm"),
    ("worker-killed", ["SIGKILL"], "out-of-memory"),
    ("cuda-fork-init", [], "spawn"),
])
def test_worker_causes_have_their_own_sentence_and_fix(cause, signals, words):
    failure = {"batch": 0, "at_start": False, "exc_type": "RuntimeError", "message": "DataLoader worker exited",
               "user_frame": None, "indices": None, "index": None, "worker_exit_codes": [-7],
               "explained": None, "worker": {"cause": cause, "exit_codes": [-7], "signals": signals}}
    finding = check_data(facts(**{"reading.failure": failure, "loader.num_workers": 2}))[0]
    assert finding.id == "worker-failed" and words in f"{finding.message} {finding.fix}"
