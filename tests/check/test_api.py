"""``run_check`` on real items: count with budgets, a real nan-hunt subprocess, item errors that do not crash."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time

import pytest
from rich.console import Console

from tests.check.project import build_project
from torchdoctor.check.api import run_check
from torchdoctor.codes import REGISTRY
from torchdoctor.render.human import render_human


def _only(folder, text):
    (folder / "pyproject.toml").write_text("[tool.torchdoctor]\n" + text)
    return run_check(cwd=folder)


@pytest.fixture()
def project(tmp_path):
    return build_project(tmp_path)


def test_count_item_with_a_tiny_model_passes(project):
    report = _only(project, '[[tool.torchdoctor.count]]\nmodel = "models.py:Net"\ninput-shape = [1, 8]\n'
                            "max-params = 1000\nmax-macs = 1000\n")
    item = report.result["items"][0]
    assert (item["kind"], item["status"], report.exit_code()) == ("count", "ok", 0)
    assert [b["exceeded"] for b in item["report"]["result"]["budgets"]] == [False, False]


@pytest.mark.skipif("budget-exceeded" not in REGISTRY, reason="budget-exceeded is not registered yet")
def test_count_budget_overrun_is_an_error(project):
    report = _only(project, '[[tool.torchdoctor.count]]\nmodel = "models.py:Net"\ninput-shape = [1, 8]\n'
                            "max-params = 10\n")
    assert [f.id for f in report.findings] == ["budget-exceeded"]
    assert report.findings[0].details == {"budget": "max-params", "limit": 10, "actual": 36}
    assert report.exit_code() == 1


def test_nan_hunt_item_on_a_healthy_script_passes(project):
    report = _only(project, '[[tool.torchdoctor.nan-hunt]]\nscript = "healthy.py"\nargs = ["--steps", "2"]\n')
    item = report.result["items"][0]
    assert (item["status"], item["error"], report.exit_code()) == ("ok", None, 0)
    assert item["report"]["command"] == "nan-hunt"


def test_nan_hunt_runs_in_a_subprocess_in_the_config_folder(project):
    calls = []

    def fake_run(command, **kwargs):
        calls.append((command, kwargs["cwd"]))
        return subprocess.CompletedProcess(command, 2, "", "torchdoctor: error: cannot run healthy.py\n")

    (project / "pyproject.toml").write_text(
        '[tool.torchdoctor]\n[[tool.torchdoctor.nan-hunt]]\nscript = "healthy.py"\nsteps = 3\nargs = ["--x"]\n')
    report = run_check(cwd=project, run_subprocess=fake_run)
    command, cwd = calls[0]
    assert command[1:] == ["-m", "torchdoctor", "nan-hunt", "healthy.py", "--json", "--steps", "3", "--", "--x"]
    assert cwd == str(project.resolve())
    item = report.result["items"][0]
    assert item["status"] == "error" and "cannot run healthy.py" in item["error"]["message"]
    assert [f.id for f in report.findings] == ["check-crashed"]


def test_an_item_that_cannot_run_is_an_item_error(project):
    (project / "broken.py").write_text("import not_a_module_anywhere\n")
    report = _only(project, '[[tool.torchdoctor.count]]\nmodel = "broken.py:Net"\n'
                            '[tool.torchdoctor.env]\nchecks = ["build"]\n')
    env, count = report.result["items"]  # in kind order: env, ckpt, data, nan-hunt, count
    assert count["error"] is not None and count["report"] is None
    assert env["status"] == "ok" and env["error"] is None
    assert report.exit_code() == 1


def test_a_data_item_whose_loader_hangs_ends_with_loader_hang_at_its_timeout(project, repo_root):
    (project / "hang.py").write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(repo_root)!r})\n"
        "from fixtures.loaders import hanging_sample_loader as loader\n")
    report = _only(project, '[[tool.torchdoctor.data]]\nloader = "hang.py:loader"\ntimeout = 1\n')
    assert [f.id for f in report.findings] == ["loader-hang"] and report.exit_code() == 1
    assert report.findings[0].details["timed_out_s"] == 1


def test_a_nan_hunt_item_that_runs_past_its_timeout_is_stopped_and_reported(project):
    (project / "stuck.py").write_text("import time\ntime.sleep(600)\n")
    start = time.perf_counter()
    report = _only(project, '[[tool.torchdoctor.nan-hunt]]\nscript = "stuck.py"\ntimeout = 4\n')
    assert time.perf_counter() - start < 60
    item = report.result["items"][0]
    assert item["error"]["message"] == "nan-hunt of stuck.py did not finish within 4 s and was stopped"
    assert "timeout" in item["error"]["hint"] and report.exit_code() != 0


def test_package_module_specs_import_from_the_config_folder(project):
    package = project / "checkproj_models"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text((project / "models.py").read_text())
    sys.modules.pop("checkproj_models", None)
    try:
        report = _only(project, '[[tool.torchdoctor.count]]\nmodel = "checkproj_models.nets:Net"\n'
                                "input-shape = [1, 8]\n")
    finally:
        for name in ("checkproj_models", "checkproj_models.nets"):
            sys.modules.pop(name, None)
    item = report.result["items"][0]
    assert (item["status"], item["error"]) == ("ok", None), item
    assert str(project.resolve()) not in sys.path  # the folder was on sys.path for the run only


def _fake_watch(report_dict, returncode=1, calls=None):
    def fake_run(command, **kwargs):
        if calls is not None:
            calls.append((command, kwargs))
        return subprocess.CompletedProcess(command, returncode, json.dumps(report_dict), "")
    return fake_run


def test_a_watch_item_runs_watch_on_its_script_and_keeps_its_report(project):
    from tests.render.watch_reports import watch_report_dict

    calls = []
    (project / "pyproject.toml").write_text('[tool.torchdoctor]\n[[tool.torchdoctor.watch]]\nscript = "healthy.py"\n'
                                            'steps = 40\nargs = ["--steps", "50"]\ntimeout = 30\n')
    report = run_check(cwd=project, run_subprocess=_fake_watch(watch_report_dict(), calls=calls))
    command, kwargs = calls[0]
    assert command[1:] == ["-m", "torchdoctor", "watch", "healthy.py", "--json", "--steps", "40", "--", "--steps", "50"]
    assert (kwargs["cwd"], kwargs["timeout"]) == (str(project.resolve()), 30)
    item = report.result["items"][0]
    assert (item["kind"], item["status"], item["report"]["command"]) == ("watch", "error", "watch")
    assert "params-not-updated" in [f.id for f in report.findings] and report.exit_code() == 1
    assert report.sections[0].headline == "59 steps watched, 1 error, 3 warnings"
    shown = io.StringIO()
    render_human(report, Console(file=shown, width=200, color_system=None))  # every TD8xx id has a check section
    assert all(f.id in shown.getvalue() for f in report.findings) and "[✗] watch healthy.py" in shown.getvalue()


def test_a_watch_item_past_its_timeout_names_the_command(project):
    def too_slow(command, **kwargs):
        raise subprocess.TimeoutExpired(command, kwargs["timeout"])

    (project / "pyproject.toml").write_text('[tool.torchdoctor]\n[[tool.torchdoctor.watch]]\nscript = "healthy.py"\n'
                                            "timeout = 2.5\n")
    item = run_check(cwd=project, run_subprocess=too_slow).result["items"][0]
    assert item["error"]["message"] == "watch of healthy.py did not finish within 2.5 s and was stopped"


@pytest.mark.slow
def test_a_watch_item_runs_the_real_watch_on_a_healthy_script(project):
    pytest.importorskip("torchdoctor.learning", reason="the watch engine (branch watch) is not merged here yet")
    report = _only(project, '[[tool.torchdoctor.watch]]\nscript = "healthy.py"\nargs = ["--steps", "4"]\n')
    item = report.result["items"][0]
    assert (item["kind"], item["error"], item["report"]["command"]) == ("watch", None, "watch"), item
    assert item["report"]["result"]["steps_watched"] == 4
    assert report.sections[0].headline.startswith("4 steps watched")


# --- ckpt items scan values like `ckpt inspect` does ------------------------------------------------------------


def test_a_ckpt_item_above_the_limit_reads_headers_only_by_default_and_says_so(project):
    from fixtures.sharded_builders import sparse_sharded_dir

    from torchdoctor.ckpt.inspect import SCAN_LIMIT_BYTES

    sparse_sharded_dir(project, shards=4, shard_bytes=(SCAN_LIMIT_BYTES // 4) + (1 << 20))  # sparse: no GBs written
    report = _only(project, '[[tool.torchdoctor.ckpt]]\npath = "sparse_4"\n')
    item = report.result["items"][0]
    scan = item["report"]["result"]["values_scan"]
    assert scan["mode"] == "headers-only" and scan["data_bytes"] > SCAN_LIMIT_BYTES
    assert item["report"]["result"]["values_scanned"] is False
    shown = io.StringIO()
    render_human(report, Console(file=shown, width=200, color_system=None))
    assert "values not scanned for NaN/inf above 4.0 GiB (scan-values = true scans them)" in shown.getvalue()


@pytest.mark.parametrize("key, mode, found", [
    ("", "headers-only", []),
    ("scan-values = true\n", "full", ["nonfinite-weights"]),
    ("scan-values = false\n", "off", []),
], ids=["default", "true", "false"])
def test_scan_values_forces_or_skips_the_scan_of_a_ckpt_item(project, monkeypatch, key, mode, found):
    import torch

    from torchdoctor.ckpt import inspect

    # the limit lowered, so that a 64-byte checkpoint with a NaN stands for one above 4 GiB
    monkeypatch.setattr(inspect, "SCAN_LIMIT_BYTES", 32)
    torch.save({"w": torch.tensor([1.0, float("nan"), 2.0, 3.0] * 4)}, project / "nan.pt")
    report = _only(project, f'[[tool.torchdoctor.ckpt]]\npath = "nan.pt"\n{key}')
    assert report.result["items"][0]["report"]["result"]["values_scan"]["mode"] == mode
    assert [f.id for f in report.findings] == found
    headline = report.sections[0].headline
    assert ("values not scanned" in headline) == (mode != "full"), headline
