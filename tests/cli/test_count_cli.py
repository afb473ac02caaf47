"""``torchdoctor count`` through the CLI: exit codes, the JSON contract, human sections, one-line errors."""

import json

import pytest
from tests.conftest import run_torchdoctor


@pytest.fixture()
def spec(repo_root):
    return lambda name: f"{repo_root / 'fixtures' / 'count_models.py'}:{name}"


def test_json_validates_and_states_the_convention(cli, spec, validate_report):
    result = cli("count", spec("ConvNet"), "--input-shape", "1,3,16,16", "--json")
    assert result.exit_code == 0, result.output
    report = validate_report(json.loads(result.stdout))
    facts = report["result"]
    assert report["command"] == "count" and facts["macs"] == 55296 and facts["flops"] == 2 * 55296
    assert facts["params"]["total"] == 224 and "FLOPs = 2 x MACs" in facts["convention"]
    assert facts["layers"][0]["name"] == "conv" and facts["layers"][0]["output_shape"] == [1, 8, 16, 16]


def test_human_output_has_sections_and_the_convention(cli, spec):
    result = cli("count", spec("TiedLM"), "--input-shape", "2,5")
    assert result.exit_code == 0
    out = result.stdout
    for title in ("[✓] Parameters: 1,700", "Compute:", "convention:", "Layers:", "Uncounted ops:"):
        assert title in out
    assert "shared: embed.weight = head.weight (1,600 values, counted once)" in out


def test_repeated_input_shapes_and_input_spec(cli, spec):
    factory = cli("count", spec("linear_stack"), "--input", spec("linear_stack_inputs"), "--json")
    assert json.loads(factory.stdout)["result"]["macs"] == 4 * 768
    shapes = cli("count", spec("LinearStack"), "--input-shape", "3,16", "--json")
    assert json.loads(shapes.stdout)["result"]["macs"] == 3 * 768


def test_train_step_meta_dtype_and_compare(cli, spec, validate_report):
    step = validate_report(json.loads(cli("count", spec("LinearStack"), "--train-step", "--json").stdout))
    assert set(step["result"]["phases"]) == {"forward", "backward", "optimizer"}
    meta = json.loads(cli("count", spec("tiny_decoder"), "--meta", "--input-shape", "1,12", "--json").stdout)
    assert meta["result"]["device"] == "meta" and meta["result"]["macs"] > 0
    half = json.loads(cli("count", spec("LinearStack"), "--dtype", "bf16", "--json").stdout)
    assert list(half["result"]["params"]["bytes_by_dtype"]) == ["bfloat16"]
    compared = cli("count", spec("LinearStack"), "--compare", "thop,torchinfo", "--json")
    assert compared.exit_code == 0
    rows = {row["tool"]: row for row in json.loads(compared.stdout)["result"]["compare"]}
    assert set(rows) == {"thop", "torchinfo"}  # numbers where installed, a note where not


def test_uncounted_ops_warn_and_strict_fails(cli, spec):
    assert cli("count", spec("SpectralMix"), "--input-shape", "2,16").exit_code == 0
    strict = cli("count", spec("SpectralMix"), "--input-shape", "2,16", "--strict", "--json")
    assert strict.exit_code == 1 and json.loads(strict.stdout)["status"] == "warning"


def test_wrong_input_shape_is_a_finding_naming_the_layer(cli, spec, validate_report):
    result = cli("count", spec("LinearStack"), "--input-shape", "2,30", "--json")
    assert result.exit_code == 1
    (finding,) = validate_report(json.loads(result.stdout))["findings"]
    assert finding["id"] == "layer-shape-mismatch" and finding["location"] == "fc1"
    human = cli("count", spec("LinearStack"), "--input-shape", "2,30")
    assert "Layer 'fc1' (Linear, weight [32, 16]) got input of shape [2, 30]" in human.stdout
    assert "Traceback" not in human.output


def test_missing_shapes_and_bad_options_exit_2_with_one_line(cli, spec):
    no_shape = cli("count", spec("FunctionalMatmul"))
    assert no_shape.exit_code == 2 and "Traceback" not in no_shape.stderr
    assert "hint: pass --input-shape" in no_shape.stderr and no_shape.stderr.count("\n") <= 2
    bad_option = cli("count", spec("LinearStack"), "--compare", "fvcore")
    assert bad_option.exit_code == 2 and "fvcore" in bad_option.stderr
    bad_dtype = cli("count", spec("LinearStack"), "--dtype", "float7")
    assert bad_dtype.exit_code == 2 and "float7" in bad_dtype.stderr


@pytest.mark.slow
def test_a_spec_that_is_not_a_module_exits_2_in_a_real_process(spec):
    not_module = run_torchdoctor("count", spec("not_a_model"))
    assert not_module.returncode == 2 and "expected a torch.nn.Module" in not_module.stderr
    assert "Traceback" not in not_module.stderr


def test_device_option_reports_where_the_step_ran(cli, spec, validate_report):
    done = cli("count", spec("LinearStack"), "--train-step", "--device", "cpu", "--json")
    result = validate_report(json.loads(done.stdout))["result"]
    assert result["device"] == "cpu" and result["training_step"]["device"] == "cpu"
    absent = cli("count", spec("LinearStack"), "--device", "warp9")
    assert absent.exit_code == 2 and "--device warp9" in absent.stderr and "Traceback" not in absent.stderr
