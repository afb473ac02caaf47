"""``ckpt fix`` on real files: every fix loads for real, the input never changes, failures leave nothing behind."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch
from fixtures import ckpt_builders as builders
from fixtures.models import TiedLM, TinyClassifier, TinyConvNet
from torch import nn

from torchdoctor.ckpt.fix import VerificationFailed, WriteFailed, fix_checkpoint
from torchdoctor.ckpt.formats import Format, detect_format
from torchdoctor.ckpt.reader import read_checkpoint
from torchdoctor.errors import InputError, TorchdoctorError, UsageError

# torch.compile imports inductor, which trips torch's own deprecation of jit.script_method.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fix(path: Path, **options):
    """``fix_checkpoint`` that also proves the input's bytes did not change, whatever happened."""
    before = sha256(path)
    try:
        return fix_checkpoint(path, **options)
    finally:
        assert sha256(path) == before, "ckpt fix modified its input"


def build(name: str, tmp_path: Path) -> Path:
    return getattr(builders, name)(tmp_path)


def load(path: Path | str):
    return torch.load(path, weights_only=True)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def raw(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes in row-major order (NaN compares equal to NaN)."""
    return tensor.contiguous().reshape(-1).view(torch.uint8)


def assert_same_tensors(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
        assert torch.equal(raw(a[key]), raw(b[key])), key


# --- wrappers and prefixes ------------------------------------------------------------------------------------


def test_dataparallel_keys_load_strictly_into_the_plain_model(tmp_path, validate_report):
    source = build("dataparallel_state_dict", tmp_path)
    report = fix(source)
    validate_report(json.loads(json.dumps(report.to_dict())))
    out = tmp_path / "dataparallel.fixed.pt"
    assert report.exit_code() == 0 and report.findings == ()
    assert report.result["written"] and report.result["output"] == str(out)
    assert [s["action"] for s in report.result["plan"]] == ["strip-prefix"]
    assert report.result["plan"][0]["safe"] is True
    TinyConvNet().load_state_dict(load(out), strict=True)
    assert_same_tensors(load(out), {k.removeprefix("module."): v for k, v in load(source).items()})
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("name", ["compiled_state_dict", "ddp_compiled_state_dict", "submodule_compiled_state_dict"])
def test_compile_prefixes_and_infixes_are_stripped(tmp_path, name):
    source = build(name, tmp_path)
    report = fix(source, output=tmp_path / "out.pt")
    assert report.exit_code() == 0 and report.findings == ()
    TinyConvNet().load_state_dict(load(tmp_path / "out.pt"), strict=True)
    actions = [s["action"] for s in report.result["plan"]]
    assert actions == (["strip-infix"] if name.startswith("submodule") else ["strip-prefix"])
    if name.startswith("ddp"):
        assert report.result["plan"][0]["prefixes"] == ["module.", "_orig_mod."]


def test_lightning_keys_renamed_to_the_model_and_a_step_trains(tmp_path):
    source = build("lightning_style", tmp_path)
    report = fix(source, model=TinyClassifier(), output=tmp_path / "out.pt")
    assert report.exit_code() == 0 and report.findings == ()
    actions = [s["action"] for s in report.result["plan"]]
    assert actions == ["unwrap", "drop-top-level", "rename"]
    assert report.result["plan"][2]["strip"] == "model."
    weights = load(tmp_path / "out.pt")
    assert list(weights) == ["fc.weight", "fc.bias"]
    TinyClassifier().load_state_dict(weights, strict=True)
    model_check = report.result["verified"]["model"]
    assert model_check["load_state_dict"] == "strict=True" and model_check["training_step"]["ok"]


def test_an_explicit_input_shape_feeds_a_language_model_token_ids(tmp_path):
    # nn.Embedding first: --input-shape 3,5 is (batch, sequence) of token ids, as the guess without it is
    source = tmp_path / "lm.pt"
    torch.save({f"module.{key}": value for key, value in TiedLM().state_dict().items()}, source)
    report = fix(source, model=TiedLM(), input_shapes=[(3, 5)], output=tmp_path / "out.pt")
    step = report.result["verified"]["model"]["training_step"]
    assert step["ok"] and step["input_shapes"] == [[3, 5]]


@pytest.mark.parametrize("to", ["zip", "legacy", "safetensors"])
def test_every_output_format_is_verified_against_the_model(tmp_path, to):
    report = fix(build("lightning_style", tmp_path), model=TinyClassifier(), to=to, output=tmp_path / "out")
    model_check = report.result["verified"]["model"]
    assert model_check["load_state_dict"] == "strict=True" and model_check["training_step"]["ok"]
    assert detect_format(tmp_path / "out").format.value == to


def test_explicit_strip_prefix_and_keep_wrapper(tmp_path):
    source = build("lightning_style", tmp_path)
    report = fix(source, strip_prefixes=("model.",), keep_wrapper=True, output=tmp_path / "out.ckpt")
    checkpoint = load(tmp_path / "out.ckpt")
    assert list(checkpoint["state_dict"]) == ["fc.weight", "fc.bias"]
    original = load(source)["optimizer_states"][0]
    assert checkpoint["epoch"] == 3 and checkpoint["optimizer_states"][0]["param_groups"] == original["param_groups"]
    assert torch.equal(checkpoint["optimizer_states"][0]["state"][0]["momentum_buffer"],
                       original["state"][0]["momentum_buffer"])
    assert [s["action"] for s in report.result["plan"]] == ["strip-prefix"]
    assert {f.id for f in report.findings} == {"nested-state-dict", "training-state-present"}  # kept on purpose
    assert report.exit_code() == 0


def test_a_prefix_no_key_has_is_a_note_not_a_step(tmp_path):
    report = fix(build("plain_state_dict", tmp_path), strip_prefixes=("nothing.",))
    assert report.result["nothing_to_fix"] and not report.result["written"]
    assert "nothing." in report.result["notes"][0]
    assert list(tmp_path.iterdir()) == [tmp_path / "plain.pt"]


def test_training_state_is_unwrapped_and_what_was_dropped_is_listed(tmp_path):
    source = build("training_state", tmp_path)
    report = fix(source, output=tmp_path / "weights.pt")
    unwrap, dropped = report.result["plan"]
    assert unwrap["action"] == "unwrap" and unwrap["path"] == ["model"]
    assert dropped["action"] == "drop-top-level" and dropped["safe"] is False
    assert dropped["keys"] == ["optimizer", "scheduler", "scaler", "epoch"]
    assert dropped["training_state"] == {"optimizer": "optimizer", "scheduler": "scheduler", "scaler": "scaler"}
    TinyClassifier().load_state_dict(load(tmp_path / "weights.pt"), strict=True)
    assert report.result["bytes_out"] < report.result["bytes_in"]


def test_mismatched_head_is_dropped_and_listed_for_reinitialisation(tmp_path):
    source = build("head1000_state_dict", tmp_path)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 10))
    report = fix(source, model=model, drop_mismatched=True, output=tmp_path / "out.pt")
    step = report.result["plan"][0]
    assert step["action"] == "drop-mismatched" and step["safe"] is False and step["keys"] == ["2.weight", "2.bias"]
    assert report.result["reinitialise"] == ["2.weight", "2.bias"]
    weights = load(tmp_path / "out.pt")
    assert list(weights) == ["0.weight", "0.bias"]
    loaded = model.load_state_dict(weights, strict=False)
    assert loaded.missing_keys == ["2.weight", "2.bias"]
    verified = report.result["verified"]["model"]
    assert verified["load_state_dict"] == "strict=False" and verified["missing"] == ["2.weight", "2.bias"]
    (missing,) = report.findings
    assert missing.id == "missing-keys" and missing.severity.value == "warning"  # dropped on purpose
    assert report.exit_code() == 0


def test_without_drop_mismatched_the_mismatch_stays_a_finding(tmp_path):
    source = build("head1000_state_dict", tmp_path)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 10))
    report = fix(source, model=model, output=tmp_path / "out.pt")
    assert report.result["nothing_to_fix"] and not (tmp_path / "out.pt").exists()
    assert [f.id for f in report.findings] == ["shape-mismatch", "shape-mismatch"] and report.exit_code() == 1


# --- storages, formats, values ------------------------------------------------------------------------------------


def test_tied_weights_stay_tied_and_the_file_does_not_grow(tmp_path):
    source = build("tied_dataparallel", tmp_path)
    report = fix(source, output=tmp_path / "out.pt")
    weights = load(tmp_path / "out.pt")
    a, b = weights["0.weight"], weights["1.weight"]
    assert a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
    assert report.result["verified"]["shared_storages"]["groups"] == [["0.weight", "1.weight"]]
    assert abs(report.result["bytes_out"] - report.result["bytes_in"]) < 1024  # one storage, not two
    with zipfile.ZipFile(tmp_path / "out.pt") as archive:
        assert sum("/data/" in name for name in archive.namelist()) == 1
        assert archive.testzip() is None  # every record's CRC-32 is right


@pytest.mark.parametrize("name, prefix", [("dtypes_state_dict", "float"), ("views_state_dict", "s"),
                                          ("tied_weights", "0.")])
def test_the_record_writer_keeps_dtypes_views_parameters_and_ties(tmp_path, name, prefix):
    source = build(name, tmp_path)
    report = fix(source, strip_prefixes=(prefix,), output=tmp_path / "out.pt")
    assert report.result["writer"]["writer"].startswith("zip records copied")
    before, after = load(source), load(tmp_path / "out.pt")
    renamed = {k.removeprefix(prefix): v for k, v in before.items()}
    assert list(after) == list(renamed)
    for key, tensor in renamed.items():
        got = after[key]
        assert (got.dtype, got.shape, got.stride(), got.storage_offset(), type(got), got.device) == \
               (tensor.dtype, tensor.shape, tensor.stride(), tensor.storage_offset(), type(tensor), tensor.device)
        if tensor.device.type != "meta":
            assert torch.equal(raw(got), raw(tensor)), key


def test_compressed_records_empty_tensors_and_cuda_locations(tmp_path):
    source = build("dataparallel_state_dict", tmp_path)
    deflated = tmp_path / "deflated.pt"
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as new:
        for info in old.infolist():
            new.writestr(info.filename, old.read(info))
    report = fix(deflated, output=tmp_path / "a.pt")
    assert report.result["writer"]["copy"] == "read/write"  # decompressed as it streams, not copied in place
    assert_same_tensors(load(tmp_path / "a.pt"), {k.removeprefix("module."): v for k, v in load(source).items()})
    torch.save({"module.empty": torch.zeros(0), "module.w": torch.arange(5.0)}, tmp_path / "empty.pt")
    fix(tmp_path / "empty.pt", output=tmp_path / "b.pt")
    assert_same_tensors(load(tmp_path / "b.pt"), {"empty": torch.zeros(0), "w": torch.arange(5.0)})
    report = fix(build("cuda_saved", tmp_path), strip_prefixes=("conv.",), output=tmp_path / "c.pt")
    assert [f.id for f in report.findings] == ["cuda-saved-tensors"]  # locations are copied, not rewritten
    for name in ("a.pt", "b.pt", "c.pt"):
        with zipfile.ZipFile(tmp_path / name) as archive:
            assert archive.testzip() is None


def test_data_pkl_is_what_torch_save_writes(tmp_path):
    source = build("legacy_file", tmp_path)
    report = fix(source, to="zip", output=tmp_path / "out.pt")
    torch.save(load(source), tmp_path / "reference.pt")
    with zipfile.ZipFile(tmp_path / "out.pt") as ours, zipfile.ZipFile(tmp_path / "reference.pt") as theirs:
        names = [n.split("/", 1)[1] for n in ours.namelist()]
        assert names == [n.split("/", 1)[1] for n in theirs.namelist()]
        assert ours.read("archive/data.pkl") == theirs.read("reference/data.pkl")
        assert ours.testzip() is None
    assert report.result["plan"][0]["action"] == "convert"
    assert_same_tensors(load(tmp_path / "out.pt"), load(source))


def test_a_legacy_checkpoint_stays_legacy_with_its_storages_copied_not_deserialised(tmp_path):
    source = tmp_path / "dp_legacy.pt"
    torch.save(nn.DataParallel(TinyConvNet()).state_dict(), source, _use_new_zipfile_serialization=False)
    report = fix(source, output=tmp_path / "out.pt")
    writer, verified = report.result["writer"], report.result["verified"]
    assert writer["writer"].startswith("legacy stream") and writer["copy"] == "copy_file_range"
    assert verified["storages_compared_while_copying"] == writer["storages"] == len(load(source))
    assert detect_format(tmp_path / "out.pt").format is Format.LEGACY
    assert_same_tensors(load(tmp_path / "out.pt"), {k.removeprefix("module."): v for k, v in load(source).items()})
    assert abs(report.result["bytes_out"] - report.result["bytes_in"]) < 1024  # only the key names changed


def test_the_legacy_stream_starts_as_torch_writes_it_and_loads_as_torch_loads_it(tmp_path):
    source = build("legacy_file", tmp_path)
    fix(source, strip_prefixes=("fc.",), output=tmp_path / "ours.pt")
    theirs = tmp_path / "theirs.pt"
    torch.save({k.removeprefix("fc."): v for k, v in load(source).items()}, theirs,
               _use_new_zipfile_serialization=False)
    heads = []
    for path in (tmp_path / "ours.pt", theirs):
        with open(path, "rb") as stream:
            heads.append([pickle.load(stream) for _ in range(3)])  # magic number, protocol, sys_info
    assert heads[0] == heads[1]
    assert_same_tensors(load(tmp_path / "ours.pt"), load(theirs))
    assert_same_tensors(torch.load(tmp_path / "ours.pt", weights_only=False), load(theirs))


def test_zip_to_legacy_to_zip_round_trip(tmp_path):
    source = build("tied_weights", tmp_path)
    legacy = fix(source, to="legacy", output=tmp_path / "legacy.pt")
    assert legacy.result["writer"]["writer"].startswith("legacy stream")
    tied = load(tmp_path / "legacy.pt")
    assert tied["0.weight"].untyped_storage().data_ptr() == tied["1.weight"].untyped_storage().data_ptr()
    assert detect_format(tmp_path / "legacy.pt").format is Format.LEGACY
    assert [f.id for f in legacy.findings] == ["legacy-format"]
    back = fix(tmp_path / "legacy.pt", to="zip", output=tmp_path / "back.pt")
    assert back.findings == () and detect_format(tmp_path / "back.pt").format is Format.ZIP
    result = load(tmp_path / "back.pt")
    assert_same_tensors(result, load(source))
    assert result["0.weight"].untyped_storage().data_ptr() == result["1.weight"].untyped_storage().data_ptr()


def test_to_safetensors_reads_back_equal_to_the_source(tmp_path):
    source = build("tied_dataparallel", tmp_path)
    report = fix(source, to="safetensors")
    out = tmp_path / "tied_dp.fixed.safetensors"
    assert report.result["output"] == str(out)
    actions = {s["action"]: s for s in report.result["plan"]}
    assert list(actions) == ["strip-prefix", "convert", "untie"]
    assert actions["untie"]["extra_bytes"] == 64 * 32 * 4
    reading = read_checkpoint(out)
    assert reading.format is Format.SAFETENSORS and reading.metadata == {"format": "pt"}
    from torchdoctor.ckpt.against_model import materialize

    assert_same_tensors(materialize(reading, reading.tree),
                        {k.removeprefix("module."): v for k, v in load(source).items()})


def test_safetensors_input_converts_to_zip_without_torch_load(tmp_path):
    source = build("safetensors_file", tmp_path)
    report = fix(source, to="zip")
    out = tmp_path / "model.fixed.pt"
    assert report.result["output"] == str(out)
    assert_same_tensors(load(out), builders.safetensors_tensors())


def test_the_zip_rename_path_never_torch_loads_the_input(tmp_path, monkeypatch):
    source = build("dataparallel_state_dict", tmp_path)
    loaded = []
    real_load = torch.load

    def counting_load(f, *args, **kwargs):
        loaded.append(Path(f))
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    report = fix(source, output=tmp_path / "out.pt")
    assert report.result["written"]
    assert source not in loaded
    assert [p.parent for p in loaded] == [tmp_path] and loaded[0].name.endswith(".tmp")  # only the output, to verify


# --- refusals and the output path ---------------------------------------------------------------------------------


def test_dry_run_plans_and_writes_nothing(tmp_path):
    source = build("training_state", tmp_path)
    report = fix(source, dry_run=True)
    assert report.result["dry_run"] and not report.result["written"] and report.result["verified"] == {}
    assert [s["action"] for s in report.result["plan"]] == ["unwrap", "drop-top-level"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["training.pt"]


def test_existing_output_needs_force(tmp_path):
    source = build("dataparallel_state_dict", tmp_path)
    out = tmp_path / "dataparallel.fixed.pt"
    out.write_bytes(b"keep me")
    with pytest.raises(UsageError, match="already exists") as caught:
        fix(source)
    assert caught.value.exit_code == 2 and out.read_bytes() == b"keep me"
    assert fix(source, force=True).result["written"]
    TinyConvNet().load_state_dict(load(out), strict=True)


@pytest.mark.parametrize("force", [False, True])
def test_output_equal_to_input_is_refused(tmp_path, force):
    source = build("dataparallel_state_dict", tmp_path)
    with pytest.raises(UsageError, match="is the input itself"):
        fix(source, output=source, force=force)
    os.link(source, tmp_path / "hardlink.pt")
    with pytest.raises(UsageError, match="is the input itself"):
        fix(source, output=tmp_path / "hardlink.pt", force=True)


@pytest.mark.parametrize("name", ["malicious_zip", "malicious_legacy"])
def test_malicious_files_are_refused_and_nothing_runs(tmp_path, name, validate_report):
    source = build(name, tmp_path)
    report = fix(source, to="zip", output=tmp_path / "out.pt")
    validate_report(report.to_dict())
    assert [f.id for f in report.findings] == ["unsafe-pickle"] and report.exit_code() == 1
    assert report.result["plan"][0]["action"] == "refuse" and not report.result["written"]
    assert not (tmp_path / builders.MARKER_NAME).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [source.name]


def test_full_module_pickle_is_refused(tmp_path):
    report = fix(build("full_module_pickle", tmp_path), output=tmp_path / "out.pt")
    assert [(f.id, f.severity.value) for f in report.findings] == [("full-module-pickle", "error")]
    assert not (tmp_path / "out.pt").exists()


@pytest.mark.parametrize("name, finding", [("html_page", "not-a-checkpoint"), ("truncated_zip", "corrupt-checkpoint"),
                                           ("lfs_pointer", "lfs-pointer"), ("empty_file", "corrupt-checkpoint")])
def test_not_checkpoints_get_inspects_findings(tmp_path, name, finding):
    source = build(name, tmp_path)
    report = fix(source, output=tmp_path / "out.pt")
    assert [f.id for f in report.findings] == [finding] and report.exit_code() == 1
    assert not report.result["written"] and not (tmp_path / "out.pt").exists()


@pytest.mark.parametrize("name, words", [("torchscript_file", "TorchScript")])  # shards: test_fix_sharded.py
def test_out_of_scope_formats_raise_input_error(tmp_path, name, words):
    source = build(name, tmp_path)
    with pytest.raises(InputError, match=words):
        fix_checkpoint(source, output=tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()


def test_usage_errors_for_impossible_conversions(tmp_path):
    with pytest.raises(UsageError, match="cannot convert to 'onnx'"):
        fix(build("plain_state_dict", tmp_path), to="onnx")
    with pytest.raises(UsageError, match="legacy format cannot hold"):
        fix(build("dtypes_state_dict", tmp_path), to="legacy")
    with pytest.raises(UsageError, match="flat dict"):
        fix(build("lightning_style", tmp_path), to="safetensors", keep_wrapper=True)
    assert leftovers(tmp_path) == []


# --- failures while writing: nothing left behind --------------------------------------------------------------------


def test_an_unwritable_folder_is_an_exit_2_error(tmp_path):
    source = build("dataparallel_state_dict", tmp_path)
    with pytest.raises(WriteFailed, match="cannot create a file in /proc") as caught:
        fix(source, output="/proc/fixed.pt")  # not writable, even for root
    assert caught.value.exit_code == 2


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_a_read_only_folder_is_an_exit_2_error(tmp_path):
    source = build("dataparallel_state_dict", tmp_path)
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(WriteFailed):
            fix(source, output=folder / "out.pt")
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o700)


def test_a_verification_mismatch_removes_the_temp_file(tmp_path, monkeypatch):
    from torchdoctor.ckpt import record_copy

    real_copy = record_copy.copy_range
    monkeypatch.setattr(record_copy, "copy_range", lambda src, dst, at, to, n: real_copy(src, dst, at + 4, to, n - 4))
    source = build("dataparallel_state_dict", tmp_path)
    with pytest.raises(VerificationFailed, match="differ"):
        fix(source, output=tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists() and leftovers(tmp_path) == []


def test_a_mismatch_in_a_shared_storage_names_a_tensor_and_the_byte(tmp_path, monkeypatch):
    from torchdoctor.ckpt import record_copy

    real_copy = record_copy.copy_range

    def flip_one_byte(src, dst, at, to, n):
        done = real_copy(src, dst, at, to, n)
        byte = os.pread(dst, 1, to + 100)
        os.pwrite(dst, bytes([byte[0] ^ 1]), to + 100)
        return done

    monkeypatch.setattr(record_copy, "copy_range", flip_one_byte)
    source = build("tied_dataparallel", tmp_path)
    with pytest.raises(VerificationFailed, match=r"module\.0\.weight: the written bytes differ .* at byte 100 "):
        fix(source, output=tmp_path / "out.pt")
    assert leftovers(tmp_path) == []


def test_storages_are_compared_while_copying_and_located_again_in_the_reread_file(tmp_path):
    source = build("views_state_dict", tmp_path)
    report = fix(source, strip_prefixes=("s",), output=tmp_path / "out.pt")
    verified = report.result["verified"]
    with zipfile.ZipFile(tmp_path / "out.pt") as archive:
        storages = [info for info in archive.infolist() if "/data/" in info.filename]
    assert verified["storages_compared_while_copying"] == len(storages) > 0
    assert verified["bytes_compared"] == sum(info.file_size for info in storages)


def test_a_storage_compared_at_the_wrong_place_is_compared_again_by_value(tmp_path, monkeypatch):
    from dataclasses import replace

    from torchdoctor.ckpt import verify

    real_call = verify.StorageComparer.__call__
    monkeypatch.setattr(verify.StorageComparer, "__call__",  # as if the writer had reported another offset
                        lambda self, copied: real_call(self, replace(copied, start=copied.start - 64)))
    source = build("dataparallel_state_dict", tmp_path)
    with pytest.raises(VerificationFailed, match="differ"):
        fix(source, output=tmp_path / "out.pt")
    monkeypatch.setattr(verify.StorageComparer, "__call__", lambda self, copied: None)  # compared nothing
    report = fix(source, output=tmp_path / "out.pt")
    verified = report.result["verified"]
    assert verified["storages_compared_while_copying"] == 0 and verified["bit_identical"]
    assert verified["bytes_compared"] == sum(t.nbytes for t in load(tmp_path / "out.pt").values())


ENOSPC_SCRIPT = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, {repo!r})
    from torchdoctor.ckpt.fix import fix_checkpoint
    from torchdoctor.errors import TorchdoctorError
    folder, source, fill = sys.argv[1], sys.argv[2], sys.argv[3] == "fill"
    if fill:  # no byte left: torch's zip writer itself fails on its first record
        fd = os.open(os.path.join(folder, "filler"), os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(fd, b"x" * 4096):
                pass
        except OSError:
            os.close(fd)
    try:
        fix_checkpoint(source, output=os.path.join(folder, "out.pt"))
        outcome = {{"error": None}}
    except TorchdoctorError as e:
        outcome = {{"error": type(e).__name__, "message": e.message, "exit_code": e.exit_code}}
    outcome["left"] = sorted(set(os.listdir(folder)) - {{"filler"}})
    print(json.dumps(outcome))
""")


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root and unshare for a tmpfs")
@pytest.mark.parametrize("fill", ["copying", "fill"])
def test_a_full_disk_is_an_exit_2_error_with_no_temp_file_left(tmp_path, repo_root, fill):
    source = tmp_path / "big.pt"
    torch.save({f"module.w{i}": torch.ones(256, 256) for i in range(8)}, source)  # 2 MiB: more than the tmpfs
    before = sha256(source)
    folder = tmp_path / "full"
    folder.mkdir()
    script = ENOSPC_SCRIPT.format(repo=str(repo_root / "src"))
    command = f'mount -t tmpfs -o size=1m tmpfs "$1" && exec "{sys.executable}" -c "$2" "$1" "$3" "$4"'
    done = subprocess.run(["unshare", "-m", "sh", "-c", command, "sh", str(folder), script, str(source), fill],
                          capture_output=True, text=True, timeout=120)
    if done.returncode != 0 and "mount" in done.stderr:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr[-2000:]  # torch's writer, destroyed unfinalized, would abort
    outcome = json.loads(done.stdout)
    assert outcome["error"] == "WriteFailed" and outcome["exit_code"] == 2, outcome
    assert "No space left on device" in outcome["message"]
    assert outcome["left"] == []
    assert sha256(source) == before


