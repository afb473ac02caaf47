"""``count --memory --fit``: sizes, the largest batch that fits, the ranked fixes (each checked against the step it
describes) and the two memory findings."""

import copy

import pytest
import torch
from fixtures import count_models, memory_models
from torch.utils.checkpoint import checkpoint

from torchdoctor.codes import get_spec
from torchdoctor.count import count
from torchdoctor.count.memory import MemoryFacts, MemoryPlan, collect_memory, parse_plan
from torchdoctor.count.memory_fit import find_max_batch, parse_size, plan_fixes
from torchdoctor.count.memory_judge import check_memory, memory_dict
from torchdoctor.errors import UsageError


def test_sizes_parse_in_both_unit_families():
    assert parse_size("24GiB") == 24 * 2**30 and parse_size("80GB") == 80 * 10**9
    assert parse_size("1.5 TiB") == int(1.5 * 2**40) and parse_size("123456") == 123456
    assert parse_size("512mib") == 512 * 2**20
    for bad in ("lots", "12 parsecs", "GB", "-3GB", "0"):
        with pytest.raises(UsageError):
            parse_size(bad)


def test_fit_cuda_reads_the_device_or_says_there_is_none():
    assert parse_size("cuda", cuda_total=lambda: 42 * 2**30) == 42 * 2**30
    with pytest.raises(UsageError, match="CUDA"):
        parse_size("cuda", cuda_total=lambda: None)


def test_plans_reject_unknown_optimizers_and_amp():
    assert parse_plan("AdamW", "bf16") == MemoryPlan("adamw", "bfloat16")
    assert parse_plan(None, None).optimizer == "adamw"
    for optimizer, amp in (("lion", None), ("adam", "fp8")):
        with pytest.raises(UsageError):
            parse_plan(optimizer, amp)


def _measure(model, x):
    return lambda plan: collect_memory(model, (x,), {}, plan)


def test_max_batch_is_the_largest_batch_whose_measured_peak_fits():
    model, x = memory_models.WideStack(), torch.randn(96, 128)
    measure = _measure(model, x)
    facts = measure(MemoryPlan("adam"))
    device = measure(MemoryPlan("adam", batch_size=37)).peak_bytes + 1
    batch, found = find_max_batch(facts, MemoryPlan("adam"), measure, device)
    assert batch == 37 and found.peak_bytes <= device
    assert measure(MemoryPlan("adam", batch_size=38)).peak_bytes > device
    assert find_max_batch(facts, MemoryPlan("adam"), measure, facts.params_bytes) == (0, None)


