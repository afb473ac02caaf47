"""``torchdoctor check``: a real project folder, run as CI runs it (a subprocess), JUnit and annotations parsed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
from tests.check.project import build_project


def run_check_in(folder, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torchdoctor", "check", *args], cwd=folder, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "NO_COLOR": "1"})


def failures(junit_path) -> dict[str, list[str]]:
    root = ET.parse(junit_path).getroot()
    return {suite.get("name"): [f.get("type") for f in suite.iter("failure")] for suite in root.iter("testsuite")}


def test_project_check_junit_and_github(tmp_path):
    project = build_project(tmp_path)
    done = run_check_in(project, "--junit", "out.xml", "--github")
    assert done.returncode == 1, done.stderr
    assert failures(project / "out.xml") == {"env: env": [], "ckpt: weights/model.pth": [],
                                             "data: train.py:loader": ["label-out-of-range"]}
    root = ET.parse(project / "out.xml").getroot()
    assert all(int(suite.get("tests")) >= 1 for suite in root.iter("testsuite"))
    annotations = [line for line in done.stdout.splitlines() if line.startswith("::")]
    assert annotations[0].startswith("::warning file=weights/model.pth,title=module-prefix::All 4 keys")
    assert any(line.startswith("::error file=train.py,title=label-out-of-range::") for line in annotations)
    assert "[✗] data train.py:loader" in done.stdout  # the human report follows the annotations


def test_ignore_and_fail_on_warning(tmp_path):
    project = build_project(tmp_path, ignore='[{ id = "label-out-of-range", reason = "fixed in #12" }]')
    config = project / "pyproject.toml"
    config.write_text(config.read_text().replace('fail-on = "error"', 'fail-on = "warning"'))
    done = run_check_in(project, "--junit", "out.xml")
    assert done.returncode == 1, done.stderr  # module-prefix is a warning, and warnings fail now
    assert failures(project / "out.xml")["ckpt: weights/model.pth"] == ["module-prefix"]
    assert "ignored label-out-of-range" in done.stdout and "fixed in #12" in done.stdout

    config.write_text(config.read_text().replace('ignore = [', 'ignore = ["module-prefix", '))
    done = run_check_in(project, "--junit", "out.xml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert all(not ids for ids in failures(project / "out.xml").values())
    skipped = [s.get("message") for s in ET.parse(project / "out.xml").getroot().iter("skipped")]
    assert skipped == ["ignored module-prefix", "ignored label-out-of-range: fixed in #12"]


def test_json_report_validates(tmp_path, cli, validate_report, monkeypatch):
    project = build_project(tmp_path)
    monkeypatch.chdir(project)
    result = cli("check", "--json")
    assert result.exit_code == 1, result.stderr
    report = validate_report(json.loads(result.stdout))
    assert report["command"] == "check"
    assert [f["id"] for f in report["findings"]] == ["module-prefix", "label-out-of-range"]
    assert [(i["kind"], i["status"]) for i in report["result"]["items"]] == [
        ("env", "ok"), ("ckpt", "warning"), ("data", "error")]
    assert report["result"]["items"][1]["report"]["command"] == "ckpt inspect"
    assert report["result"]["ignored"] == []


def test_no_config_runs_env(tmp_path, cli, monkeypatch, validate_report):
    monkeypatch.chdir(tmp_path)
    result = cli("check", "--json")
    report = validate_report(json.loads(result.stdout))
    assert [item["kind"] for item in report["result"]["items"]] == ["env"]
    assert report["result"]["config"] is None
    assert result.exit_code == (1 if report["status"] == "error" else 0)


@pytest.mark.parametrize(("config", "expected"), [
    ('[tool.torchdoctor]\nfail-on = "error"\nfail_on = "warning"\n', "pyproject.toml, line 3: unknown key 'fail_on'"),
    ('[tool.torchdoctor]\n\n[[tool.torchdoctor.ckpt]]\npath = "gone.pth"\n', "line 4: 'ckpt.path': no such file"),
    ('[tool.torchdoctor]\nignore = ["modul-prefix"]\n', "line 2: unknown finding id 'modul-prefix'"),
])
def test_config_errors_exit_2_with_key_and_line(tmp_path, cli, monkeypatch, config, expected):
    (tmp_path / "pyproject.toml").write_text(config)
    monkeypatch.chdir(tmp_path)
    result = cli("check")
    assert result.exit_code == 2
    assert expected in result.stderr
    assert result.stdout == ""


def test_config_option_reads_a_standalone_file(tmp_path, cli, monkeypatch):
    (tmp_path / "ci.toml").write_text('[env]\nchecks = ["build"]\n')
    monkeypatch.chdir(tmp_path)
    result = cli("check", "--config", "ci.toml", "--json")
    report = json.loads(result.stdout)
    assert report["result"]["config"] == "ci.toml"
    assert report["result"]["items"][0]["report"]["result"]["checks_run"] == ["build"]


def test_json_and_github_together_is_a_usage_error(cli):
    assert cli("check", "--json", "--github").exit_code == 2
