"""watch under torchrun: real 2-process gloo runs of the ``ddp_*`` watch fixtures; the merge of real rank reports."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tests.learning.rank_reports import watched
from torch import nn

from torchdoctor.learning.ranks import merge_watch_reports
from torchdoctor.nan.ranks import rank_context
from torchdoctor.render.human import render_human

SCRIPTS = Path(__file__).resolve().parents[2] / "fixtures" / "watch_scripts"


def torchrun_watch(script: str, *options: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "torchdoctor", "watch", script, *options]
    return subprocess.run(command, capture_output=True, text=True, cwd=SCRIPTS, timeout=120)


@pytest.mark.slow
def test_healthy_ddp_run_is_quiet_and_rank_0_writes_the_one_report(tmp_path, validate_report):
    target = tmp_path / "report.json"
    done = torchrun_watch("ddp_healthy.py", "--report", str(target))
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"final loss \d\.\d{4}\n", done.stdout)  # the script's own output, once (rank 0 prints)
    report = validate_report(json.loads(target.read_text(encoding="utf-8")))
    assert report["status"] == "ok" and report["findings"] == [], report["findings"]
    result = report["result"]
    assert result["world_size"] == 2 and [r["rank"] for r in result["ranks"]] == [0, 1]
    assert all(r["reported"] and r["steps_watched"] == 32 and r["findings"] == [] for r in result["ranks"])
    assert result["series"]["layers"] == ["0", "2"]  # the user's names, not DDP's "module.0"
    assert result["ddp"]["models"] == ["torch.nn.modules.container.Sequential"]
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no second writer's temp file left


@pytest.mark.slow
def test_labels_broken_on_rank_1_are_named_with_that_rank(validate_report):
    done = torchrun_watch("ddp_rank1_labels.py", "--json", "--strict")
    assert done.returncode == 1, done.stderr  # --strict: a warning fails the job, and rank 0 still reported
    report = validate_report(json.loads(done.stdout))  # exactly one JSON document: rank 0's
    by_id = {f["id"]: f for f in report["findings"]}
    assert sorted(by_id) == ["loss-not-decreasing", "syncbn-missing"]
    finding = by_id["loss-not-decreasing"]
    assert finding["details"]["at_chance"] is True
    assert (finding["details"]["ranks"], finding["details"]["quiet_ranks"]) == ([1], [0])
    assert finding["message"].startswith("rank 1 only: ") and "data (or the code path) of rank 1" in finding["message"]
    # DDP's own facts, as nan-hunt gathers them, on every rank: said once, for both ranks
    batchnorm = by_id["syncbn-missing"]
    assert batchnorm["message"].startswith("ranks 0, 1: ") and batchnorm["details"]["layers"] == ["1 (BatchNorm1d)"]
    ranks = report["result"]["ranks"]
    assert ranks[0]["findings"] == ["syncbn-missing"] and "loss-not-decreasing" in ranks[1]["findings"]
    assert ranks[0]["loss"][-1] < ranks[0]["loss"][0] and len(ranks[1]["loss"]) == len(ranks[0]["loss"])


# --- merging real single-process reports --------------------------------------------------------------------


@pytest.fixture(scope="module")
def healthy():
    return watched(True)


@pytest.fixture(scope="module")
def at_chance():
    return watched(False)


def test_a_finding_of_some_ranks_says_which_and_what_differs(healthy, at_chance, validate_report):
    assert [f["id"] for f in at_chance["findings"]] == ["loss-not-decreasing"] and healthy["findings"] == []
    merged = merge_watch_reports({0: healthy, 1: at_chance, 2: healthy})
    validate_report(merged.to_dict())
    [finding] = merged.findings
    assert (finding.details["ranks"], finding.details["quiet_ranks"]) == ([1], [0, 2])
    assert finding.message.startswith("rank 1 only: The loss") and "ranks 0, 2 did not show this" in finding.message
    assert merged.exit_code() == 0 and merged.exit_code(strict=True) == 1


def test_a_finding_of_every_rank_is_said_once_with_the_lowest_ranks_numbers(at_chance):
    other = json.loads(json.dumps(at_chance))
    other["findings"][0]["message"] = other["findings"][0]["message"].replace("median", "median (rank 1's)")
    merged = merge_watch_reports({0: at_chance, 1: other})
    [finding] = merged.findings
    assert finding.message == "ranks 0, 1: " + at_chance["findings"][0]["message"]
    assert (finding.details["ranks"], finding.details["quiet_ranks"], finding.details["rank"]) == ([0, 1], [], 0)


def test_without_ddp_a_rank_only_finding_does_not_claim_shared_weights():
    merged = merge_watch_reports({0: watched(True, under_ddp=False), 1: watched(False, under_ddp=False)})
    assert merged.findings[0].message.startswith("rank 1 only: ") and "DDP" not in merged.findings[0].message


def test_a_rank_without_a_report_is_named_and_the_report_renders(healthy):
    merged = merge_watch_reports({0: healthy, 1: None})
    finding = next(f for f in merged.findings if f.id == "distributed-hang")
    assert finding.details["ranks"] == [1] and "wrote no watch report" in finding.message
    assert merged.result["ranks"][1] == {"rank": 1, "reported": False}
    from rich.console import Console

    console = Console(file=__import__("io").StringIO(), width=100)
    render_human(merged, console)  # every finding sits in one of watch's sections
    assert "distributed-hang" in console.file.getvalue()


def test_ddp_weights_that_differ_across_ranks_are_ranks_diverged(healthy):
    first, drifted = json.loads(json.dumps(healthy)), json.loads(json.dumps(healthy))
    for report, checksum in ((first, 1.0), (drifted, 1.5)):  # as DdpWatch records them after step 30
        report["result"]["ddp"] = {**report["result"]["ddp"], "checksum_step": 30, "checksum": checksum}
    merged = merge_watch_reports({0: first, 1: drifted})
    assert [f.id for f in merged.findings] == ["ranks-diverged"] and merged.exit_code() == 1
    assert [f.id for f in merge_watch_reports({0: first, 1: first}).findings] == []


def test_wrapped_models_are_named_as_the_user_named_them():
    report = watched(True, nn.DataParallel(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))))
    assert report["result"]["series"]["layers"] == ["0", "2"]
    assert list(report["result"]["series"]["dead_fraction"]) == ["1"]


def test_nan_hunt_and_watch_ranks_share_no_folder(tmp_path):
    environ = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "TORCHELASTIC_RUN_ID": "job"}
    watch, hunt = rank_context(environ, str(tmp_path), command="watch"), rank_context(environ, str(tmp_path))
    assert watch.folder != hunt.folder and watch.folder.name.startswith("torchdoctor-watch-")
