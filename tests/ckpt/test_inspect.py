"""ckpt inspect end to end on real files: every finding id of the family triggered for real."""

from pathlib import Path

import pytest
import torch
from fixtures import ckpt_builders as build
from fixtures.models import RaisesInForward, TinyConvNet
from torch import nn

from torchdoctor.ckpt.inspect import inspect_checkpoint
from torchdoctor.errors import InputError


def ids(report) -> list[str]:
    return [f.id for f in report.findings]


@pytest.mark.parametrize(
    ("builder", "expected"),
    [
        ("plain_state_dict", []),
        ("dataparallel_state_dict", ["module-prefix"]),
        ("compiled_state_dict", ["compile-prefix"]),
        ("legacy_file", ["legacy-format"]),
        ("torchscript_file", ["torchscript-archive"]),
        ("full_module_pickle", ["full-module-pickle"]),
        ("lightning_style", ["nested-state-dict", "training-state-present"]),
        ("cuda_saved", ["cuda-saved-tensors"]),
        ("nan_weights", ["nonfinite-weights"]),
        ("malicious_zip", ["unsafe-pickle"]),
        ("lfs_pointer", ["lfs-pointer"]),
        ("html_page", ["not-a-checkpoint"]),
        ("random_bytes", ["not-a-checkpoint"]),
        ("empty_file", ["corrupt-checkpoint"]),
        ("truncated_zip", ["corrupt-checkpoint"]),
        ("safetensors_file", []),
        ("hf_sharded_dir", []),
        ("dcp_dir", []),
    ],
)
def test_findings_per_real_file(tmp_path, validate_report, builder, expected):
    report = inspect_checkpoint(getattr(build, builder)(tmp_path))
    assert ids(report) == expected
    validate_report(report.to_dict())


def test_malicious_files_never_run(tmp_path):
    for builder in ("malicious_zip", "malicious_legacy", "malicious_pickle"):
        folder = tmp_path / builder
        folder.mkdir()
        report = inspect_checkpoint(getattr(build, builder)(folder))
        assert "unsafe-pickle" in ids(report)
        assert not (folder / build.MARKER_NAME).exists() and not Path(build.MARKER_NAME).exists()


def test_facts_match_torch_load(tmp_path):
    path = build.lightning_style(tmp_path)
    report = inspect_checkpoint(path)
    loaded = torch.load(path, weights_only=True)["state_dict"]
    keys = {row["key"]: row for row in report.result["tensors"]["keys"]}
    assert set(keys) == set(loaded)
    for key, tensor in loaded.items():
        assert keys[key]["shape"] == list(tensor.shape) and keys[key]["dtype"] == str(tensor.dtype)[6:]
    assert report.result["weights_path"] == "state_dict" and report.result["framework"] == "lightning"
    assert report.result["tensors"]["parameters"] == sum(t.numel() for t in loaded.values())


def test_nonfinite_names_the_key_and_counts(tmp_path):
    path = build.nan_weights(tmp_path)
    (finding,) = inspect_checkpoint(path).findings
    loaded = torch.load(path, weights_only=True)
    bad = {k: int(torch.isnan(v).sum()) for k, v in loaded.items() if v.is_floating_point() and torch.isnan(v).any()}
    for key, count in bad.items():
        assert finding.details["tensors"][key]["nan"] == count


def test_shared_storages_are_reported(tmp_path):
    report = inspect_checkpoint(build.tied_weights(tmp_path))
    assert report.result["shared_storages"]


def test_missing_path_is_an_input_error(tmp_path):
    with pytest.raises(InputError):
        inspect_checkpoint(tmp_path / "nope.pt")


def test_fix_lines_name_the_real_path(tmp_path):
    report = inspect_checkpoint(build.dataparallel_state_dict(tmp_path))
    assert str(tmp_path / "dataparallel.pt") in report.findings[0].fix


# --- against a model -----------------------------------------------------------------------------------------------


def test_dataparallel_checkpoint_loads_and_trains_in_the_plain_model(tmp_path):
    report = inspect_checkpoint(build.dataparallel_state_dict(tmp_path), model=TinyConvNet())
    assert ids(report) == ["module-prefix"]  # the prefix is the only problem: keys match once it is stripped
    model = report.result["model"]
    assert model["loaded"] == {"missing": [], "unexpected": []}
    assert model["training_step"]["ok"] and model["training_step"]["input_shapes"] == [[2, 3, 32, 32]]


def test_head_of_1000_classes_vs_a_model_of_10(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "imagenet_head.pt"
    torch.save(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1000)).state_dict(), path)
    report = inspect_checkpoint(path, model=nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 10)))
    mismatches = [f for f in report.findings if f.id == "shape-mismatch"]
    assert {f.location for f in mismatches} == {"2.weight", "2.bias"}
    assert "--drop-mismatched" in mismatches[0].fix
    assert report.result["model"]["training_step"]["ok"]  # the rest loads and trains; the head stays fresh


def test_missing_unexpected_and_dtype(tmp_path):
    path = tmp_path / "half.pt"
    state = nn.Sequential(nn.Linear(8, 4)).half().state_dict()
    state["extra.weight"] = torch.zeros(2, dtype=torch.float16)
    torch.save(state, path)
    model = nn.Sequential(nn.Linear(8, 4), nn.Linear(4, 2))
    found = ids(inspect_checkpoint(path, model=model))
    assert {"missing-keys", "unexpected-keys", "dtype-mismatch"} <= set(found)


def test_lightning_prefix_is_resolved_against_the_model(tmp_path):
    path = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in TinyConvNet().state_dict().items()},
                "pytorch-lightning_version": "2.1.0", "epoch": 1}, path)
    report = inspect_checkpoint(path, model=TinyConvNet())
    assert "key-prefix" in ids(report) and report.result["model"]["training_step"]["ok"]


def test_training_step_failure_with_the_weights_is_named(tmp_path):
    path = tmp_path / "raises.pt"
    torch.save(RaisesInForward().state_dict(), path)
    report = inspect_checkpoint(path, model=RaisesInForward())
    (finding,) = [f for f in report.findings if f.id == "training-step-failed"]
    assert "boom from forward" in finding.message and "models.py" in finding.message


def test_unsafe_files_are_not_loaded_into_the_model(tmp_path):
    report = inspect_checkpoint(build.malicious_zip(tmp_path), model=TinyConvNet())
    assert "skipped" in report.result["model"]["training_step"]


def test_dcp_metadata_only_says_values_were_not_scanned(tmp_path):
    report = inspect_checkpoint(build.dcp_dir(tmp_path))
    assert report.result["values_scanned"] is False
    assert "not scanned" in [s for s in report.sections if s.name == "values"][0].headline
