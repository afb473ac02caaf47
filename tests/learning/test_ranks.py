"""A rank that fails only because another rank crashed is named as the crash's knock-on, not as a second error.

The rank reports come from real in-process watch runs of ``crash_and_lost_peer.py``: the crash is a real shape
error, the knock-on gloo's real "Connection closed by peer" (both ends of the gloo group in one process), merged
as rank 0 merges them under torchrun.
"""

from __future__ import annotations

import io
import json
import re

import pytest
from rich.console import Console
from tests.learning.rank_reports import script_watched

from torchdoctor.learning.ranks import fold_knock_ons, lost_peer, merge_watch_reports
from torchdoctor.nan.ranks import rank_findings
from torchdoctor.render.human import render_human


@pytest.fixture(scope="module")
def crashed():
    return script_watched("crash")


@pytest.fixture(scope="module")
def lost():
    return script_watched("lost-peer")


def test_the_runs_fail_for_real_with_the_errors_of_a_crash_and_of_its_peer(crashed, lost):
    [crash] = rank_findings(1, crashed)
    [echo] = rank_findings(0, lost)
    assert crash.id == echo.id == "script-failed" and crash.details["explained_by"] == "layer-shape-mismatch"
    assert "Connection closed by peer" in echo.details["message"]  # gloo's own words, not ours
    assert lost_peer(echo) and not lost_peer(crash)
    assert crashed["result"]["steps_watched"] == lost["result"]["steps_watched"] == 3


def test_the_peer_of_a_crashed_rank_is_named_inside_the_crash_finding(crashed, lost, validate_report):
    merged = merge_watch_reports({0: lost, 1: crashed})
    validate_report(json.loads(json.dumps(merged.to_dict())))
    [finding] = [f for f in merged.findings if f.id == "script-failed"]  # one error: the crash
    assert finding.severity.value == "error" and finding.details["ranks"] == [1]
    assert finding.message.startswith("rank 1 only: RuntimeError: mat1 and mat2 shapes cannot be multiplied")
    # the crash's own text and location, then the knock-on
    assert re.search(r"crash_and_lost_peer\.py:\d+\. Rank 0 then", finding.message)
    assert finding.message.endswith(" Rank 0 then failed as a knock-on of this crash: its collectives lost their "
                                    "peer (RuntimeError: Connection closed by peer).")
    [knock_on] = finding.details["knock_ons"]
    assert finding.details["knock_on_ranks"] == [0] and knock_on["rank"] == 0
    assert "Connection closed by peer" in knock_on["message"] and "crash_and_lost_peer.py:" in knock_on["location"]
    assert merged.exit_code() == 1 and merged.result["knock_on_ranks"] == [0]
    run = next(section for section in merged.sections if section.name == "run")
    assert run.headline == "no non-finite value on any of 2 ranks; the script failed on rank 1 (rank 0 then lost " \
                           "its peer)"
    console = Console(file=io.StringIO(), width=200)
    render_human(merged, console)
    assert "Rank 0 then failed as a knock-on" in console.file.getvalue()


def test_the_crash_is_the_cause_whichever_rank_crashed(crashed, lost):
    merged = merge_watch_reports({0: crashed, 1: lost, 2: lost})
    [finding] = merged.findings
    assert finding.details["ranks"] == [0] and finding.details["knock_on_ranks"] == [1, 2]
    assert "Ranks 1, 2 then failed as a knock-on of this crash: their collectives" in finding.message
    run = next(section for section in merged.sections if section.name == "run")
    assert run.headline.endswith("the script failed on rank 0 (ranks 1, 2 then lost their peer)")


def test_a_lost_peer_with_no_crash_to_blame_stays_an_error(lost):
    [finding] = merge_watch_reports({0: lost, 1: lost}).findings
    assert finding.severity.value == "error" and "knock_ons" not in finding.details
    assert finding.message.startswith("ranks 0, 1: RuntimeError: [") and "Connection closed by peer" in finding.message


def test_crashes_alone_are_left_as_they_are(crashed):
    findings = rank_findings(0, crashed) + rank_findings(1, crashed)
    assert fold_knock_ons(findings) == findings
