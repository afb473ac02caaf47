"""Pure judgements and renderings from hand-built facts: op kinds, uncounted ops, failures, sections."""

import pytest

from torchdoctor.count.checks import check_failure, check_uncounted
from torchdoctor.count.compare import collect_comparisons, parse_tools
from torchdoctor.count.flops import ForwardFailure, OpTally
from torchdoctor.count.layers import FailedLayer
from torchdoctor.count.ops import FREE_OPS, OpKind, classify_op, free_reason
from torchdoctor.count.sections import count_sections, layer_table, si
from torchdoctor.errors import UsageError
from torchdoctor.report import Severity

KIND_EXAMPLES = {
    OpKind.COUNTED: dict(op="aten.mm", counted=True, is_view=False),
    OpKind.FREE: dict(op="aten.view", counted=False, is_view=True),
    OpKind.ELEMENTWISE: dict(op="aten.relu", counted=False, is_view=False, tags=["pointwise"]),
    OpKind.UNKNOWN: dict(op="aten._fft_r2c", counted=False, is_view=False, tags=["core"]),
}


@pytest.mark.parametrize("kind", list(OpKind))
def test_every_op_kind_is_reachable(kind):
    assert classify_op(**KIND_EXAMPLES[kind]) is kind


@pytest.mark.parametrize(("op", "kind"), [
    ("aten.clone", OpKind.FREE),  # tagged pointwise, but only copies
    ("aten._to_copy", OpKind.FREE),
    ("aten.empty_like", OpKind.FREE),
    ("aten.embedding", OpKind.FREE),
    ("profiler._record_function_enter_new", OpKind.FREE),
    ("aten.native_layer_norm_backward", OpKind.ELEMENTWISE),
    ("aten._softmax_backward_data", OpKind.ELEMENTWISE),
    ("aten.max_pool2d_with_indices", OpKind.ELEMENTWISE),
    ("aten._foreach_add_", OpKind.ELEMENTWISE),
    ("aten.gelu_backward", OpKind.ELEMENTWISE),
    ("aten.linalg_svd", OpKind.UNKNOWN),
    ("mylib.mystery", OpKind.UNKNOWN),
])
def test_op_kinds_by_name(op, kind):
    assert classify_op(op, counted=False, is_view=False) is kind


def test_every_free_op_has_a_reason():
    for reason, names in FREE_OPS.items():
        assert reason and all(free_reason(f"aten.{name}") == reason for name in names)


def tally(op, calls, kind):
    return OpTally(op, calls, 0, 0, kind)


def test_unknown_ops_warn_and_elementwise_ops_are_listed_as_info():
    findings = check_uncounted([tally("aten._fft_r2c", 2, OpKind.UNKNOWN), tally("aten.relu", 5, OpKind.ELEMENTWISE),
                                tally("aten.view", 9, OpKind.FREE), tally("aten.mm", 1, OpKind.COUNTED)])
    warning, info = findings
    assert warning.id == "uncounted-ops" and warning.severity is Severity.WARNING
    assert "aten._fft_r2c x2" in warning.message and warning.details["ops"] == {"aten._fft_r2c": 2}
    assert info.severity is Severity.INFO and info.details["ops"] == {"aten.relu": 5}
    assert check_uncounted([tally("aten.mm", 1, OpKind.COUNTED)]) == []


def failure(message, phase="forward", layer=True):
    named = FailedLayer("fc1", "Linear", [32, 16], [[2, 30]]) if layer else None
    return ForwardFailure(named, "RuntimeError", message, phase)


def test_shape_errors_become_layer_shape_mismatch_naming_the_layer_and_both_shapes():
    (finding,) = check_failure(failure("mat1 and mat2 shapes cannot be multiplied (2x30 and 16x32)"), "Net",
                               training_step=False)
    assert finding.id == "layer-shape-mismatch" and finding.code == "TD602" and finding.location == "fc1"
    assert "[32, 16]" in finding.message and "[2, 30]" in finding.message


def test_other_failures_of_a_plain_forward_have_no_finding_and_of_a_step_are_step_failures():
    odd = failure("the model refuses to run on Tuesdays", phase="forward")
    assert check_failure(odd, "Net", training_step=False) == []
    (finding,) = check_failure(failure("boom", phase="backward", layer=False), "Net", training_step=True)
    assert finding.id == "training-step-failed" and "backward" in finding.message


def test_compare_skips_tools_that_are_not_installed_and_uses_injected_ones():
    def importer(name):
        raise ImportError(name)

    (row,) = collect_comparisons(["thop"], None, (), {}, meta=False, importer=importer)
    assert not row.available and "not installed" in row.note and row.to_dict(100)["macs_difference"] is None

    class FakeThop:
        @staticmethod
        def profile(model, inputs, verbose):
            return 50.0, 7.0

    import torch

    (row,) = collect_comparisons(["thop"], torch.nn.Linear(2, 2), (torch.randn(1, 2),), {}, meta=False,
                                 importer=lambda name: FakeThop)
    assert (row.macs, row.params) == (50, 7) and row.to_dict(100)["macs_difference"] == -0.5
    assert "functional ops" in row.note


def test_compare_tool_names():
    assert parse_tools("thop, torchinfo,thop") == ("thop", "torchinfo")
    with pytest.raises(UsageError):
        parse_tools("fvcore")


def test_si_and_layer_table():
    assert si(4_089_184_256, "MACs") == "4.089 GMACs" and si(12) == "12"
    table = layer_table([{"name": "fc", "type": "Linear", "depth": 1, "output_shape": [4, 8], "params": 136,
                          "macs": 512, "share": 1.0}])
    assert table[0].split() == ["name", "type", "output", "params", "MACs", "share"]
    assert table[1].split() == ["fc", "Linear", "[4,", "8]", "136", "512", "100.0%"]


def test_sections_state_the_convention_and_skip_layers_when_nothing_was_counted():
    result = {"params": {"total": 1, "trainable": 1, "frozen": 0, "buffers": 0, "buffer_bytes": 0, "bytes": 4,
                         "bytes_by_dtype": {"float32": 4}, "shared": []},
              "inputs": [{"name": "0", "shape": [1], "dtype": "float32"}], "mode": "forward", "device": "cpu",
              "convention": "...", "macs": None, "flops": None, "layers": [], "uncounted_ops": []}
    titles = [section.title for section in count_sections(result, [])]
    assert titles == ["Parameters", "Compute"]
    compute = count_sections(result, [])[1]
    assert compute.headline.startswith("not counted") and compute.lines[0].startswith("convention:")


def test_importing_count_and_its_cli_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys, torchdoctor.count, torchdoctor.cli.count; "
            "print('torch' in sys.modules, callable(torchdoctor.count))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "True"]
