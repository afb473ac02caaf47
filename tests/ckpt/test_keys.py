"""Key prefixes and key matching, proven against the real ``load_state_dict`` of real wrapped models."""

import json
from collections import OrderedDict
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from torchdoctor.ckpt.keys import (
    apply_renames,
    check_match,
    check_prefixes,
    detect_prefixes,
    find_infixes,
    match_to_model,
    strip_prefixes,
)

# torch.compile imports inductor, which trips torch's own deprecation of jit.script_method.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")


def net(classes=10, batchnorm=False):
    torch.manual_seed(0)
    middle = nn.BatchNorm1d(16) if batchnorm else nn.ReLU()
    return nn.Sequential(nn.Linear(8, 16), middle, nn.Linear(16, classes))


class EncoderHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
        self.head = nn.Linear(8, 2)


class WithBackbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = net()


WRAPPERS = {
    "dataparallel": (lambda m: nn.DataParallel(m), ["module."]),
    "compile": (lambda m: torch.compile(m), ["_orig_mod."]),
    "dataparallel-of-compile": (lambda m: nn.DataParallel(torch.compile(m)), ["module.", "_orig_mod."]),
    "compile-of-dataparallel": (lambda m: torch.compile(nn.DataParallel(m)), ["_orig_mod.", "module."]),
}


def assert_torch_agrees(model, state_dict, match, *, drop=()):
    """What load_state_dict(strict=False) reports is exactly what the match predicted."""
    result = model.load_state_dict(apply_renames(state_dict, match.renames, drop=drop), strict=False)
    dropped = {m["key"] for m in match.shape_mismatches if m["checkpoint_key"] in drop}
    assert set(result.missing_keys) == set(match.missing) | dropped
    assert set(result.unexpected_keys) == set(match.unexpected)


@pytest.mark.parametrize("name", WRAPPERS)
def test_wrapper_prefixes_are_detected_in_order(name):
    wrap, expected = WRAPPERS[name]
    keys = list(wrap(net()).state_dict())
    assert detect_prefixes(keys) == expected
    assert strip_prefixes(keys, expected) == list(net().state_dict())


def test_plain_keys_have_no_prefix():
    keys = list(net(batchnorm=True).state_dict())
    assert detect_prefixes(keys) == [] and find_infixes(keys) == [] and check_prefixes(keys) == []


@pytest.mark.parametrize("name", WRAPPERS)
def test_wrapped_checkpoint_loads_after_renames_and_fails_before(name):
    wrap, expected = WRAPPERS[name]
    wrapped = wrap(net(batchnorm=True)).state_dict()
    model = net(batchnorm=True)
    with pytest.raises(RuntimeError, match="Missing key"):
        model.load_state_dict(wrapped)
    match = match_to_model(wrapped, model.state_dict())
    assert match.ok and match.missing == [] and match.unexpected == []
    assert match.prefix_rule == {"strip": expected, "add": "", "drop_infixes": []}
    assert check_match(match) == []  # wrappers are check_prefixes' business, not a key-prefix
    model.load_state_dict(apply_renames(wrapped, match.renames), strict=True)


def test_nested_wrappers_give_both_findings():
    keys = list(nn.DataParallel(torch.compile(net())).state_dict())
    findings = {f.id: f for f in check_prefixes(keys)}
    assert set(findings) == {"module-prefix", "compile-prefix"}
    assert "'module.'" in findings["module-prefix"].message and "4 keys" in findings["module-prefix"].message
    assert "'_orig_mod.' after 'module.'" in findings["compile-prefix"].message
    assert findings["module-prefix"].details == {"prefixes": ["module.", "_orig_mod."], "keys": 4}
    assert all(f.location is None and f.severity.value == "warning" for f in findings.values())


def test_submodule_compiled_separately_is_an_infix():
    model = EncoderHead()
    model.encoder = torch.compile(model.encoder)
    saved = model.state_dict()
    assert list(saved)[0] == "encoder._orig_mod.0.weight"
    assert detect_prefixes(saved) == []
    assert find_infixes(saved) == ["encoder"]
    (finding,) = check_prefixes(saved)
    assert finding.id == "compile-prefix" and "encoder" in finding.message
    assert finding.details["infixes"] == ["encoder"] and finding.details["keys"] == 2

    plain = EncoderHead()
    with pytest.raises(RuntimeError, match="Missing key"):
        plain.load_state_dict(saved)
    assert list(strip_prefixes(saved, [])) == list(plain.state_dict())
    match = match_to_model(saved, plain.state_dict())
    assert match.prefix_rule["drop_infixes"] == ["_orig_mod."] and match.ok
    plain.load_state_dict(apply_renames(saved, match.renames), strict=True)


