"""Real two-rank gloo runs on the CPU through torchrun, each failure brought about by a real cause.

torchdoctor's worker carries no fault injection: a bad environment (an interface that does not exist) makes
init fail, and a user script with a rank-dependent update really makes the ranks diverge (seen by nan-hunt,
which watches the user's own DDP model). Hang and step-failure judgements are tested on facts in
test_dist_checks.py.
"""

from __future__ import annotations

import os

import pytest
from tests.nan.test_torchrun import torchrun_nan_hunt

from torchdoctor.dist.api import DistOptions, run_distributed

pytest.importorskip("torch.distributed")


def test_a_missing_network_interface_is_distributed_init_failed():
    environ = {**os.environ, "GLOO_SOCKET_IFNAME": "td-no-such0"}  # a real misconfiguration: no such interface
    section, facts = run_distributed(DistOptions(nproc=2, backend="gloo", phase_timeout_s=8, environ=environ))
    assert [f.id for f in section.findings] == ["distributed-init-failed"]
    (finding,) = section.findings
    assert "td-no-such0" in finding.message and finding.location.endswith(": init")
    assert set(finding.details["environ"][finding.location.split()[1].rstrip(":")]) == {
        "MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"}
    assert all(not rank["phases"].get("init", {}).get("ok") for rank in facts["ranks"].values())


@pytest.mark.slow
def test_a_rank_dependent_update_is_ranks_diverged():
    done, report = torchrun_nan_hunt("ddp_diverged.py")
    assert done.returncode == 1, done.stderr
    finding = next(f for f in report["findings"] if f["id"] == "ranks-diverged")
    checksums = finding["details"]["checksums"]
    assert checksums["0"] != checksums["1"]  # the parameter sums the two ranks really ended with
    assert report["result"]["first_nonfinite"] is None  # nothing non-finite: only the replicas drifted


def test_nccl_on_this_build_is_distributed_unavailable():
    import torch.distributed as dist

    if dist.is_nccl_available():
        pytest.skip("this build has NCCL")
    section, facts = run_distributed(DistOptions(nproc=2, backend="nccl"))
    assert [f.id for f in section.findings] == ["distributed-unavailable"]
    assert "ranks" not in facts  # decided before launching
