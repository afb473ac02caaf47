"""``torchdoctor env --distributed``: a real two-rank gloo run through the CLI."""

from __future__ import annotations

import json

from tests.conftest import run_torchdoctor


def test_env_distributed_passes_on_this_machine_and_reports_nccl_env():
    done = run_torchdoctor("env", "--check", "build", "--distributed", "--nproc", "2", "--backend", "gloo", "--json",
                           env={"NCCL_DEBUG": "INFO"})
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    distributed = report["result"]["distributed"]
    assert distributed["backend"] == "gloo" and distributed["world_size"] == 2
    assert [f["id"] for f in report["findings"] if f["severity"] != "info"] == []
    (nccl,) = [f for f in report["findings"] if f["id"] == "nccl-env"]
    assert nccl["details"]["nccl_env"] == {"NCCL_DEBUG": "INFO"}
    for rank in distributed["ranks"].values():
        assert all(phase["ok"] for phase in rank["phases"].values())
        assert set(rank["phases"]["bandwidth"]["gb_per_s"]) == {"1KiB", "1MiB", "16MiB"}
    checksums = {rank["phases"]["param_check"]["param_checksum"] for rank in distributed["ranks"].values()}
    assert len(checksums) == 1


def test_env_distributed_human_output_shows_the_section():
    done = run_torchdoctor("env", "--check", "build", "--distributed")
    assert done.returncode == 0, done.stderr
    assert "Distributed (" in done.stdout and "all_reduce bandwidth" in done.stdout