def test_compiled_and_partly_compiled_inside_dataparallel():
    model = EncoderHead()
    model.encoder = torch.compile(model.encoder)
    keys = list(nn.DataParallel(model).state_dict())
    assert detect_prefixes(keys) == ["module."]
    findings = {f.id: f for f in check_prefixes(keys)}
    assert findings["compile-prefix"].details["infixes"] == ["encoder"]
    assert findings["module-prefix"].details["keys"] == 4


def test_strip_prefixes_keeps_the_type_and_renames_module_versions():
    saved = nn.DataParallel(net(batchnorm=True)).state_dict()
    stripped = strip_prefixes(saved, ["module."])
    assert isinstance(stripped, OrderedDict)
    assert list(stripped._metadata)[1:] == ["0", "1", "2"]
    assert stripped._metadata["1"] == saved._metadata["module.1"]
    net(batchnorm=True).load_state_dict(stripped, strict=True)
    assert isinstance(strip_prefixes(dict(saved), ["module."]), dict)
    assert strip_prefixes(tuple(saved), ["module."]) == tuple(net(batchnorm=True).state_dict())


def test_strip_prefixes_refuses_to_merge_two_tensors():
    weights = {"encoder._orig_mod.weight": torch.zeros(2), "encoder.weight": torch.ones(2)}
    with pytest.raises(ValueError, match=r"'encoder\._orig_mod\.weight' and 'encoder\.weight'"):
        strip_prefixes(weights, [])
    match = match_to_model(weights, {"encoder.weight": torch.zeros(2)})  # keeps the infix, merges nothing
    assert match.unexpected == ["encoder._orig_mod.weight"] and match.missing == []


def lightning_weights(model, extra=None):
    weights = {"model." + key: value for key, value in model.state_dict().items()}
    return {**weights, **(extra or {})}


def test_lightning_model_prefix_is_a_key_prefix():
    weights = lightning_weights(net(batchnorm=True))
    model = net(batchnorm=True)
    with pytest.raises(RuntimeError, match="Missing key"):
        model.load_state_dict(weights)
    match = match_to_model(weights, model.state_dict())
    assert match.strip_prefix == "model." and match.prefix_rule["strip"] == ["model."]
    (finding,) = check_match(match)
    assert finding.id == "key-prefix" and finding.location is None
    assert finding.message == ("Keys carry the prefix 'model.' that the model lacks "
                               "(Lightning's LightningModule attribute)")
    model.load_state_dict(apply_renames(weights, match.renames), strict=True)


def test_lightning_with_an_extra_loss_buffer_leaves_it_unexpected():
    weights = lightning_weights(net(), {"criterion.weight": torch.ones(10)})
    model = net()
    match = match_to_model(weights, model.state_dict())
    assert match.strip_prefix == "model." and match.unexpected == ["criterion.weight"] and match.missing == []
    assert_torch_agrees(model, weights, match)
    ids = [f.id for f in check_match(match)]
    assert ids == ["key-prefix", "unexpected-keys"]


def test_model_side_prefix_is_added():
    weights = net().state_dict()
    model = WithBackbone()
    match = match_to_model(weights, model.state_dict())
    assert match.add_prefix == "backbone." and match.renames["0.weight"] == "backbone.0.weight"
    (finding,) = check_match(match)
    assert "The model's keys carry the prefix 'backbone.'" in finding.message
    model.load_state_dict(apply_renames(weights, match.renames), strict=True)


def test_plain_checkpoint_into_a_dataparallel_model():
    weights = net().state_dict()
    model = nn.DataParallel(net())
    match = match_to_model(weights, model.state_dict())
    assert match.prefix_rule["add"] == "module." and match.add_prefix == "module." and match.ok
    model.load_state_dict(apply_renames(weights, match.renames), strict=True)


def test_both_sides_dataparallel_need_no_rename():
    weights = nn.DataParallel(net()).state_dict()
    match = match_to_model(weights, nn.DataParallel(net()).state_dict())
    assert match.renames == {} and match.ok and check_match(match) == []


