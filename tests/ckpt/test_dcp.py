"""torch.distributed.checkpoint directories saved by two real gloo ranks: inspect from .metadata, fix into one zip."""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from fixtures import ckpt_builders as builders
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from torchdoctor.ckpt.fix import fix_checkpoint
from torchdoctor.ckpt.inspect import inspect_checkpoint
from torchdoctor.errors import InputError, UsageError


@pytest.fixture(scope="module")
def saved_by_two_ranks(tmp_path_factory) -> Path:
    return builders.dcp_two_ranks_dir(tmp_path_factory.mktemp("ranks"))


@pytest.fixture()
def source(saved_by_two_ranks, tmp_path) -> Path:
    """A private copy per test, so that a test writing next to it sees a clean folder."""
    return Path(shutil.copytree(saved_by_two_ranks, tmp_path / "dcp2"))


@pytest.fixture(scope="module")
def consolidated(saved_by_two_ranks, tmp_path_factory) -> dict:
    """PyTorch's own answer: dcp_to_torch_save, then torch.load."""
    out = tmp_path_factory.mktemp("torch") / "all.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp_to_torch_save(saved_by_two_ranks, out)
    return torch.load(out, weights_only=True)


def hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def fix(folder: Path, **options):
    """``fix_checkpoint`` that also proves no file of the input directory changed, whatever happened."""
    before = hashes(folder)
    try:
        return fix_checkpoint(folder, **options)
    finally:
        assert hashes(folder) == before, "ckpt fix modified its input directory"


def flat(tree, path: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        return {".".join(path): tree}
    if isinstance(tree, dict):
        return {k: v for name, child in tree.items() for k, v in flat(child, (*path, str(name))).items()}
    return {}


def assert_same_tensors(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert (a[key].dtype, a[key].shape) == (b[key].dtype, b[key].shape), key
        assert torch.equal(a[key].contiguous().reshape(-1).view(torch.uint8),
                           b[key].contiguous().reshape(-1).view(torch.uint8)), key


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_two_ranks_wrote_one_data_file_each(saved_by_two_ranks, consolidated):
    assert sorted(p.name for p in saved_by_two_ranks.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert all((saved_by_two_ranks / name).stat().st_size > 0 for name in ("__0_0.distcp", "__1_0.distcp"))
    for rank in (0, 1):
        assert_same_tensors(flat(consolidated[f"rank{rank}"]), flat(builders.dcp_rank_state(rank)[f"rank{rank}"]))


def test_inspect_reads_keys_shapes_dtypes_from_metadata_only(source, consolidated):
    expected = {key: ([*t.shape], str(t.dtype).removeprefix("torch.")) for key, t in flat(consolidated).items()}
    for name in ("__0_0.distcp", "__1_0.distcp"):  # no shard byte is needed: truncate them all
        (source / name).write_bytes(b"")
    report = inspect_checkpoint(source)
    assert report.result["format"] == "dcp" and report.exit_code() == 0
    keys = {row["key"]: (row["shape"], row["dtype"]) for row in report.result["tensors"]["keys"]}
    assert keys == expected


def test_fix_keep_wrapper_consolidates_everything_bit_for_bit(source, consolidated, validate_report):
    report = fix(source, keep_wrapper=True)
    validate_report(json.loads(json.dumps(report.to_dict())))
    out = source.with_name("dcp2.pt")  # the default: DIRNAME.pt next to the directory
    assert report.exit_code() == 0 and report.result["written"] and report.result["output"] == str(out)
    assert [step["action"] for step in report.result["plan"]] == ["consolidate"]
    assert report.result["format_in"] == "dcp" and report.result["format_out"] == "zip"
    checked = report.result["verified"]["consolidation"]
    assert checked["bit_identical"] and checked["tensors"] == 7
    assert checked["shards"] == ["__0_0.distcp", "__1_0.distcp"]
    loaded = torch.load(out, weights_only=True)
    assert_same_tensors(flat(loaded), flat(consolidated))
    assert loaded["epoch"] == 2 and leftovers(source.parent) == []


def test_fix_default_unwraps_the_model_after_consolidating(source, consolidated):
    report = fix(source, output=source.parent / "model.pt")
    assert [step["action"] for step in report.result["plan"]] == ["consolidate", "unwrap", "drop-top-level"]
    assert_same_tensors(torch.load(source.parent / "model.pt", weights_only=True), consolidated["model"])


def test_fix_to_safetensors(source, consolidated):
    from torchdoctor.ckpt.against_model import materialize
    from torchdoctor.ckpt.reader import read_checkpoint

    report = fix(source, to="safetensors")
    out = source.with_name("dcp2.safetensors")
    assert report.result["written"] and report.result["output"] == str(out)
    written = read_checkpoint(out)
    assert written.format.value == "safetensors" and report.result["verified"]["bit_identical"]
    assert_same_tensors(dict(materialize(written, written.tree)), consolidated["model"])


def test_refuses_to_overwrite_without_force(source):
    out = source.with_name("dcp2.pt")
    out.write_bytes(b"keep me")
    with pytest.raises(UsageError, match="already exists"):
        fix(source, keep_wrapper=True)
    assert out.read_bytes() == b"keep me" and leftovers(source.parent) == []
    assert fix(source, keep_wrapper=True, force=True).result["written"]
    assert "epoch" in torch.load(out, weights_only=True)


def test_dry_run_and_output_inside_the_directory_write_nothing(source):
    report = fix(source, dry_run=True)
    assert report.result["dry_run"] and not report.result["written"]
    assert report.result["plan"][0]["action"] == "consolidate"
    assert sorted(p.name for p in source.parent.iterdir()) == ["dcp2"]
    existing = source.parent / "dcp2.pt"
    existing.write_bytes(b"keep me")  # a dry run still shows its plan, and says what a real run needs
    again = fix(source, dry_run=True)
    assert again.result["plan"][0]["action"] == "consolidate" and existing.read_bytes() == b"keep me"
    assert any("already exists" in note for note in again.result["notes"])
    existing.unlink()
    with pytest.raises(UsageError, match="inside the input directory"):
        fix(source, output=source / "out.pt")


def test_damaged_shards_fail_cleanly(source):
    (source / "__1_0.distcp").write_bytes(b"")
    with pytest.raises(InputError, match="cannot read the shards"):
        fix(source)
    assert sorted(p.name for p in source.parent.iterdir()) == ["dcp2"]


def test_pickled_values_are_read_weights_only(tmp_path):
    folder = builders.malicious_dcp_dir(tmp_path)
    with pytest.raises(InputError, match="posix.system"):
        fix(folder)
    assert not (tmp_path / builders.MARKER_NAME).exists(), "a pickled value ran"
    assert leftovers(tmp_path) == [] and not (tmp_path / "dcp_malicious.pt").exists()


def test_cli_fix_directory(source, cli):
    done = cli("ckpt", "fix", str(source), "--keep-wrapper", "--json")
    assert done.exit_code == 0, done.stderr
    assert json.loads(done.stdout)["result"]["plan"][0]["action"] == "consolidate"
    again = cli("ckpt", "fix", str(source), "--keep-wrapper")
    assert again.exit_code == 2 and "already exists" in again.stderr
