from torchdoctor.codes import make_finding
from torchdoctor.report import Report, Severity, Status, worst_status


def _finding(severity: str):
    return make_finding("shm-too-small", "x", severity=Severity(severity))


def test_status_is_worst_severity_and_info_counts_as_ok():
    assert worst_status([]) is Status.OK
    assert worst_status([_finding("info")]) is Status.OK
    assert worst_status([_finding("info"), _finding("warning")]) is Status.WARNING
    assert worst_status([_finding("warning"), _finding("error")]) is Status.ERROR


def test_exit_codes_follow_the_contract():
    ok = Report("env", (_finding("info"),), {})
    warning = Report("env", (_finding("warning"),), {})
    error = Report("env", (_finding("error"),), {})
    assert (ok.exit_code(), warning.exit_code(), error.exit_code()) == (0, 0, 1)
    assert (ok.exit_code(strict=True), warning.exit_code(strict=True), error.exit_code(strict=True)) == (0, 1, 1)


def test_to_dict_matches_the_report_schema(validate_report):
    report = Report("env", (_finding("warning"),), {"shm": {"free_bytes": 1}})
    data = validate_report(report.to_dict())
    assert data["status"] == "warning"
    assert data["findings"][0]["code"] == "TD109"
    assert data["findings"][0]["fix"]  # registry fix used by default


def test_make_finding_can_drop_or_replace_the_registry_fix():
    assert make_finding("shm-too-small", "x", fix=None).fix is None
    assert make_finding("shm-too-small", "x", fix="do this").fix == "do this"


def test_every_severity_has_a_rank():
    assert sorted(Severity, key=lambda s: s.rank) == [Severity.INFO, Severity.WARNING, Severity.ERROR]
