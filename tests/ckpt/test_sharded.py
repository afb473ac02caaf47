"""Sharded Hugging Face layouts cloned without git-lfs, or with shards missing: one finding each, a full report;
large checkpoints read headers only by default, and the value scan; text passed by mistake."""

from __future__ import annotations

import json

import pytest
from fixtures.sharded_builders import hf_sharded_bin_lfs_dir, hf_sharded_lfs_dir, hf_sharded_partial_dir


@pytest.mark.parametrize("builder, index_name, as_index", [
    (hf_sharded_lfs_dir, "model.safetensors.index.json", False),
    (hf_sharded_lfs_dir, "model.safetensors.index.json", True),
    (hf_sharded_bin_lfs_dir, "pytorch_model.bin.index.json", True)])
def test_lfs_pointer_shards_are_one_finding_with_counts_and_sizes(cli, tmp_path, validate_report, builder,
                                                                  index_name, as_index):
    folder = builder(tmp_path)
    target = folder / index_name if as_index else folder
    sizes = [int(p.read_text().split("size ")[1]) for p in folder.iterdir() if p.name != index_name]
    result = cli("ckpt", "inspect", str(target), "--json")
    assert result.exit_code == 1, result.output
    report = validate_report(json.loads(result.stdout))
    pointers = [f for f in report["findings"] if f["id"] == "lfs-pointer"]
    assert len(pointers) == 1
    details = pointers[0]["details"]
    index = json.loads((folder / index_name).read_text())
    assert (details["pointers"], details["shards"]) == (2, 2)
    assert details["pointed_bytes"] == sum(sizes)
    assert details["total_size"] == index["metadata"].get("total_size")
    assert "git lfs pull" in pointers[0]["message"]
    assert report["result"]["format"] == "hf-sharded" and "tensors" in report["result"]  # the full report


def test_missing_shards_are_named_and_the_rest_is_read(cli, tmp_path, validate_report):
    folder = hf_sharded_partial_dir(tmp_path)
    result = cli("ckpt", "inspect", str(folder), "--json")
    assert result.exit_code == 1, result.output
    report = validate_report(json.loads(result.stdout))
    assert [f["id"] for f in report["findings"]] == ["shard-missing"]
    assert "model-00002-of-00002.safetensors" in report["findings"][0]["message"]
    assert report["result"]["tensors"]["count"] == 2  # the shard that is there
    human = cli("ckpt", "inspect", str(folder))
    assert "not on disk: model-00002-of-00002.safetensors" in human.stdout


def test_inspecting_a_training_script_says_what_the_file_is(cli, tmp_path):
    script = tmp_path / "train.py"
    script.write_text("import torch\nfrom torch import nn\n\n\ndef main():\n"
                      "    torch.save(nn.Linear(2, 2).state_dict(), 'model.pt')\n")
    result = cli("ckpt", "inspect", str(script))
    assert result.exit_code == 1
    assert "is Python source code, not a checkpoint" in result.stdout
    assert "download" not in result.stdout.lower()
    page = tmp_path / "model.pt"  # an error page saved by a download: downloading again is the fix
    page.write_text("<!DOCTYPE html><html><head><title>404 Not Found</title></head></html>")
    assert "download" in cli("ckpt", "inspect", str(page)).stdout.lower()


def test_above_the_limit_the_default_reads_headers_only_and_says_so(cli, tmp_path, validate_report):
    from fixtures.sharded_builders import sparse_sharded_dir

    from torchdoctor.ckpt.inspect import SCAN_LIMIT_BYTES

    folder = sparse_sharded_dir(tmp_path, shards=4, shard_bytes=(SCAN_LIMIT_BYTES // 4) + (1 << 20))  # sparse
    report = validate_report(json.loads(cli("ckpt", "inspect", str(folder), "--json").stdout))
    scan = report["result"]["values_scan"]
    assert scan["mode"] == "headers-only" and scan["data_bytes"] > SCAN_LIMIT_BYTES
    assert report["result"]["values_scanned"] is False and report["result"]["tensors"]["count"] == 16
    human = cli("ckpt", "inspect", str(folder)).stdout
    assert "headers only" in human and "--scan-values" in human


def test_the_scan_counts_nan_and_inf_in_every_float_layout(tmp_path):
    import torch
    from fixtures.ckpt_builders import write_safetensors

    from torchdoctor.ckpt.inspect import inspect_checkpoint

    values = torch.zeros(3 << 20)  # larger than one read chunk: counts add up across chunks
    values[5], values[(2 << 20) + 1], values[-1] = float("nan"), float("inf"), float("-inf")
    tensors = {"a": values, "b": values.half(), "c": values.double(), "d": values.bfloat16(),
               "clean": torch.ones(7)}
    path = write_safetensors(tensors, tmp_path / "model.safetensors")
    torch.save(tensors, tmp_path / "model.pt")
    for target in (path, tmp_path / "model.pt"):
        report = inspect_checkpoint(target, scan_values=True)
        assert report.result["values_scan"]["mode"] == "full"
        assert report.result["nonfinite"] == {key: {"nan": 1, "inf": 2} for key in "abcd"}, target
