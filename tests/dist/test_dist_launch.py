"""Real two-rank gloo runs on the CPU through torchrun, one per finding the launch can produce."""

from __future__ import annotations

import json

import pytest

from torchdoctor.dist.api import DistOptions, run_distributed

pytest.importorskip("torch.distributed")


def _run(inject=None, **options):
    section, facts = run_distributed(DistOptions(nproc=2, backend="gloo", inject=inject, **options))
    return [f.id for f in section.findings], section, facts


def test_injected_divergence_is_ranks_diverged():
    ids, _, facts = _run("diverge")
    assert ids == ["ranks-diverged"]
    checksums = [rank["phases"]["param_check"]["param_checksum"] for rank in facts["ranks"].values()]
    assert checksums[0] != checksums[1]


def test_injected_hang_names_rank_1_and_the_phase():
    ids, section, _ = _run("hang", phase_timeout_s=3)
    assert ids == ["distributed-hang"]
    (finding,) = section.findings
    assert finding.message.startswith("Rank 1 stalled in all_reduce")
    assert finding.details["stalled_ranks"] == ["1"]


def test_unreachable_rendezvous_is_distributed_init_failed():
    ids, section, _ = _run("init-fail", phase_timeout_s=8)
    assert ids == ["distributed-init-failed"]
    (finding,) = section.findings
    assert "Rank 1" in finding.message
    assert set(finding.details["environ"]["1"]) == {"MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"}


def test_injected_step_failure_is_distributed_step_failed():
    ids, section, _ = _run("step-fail")
    assert ids == ["distributed-step-failed"]
    assert section.findings[0].details == {**section.findings[0].details, "rank": 1, "phase": "ddp_step"}
    json.dumps(section.findings[0].to_dict())


def test_nccl_on_this_build_is_distributed_unavailable():
    import torch.distributed as dist

    if dist.is_nccl_available():
        pytest.skip("this build has NCCL")
    ids, _, facts = _run_backend("nccl")
    assert ids == ["distributed-unavailable"]
    assert "ranks" not in facts  # decided before launching


def _run_backend(backend):
    section, facts = run_distributed(DistOptions(nproc=2, backend=backend))
    return [f.id for f in section.findings], section, facts
