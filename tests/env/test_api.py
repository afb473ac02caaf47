"""run_env orchestration: selection, crash containment, and the isolated collector child."""

import os
import stat

import pytest

from torchdoctor.env.api import CHECK_NAMES, CHECKS, run_env, select_checks
from torchdoctor.env.base import EnvCheck, EnvContext
from torchdoctor.errors import UsageError


def test_selected_checks_run_in_registry_order_and_fill_result(validate_report):
    report = run_env(["threads", "build"])
    assert report.result["checks_run"] == ["build", "threads"]
    assert [s.name for s in report.sections] == ["build", "threads"]
    validate_report(report.to_dict())


def test_in_process_and_isolated_collection_agree():
    isolated = run_env(["threads", "reproducibility"]).result
    local = run_env(["threads", "reproducibility"], context=EnvContext(isolate=False)).result
    assert isolated == local


def test_unknown_check_is_a_usage_error_listing_valid_names():
    with pytest.raises(UsageError) as raised:
        select_checks(["thread"])
    assert "'thread'" in raised.value.message
    for name in CHECK_NAMES:
        assert name in raised.value.message


def _check(name, collect, judge=lambda facts: [], headline=lambda facts: "fine"):
    return EnvCheck(name, name.title(), "test check", collect, judge, headline)


def test_a_crashing_check_becomes_a_finding_and_the_others_still_run():
    def explode(context):
        raise ZeroDivisionError("division by zero in a check")

    registry = (_check("boom", explode), *[check for check in CHECKS if check.name == "threads"])
    report = run_env(registry=registry)
    crashed = [f for f in report.findings if f.id == "check-crashed"]
    assert len(crashed) == 1 and "ZeroDivisionError" in crashed[0].message
    assert "Traceback" in crashed[0].details["traceback"]
    assert "usable_cpus" in report.result["threads"]
    assert report.exit_code() == 1


def test_a_crashing_judgement_is_contained_too():
    registry = (_check("judge-boom", lambda context: {"x": 1}, judge=lambda facts: 1 / 0),)
    (finding,) = run_env(registry=registry).findings
    assert finding.id == "check-crashed" and "ZeroDivisionError" in finding.message


def test_progress_callback_sees_each_check():
    seen = []
    run_env(registry=(_check("quiet", lambda context: {}),), on_progress=seen.append)
    assert seen == ["Quiet"]


def _fake_python(tmp_path, body: str) -> str:
    script = tmp_path / "python"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


@pytest.mark.skipif(os.name != "posix", reason="needs a POSIX shell and signals")
def test_collector_killed_during_training_is_a_training_step_failure(tmp_path):
    # A real process death: the collector child announces the training check, then segfaults.
    python = _fake_python(tmp_path, "echo 'torchdoctor-collect: build' >&2\necho '{}' >/dev/null\n"
                                    "echo 'torchdoctor-collect: training' >&2\n"
                                    "echo 'CUDA error: an illegal memory access was encountered' >&2\n"
                                    "kill -SEGV $$\n")
    report = run_env(["build", "training", "threads"], context=EnvContext(python=python))
    by_check = {s.name: [f.id for f in s.findings] for s in report.sections}
    assert by_check == {"build": ["check-crashed"], "training": ["training-step-failed"],
                        "threads": ["check-crashed"]}
    (failed,) = report.sections[1].findings
    assert "SIGSEGV" in failed.message and "illegal memory access" in failed.message
    assert "not run" in report.sections[2].findings[0].message


def test_collector_timeout_is_reported(tmp_path):
    python = _fake_python(tmp_path, "echo 'torchdoctor-collect: threads' >&2\nexec sleep 30\n")
    report = run_env(["threads"], context=EnvContext(python=python, collector_timeout_s=0.5))
    (finding,) = report.findings
    assert finding.id == "check-crashed" and "timed out" in finding.message