def test_the_buffered_fallback_writes_the_same_file(tmp_path, monkeypatch):
    from torchdoctor.ckpt import writers

    source = build("tied_dataparallel", tmp_path)
    fix(source, output=tmp_path / "reserved.pt")

    def layout_changed(*args):
        raise writers.LayoutChanged

    monkeypatch.setattr(writers, "_write_reserved", layout_changed)
    report = fix(source, output=tmp_path / "buffered.pt")
    assert report.result["writer"]["copy"] == "one storage at a time through memory"
    with zipfile.ZipFile(tmp_path / "reserved.pt") as a, zipfile.ZipFile(tmp_path / "buffered.pt") as b:
        assert [(i.filename, i.CRC, i.file_size) for i in a.infolist() if "serialization_id" not in i.filename] == \
               [(i.filename, i.CRC, i.file_size) for i in b.infolist() if "serialization_id" not in i.filename]


def test_cli_fix_json_and_exit_codes(tmp_path, cli):
    source = build("dataparallel_state_dict", tmp_path)
    done = cli("ckpt", "fix", str(source), "--json")
    assert done.exit_code == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["command"] == "ckpt fix" and report["result"]["written"]
    again = cli("ckpt", "fix", str(source))
    assert again.exit_code == 2 and "already exists" in again.stderr


