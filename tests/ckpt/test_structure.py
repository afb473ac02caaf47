"""Where the weights live: real state dicts, optimizers, schedulers and scalers in checkpoint trees."""

import argparse
import json
from dataclasses import dataclass

import torch
from torch import nn

from torchdoctor.ckpt.structure import (
    WeightsKind,
    check_structure,
    detect_framework,
    dtype_name,
    find_state_dicts,
    is_tensor_like,
    locate_weights,
    metadata_of,
    training_state_keys,
    training_state_kinds,
)


def net(classes=10):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Linear(16, classes))


def trained(model):
    """An Adam optimizer and StepLR after one real step: Adam's state then holds tensors."""
    optimizer = torch.optim.Adam(model.parameters())
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3)
    model(torch.randn(4, 8)).sum().backward()
    optimizer.step()
    scheduler.step()
    return optimizer, scheduler


def lightning_checkpoint(model):
    optimizer, scheduler = trained(model)
    return {"state_dict": {"model." + key: value for key, value in model.state_dict().items()},
            "pytorch-lightning_version": "2.1.0", "epoch": 3, "global_step": 100,
            "optimizer_states": [optimizer.state_dict()], "lr_schedulers": [scheduler.state_dict()],
            "callbacks": {}, "hyper_parameters": {"lr": 0.001, "layers": [8, 16]}}


def test_plain_state_dict_is_at_the_top_level():
    weights = net().state_dict()
    location = locate_weights(weights)
    assert location.path == () and location.kind is WeightsKind.PLAIN and location.kind == "plain"
    assert location.state_dict is weights and location.num_tensors == 9
    assert check_structure(weights) == []
    (found,) = find_state_dicts(weights)
    assert found.num_elements == sum(t.numel() for t in weights.values())


def test_lightning_checkpoint():
    tree = lightning_checkpoint(net())
    location = locate_weights(tree)
    assert location.path == ("state_dict",) and location.kind is WeightsKind.WRAPPED
    assert location.framework == "lightning" and location.alternatives == ()
    assert training_state_keys(tree) == ["optimizer_states", "lr_schedulers"]
    nested, training = check_structure(tree)
    assert nested.id == "nested-state-dict" and nested.severity.value == "warning"
    assert nested.message == "The weights are in checkpoint['state_dict'] (Lightning), not at the top level"
    assert nested.location == "state_dict"
    assert nested.details == {"path": ["state_dict"], "alternatives": [], "framework": "lightning", "tensors": 9}
    assert training.id == "training-state-present" and training.severity.value == "info"
    assert training.message == ("Optimizer and LR-scheduler state is stored beside the weights "
                                "(optimizer_states, lr_schedulers)")
    json.dumps([f.to_dict() for f in (nested, training)])


def test_lightning_without_version_key_is_still_lightning():
    tree = lightning_checkpoint(net())
    del tree["pytorch-lightning_version"]
    assert detect_framework(tree) == "lightning"
    assert detect_framework({"state_dict": {}, "epoch": 1, "optimizer": {}}) is None


def test_adam_state_is_never_the_weights_even_when_larger():
    model = net(classes=1000)
    optimizer, _ = trained(model)
    # Unknown names on purpose: only the content says which is which. Adam's state for the
    # 1000x16 head holds twice that many elements, more than the whole model.
    tree = {"weights_of_run_7": model.state_dict(), "adam": optimizer.state_dict()}
    assert locate_weights(tree).path == ("weights_of_run_7",)
    assert [loc.path for loc in find_state_dicts(tree)] == [("weights_of_run_7",)]
    everything = find_state_dicts(tree, include_training_state=True)
    inside_adam = [loc for loc in everything if loc.training_state]
    assert len(inside_adam) == 6 and inside_adam[0].path == ("adam", "state", 0)
    assert max(loc.num_elements for loc in inside_adam) > everything[0].num_elements
    assert training_state_keys(tree) == ["adam"]


def test_model_preferred_over_ema_and_optimizer():
    model = net()
    optimizer, scheduler = trained(model)
    tree = {"epoch": 5, "optimizer": optimizer.state_dict(), "ema": net().state_dict(),
            "model": model.state_dict(), "scheduler": scheduler.state_dict()}
    location = locate_weights(tree)
    assert location.path == ("model",) and location.framework is None
    assert [alt.path for alt in location.alternatives] == [("ema",)]
    nested, training = check_structure(tree)
    assert "checkpoint['model']" in nested.message and "checkpoint['ema']" in nested.message
    assert "load_state_dict(checkpoint['model'])" in nested.fix
    assert training.details["kinds"] == {"optimizer": "optimizer", "scheduler": "scheduler"}


