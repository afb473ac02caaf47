"""Format detection by content: every fixture, damaged variants, directories, and no torch at import."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys

import pytest
from fixtures.ckpt_builders import LFS_OID, BuiltCheckpoints, safetensors_tensors, write_safetensors

from torchdoctor.ckpt.formats import Format, detect_format
from torchdoctor.errors import InputError

EXPECTED = {
    "plain_state_dict": Format.ZIP,
    "dataparallel_state_dict": Format.ZIP,
    "compiled_state_dict": Format.ZIP,
    "lightning_style": Format.ZIP,
    "training_state": Format.ZIP,
    "full_module_pickle": Format.ZIP,
    "cuda_saved": Format.ZIP,
    "malicious_zip": Format.ZIP,
    "torchscript_file": Format.TORCHSCRIPT,
    "legacy_file": Format.LEGACY,
    "malicious_legacy": Format.LEGACY,
    "legacy_tar_file": Format.LEGACY_TAR,
    "safetensors_file": Format.SAFETENSORS,
    "hf_sharded_dir": Format.HF_SHARDED,
    "hf_sharded_bin_dir": Format.HF_SHARDED,
    "dcp_dir": Format.DCP,
    "plain_pickle_file": Format.PICKLE,
    "malicious_pickle": Format.PICKLE,
    "lfs_pointer": Format.LFS_POINTER,
    "html_page": Format.TEXT,
    "json_text": Format.TEXT,
    "empty_file": Format.EMPTY,
    "random_bytes": Format.UNKNOWN,
    "truncated_zip": Format.ZIP,
}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return BuiltCheckpoints(tmp_path_factory.mktemp("ckpt_formats"))


def test_every_format_has_a_fixture():
    assert set(EXPECTED.values()) == set(Format)


@pytest.mark.parametrize("builder", sorted(EXPECTED))
def test_detects_each_fixture(built, builder):
    detection = detect_format(built(builder))
    assert detection.format is EXPECTED[builder]
    assert detection.reason.endswith(".") and "\n" not in detection.reason
    assert (detection.corrupt is not None) == (builder == "truncated_zip")
    assert detection.format.is_checkpoint == (EXPECTED[builder] not in {Format.LFS_POINTER, Format.TEXT,
                                                                         Format.EMPTY, Format.UNKNOWN})


def test_detection_ignores_the_file_name(built, tmp_path):
    disguised = tmp_path / "weights.safetensors"
    shutil.copy(built("plain_state_dict"), disguised)
    assert detect_format(disguised).format is Format.ZIP
    html = tmp_path / "pytorch_model.bin"
    shutil.copy(built("html_page"), html)
    assert detect_format(html).format is Format.TEXT


def test_lfs_pointer_details(built):
    detection = detect_format(built("lfs_pointer"))
    assert detection.details == {"oid": LFS_OID, "size": 438007537}
    assert "git-lfs pointer" in detection.reason


def test_text_says_what_it_looks_like(built):
    html = detect_format(built("html_page"))
    assert html.details["looks_like"] == "an HTML page" and html.details["title"] == "404 Not Found"
    assert detect_format(built("json_text")).details["looks_like"] == "a JSON document"


def test_truncated_zip_is_still_a_zip_with_a_reason(built):
    detection = detect_format(built("truncated_zip"))
    assert detection.format is Format.ZIP
    assert detection.corrupt.startswith("zip central directory missing: file truncated?")
    assert str(built("truncated_zip").stat().st_size) in detection.corrupt


def test_truncated_torchscript_is_told_apart_by_its_first_record(built, tmp_path):
    data = built("torchscript_file").read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[:len(data) // 2])
    detection = detect_format(cut)
    assert detection.format is Format.TORCHSCRIPT and detection.corrupt


def test_legacy_stream_that_ends_early(built, tmp_path):
    data = built("legacy_file").read_bytes()
    for size in (40, 200, len(data) // 2):
        cut = tmp_path / f"legacy_{size}.pt"
        cut.write_bytes(data[:size])
        detection = detect_format(cut)
        assert detection.format is Format.LEGACY, size
        assert detection.corrupt and detection.corrupt.startswith("legacy stream ends early"), size


def test_safetensors_damage(tmp_path):
    good = write_safetensors(safetensors_tensors(), tmp_path / "good.safetensors")
    data = good.read_bytes()
    assert detect_format(good).details["tensors"] == 5
    past_end = tmp_path / "past_end.safetensors"
    past_end.write_bytes(struct.pack("<Q", len(data)) + data[8:])
    assert "points past the end" in detect_format(past_end).corrupt
    not_json = tmp_path / "not_json.safetensors"
    not_json.write_bytes(data[:9] + b"!" + data[10:])
    assert "not valid JSON" in detect_format(not_json).corrupt
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[:-7])
    found = detect_format(truncated)
    assert found.format is Format.SAFETENSORS and "ends early" in found.corrupt


def test_hf_index_file_and_missing_shards(built, tmp_path):
    folder = built("hf_sharded_dir")
    index = detect_format(folder / "model.safetensors.index.json")
    assert index.format is Format.HF_SHARDED and index.details["tensors"] == 5
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    (copy / "model-00002-of-00002.safetensors").unlink()
    detection = detect_format(copy)
    assert detection.format is Format.HF_SHARDED
    # missing shards are a finding of their own (shard-missing), not damage: the others are still read
    assert detection.corrupt is None and detection.details["missing_shards"] == ["model-00002-of-00002.safetensors"]


def test_plain_json_is_not_an_index(tmp_path):
    path = tmp_path / "x.index.json"
    path.write_text(json.dumps({"weights": {}}))
    assert detect_format(path).format is Format.TEXT


def test_missing_path_and_plain_directory_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        detect_format(tmp_path / "nope.pt")
    with pytest.raises(InputError, match="directory without a .metadata"):
        detect_format(tmp_path)


def test_known_non_checkpoint_binaries_are_named(tmp_path):
    path = tmp_path / "weights.pt"
    path.write_bytes(b"\x1f\x8b\x08\x00" + bytes(60))
    detection = detect_format(path)
    assert detection.format is Format.UNKNOWN and "gzip" in detection.reason


def test_importing_the_ckpt_reader_imports_neither_torch_nor_numpy():
    modules = ("formats", "reader", "layouts", "pickle_safe", "allowlist", "records", "tensor_data")
    code = (f"import sys; import {', '.join('torchdoctor.ckpt.' + m for m in modules)}; "
            "print('torch' in sys.modules, 'numpy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
