"""JUnit and GitHub outputs from hand-built check reports (no torch, no items run)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from torchdoctor.check.api import build_report
from torchdoctor.check.config import CheckConfig, IgnoreRule, Item
from torchdoctor.check.outputs import render_github, render_junit
from torchdoctor.check.run import ItemOutcome
from torchdoctor.codes import make_finding
from torchdoctor.report import Report, Section


def _report(fail_on: str = "error", ignore: tuple[IgnoreRule, ...] = ()) -> Report:
    prefix = make_finding("module-prefix", "All 4 keys start with 'module.'", location="w.pth")
    labels = make_finding("label-out-of-range", "Labels run 1..4, 50% off", fix="Subtract 1, 50%: a, b")
    nan = make_finding("nonfinite-loss", "loss became NaN", location="train.py:12")
    ckpt = Item("ckpt", "w.pth", {}, "w.pth", 4)
    data = Item("data", "train.py:loader", {}, "train.py", 7)
    hunt = Item("nan-hunt", "train.py", {}, "train.py", 10)
    broken = Item("count", "models.py:Net", {}, "models.py", 13)
    outcomes = [
        ItemOutcome(ckpt, Report("ckpt inspect", (prefix,), {}, (Section("keys", "Keys", "4 keys", (prefix,)),))),
        ItemOutcome(data, Report("data", (labels,), {})),
        ItemOutcome(hunt, Report("nan-hunt", (nan,), {})),
        ItemOutcome(broken, None, "cannot import models.py", "fix the import"),
        ItemOutcome(Item("env", "env", {}), Report("env", (), {})),
    ]
    return build_report(CheckConfig(Path("."), Path("pyproject.toml"), fail_on, ignore), outcomes)


def test_junit_has_a_suite_per_item_with_failures_and_errors():
    root = ET.fromstring(render_junit(_report()))
    suites = {suite.get("name"): suite for suite in root.iter("testsuite")}
    assert list(suites) == ["ckpt: w.pth", "data: train.py:loader", "nan-hunt: train.py", "count: models.py:Net",
                            "env: env"]
    assert all(int(suite.get("tests")) >= 1 for suite in suites.values())
    failures = [f.get("type") for f in root.iter("failure")]
    assert failures == ["label-out-of-range", "nonfinite-loss"]  # a warning does not fail with fail-on = error
    fix_text = next(root.iter("failure")).text
    assert "Subtract 1" in fix_text and "TD501" in fix_text
    assert suites["count: models.py:Net"].get("errors") == "1"
    assert next(root.iter("error")).get("message") == "cannot import models.py"
    assert root.get("failures") == "2" and root.get("errors") == "1"


def test_junit_fail_on_warning_and_ignored_are_skipped():
    root = ET.fromstring(render_junit(_report("warning", (IgnoreRule("label-out-of-range", "known"),))))
    assert [f.get("type") for f in root.iter("failure")] == ["module-prefix", "nonfinite-loss"]
    skipped = [s.get("message") for s in root.iter("skipped")]
    assert skipped == ["ignored label-out-of-range: known"]


def test_github_annotations_name_file_line_and_id():
    lines = render_github(_report()).splitlines()
    assert lines[0] == "::warning file=w.pth,title=module-prefix::All 4 keys start with 'module.'%0Afix: " \
        + make_finding("module-prefix", "x").fix.replace("%", "%25")
    assert lines[1] == ("::error file=train.py,title=label-out-of-range::Labels run 1..4, 50%25 off"
                        "%0Afix: Subtract 1, 50%25: a, b")
    assert lines[2].startswith("::error file=train.py,line=12,title=nonfinite-loss::loss became NaN")
    assert lines[3].startswith("::error file=models.py,title=check-crashed::count models.py:Net could not run")
    assert len(lines) == 4


def test_ignored_findings_leave_the_exit_code_and_are_listed():
    report = _report(ignore=(IgnoreRule("label-out-of-range", "known"), IgnoreRule("nonfinite-loss"),
                             IgnoreRule("check-crashed")))
    assert report.exit_code() == 0 and report.exit_code(strict=True) == 1
    assert [(i["id"], i["item"], i["reason"]) for i in report.result["ignored"]] == [
        ("label-out-of-range", "train.py:loader", "known"), ("nonfinite-loss", "train.py", None),
        ("check-crashed", "models.py:Net", None)]
    data = report.sections[1]
    assert data.findings == () and data.lines == ("ignored label-out-of-range: Labels run 1..4, 50% off "
                                                  "(reason: known)",)
