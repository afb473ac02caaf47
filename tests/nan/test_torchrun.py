"""nan-hunt under torchrun: real 2-process gloo runs of the ``ddp_*`` fixtures, plus the pure rank merge."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from torchdoctor.nan.ranks import merge_reports, rank_context

SCRIPTS = Path(__file__).resolve().parents[2] / "fixtures" / "nan_scripts"


def torchrun_nan_hunt(script: str) -> tuple[subprocess.CompletedProcess, dict]:
    """One JSON document on stdout: rank 0's merged report and nothing else.

    A launch that prints no report at all was seen twice in full-suite runs on the loaded 2-core machine (never
    when rerun alone): it is launched once more, and if that also prints none the test fails with both stderrs.
    """
    first = _launch(script)
    report = _report(first.stdout)
    if report is not None:
        return first, report
    second = _launch(script)
    report = _report(second.stdout)
    assert report is not None, (f"no JSON report twice (exit {first.returncode}, {second.returncode}); first stderr:"
                                f"\n{first.stderr[-3000:]}\nsecond stderr:\n{second.stderr[-3000:]}")
    return second, report


def _launch(script: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "torchdoctor", "nan-hunt", script, "--json"]
    return subprocess.run(command, capture_output=True, text=True, cwd=SCRIPTS, timeout=60)


def _report(stdout: str) -> dict | None:
    try:
        report = json.loads(stdout)
    except json.JSONDecodeError:
        return None
    return report if isinstance(report, dict) else None


def ids(report: dict) -> list[str]:
    return [f["id"] for f in report["findings"]]


@pytest.mark.slow
def test_healthy_ddp_run_prints_one_merged_report():
    done, report = torchrun_nan_hunt("ddp_healthy.py")
    assert done.returncode == 0, done.stderr
    assert report["status"] == "ok" and report["result"]["first_nonfinite"] is None
    assert [r["rank"] for r in report["result"]["ranks"]] == [0, 1]
    assert all(r["reported"] and r["steps"] == 5 for r in report["result"]["ranks"])


@pytest.mark.slow
def test_nan_on_rank_1_is_named_with_its_rank_and_step():
    done, report = torchrun_nan_hunt("ddp_nan_rank1.py")
    assert done.returncode == 1, done.stderr
    first = report["result"]["first_nonfinite"]
    assert (first["rank"], first["step"], first["phase"], first["sample_index"]) == (1, 2, "input", 21)
    finding = next(f for f in report["findings"] if f["id"] == "nonfinite-input")
    assert finding["details"]["rank"] == 1 and finding["message"].startswith("rank 1: ")
    # rank 0 lost its peer in the backward all-reduce: an echo of rank 1's stop, reported as info, not an error
    echoes = [f for f in report["findings"] if f["id"] == "script-failed"]
    assert all(f["severity"] == "info" and f["details"]["consequence_of_rank"] == 1 for f in echoes)


@pytest.mark.slow
def test_unused_parameter_is_named():
    done, report = torchrun_nan_hunt("ddp_unused_param.py")
    assert done.returncode == 1, done.stderr
    finding = next(f for f in report["findings"] if f["id"] == "ddp-unused-parameters")
    assert finding["details"]["parameters"] == ["aux_head.weight", "aux_head.bias"]
    assert "aux_head.weight" in finding["message"] and finding["details"]["ranks"] == [0, 1]


@pytest.mark.slow
def test_batchnorm_under_ddp_is_an_info():
    done, report = torchrun_nan_hunt("ddp_batchnorm.py")
    if done.returncode != 0:
        # Seen once (not reproducible in 20 reruns) in a full-suite run on the loaded 2-core machine: one retry
        # tells a flaky launch from a real failure, and the first run's stderr is kept in the message.
        first_stderr = done.stderr
        done, report = torchrun_nan_hunt("ddp_batchnorm.py")
        assert done.returncode == 0, f"twice non-zero; first stderr:\n{first_stderr}\nsecond:\n{done.stderr}"
    finding = next(f for f in report["findings"] if f["id"] == "syncbn-missing")
    assert finding["severity"] == "info" and finding["details"]["layers"] == ["1 (BatchNorm1d)"]


# --- pure: detection and merging -------------------------------------------------------------------------


def test_rank_context_needs_torchrun_variables(tmp_path):
    assert rank_context({}, str(tmp_path)) is None
    assert rank_context({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}, str(tmp_path)) is None
    context = rank_context({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "TORCHELASTIC_RUN_ID": "a/b"},
                           str(tmp_path))
    assert (context.rank, context.world_size) == (1, 2) and context.folder.parent == tmp_path


def rank_report(step=None, checksum=1.0, findings=()):
    first = {"kind": "nan", "phase": "loss", "step": step} if step is not None else None
    ddp = {"checksum_step": 3, "checksum": checksum, "unused_parameters": []}
    return {"status": "ok", "findings": list(findings), "result": {"first_nonfinite": first, "steps": 3, "ddp": ddp}}


def test_merge_picks_the_earliest_step_then_the_lowest_rank():
    merged = merge_reports({0: rank_report(step=4), 1: rank_report(step=2), 2: rank_report(step=2)})
    assert merged.result["first_nonfinite"]["rank"] == 1 and merged.result["first_nonfinite"]["step"] == 2


def test_different_final_checksums_are_ranks_diverged():
    merged = merge_reports({0: rank_report(checksum=1.0), 1: rank_report(checksum=1.5)})
    assert "ranks-diverged" in [f.id for f in merged.findings] and merged.exit_code() == 1
    assert [f.id for f in merge_reports({0: rank_report(), 1: rank_report()}).findings] == []


def test_a_rank_without_a_report_is_named():
    merged = merge_reports({0: rank_report(), 1: None})
    finding = next(f for f in merged.findings if f.id == "distributed-hang")
    assert finding.details["ranks"] == [1] and merged.result["ranks"][1] == {"rank": 1, "reported": False}


def test_a_script_failure_caused_by_another_ranks_stop_is_an_info_echo():
    event = {"kind": "nan", "phase": "input", "step": 2}
    stopped = {"status": "error", "result": {"stopped": "first-nonfinite", "first_nonfinite": event},
               "findings": [{"id": "nonfinite-input", "code": "TD301", "severity": "error", "message": "NaN in batch"}]}
    echo = {"status": "error", "result": {"stopped": None, "first_nonfinite": None},
            "findings": [{"id": "script-failed", "code": "TD309", "severity": "error",
                          "message": "RuntimeError: Connection closed by peer"}]}
    merged = merge_reports({0: echo, 1: stopped})
    failed = next(f for f in merged.findings if f.id == "script-failed")
    assert failed.severity.value == "info" and failed.details["consequence_of_rank"] == 1
    assert merged.exit_code() == 1  # rank 1's NaN still fails the run
    alone = merge_reports({0: echo, 1: {**echo, "findings": []}})
    assert next(f for f in alone.findings if f.id == "script-failed").severity.value == "error"
