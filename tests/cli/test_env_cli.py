"""``torchdoctor env`` through Typer (CliRunner) and as a real subprocess."""

import json
import re

import pytest
from tests.conftest import run_torchdoctor

from torchdoctor.env.api import CHECK_NAMES

ANSI = re.compile(r"\x1b\[")


def test_json_output_is_one_schema_valid_object(cli, validate_report):
    result = cli("env", "--check", "threads", "--check", "reproducibility", "--json")
    assert result.exit_code == 0, result.output
    report = validate_report(json.loads(result.stdout))
    assert report["command"] == "env" and report["result"]["checks_run"] == ["threads", "reproducibility"]


def test_human_output_has_groups_and_summary(cli):
    result = cli("env", "-c", "threads", "-c", "build")
    assert result.exit_code == 0
    assert "[✓] PyTorch build: torch" in result.stdout
    assert "[✓] CPU threads:" in result.stdout
    assert "No issues found" in result.stdout
    assert not ANSI.search(result.stdout)


def test_list_checks_names_every_check(cli):
    result = cli("env", "--list-checks")
    assert result.exit_code == 0
    assert [line.split()[0] for line in result.stdout.splitlines()] == list(CHECK_NAMES)


def test_unknown_check_exits_2_with_one_line_and_no_traceback(cli):
    result = cli("env", "--check", "gpus")
    assert result.exit_code == 2
    assert "unknown check 'gpus'; valid checks: build, devices" in result.stderr
    assert "Traceback" not in result.output


def test_debug_shows_the_traceback(cli):
    result = cli("env", "--check", "gpus", "--debug")
    assert result.exit_code == 2 and "Traceback" in result.stderr


@pytest.mark.slow
def test_full_env_on_this_machine_exits_0_without_errors(validate_report):
    completed = run_torchdoctor("env", "--json")
    assert completed.returncode == 0, completed.stderr
    report = validate_report(json.loads(completed.stdout))
    assert report["result"]["checks_run"] == list(CHECK_NAMES)
    assert [f for f in report["findings"] if f["severity"] == "error"] == []
    assert report["result"]["training"]["steps"][0]["ok"]
    assert report["result"]["dataloader"]["ok"]


@pytest.mark.slow
def test_oversubscribed_threads_warn_and_strict_fails():
    completed = run_torchdoctor("env", "-c", "threads", env={"OMP_NUM_THREADS": "64"})
    assert completed.returncode == 0
    assert "threads-oversubscribed" in completed.stdout and "fix: export OMP_NUM_THREADS=" in completed.stdout
    strict = run_torchdoctor("env", "-c", "threads", "--strict", env={"OMP_NUM_THREADS": "64"})
    assert strict.returncode == 1


def _unshare_available() -> bool:
    import os
    import shutil
    import subprocess
    import sys

    if sys.platform != "linux" or os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _unshare_available(), reason="needs root on Linux with unshare -m to mount a tiny /dev/shm")
def test_full_env_in_a_4_mib_shm_names_shm_and_the_failed_worker_step(validate_report):
    import sys

    command = (f"mount -t tmpfs -o size=4m tmpfs /dev/shm && exec {sys.executable} -m torchdoctor env "
               "--check shm --check dataloader --json")
    completed = run_torchdoctor_shell(command)
    assert completed.returncode == 1, completed.stderr
    report = validate_report(json.loads(completed.stdout))
    by_id = {f["id"]: f for f in report["findings"]}
    assert by_id["shm-too-small"]["severity"] == "error"
    assert by_id["dataloader-workers-failed"]["details"]["cause"] in ("shm-exhausted", "bus-error")
    assert "4.0 MiB" in by_id["dataloader-workers-failed"]["message"]


def run_torchdoctor_shell(command: str):
    import subprocess

    return subprocess.run(["unshare", "-m", "sh", "-c", command], capture_output=True, text=True, timeout=180)
