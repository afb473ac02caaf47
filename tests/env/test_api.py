import pytest

from torchdoctor.env.api import CHECK_NAMES, CHECKS, run_env, select_checks
from torchdoctor.env.base import CheckOutcome, EnvCheck
from torchdoctor.errors import UsageError


def test_selected_checks_run_in_registry_order_and_fill_result(validate_report):
    report = run_env(["threads", "build"])
    assert report.result["checks_run"] == ["build", "threads"]
    assert [s.name for s in report.sections] == ["build", "threads"]
    validate_report(report.to_dict())


def test_unknown_check_is_a_usage_error_listing_valid_names():
    with pytest.raises(UsageError) as raised:
        select_checks(["thread"])
    assert "'thread'" in raised.value.message
    for name in CHECK_NAMES:
        assert name in raised.value.message


def test_a_crashing_check_becomes_a_finding_and_the_others_still_run():
    def explode(context):
        raise ZeroDivisionError("division by zero in a check")

    registry = (EnvCheck("boom", "Boom", "always crashes", explode),
                *[check for check in CHECKS if check.name == "threads"])
    report = run_env(registry=registry)
    crashed = [f for f in report.findings if f.id == "check-crashed"]
    assert len(crashed) == 1 and "ZeroDivisionError" in crashed[0].message
    assert "Traceback" in crashed[0].details["traceback"]
    assert "usable_cpus" in report.result["threads"]
    assert report.exit_code() == 1


def test_progress_callback_sees_each_check():
    seen = []
    ok = EnvCheck("quiet", "Quiet", "finds nothing", lambda context: CheckOutcome({}, [], "fine"))
    run_env(registry=(ok,), on_progress=seen.append)
    assert seen == ["Quiet"]