def test_head_with_1000_classes_into_a_10_class_model():
    weights = nn.DataParallel(net(classes=1000)).state_dict()
    model = net(classes=10)
    match = match_to_model(weights, model.state_dict())
    assert match.missing == [] and match.unexpected == []
    assert [m["key"] for m in match.shape_mismatches] == ["2.weight", "2.bias"]
    assert match.shape_mismatches[0] == {"key": "2.weight", "checkpoint_key": "module.2.weight",
                                         "checkpoint_shape": [1000, 16], "model_shape": [10, 16]}
    findings = [f for f in check_match(match) if f.id == "shape-mismatch"]
    assert [f.location for f in findings] == ["2.weight", "2.bias"]
    assert findings[0].message == "2.weight: checkpoint [1000, 16] vs model [10, 16]"
    assert "--drop-mismatched" in findings[0].fix and findings[0].severity.value == "error"

    with pytest.raises(RuntimeError, match="size mismatch for 2.weight"):
        model.load_state_dict(apply_renames(weights, match.renames), strict=False)
    drop = [m["checkpoint_key"] for m in match.shape_mismatches]
    assert_torch_agrees(model, weights, match, drop=drop)


def test_missing_and_unexpected_keys_match_torch():
    small, large = net(), nn.Sequential(net(), nn.Linear(10, 3))
    weights = {f"0.{key}": value for key, value in small.state_dict().items()}
    weights["extra.scale"] = torch.ones(1)
    weights["0.7.weight"] = torch.ones(1)
    match = match_to_model(weights, large.state_dict())
    assert match.missing == ["1.weight", "1.bias"]
    assert match.unexpected == ["extra.scale", "0.7.weight"]
    assert_torch_agrees(large, weights, match)
    findings = {f.id: f for f in check_match(match)}
    assert findings["missing-keys"].severity.value == "error"
    assert findings["missing-keys"].message == "2 model keys are missing from the checkpoint: 1.weight, 1.bias"
    assert findings["unexpected-keys"].details["keys"] == ["extra.scale", "0.7.weight"]


def test_missing_keys_message_lists_the_first_five():
    model = nn.Sequential(*[nn.Linear(2, 2) for _ in range(4)])
    match = match_to_model({}, model.state_dict())
    (finding,) = check_match(match)
    assert finding.message.endswith("0.weight, 0.bias, 1.weight, 1.bias, 2.weight, … (3 more)")
    assert len(finding.details["keys"]) == 8


def test_float16_checkpoint_into_a_float32_model():
    weights = net().half().state_dict()
    model = net()
    match = match_to_model(weights, model.state_dict())
    assert match.ok and len(match.dtype_mismatches) == 4
    (finding,) = check_match(match)
    assert finding.id == "dtype-mismatch" and finding.severity.value == "info"
    assert finding.details["pairs"] == {"float16 -> float32": 4} and "float16 -> float32 (4)" in finding.message
    model.load_state_dict(weights, strict=True)  # torch casts silently: that is why it is worth saying
    assert model[0].weight.dtype == torch.float32


def test_missing_num_batches_tracked_is_reported_and_explained():
    saved = net(batchnorm=True).state_dict()
    del saved["1.num_batches_tracked"]
    model = net(batchnorm=True)
    match = match_to_model(saved, model.state_dict())
    assert match.missing == match.missing_num_batches_tracked == ["1.num_batches_tracked"]
    (finding,) = check_match(match)
    assert finding.id == "missing-keys" and finding.severity.value == "warning"
    assert finding.details["num_batches_tracked"] == ["1.num_batches_tracked"]
    # A state dict that keeps its module versions: torch reports the counter missing, as predicted.
    assert_torch_agrees(model, saved, match)
    # A plain dict has no versions: torch fills the counter itself and reports nothing.
    result = model.load_state_dict(dict(saved), strict=True)
    assert set(result.missing_keys) == set(match.missing) - set(match.missing_num_batches_tracked)


@dataclass(frozen=True)
class Record:
    """What the safe reader yields instead of a tensor."""

    shape: tuple
    dtype: str


def test_duck_typed_records_match_like_tensors():
    checkpoint = {"model.fc.weight": Record((1000, 512), "float16"), "model.fc.bias": Record((1000,), "float16"),
                  "model.conv.weight": Record((64, 3, 7, 7), "float16")}
    model = {"fc.weight": Record((10, 512), "float32"), "fc.bias": Record((10,), "float32"),
             "conv.weight": Record((64, 3, 7, 7), "float32")}
    match = match_to_model(checkpoint, model)
    assert match.strip_prefix == "model." and match.missing == [] and match.unexpected == []
    assert [m["key"] for m in match.shape_mismatches] == ["fc.weight", "fc.bias"]
    messages = [f.message for f in check_match(match)]
    assert "fc.weight: checkpoint [1000, 512] vs model [10, 512]" in messages
    assert match.dtype_mismatches[0]["checkpoint_dtype"] == "float16"


def test_findings_and_match_are_json_safe():
    match = match_to_model(lightning_weights(net(classes=1000).half()), net().state_dict())
    json.dumps(match.to_dict())
    json.dumps([f.to_dict() for f in check_match(match)])
