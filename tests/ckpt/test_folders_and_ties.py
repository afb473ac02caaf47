"""Checkpoints as save_pretrained and trainers leave them: a folder passed for its weights file, and tied weights
that safetensors stores under one name (found on real GPT-2 and accelerate save_state folders)."""

from __future__ import annotations

import json

import pytest
import torch
from fixtures.models import TiedLM
from fixtures.sharded_builders import save_pretrained_dir, several_checkpoints_dir

from torchdoctor.ckpt.inspect import inspect_checkpoint
from torchdoctor.errors import InputError


def test_a_save_pretrained_folder_is_read_as_its_weights_file(cli, tmp_path, validate_report):
    folder = save_pretrained_dir(tmp_path)
    result = cli("ckpt", "inspect", str(folder), "--json")
    assert result.exit_code == 0, result.output
    report = validate_report(json.loads(result.stdout))
    assert report["result"]["path"] == str(folder / "model.safetensors")
    assert report["result"]["format"] == "safetensors" and report["findings"] == []


def test_fix_and_diff_take_the_folder_too(cli, tmp_path):
    folder = save_pretrained_dir(tmp_path)
    out = tmp_path / "weights.pt"
    fixed = cli("ckpt", "fix", str(folder), "--to", "zip", "-o", str(out))
    assert fixed.exit_code == 0, fixed.output
    assert out.is_file()
    same = cli("ckpt", "diff", str(folder), str(out), "--json")
    assert same.exit_code == 0, same.output
    diff = json.loads(same.stdout)["result"]
    assert (diff["only_in_a"], diff["only_in_b"], diff["equal"], diff["common"]) == ([], [], 1, 1)


def test_a_folder_of_several_checkpoints_names_them(tmp_path):
    folder = several_checkpoints_dir(tmp_path)
    with pytest.raises(InputError) as caught:
        inspect_checkpoint(folder)
    assert "epoch=0-step=10.ckpt, epoch=1-step=20.ckpt" in caught.value.message


def test_tied_weights_left_out_by_safetensors_are_a_warning_not_missing(tmp_path):
    report = inspect_checkpoint(save_pretrained_dir(tmp_path), model=TiedLM())
    [missing] = [f for f in report.findings if f.id == "missing-keys"]
    assert missing.severity.value == "warning"
    assert missing.details["tied"] == {"head.weight": "embed.weight"}
    assert "strict=False" in missing.fix
    assert report.status != "error"
    assert report.result["model"]["training_step"]["ok"]


def test_an_untied_key_missing_is_still_an_error(tmp_path):
    untied = TiedLM()
    untied.head.weight = type(untied.embed.weight)(untied.embed.weight.detach().clone())
    report = inspect_checkpoint(save_pretrained_dir(tmp_path), model=untied)
    [missing] = [f for f in report.findings if f.id == "missing-keys"]
    assert missing.severity.value == "error" and missing.details["tied"] == {}


def test_an_optimizer_state_dict_is_named_not_called_empty_weights(cli, tmp_path):
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    torch.save(optimizer.state_dict(), tmp_path / "optimizer.bin")  # accelerate's save_state name
    torch.save(torch.optim.lr_scheduler.StepLR(optimizer, 5).state_dict(), tmp_path / "scheduler.bin")
    optim = cli("ckpt", "inspect", str(tmp_path / "optimizer.bin"))
    assert optim.exit_code == 0, optim.output
    assert "no model weights: the file is an optimizer state dict: state for 2 of 2 parameters" in optim.stdout
    sched = inspect_checkpoint(tmp_path / "scheduler.bin")
    assert sched.result["state_file"] == "an LR-scheduler state dict"
    assert inspect_checkpoint(save_pretrained_dir(tmp_path)).result["state_file"] is None


def test_diff_of_a_tied_save_and_its_safetensors_is_identical(cli, tmp_path):
    folder = save_pretrained_dir(tmp_path)
    torch.manual_seed(0)  # the same weights save_pretrained_dir wrote, saved by torch.save with both names
    torch.save(TiedLM().state_dict(), tmp_path / "pytorch_model.bin")
    result = cli("ckpt", "diff", str(folder), str(tmp_path / "pytorch_model.bin"), "--json")
    assert result.exit_code == 0, result.output
    diff = json.loads(result.stdout)["result"]
    assert diff["identical"] is True and diff["only_in_b"] == []
    assert diff["tied_only_in"] == {"a": {}, "b": {"head.weight": "embed.weight"}}
    human = cli("ckpt", "diff", str(folder), str(tmp_path / "pytorch_model.bin"))
    assert "B also names head.weight = embed.weight (tied: one tensor)" in human.stdout


def test_keys_headline_names_a_submodule_compiled_on_its_own(cli, tmp_path):
    from fixtures.ckpt_builders import submodule_compiled_state_dict

    result = cli("ckpt", "inspect", str(submodule_compiled_state_dict(tmp_path)))
    headline = next(line for line in result.stdout.splitlines() if "Keys:" in line)
    assert "no wrapper prefixes; '_orig_mod.' inside the keys of " in headline, result.stdout


def test_numpy_values_in_a_checkpoint_are_named_as_what_weights_only_refuses(cli, tmp_path):
    import numpy as np

    path = tmp_path / "ckpt.pt"  # a score kept as np.float64 and an RNG state, as many training loops save them
    torch.save({"model": TiedLM().state_dict(), "best_acc": np.float64(0.9), "rng": np.random.get_state()[1]}, path)
    with pytest.raises(Exception) as refused:  # what the user met: torch's own refusal
        torch.load(path)
    assert "numpy" in str(refused.value)
    report = inspect_checkpoint(path)
    [numpy] = [f for f in report.findings if f.id == "weights-only-numpy"]
    assert all(name.startswith("numpy.") for name in numpy.details["globals"])
    assert "unsafe-pickle" not in [f.id for f in report.findings]
    human = cli("ckpt", "inspect", str(path))
    assert human.exit_code == 1 and "(numpy data: " in human.stdout