def test_largest_state_dict_wins_among_unknown_names():
    tree = {"a": {"x.weight": torch.zeros(2, 2)}, "b": net().state_dict()}
    assert locate_weights(tree).path == ("b",)


def test_training_state_recognised_by_content():
    model = net()
    optimizer, scheduler = trained(model)
    scaler = torch.amp.GradScaler("cpu")
    tree = {"weights": model.state_dict(), "o": optimizer.state_dict(), "s": scheduler.state_dict(),
            "gs": scaler.state_dict(), "opt": "adamw", "lr_schedulers": []}
    kinds = training_state_kinds(tree)
    assert {key: kind.value for key, kind in kinds.items()} == {"o": "optimizer", "s": "scheduler", "gs": "scaler"}
    (training,) = [f for f in check_structure(tree) if f.id == "training-state-present"]
    assert training.message.startswith("Optimizer, LR-scheduler and GradScaler state")


def test_yolov5_opt_is_options_not_an_optimizer():
    model = net()
    optimizer, _ = trained(model)
    tree = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "opt": {"epochs": 300, "img": 640}}
    assert training_state_keys(tree) == ["optimizer"]
    assert metadata_of(tree) == {"opt": {"epochs": 300, "img": 640}}
    # An optimizer really stored as "opt" is still training state, by name or by content.
    assert training_state_keys({"opt": {"momentum_buffer": {"0": torch.zeros(3)}}}) == ["opt"]


def test_state_dicts_in_lists_and_deeper():
    tree = {"models": [{"net": net().state_dict()}, {"net": net(3).state_dict()}]}
    assert [loc.path for loc in find_state_dicts(tree)] == [("models", 0, "net"), ("models", 1, "net")]
    nested = check_structure(tree)[0]
    assert nested.location == "models.0.net" and "checkpoint['models'][0]['net']" in nested.message


def test_no_weights_anywhere():
    tree = {"epoch": 1, "note": "empty"}
    assert locate_weights(tree) is None and find_state_dicts(tree) == [] and check_structure(tree) == []
    assert locate_weights([1, 2]) is None


def test_cycles_do_not_hang():
    tree = {"model": net().state_dict(), "loop": []}
    tree["loop"].append(tree)
    assert locate_weights(tree).path == ("model",)


def test_metadata():
    tree = lightning_checkpoint(net())
    tree.update(args=argparse.Namespace(lr=0.1), best_acc=torch.tensor(0.75), note="x" * 500,
                config={"optimizer": object()})
    metadata = metadata_of(tree)
    assert metadata["epoch"] == 3 and metadata["global_step"] == 100
    assert metadata["pytorch-lightning_version"] == "2.1.0"
    assert metadata["hyper_parameters"] == {"lr": 0.001, "layers": [8, 16]}
    assert metadata["args"] == "Namespace" and metadata["config"] == "dict"
    assert metadata["best_acc"] == 0.75 and len(metadata["note"]) == 201
    assert not {"state_dict", "optimizer_states", "lr_schedulers", "callbacks"} & set(metadata)
    json.dumps(metadata)
    assert metadata_of(net().state_dict()) == {}


def test_dtype_name():
    assert dtype_name(torch.float32) == "float32" and dtype_name(torch.bfloat16) == "bfloat16"
    assert dtype_name("float16") == "float16" and dtype_name("torch.int64") == "int64"
    assert dtype_name(torch.zeros(1, dtype=torch.float16)) == "float16"


@dataclass(frozen=True)
class Record:
    """What the safe reader yields instead of a tensor."""

    shape: tuple
    dtype: str


def test_duck_typed_records():
    assert is_tensor_like(Record((2, 3), "float32")) and is_tensor_like(torch.zeros(1))
    assert not is_tensor_like("float32") and not is_tensor_like(Record) and not is_tensor_like(Record("ab", "x"))
    assert dtype_name(Record((1,), "float32")) == "float32"
    tree = {"model": {"fc.weight": Record((10, 4), "float32"), "fc.bias": Record((10,), "float32")},
            "optimizer": {"state": {0: {"exp_avg": Record((10, 4), "float32")}}, "param_groups": []}}
    location = locate_weights(tree)
    assert location.path == ("model",) and location.num_tensors == 2
    assert find_state_dicts(tree)[0].num_elements == 50
