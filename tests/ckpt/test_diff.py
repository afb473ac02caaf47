"""ckpt diff on real files: prefixes normalised, layout and value changes found, streamed."""

import torch
from fixtures import ckpt_builders as build
from torch import nn

from torchdoctor.ckpt.diff import diff_checkpoints


def save(path, state):
    torch.save(state, path)
    return path


def test_dataparallel_and_plain_saves_of_the_same_weights_are_identical(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    report = diff_checkpoints(build.plain_state_dict(tmp_path / "a"), build.dataparallel_state_dict(tmp_path / "b"))
    assert report.result["identical"] is True and report.exit_code() == 0


def test_changes_are_listed(tmp_path):
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)).state_dict()
    changed = {k: v.clone() for k, v in base.items()}
    changed["0.weight"][1, 2] += 0.5
    changed["1.weight"] = torch.zeros(3, 4)
    del changed["1.bias"]
    changed["2.bias"] = torch.zeros(2)
    changed["0.bias"] = changed["0.bias"].double()
    result = diff_checkpoints(save(tmp_path / "a.pt", base), save(tmp_path / "b.pt", changed)).result
    assert result["identical"] is False
    assert result["only_in_a"] == ["1.bias"] and result["only_in_b"] == ["2.bias"]
    assert {c["key"] for c in result["changed_layout"]} == {"1.weight", "0.bias"}
    expected = float((changed["0.weight"] - base["0.weight"]).abs().max())
    assert abs(result["max_abs_diff"]["0.weight"] - expected) < 1e-7


def test_nan_on_one_side_is_a_difference(tmp_path):
    base = {"w": torch.ones(3)}
    nan = {"w": torch.tensor([1.0, float("nan"), 1.0])}
    result = diff_checkpoints(save(tmp_path / "a.pt", base), save(tmp_path / "b.pt", nan)).result
    assert result["max_abs_diff"] == {"w": "NaN"} and result["identical"] is False


def test_formats_can_differ(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    zip_file = build.plain_state_dict(tmp_path / "a")
    legacy = save(tmp_path / "b" / "legacy.pt", torch.load(zip_file, weights_only=True))
    torch.save(torch.load(zip_file, weights_only=True), legacy, _use_new_zipfile_serialization=False)
    result = diff_checkpoints(zip_file, legacy).result
    assert result["formats"] == ["zip", "legacy"] and result["identical"] is True


def test_a_broken_side_gives_findings_not_a_crash(tmp_path):
    (tmp_path / "a").mkdir()
    report = diff_checkpoints(build.plain_state_dict(tmp_path / "a"), build.truncated_zip(tmp_path))
    assert [f.id for f in report.findings] == ["corrupt-checkpoint"] and report.result["identical"] is None


def test_identical_nan_and_inf_tensors_compare_equal(tmp_path):
    weird = {"w": torch.tensor([float("nan"), float("inf"), -float("inf"), 1.0])}
    result = diff_checkpoints(save(tmp_path / "a.pt", weird), save(tmp_path / "b.pt", weird)).result
    assert result["identical"] is True


def test_people_get_ten_differences_in_six_digits_and_a_count_of_the_rest():
    from torchdoctor.ckpt.diff import difference_lines

    result = {"only_in_a": [], "only_in_b": ["extra"], "changed_layout": [],
              "max_abs_diff": {f"w{i}": 0.0010001659393310547 * (i + 1) for i in range(12)} | {"bad": "NaN"}}
    lines = difference_lines(result)
    assert lines[:2] == ("only in B: extra", "w0: max |a - b| = 0.00100017")
    assert len(lines) == 12 and lines[-1] == "... and 3 more (all of them are in --json)"


def test_a_file_and_its_prefix_stripped_copy_are_identical_tensors_with_different_keys(cli, tmp_path):
    from torchdoctor.ckpt.fix import fix_checkpoint

    wrapped = build.dataparallel_state_dict(tmp_path)
    stripped = fix_checkpoint(wrapped, output=tmp_path / "stripped.pt").result["output"]  # the user's own fix
    result = cli("ckpt", "diff", str(wrapped), stripped)
    assert result.exit_code == 0
    assert "identical tensors" in result.stdout and "differ by a prefix" in result.stdout
    assert "'module.'" in result.stdout
    same = diff_checkpoints(stripped, stripped).result
    assert same["identical"] is True and same["keys_differ_by_prefix"] is False


def test_a_prefix_that_is_no_wrapper_is_matched_when_every_key_has_it(tmp_path):
    torch.manual_seed(0)
    state = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)).state_dict()
    plain = save(tmp_path / "plain.pt", state)
    prefixed = save(tmp_path / "prefixed.pt", {f"model.{k}": v for k, v in state.items()})
    result = diff_checkpoints(plain, prefixed).result
    assert result["identical"] is True and result["common"] == 4
    assert result["key_prefixes"] == {"a": [], "b": ["model."]} and result["keys_differ_by_prefix"]
    changed = dict(state, **{"0.bias": state["0.bias"] + 1})
    other = diff_checkpoints(save(tmp_path / "changed.pt", {f"model.{k}": v for k, v in changed.items()}), plain)
    assert other.result["identical"] is False and list(other.result["max_abs_diff"]) == ["0.bias"]
