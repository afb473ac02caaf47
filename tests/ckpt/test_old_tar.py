"""torch 0.1.x tar checkpoints (both layouts, a whole pickled module): read safely, judged, rewritten as zip."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from fixtures import old_ckpt_builders as old

from torchdoctor.ckpt.fix import fix_checkpoint
from torchdoctor.ckpt.formats import Format, detect_format
from torchdoctor.ckpt.inspect import inspect_checkpoint
from torchdoctor.ckpt.reader import read_checkpoint
from torchdoctor.ckpt.tensor_data import iter_tensor_values

EXPECTED = old.old_model_tensors()
# torch 2.x deprecates torch.jit.script/load, which two tests call on purpose
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning")


def stored_values(reading, key: str) -> np.ndarray:
    return np.concatenate([np.frombuffer(chunk, "<f4") if isinstance(chunk, bytes) else np.asarray(chunk).ravel()
                           for chunk in iter_tensor_values(reading, key, 1 << 20)])


def test_a_torch_019_module_pickle_is_legacy_and_a_module_never_damaged(tmp_path):
    path = old.torch_019_module_tar(tmp_path)
    assert detect_format(path).format is Format.LEGACY_TAR
    report = inspect_checkpoint(path)
    ids = {finding.id for finding in report.findings}
    assert {"legacy-format", "full-module-pickle"} <= ids
    assert "corrupt-checkpoint" not in ids and "unsafe-pickle" not in ids
    tensors = report.result["tensors"]
    assert {row["key"]: row["shape"] for row in tensors["keys"]} == {k: list(v.shape) for k, v in EXPECTED.items()}
    assert report.result["framework"] == "pickled nn.Module"
    assert "protocol 1000" in report.result["saved_by"]
    reading = read_checkpoint(path)
    assert all(record.is_parameter for record in reading.tensors.values())
    for key, values in EXPECTED.items():
        np.testing.assert_array_equal(stored_values(reading, key), values.ravel())


def test_the_first_tar_layout_without_locations_or_views(tmp_path):
    reading = read_checkpoint(old.torch_010_early_tar(tmp_path))
    assert {key: record.shape for key, record in reading.tensors.items()} == {
        "weight": EXPECTED["0.weight"].shape, "bias": EXPECTED["0.bias"].shape}
    np.testing.assert_array_equal(stored_values(reading, "weight"), EXPECTED["0.weight"].ravel())


@pytest.mark.parametrize("builder, names", [("torch_019_module_tar", {k: k for k in EXPECTED}),
                                            ("torch_010_early_tar", {"weight": "0.weight", "bias": "0.bias"})])
def test_fix_to_zip_writes_the_weights_torch_loads_safely(tmp_path, builder, names):
    path = getattr(old, builder)(tmp_path)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    report = fix_checkpoint(path, to="zip")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert report.result["written"] and report.exit_code() == 0
    loaded = torch.load(report.result["output"], weights_only=True)
    assert set(loaded) == set(names)
    for key, source in names.items():
        np.testing.assert_array_equal(loaded[key].detach().numpy(), EXPECTED[source])
    actions = [step["action"] for step in report.result["plan"]]
    assert actions[-1] == "convert"
    assert ("extract-state-dict" in actions) == (builder == "torch_019_module_tar")


def test_dry_run_shows_the_plan_when_the_output_exists(cli, tmp_path):
    path = old.torch_010_early_tar(tmp_path)
    existing = tmp_path / "early_010.fixed.pth"
    existing.write_bytes(b"keep me")
    result = cli("ckpt", "fix", str(path), "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["result"]["dry_run"] and not report["result"]["written"]
    assert [step["action"] for step in report["result"]["plan"]] == ["convert"]
    assert any("already exists" in note for note in report["result"]["notes"])
    assert existing.read_bytes() == b"keep me"
    human = cli("ckpt", "fix", str(path), "--dry-run")
    assert human.exit_code == 0 and "would write" in human.stdout and "already exists" in human.stdout


def test_fix_output_is_written_in_sentences(cli, tmp_path):
    result = cli("ckpt", "fix", str(old.torch_019_module_tar(tmp_path)), "--to", "zip")
    assert result.exit_code == 0, result.output
    assert "bit-identical" in result.stdout
    assert "{'" not in result.stdout and ": True" not in result.stdout


# --- TorchScript archives of PyTorch 1.0-1.2 (model.json) and lite-interpreter archives ------------------------


def test_a_model_json_torchscript_archive_lists_its_tensors(tmp_path):
    path = old.torchscript_v1_archive(tmp_path)
    detection = detect_format(path)
    assert detection.format is Format.TORCHSCRIPT and detection.details["layout"] == "model.json"
    with pytest.raises(RuntimeError, match="Legacy model format"):  # why listing it ourselves matters
        torch.jit.load(path)
    report = inspect_checkpoint(path)
    assert [f.id for f in report.findings] == ["torchscript-archive"]
    assert "1.0-1.2" in report.findings[0].message
    rows = {row["key"]: row["shape"] for row in report.result["tensors"]["keys"]}
    assert rows == {key: list(values.shape) for key, values in EXPECTED.items()}
    reading = read_checkpoint(path)
    for key, values in EXPECTED.items():
        np.testing.assert_array_equal(stored_values(reading, key), values.ravel())


def test_a_lite_interpreter_archive_is_torchscript_with_its_weights(tmp_path):
    module = torch.jit.script(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)))
    path = tmp_path / "model.ptl"
    with pytest.warns(DeprecationWarning, match="Lite Interpreter"):  # the real writer, still shipped
        module._save_for_lite_interpreter(str(path))
    report = inspect_checkpoint(path)
    assert report.result["format"] == "torchscript"
    assert [f.id for f in report.findings] == ["torchscript-archive"]
    assert "lite-interpreter" in report.findings[0].message
    rows = {row["key"]: row["shape"] for row in report.result["tensors"]["keys"]}
    assert rows == {key: list(value.shape) for key, value in module.state_dict().items()}


def test_fix_writes_a_model_json_archive_as_a_state_dict(tmp_path):
    path = old.torchscript_v1_archive(tmp_path)
    assert "ckpt fix" in inspect_checkpoint(path).findings[0].fix
    report = fix_checkpoint(path)
    assert report.result["written"] and report.result["format_out"] == "zip"
    loaded = torch.load(report.result["output"], weights_only=True)
    assert list(loaded) == list(EXPECTED)
    for key, values in EXPECTED.items():
        np.testing.assert_array_equal(loaded[key].detach().numpy(), values)


def test_a_mobile_flatbuffer_model_is_named_not_called_damaged(tmp_path):
    module = torch.jit.script(torch.nn.Linear(3, 4))
    path = tmp_path / "model.ptl"
    with pytest.warns(DeprecationWarning, match="Lite Interpreter"):
        module._save_for_lite_interpreter(str(path), _use_flatbuffer=True)
    report = inspect_checkpoint(path)
    assert [f.id for f in report.findings] == ["torchscript-archive"]
    assert "flatbuffer" in report.findings[0].message and report.exit_code() == 0
    assert [section.name for section in report.sections] == ["file"]


@pytest.mark.parametrize("builder", ["torch_019_cuda_module_tar", "torch_010_early_cuda_tar"])
def test_gpu_saved_old_tar_files_say_so(tmp_path, builder):
    path = getattr(old, builder)(tmp_path)
    report = inspect_checkpoint(path)
    ids = [f.id for f in report.findings]
    assert "cuda-saved-tensors" in ids and "corrupt-checkpoint" not in ids
    assert set(report.result["devices"]) == {"cuda:0"}
    fixed = fix_checkpoint(path, to="zip")
    loaded = torch.load(fixed.result["output"], weights_only=True, map_location="cpu")
    np.testing.assert_array_equal(next(iter(loaded.values())).detach().numpy(), EXPECTED["0.weight"])


def test_a_dict_of_variables_reads_as_nested_weights_and_converts(tmp_path):
    path = old.torch_019_variables_tar(tmp_path)
    report = inspect_checkpoint(path)
    ids = [f.id for f in report.findings]
    assert "legacy-format" in ids and "corrupt-checkpoint" not in ids and "unsafe-pickle" not in ids
    assert report.result["weights_path"] == "state"
    assert report.result["metadata"]["epoch"] == 3
    fixed = fix_checkpoint(path, to="zip")
    loaded = torch.load(fixed.result["output"], weights_only=True)
    for key, values in EXPECTED.items():
        np.testing.assert_array_equal(loaded[key].numpy(), values)
