"""``torchdoctor nan-hunt`` through Typer and as a real subprocess: argv, output modes, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import run_torchdoctor

SCRIPTS = Path(__file__).resolve().parents[2] / "fixtures" / "nan_scripts"
HEALTHY_ARGS = ("--lr", "0.1", "--epochs", "2")
ARGV_LINE = "argv: ['healthy_argparse.py', '--lr', '0.1', '--epochs', '2']"

PRODUCER = "# <-- producer"
# script -> (the finding id its first non-finite value must produce, the marker of the line to name)
BUGGY = {
    "underflow_log_loss.py": ("nonfinite-loss", PRODUCER),
    "sqrt_distance.py": ("nonfinite-backward", PRODUCER),
    "norm_no_eps.py": ("nonfinite-forward", PRODUCER),
    "exploding_lr.py": ("divergence", PRODUCER),
    "half_overflow.py": ("low-precision-overflow", PRODUCER),
    "masked_attention.py": ("nonfinite-forward", PRODUCER),
    "corrupt_sample.py": ("nonfinite-input", "# <-- the model sees the batch"),
}


def marker_line(name: str, marker: str = PRODUCER) -> int:
    lines = (SCRIPTS / name).read_text().splitlines()
    return next(n for n, text in enumerate(lines, start=1) if marker in text)


def nan_hunt(*args: str, cwd: Path = SCRIPTS) -> subprocess.CompletedProcess:
    """``python -m torchdoctor nan-hunt ARGS`` as a real process, run from the scripts' folder."""
    return subprocess.run(
        [sys.executable, "-m", "torchdoctor", "nan-hunt", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


@pytest.fixture()
def in_scripts_dir(monkeypatch):
    monkeypatch.chdir(SCRIPTS)


# --- argv and output modes, in-process ----------------------------------------------------------------


def test_arguments_after_double_dash_reach_the_script(cli, in_scripts_dir):
    result = cli("nan-hunt", "healthy_argparse.py", "--", *HEALTHY_ARGS)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == ARGV_LINE


def test_unknown_options_reach_the_script_without_double_dash(cli, in_scripts_dir):
    result = cli("nan-hunt", "healthy_argparse.py", *HEALTHY_ARGS, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["result"]["script"]["argv"] == ["healthy_argparse.py", *HEALTHY_ARGS]


def test_options_after_double_dash_are_the_scripts_even_when_they_are_ours(cli, in_scripts_dir):
    result = cli("nan-hunt", "healthy_argparse.py", "--json", "--", "--help")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["result"]["script"]["argv"] == ["healthy_argparse.py", "--help"]
    assert "usage: healthy_argparse.py" in result.stderr  # argparse's help, printed by the script


def test_default_mode_prints_the_script_output_then_the_report(cli, in_scripts_dir):
    result = cli("nan-hunt", "healthy_argparse.py", "--", *HEALTHY_ARGS)
    lines = result.stdout.splitlines()
    assert lines[:4] == [ARGV_LINE, "epoch 0 lr 0.1 loss 5.4732", "epoch 1 lr 0.1 loss 1.3092", "done"]
    assert "No issues found" in lines[-1]


def test_json_mode_sends_the_scripts_prints_to_stderr(cli, in_scripts_dir, validate_report):
    result = cli("nan-hunt", "healthy_argparse.py", "--json", "--", *HEALTHY_ARGS)
    assert result.exit_code == 0
    report = validate_report(json.loads(result.stdout))  # stdout is the report and nothing else
    assert report["command"] == "nan-hunt" and report["status"] == "ok"
    assert result.stderr.startswith(ARGV_LINE) and result.stderr.endswith("done\n")


def test_json_mode_reports_the_producer(cli, in_scripts_dir, validate_report):
    result = cli("nan-hunt", "norm_no_eps.py", "--json")
    assert result.exit_code == 1
    report = validate_report(json.loads(result.stdout))
    assert [f["id"] for f in report["findings"]] == ["nonfinite-forward"]
    assert report["result"]["first_nonfinite"]["module"] == "norm"


def test_human_report_names_the_producer(cli, in_scripts_dir):
    result = cli("nan-hunt", "norm_no_eps.py")
    assert result.exit_code == 1
    assert f"norm_no_eps.py:{marker_line('norm_no_eps.py')}" in result.stdout
    assert "nonfinite-forward" in result.stdout


def test_steps_stops_cleanly_with_exit_0(cli, in_scripts_dir, validate_report):
    result = cli("nan-hunt", "healthy_argparse.py", "--steps", "3", "--json", "--", "--epochs", "5")
    assert result.exit_code == 0, result.output
    report = validate_report(json.loads(result.stdout))
    assert report["result"]["stopped"] == "max-steps" and report["result"]["steps"] == 3
    assert [f for f in report["findings"] if f["severity"] == "error"] == []


def test_exit_code_3_is_an_error_finding(cli, in_scripts_dir):
    result = cli("nan-hunt", "exits_3.py", "--json")
    assert result.exit_code == 1
    (finding,) = json.loads(result.stdout)["findings"]
    assert finding["id"] == "script-exit-code" and finding["details"]["exit_code"] == 3


def test_bad_report_folder_fails_before_running_the_script(cli, in_scripts_dir, tmp_path):
    result = cli("nan-hunt", "healthy_argparse.py", "--report", str(tmp_path / "nope" / "r.json"))
    assert result.exit_code == 2 and result.stdout == ""
    assert "no such folder" in result.stderr


def test_steps_must_be_positive(cli, in_scripts_dir):
    assert cli("nan-hunt", "healthy_argparse.py", "--steps", "0").exit_code == 2


# --- real processes: what a user and CI see -----------------------------------------------------------


@pytest.mark.slow
def test_report_file_leaves_stdout_byte_identical_to_plain_python(tmp_path, validate_report):
    plain = subprocess.run(
        [sys.executable, "healthy_argparse.py", *HEALTHY_ARGS], capture_output=True, cwd=SCRIPTS, timeout=120
    )
    report_file = tmp_path / "report.json"
    hunted = subprocess.run(
        [
            sys.executable,
            "-m",
            "torchdoctor",
            "nan-hunt",
            "healthy_argparse.py",
            "--report",
            str(report_file),
            "--",
            *HEALTHY_ARGS,
        ],
        capture_output=True,
        cwd=SCRIPTS,
        timeout=120,
    )
    assert plain.returncode == 0 and hunted.returncode == 0, hunted.stderr
    assert hunted.stdout == plain.stdout
    assert hunted.stdout.decode().splitlines()[0] == ARGV_LINE
    assert b"No issues found" in hunted.stderr  # the human summary went to stderr
    report = validate_report(json.loads(report_file.read_text()))
    assert report["status"] == "ok" and report["result"]["script"]["exit_code"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BUGGY))
def test_each_buggy_script_exits_1_with_one_json_report(name, validate_report):
    finding_id, marker = BUGGY[name]
    completed = nan_hunt(name, "--json")
    assert completed.returncode == 1, completed.stderr
    report = validate_report(json.loads(completed.stdout))  # exactly one object, nothing around it
    assert finding_id in [f["id"] for f in report["findings"]]
    source = report["result"]["first_nonfinite"]["source"]
    assert Path(source["file"]).name == name and source["line"] == marker_line(name, marker)


@pytest.mark.slow
def test_shape_error_exits_1_naming_the_script_line(validate_report):
    completed = nan_hunt("shape_error.py", "--json")
    assert completed.returncode == 1
    (finding,) = validate_report(json.loads(completed.stdout))["findings"]
    line = marker_line("shape_error.py", "# <-- error")
    assert finding["id"] == "script-failed" and finding["location"] == f"shape_error.py:{line}"
    assert "mat1 and mat2 shapes cannot be multiplied" in finding["message"]


@pytest.mark.slow
def test_exits_3_exits_1():
    completed = nan_hunt("exits_3.py")
    assert completed.returncode == 1
    assert "validation accuracy below threshold; giving up" in completed.stdout
    assert "the script exited with code 3" in completed.stdout


@pytest.mark.slow
def test_steps_3_stops_cleanly_as_a_process(validate_report):
    completed = nan_hunt("healthy_argparse.py", "--steps", "3", "--json", "--", "--epochs", "5")
    assert completed.returncode == 0, completed.stderr
    report = validate_report(json.loads(completed.stdout))
    assert (report["result"]["stopped"], report["result"]["steps"]) == ("max-steps", 3)


@pytest.mark.slow
def test_missing_script_exits_2_with_one_line(tmp_path):
    completed = run_torchdoctor("nan-hunt", str(tmp_path / "nope.py"))
    assert completed.returncode == 2 and completed.stdout == ""
    assert completed.stderr.startswith("torchdoctor: error: no such file:")
    assert completed.stderr.count("\n") <= 2 and "Traceback" not in completed.stderr


@pytest.mark.slow
def test_syntax_error_exits_2_with_file_and_line(tmp_path):
    (tmp_path / "train.py").write_text("x = 1\ndef broken(:\n")
    completed = nan_hunt("train.py", cwd=tmp_path)
    assert completed.returncode == 2 and "Traceback" not in completed.stderr
    assert completed.stderr.startswith("torchdoctor: error: train.py:2: SyntaxError: ")
