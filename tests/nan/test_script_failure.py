"""A script that crashes under nan-hunt: its own traceback on stderr as python prints it; a headline that says so."""

from __future__ import annotations

import subprocess
import sys

import pytest

from torchdoctor.nan.runner import run_script

CRASHING = '''import json

CONFIG = json.loads("{}")


def learning_rate():
    return CONFIG["lr"]


try:
    learning_rate()
except KeyError as exc:
    raise RuntimeError("bad config: " + str(exc)) from exc
'''


@pytest.fixture()
def crashing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.py").write_text(CRASHING)
    return tmp_path / "train.py"


def test_the_headline_says_the_script_failed_and_does_not_repeat_the_finding(crashing):
    report = run_script("train.py")
    (finding,) = report.findings
    headline = report.sections[0].headline
    assert finding.id == "script-failed" and report.exit_code() == 1
    assert headline.startswith("the script failed with RuntimeError after 0 step")
    assert "no non-finite value in" not in headline and finding.message not in headline
    traceback_text = finding.details["python_traceback"]
    assert "The above exception was the direct cause" in traceback_text and "torchdoctor" not in traceback_text


@pytest.mark.slow
def test_the_scripts_traceback_goes_to_stderr_exactly_as_python_prints_it(crashing):
    plain = subprocess.run([sys.executable, "train.py"], capture_output=True, text=True, timeout=60)
    hunted = subprocess.run([sys.executable, "-m", "torchdoctor", "nan-hunt", "train.py"], capture_output=True,
                            text=True, timeout=120)
    assert plain.returncode == 1 and hunted.returncode == 1
    assert plain.stderr.startswith("Traceback (most recent call last):")
    assert hunted.stderr == plain.stderr
    assert "the script failed with RuntimeError" in hunted.stdout and "train.py:13" in hunted.stdout
