"""ckpt inspect for people: keys, shapes and dtypes in a compact grouped table (--all: every key), and each
figure named for what it counts."""

from __future__ import annotations

import json

import torch
from torch import nn

from torchdoctor.count.api import count


def conv_stack() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(*[nn.Sequential(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4)) for _ in range(12)],
                         nn.Flatten(), nn.Linear(4, 10))


def test_the_table_groups_keys_and_all_lists_every_key(cli, tmp_path):
    model = conv_stack()
    path = tmp_path / "model.pt"
    torch.save({"model": model.state_dict(), "epoch": 3}, path)
    grouped = cli("ckpt", "inspect", str(path)).stdout
    assert "0.0.weight [4, 4, 3, 3] float32" in grouped  # a few keys of a group, with shape and dtype
    group = [tensor for key, tensor in model.state_dict().items() if key.startswith("0.")]
    assert f"{len(group)} tensors, {sum(t.numel() for t in group):,} values" in grouped  # the group "0"
    assert "--all lists all 86 keys" in grouped and "11.1.running_var" not in grouped
    every = cli("ckpt", "inspect", str(path), "--all").stdout
    for key, tensor in model.state_dict().items():
        assert any(line.split()[1:2] == [key] and f"{list(tensor.shape)} {str(tensor.dtype)[6:]}" in line
                   for line in every.splitlines()), key


def test_values_are_split_into_parameters_and_buffers_like_count(cli, tmp_path):
    model = conv_stack()
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    tensors = json.loads(cli("ckpt", "inspect", str(path), "--json").stdout)["result"]["tensors"]
    counted = count(model, input_shapes=[[1, 4, 26, 26]]).result["params"]  # what `torchdoctor count` says
    buffers = counted["buffers"]
    assert tensors["parameter_elements"] == counted["total"]
    assert tensors["buffer_elements"] == buffers
    assert tensors["parameters"] == tensors["elements"] == counted["total"] + buffers  # the kept field
    human = cli("ckpt", "inspect", str(path)).stdout
    assert f"{tensors['parameter_elements']:,} in parameters, {buffers:,} in buffers" in human
