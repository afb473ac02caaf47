"""``torchdoctor watch`` through Typer and as a real subprocess: transparency, output modes, exit codes, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest
from tests.conftest import run_torchdoctor

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "fixtures" / "watch_scripts"
NAN_SCRIPTS = ROOT / "fixtures" / "nan_scripts"
HEALTHY_ARGS = ("--lr", "0.1", "--epochs", "2")


@pytest.fixture(autouse=True)
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_json_report_and_exit_1_on_a_program_bug(cli, validate_report):
    result = cli("watch", str(SCRIPTS / "double_softmax.py"), "--json")
    assert result.exit_code == 1, result.output
    report = validate_report(json.loads(result.stdout))  # the script's print went to stderr
    assert report["command"] == "watch" and "double-softmax" in [f["id"] for f in report["findings"]]
    assert "final loss" in result.stderr


def test_warnings_exit_0_and_1_with_strict(cli):
    script = str(SCRIPTS / "dead_relu.py")
    assert cli("watch", script).exit_code == 0
    assert cli("watch", script, "--strict").exit_code == 1


def test_args_after_double_dash_and_steps_every(cli, monkeypatch, validate_report):
    monkeypatch.chdir(NAN_SCRIPTS)
    result = cli("watch", "healthy_argparse.py", "--steps", "3", "--every", "1", "--json", "--", *HEALTHY_ARGS)
    assert result.exit_code == 0, result.output
    report = validate_report(json.loads(result.stdout))["result"]
    assert report["args"] == list(HEALTHY_ARGS) and report["script"] == "healthy_argparse.py"
    assert report["steps_watched"] == 3 and report["series"]["step"] == [0, 1, 2]
    assert report["exit_code"] == 0 and report["script_failed"] is False


def test_a_script_that_raises_is_a_finding_with_its_frame(cli, validate_report):
    result = cli("watch", str(NAN_SCRIPTS / "shape_error.py"), "--json")
    assert result.exit_code == 1
    report = validate_report(json.loads(result.stdout))
    (failed,) = [f for f in report["findings"] if f["id"] == "script-failed"]
    assert failed["location"].rpartition(":")[0].endswith("shape_error.py")
    assert report["result"]["script_failed"] is True and report["result"]["exit_code"] == 1


def test_exit_code_3_is_kept_in_the_report(cli):
    result = cli("watch", str(NAN_SCRIPTS / "exits_3.py"), "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["result"]["exit_code"] == 3 and "script-exit-code" in [f["id"] for f in report["findings"]]


@pytest.mark.parametrize("option", [("--steps", "0"), ("--every", "0"), ("--steps", "x")])
def test_bad_options_exit_2(cli, option):
    assert cli("watch", str(SCRIPTS / "dead_relu.py"), *option).exit_code == 2


def test_bad_report_or_html_folder_fails_before_running(cli, tmp_path):
    for option in ("--report", "--html"):
        result = cli("watch", str(SCRIPTS / "dead_relu.py"), option, str(tmp_path / "nope" / "out"))
        assert result.exit_code == 2 and "no such folder" in result.stderr
        assert "final loss" not in result.output  # the script never ran


def test_html_page_is_written_atomically_from_the_report_dict(cli, tmp_path, monkeypatch):
    seen = {}

    def render_watch_html(report: dict) -> str:
        seen.update(report)
        return "<html>page</html>"

    fake = types.ModuleType("torchdoctor.render.watch_html")
    fake.render_watch_html = render_watch_html
    monkeypatch.setitem(sys.modules, "torchdoctor.render.watch_html", fake)
    page = tmp_path / "run.html"
    result = cli("watch", str(SCRIPTS / "dead_relu.py"), "--html", str(page))
    assert result.exit_code == 0, result.output
    assert page.read_text() == "<html>page</html>"
    assert seen["command"] == "watch" and "series" in seen["result"]
    assert [p.name for p in tmp_path.iterdir()] == ["run.html"]  # no temp file left behind


# --- real processes: what a user and CI see -----------------------------------------------------------


@pytest.mark.slow
def test_report_file_leaves_stdout_byte_identical_to_plain_python(tmp_path, validate_report):
    plain = subprocess.run([sys.executable, "healthy_argparse.py", *HEALTHY_ARGS], capture_output=True,
                           cwd=NAN_SCRIPTS, timeout=120)
    report_file = tmp_path / "report.json"
    watched = subprocess.run(
        [sys.executable, "-m", "torchdoctor", "watch", "healthy_argparse.py", "--report", str(report_file), "--",
         *HEALTHY_ARGS], capture_output=True, cwd=NAN_SCRIPTS, timeout=120)
    assert plain.returncode == 0 and watched.returncode == 0, watched.stderr
    assert watched.stdout == plain.stdout
    report = validate_report(json.loads(report_file.read_text()))
    assert report["command"] == "watch" and report["result"]["exit_code"] == 0


@pytest.mark.slow
def test_missing_script_exits_2_with_one_line(tmp_path):
    completed = run_torchdoctor("watch", str(tmp_path / "nope.py"))
    assert completed.returncode == 2 and completed.stdout == ""
    assert completed.stderr.startswith("torchdoctor: error: no such file:")
    assert "Traceback" not in completed.stderr


def test_pictures_are_drawn_on_a_terminal_from_the_result_dict(monkeypatch):
    import typer

    from torchdoctor.cli import watch as watch_cli
    from torchdoctor.learning.runner import run_watch_script

    drawn = []
    fake = types.ModuleType("torchdoctor.render.watch_terminal")
    fake.render_watch_pictures = lambda result, console: drawn.append(result)
    monkeypatch.setitem(sys.modules, "torchdoctor.render.watch_terminal", fake)
    report = run_watch_script(str(SCRIPTS / "dead_relu.py"))
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    with pytest.raises(typer.Exit):
        watch_cli._output(report, as_json=False, to_stderr=True, strict=False)
    assert drawn == [report.to_dict()["result"]]