def test_fixes_are_ranked_and_each_peak_is_the_peak_of_the_step_it_describes():
    model, x = count_models.Decoder(vocab=100, d_model=64, layers=4, heads=4, ffn=256), torch.randint(0, 100, (8, 64))
    measure, plan = _measure(model, x), MemoryPlan("adamw")
    facts = measure(plan)
    device = facts.peak_bytes // 2
    fixes = plan_fixes(facts, plan, measure, device, find_max_batch(facts, plan, measure, device))
    by_kind = {fix.kind: fix for fix in fixes}
    assert [fix.bytes_saved for fix in fixes] == sorted((fix.bytes_saved for fix in fixes), reverse=True)
    assert {"checkpointing", "bf16-autocast", "smaller-batch", "sharding", "8bit-optimizer"} <= set(by_kind)
    assert by_kind["bf16-autocast"].peak_bytes == measure(MemoryPlan("adamw", amp="bfloat16")).peak_bytes
    smaller = by_kind["smaller-batch"]
    assert smaller.fits and smaller.peak_bytes == measure(MemoryPlan("adamw", batch_size=smaller.details["batch_size"])
                                                          ).peak_bytes
    assert by_kind["checkpointing"].details["modules"] == [f"blocks.{i}" for i in range(4)]
    states = facts.model_state_bytes
    gpus = by_kind["sharding"].details["gpus"]
    kept = states - -(-states // gpus)
    assert by_kind["sharding"].peak_bytes == max(facts.phase_peaks["forward"] - kept,
                                                 facts.phase_peaks["backward"] - kept,
                                                 -(-facts.phase_peaks["optimizer"] // gpus))
    assert by_kind["sharding"].peak_bytes <= facts.peak_bytes - states + -(-states // gpus)
    values = (facts.optimizer_bytes - 4 * len(list(model.parameters()))) // 4  # two float32 moments per value
    assert by_kind["8bit-optimizer"].bytes_saved == 4 * values - (values + 4 * -(-values // 256))


class _Checkpointed(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return checkpoint(self.inner, x, use_reentrant=False)


def test_checkpointing_fix_matches_a_really_checkpointed_model():
    """The fix's peak against the fake step of the model rewritten with torch.utils.checkpoint by hand."""
    model, x = count_models.Decoder(vocab=100, d_model=64, layers=4, heads=4, ffn=256), torch.randint(0, 100, (8, 64))
    plan = MemoryPlan("sgd")
    facts = collect_memory(model, (x,), {}, plan)
    (fix,) = [fix for fix in plan_fixes(facts, plan, _measure(model, x), 1, (None, None))
              if fix.kind == "checkpointing"]
    rewritten = copy.deepcopy(model)
    for index, block in enumerate(rewritten.blocks):
        rewritten.blocks[index] = _Checkpointed(block)
    assert fix.peak_bytes == pytest.approx(collect_memory(rewritten, (x,), {}, plan).peak_bytes, rel=0.01)
    assert fix.peak_bytes < facts.peak_bytes


def test_memory_exceeds_device_names_the_fixes():
    model, x = memory_models.WideStack(), torch.randn(1024, 128)
    device = collect_memory(model, (x,), {}, MemoryPlan("adam")).peak_bytes // 2
    report = count(model, x, memory=True, optimizer="adam", fit=str(device))
    (finding,) = [f for f in report.findings if f.id == "memory-exceeds-device"]
    memory = report.result["memory"]
    assert finding.code == get_spec("memory-exceeds-device").code and report.status.value == "error"
    assert memory["fit"] == {"device_bytes": device, "max_batch_size": memory["fit"]["max_batch_size"],
                             "fits": False}
    assert 0 < memory["fit"]["max_batch_size"] < 1024
    assert finding.details["fixes"] == memory["fixes"] and finding.fix.startswith(memory["fixes"][0]["action"])


def test_fits_without_fixes_when_the_device_is_large():
    report = count(memory_models.mlp(), torch.randn(8, 64), memory=True, fit="80GB")
    memory = report.result["memory"]
    assert memory["fit"]["fits"] and "fixes" not in memory
    assert memory["fit"]["max_batch_size"] > 10**5
    assert not [f for f in report.findings if f.id == "memory-exceeds-device"]


def test_activations_dominate_at_a_large_batch_but_not_at_batch_one():
    model = memory_models.WideStack()
    large = count(model, torch.randn(512, 128), memory=True, optimizer="sgd")
    (finding,) = [f for f in large.findings if f.id == "activations-dominate"]
    assert finding.severity.value == "info" and finding.details["share"] > 0.5
    assert finding.details["top_modules"][:2] == ["blocks.0", "blocks.1"]  # identical blocks, in model order
    small = count(model, torch.randn(1, 128), memory=True, optimizer="adamw")
    assert not [f for f in small.findings if f.id == "activations-dominate"]


def test_checks_are_pure_functions_of_the_result():
    facts = MemoryFacts(batch_size=4, params_bytes=100, buffers_bytes=0, grads_bytes=100, optimizer_bytes=200,
                        activations_bytes=600, peak_bytes=1000, phase_peaks={"backward": 1000})
    memory = memory_dict(facts, MemoryPlan("adam"), depth=2)
    assert [f.id for f in check_memory(memory, [])] == ["activations-dominate"]
    memory["fit"] = {"device_bytes": 500, "max_batch_size": 0, "fits": False}
    assert [f.id for f in check_memory(memory, [])] == ["memory-exceeds-device", "activations-dominate"]


def test_explain_points_an_out_of_memory_error_to_count_memory():
    fix = get_spec("cuda-out-of-memory").fix
    assert "torchdoctor count" in fix and "--memory" in fix
