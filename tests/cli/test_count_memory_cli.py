"""``torchdoctor count --memory`` through the CLI: the JSON contract, the Memory section, exit codes, bad input."""

import json

import pytest
import torch


@pytest.fixture()
def spec(repo_root):
    def make(name: str, module: str = "count_models") -> str:
        return f"{repo_root / 'fixtures' / f'{module}.py'}:{name}"

    return make


CONTRACT = ("params_bytes", "grads_bytes", "optimizer_bytes", "activations_bytes", "peak_bytes", "batch_size")


def test_json_has_the_memory_contract_in_integer_bytes(cli, spec, validate_report):
    result = cli("count", spec("TiedLM"), "--input-shape", "4,12", "--memory", "--optimizer", "adam",
                 "--fit", "80GB", "--json")
    assert result.exit_code == 0, result.output
    memory = validate_report(json.loads(result.stdout))["result"]["memory"]
    assert all(type(memory[key]) is int for key in CONTRACT) and memory["batch_size"] == 4
    assert memory["params_bytes"] == memory["grads_bytes"] == (1600 + 100) * 4  # tied weight counted once
    assert memory["optimizer_bytes"] == 2 * memory["params_bytes"] + 2 * 4  # two moments, a step per tensor
    assert memory["fit"] == {"device_bytes": 80 * 10**9, "max_batch_size": memory["fit"]["max_batch_size"],
                             "fits": True}
    assert {row["name"] for row in memory["by_module"]} >= {"embed", "head"}
    assert all(0 <= row["share"] <= 1 and type(row["activations_bytes"]) is int for row in memory["by_module"])


def test_human_output_has_a_memory_section_with_fixes_and_exit_1(cli, spec):
    result = cli("count", spec("WideStack", "memory_models"), "--input-shape", "1024,128", "--memory", "--fit",
                 "30MiB")
    assert result.exit_code == 1, result.output
    out = result.stdout
    assert "[✗] Memory: peak" in out and "where: parameters" in out and "peak by phase:" in out
    assert "most saved activations: blocks.0" in out and "fit 30.0 MiB: no" in out
    assert "fix: activation checkpointing" in out and "[memory-exceeds-device TD402]" in out


@pytest.mark.parametrize("options", [
    ("--memory", "--optimizer", "lion"),
    ("--memory", "--fit", "12 parsecs"),
    ("--memory", "--amp", "fp8"),
    ("--fit", "24GiB"),
    ("--optimizer", "adam"),
])
def test_bad_memory_options_exit_2_with_one_line(cli, spec, options):
    result = cli("count", spec("LinearStack"), "--input-shape", "2,16", *options)
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert result.stderr.count("\n") <= 2 and result.stdout == ""
    assert options[-1] in result.stderr or "needs --memory" in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without CUDA")
def test_fit_cuda_without_cuda_exits_2(cli, spec):
    result = cli("count", spec("LinearStack"), "--input-shape", "2,16", "--memory", "--fit", "cuda")
    assert result.exit_code == 2 and "CUDA" in result.stderr and "Traceback" not in result.stderr


def test_a_value_dependent_forward_cannot_be_simulated_and_exits_2(cli, spec):
    result = cli("count", spec("ValueDependent", "memory_models"), "--input-shape", "4,8", "--memory")
    assert result.exit_code == 2 and "fake training step" in result.stderr and "Traceback" not in result.stderr


def test_compare_torchinfo_shows_its_estimated_total_beside_our_peak(cli, spec):
    torchinfo = pytest.importorskip(
        "torchinfo", reason="torchinfo is not installed (pip install torchinfo; CI installs it in .ci/run)")
    from fixtures.memory_models import mlp

    result = cli("count", spec("mlp", "memory_models"), "--input-shape", "32,64", "--memory", "--compare",
                 "torchinfo", "--json")
    facts = json.loads(result.stdout)["result"]
    (row,) = facts["compare"]
    stats = torchinfo.summary(mlp(), input_data=[torch.randn(32, 64)], verbose=0, mode="eval")
    assert row["memory_bytes"] == stats.total_input + stats.total_output_bytes + stats.total_param_bytes
    assert row["memory_bytes"] < facts["memory"]["peak_bytes"]  # no gradients, optimizer state or saved tensors
    human = cli("count", spec("mlp", "memory_models"), "--input-shape", "32,64", "--memory", "--compare", "torchinfo")
    assert "torchinfo: Estimated Total Size" in human.stdout