def test_errors_are_torchdoctor_errors():
    assert issubclass(VerificationFailed, WriteFailed) and issubclass(WriteFailed, TorchdoctorError)


def test_progress_counts_the_storage_bytes_copied(tmp_path):
    source = build("tied_dataparallel", tmp_path)
    seen = []
    report = fix(source, output=tmp_path / "out.pt", on_progress=lambda done, total: seen.append((done, total)))
    with zipfile.ZipFile(tmp_path / "out.pt") as archive:
        stored = sum(info.file_size for info in archive.infolist() if "/data/" in info.filename)
    assert seen and seen[-1] == (stored, stored) and report.result["written"]
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)


def test_a_legacy_tar_checkpoint_streams_to_zip_by_default_and_to_legacy_on_request(tmp_path):
    source = build("legacy_tar_file", tmp_path)
    expected = torch.load(source, weights_only=False)  # torch reads the tar layout only this way; our own fixture
    for to, out_format in ((None, Format.ZIP), ("legacy", Format.LEGACY)):
        output = tmp_path / f"out_{to}.pt"
        report = fix(source, to=to, strip_prefixes=("w",), output=output)
        assert report.result["verified"]["storages_compared_while_copying"] == 2
        assert detect_format(output).format is out_format
        assert_same_tensors(load(output), {k.removeprefix("w"): v for k, v in expected.items()})
