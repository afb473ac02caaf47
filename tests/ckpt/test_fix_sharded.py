"""``ckpt fix`` of sharded Hugging Face checkpoints: the shards merged into one verified file, the input untouched."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from fixtures.ckpt_builders import hf_sharded_bin_dir, hf_sharded_dir, safetensors_tensors
from fixtures.sharded_builders import hf_sharded_ddp_dir, hf_sharded_lfs_dir

from torchdoctor.ckpt.fix import fix_checkpoint
from torchdoctor.errors import UsageError


def hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def fix(path: Path, **options):
    """``fix_checkpoint`` that also proves no file of the shards' folder changed, whatever happened."""
    folder = path if path.is_dir() else path.parent
    before = hashes(folder)
    try:
        return fix_checkpoint(path, **options)
    finally:
        assert hashes(folder) == before, "ckpt fix modified its input folder"


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path)


def assert_bit_identical(got: dict, expected: dict) -> None:
    assert list(got) == list(expected) or sorted(got) == sorted(expected)
    for key, tensor in expected.items():
        assert (got[key].dtype, got[key].shape) == (tensor.dtype, tensor.shape), key
        assert torch.equal(got[key].reshape(-1).view(torch.uint8), tensor.reshape(-1).view(torch.uint8)), key


def shard_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every shard read by its own library: what the merged file must hold."""
    found: dict[str, torch.Tensor] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        found.update(read_safetensors(shard))
    for shard in sorted(folder.glob("*.bin")):
        found.update(torch.load(shard, weights_only=True))
    return found


def test_safetensors_shards_merge_into_one_safetensors_file_beside_the_folder(tmp_path, validate_report):
    folder = hf_sharded_dir(tmp_path)
    report = fix(folder)
    validate_report(json.loads(json.dumps(report.to_dict())))
    out = tmp_path / "hf_sharded.fixed.safetensors"
    assert report.exit_code() == 0 and report.result["written"] and report.result["output"] == str(out)
    assert [step["action"] for step in report.result["plan"]] == ["merge-shards", "convert"]
    assert report.result["plan"][0]["shards"] == ["model-00001-of-00002.safetensors",
                                                  "model-00002-of-00002.safetensors"]
    assert report.result["format_in"] == "hf-sharded" and report.result["format_out"] == "safetensors"
    assert report.result["verified"]["bit_identical"] and report.result["verified"]["tensors"] == 5
    assert report.result["bytes_in"] == sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    assert_bit_identical(read_safetensors(out), safetensors_tensors())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf_sharded", "hf_sharded.fixed.safetensors"]


def test_bin_shards_merge_into_a_zip_by_copying_records_and_to_safetensors_on_request(tmp_path):
    folder = hf_sharded_bin_dir(tmp_path)
    expected = shard_tensors(folder)
    zipped = fix(folder)
    out = tmp_path / "hf_sharded_bin.fixed.pt"
    assert zipped.result["format_out"] == "zip" and "byte for byte" in zipped.result["writer"]["writer"]
    assert zipped.result["verified"]["storages_compared_while_copying"] == len(expected)
    assert_bit_identical(torch.load(out, weights_only=True, mmap=True), expected)
    flat = fix(folder / "pytorch_model.bin.index.json", to="safetensors", output=tmp_path / "flat.safetensors")
    assert flat.result["written"] and flat.result["format_out"] == "safetensors"
    assert_bit_identical(read_safetensors(tmp_path / "flat.safetensors"), expected)


def test_a_wrapper_prefix_is_stripped_across_all_shards(tmp_path):
    folder = hf_sharded_ddp_dir(tmp_path)
    report = fix(folder, to="zip", output=tmp_path / "plain.pt")
    actions = [step["action"] for step in report.result["plan"]]
    assert actions == ["merge-shards", "strip-prefix", "convert"] and report.findings == ()
    assert_bit_identical(torch.load(tmp_path / "plain.pt", weights_only=True), safetensors_tensors())
    asked = fix(hf_sharded_dir(tmp_path), strip_prefixes=("embed.",), output=tmp_path / "asked.safetensors")
    assert "weight" in read_safetensors(tmp_path / "asked.safetensors")
    assert asked.result["plan"][1]["requested"] is True


def test_dry_run_plans_and_writes_nothing(tmp_path):
    folder = hf_sharded_dir(tmp_path)
    report = fix(folder / "model.safetensors.index.json", dry_run=True, to="zip")
    assert report.result["dry_run"] and not report.result["written"]
    assert report.result["output"] == str(tmp_path / "hf_sharded.fixed.pt")
    assert [step["action"] for step in report.result["plan"]] == ["merge-shards", "convert"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf_sharded"]


def test_incomplete_shards_and_legacy_output_are_refused(tmp_path):
    pointers = fix(hf_sharded_lfs_dir(tmp_path), output=tmp_path / "out.safetensors")
    assert [f.id for f in pointers.findings] == ["lfs-pointer"] and pointers.exit_code() == 1
    assert pointers.result["plan"][0]["action"] == "refuse" and "git-lfs" in pointers.result["plan"][0]["detail"]
    assert not pointers.result["written"] and not (tmp_path / "out.safetensors").exists()
    with pytest.raises(UsageError, match="safetensors or zip"):
        fix(hf_sharded_bin_dir(tmp_path), to="legacy")
    assert not [p for p in tmp_path.iterdir() if p.is_file()]


def test_the_cli_merges_and_exits_2_on_what_it_cannot_do(cli, tmp_path, validate_report):
    folder = hf_sharded_dir(tmp_path)
    done = cli("ckpt", "fix", str(folder), "--to", "zip", "--json")
    assert done.exit_code == 0, done.output
    report = validate_report(json.loads(done.stdout))
    assert report["result"]["written"] and Path(report["result"]["output"]).name == "hf_sharded.fixed.pt"
    refused = cli("ckpt", "fix", str(folder), "--to", "legacy")
    assert refused.exit_code == 2 and "Traceback" not in refused.stderr
    assert "safetensors or zip" in refused.stderr and refused.stderr.count("\n") <= 2


def test_a_real_save_pretrained_round_trip(tmp_path):
    pytest.importorskip("transformers", reason="transformers is not installed")
    from fixtures.sharded_builders import save_pretrained_sharded_dir
    from transformers import GPT2LMHeadModel

    folder, model = save_pretrained_sharded_dir(tmp_path)
    assert len(list(folder.glob("model-*.safetensors"))) > 1
    merged = tmp_path / "merged"
    merged.mkdir()
    (merged / "config.json").write_bytes((folder / "config.json").read_bytes())
    report = fix(folder, output=merged / "model.safetensors", model=model)  # verified by loading it and a step
    assert report.exit_code() == 0 and report.result["verified"]["bit_identical"]
    assert report.result["verified"]["model"]["training_step"]["ok"]
    assert_bit_identical(read_safetensors(merged / "model.safetensors"), shard_tensors(folder))
    loaded = GPT2LMHeadModel.from_pretrained(merged)
    state, original = loaded.state_dict(), model.state_dict()
    assert sorted(state) == sorted(original)
    assert all(torch.equal(state[key], original[key]) for key in original)
    assert loaded.lm_head.weight.data_ptr() == loaded.transformer.wte.weight.data_ptr()  # still tied
