import json

from torchdoctor.codes import REGISTRY


def test_every_registry_entry_can_be_explained(cli):
    for finding_id, spec in REGISTRY.items():
        result = cli("explain", finding_id)
        assert result.exit_code == 0
        assert result.stdout.startswith(f"{finding_id} ({spec.code}")


def test_explain_by_code_and_as_json(cli, validate_report):
    result = cli("explain", "TD109", "--json")
    report = validate_report(json.loads(result.stdout))
    assert report["command"] == "explain" and report["result"]["entry"]["id"] == "shm-too-small"


def test_unknown_id_exits_2_with_a_suggestion(cli):
    result = cli("explain", "shm-too-smal")
    assert result.exit_code == 2
    assert "unknown finding id 'shm-too-smal'" in result.stderr and "shm-too-small" in result.stderr


TRACEBACK = """2024-05-01 12:00:00,123 INFO epoch 1
Traceback (most recent call last):
  File "train.py", line 12, in <module>
    loss = F.cross_entropy(model(x), y)
IndexError: Target 5 is out of bounds.
"""


def test_explain_a_log_file_exits_1_with_the_finding(cli, tmp_path):
    log = tmp_path / "train.log"
    log.write_text(TRACEBACK)
    result = cli("explain", str(log))
    assert result.exit_code == 1, result.output
    assert "label-out-of-range" in result.stdout and "fix:" in result.stdout


def test_explain_stdin_as_json_validates(cli, validate_report):
    from typer.testing import CliRunner

    from torchdoctor.cli import app

    for args in (["explain", "-", "--json"], ["explain", "--json"]):  # '-' or piped with no argument
        result = CliRunner().invoke(app, args, input=TRACEBACK)
        assert result.exit_code == 1, result.output
        report = validate_report(json.loads(result.stdout))
        assert report["command"] == "explain" and report["status"] == "error"
        assert report["result"]["source"] == "stdin" and report["result"]["matched"] == ["label-out-of-range"]
        assert report["result"]["errors_found"] == [
            {"type": "IndexError", "message": "Target 5 is out of bounds.", "line_in_input": 5}]
        assert report["findings"][0]["location"] == "stdin:5"


def test_unknown_error_says_so_and_exits_0(cli, validate_report):
    from typer.testing import CliRunner

    from torchdoctor.cli import app

    text = "Traceback (most recent call last):\n  File \"a.py\", line 1, in <module>\nKeyError: 'lr'\n"
    result = CliRunner().invoke(app, ["explain", "-"], input=text)
    assert result.exit_code == 0 and "No known error in stdin" in result.stdout
    result = CliRunner().invoke(app, ["explain", "-", "--json"], input=text)
    report = validate_report(json.loads(result.stdout))
    assert result.exit_code == 0 and report["findings"] == [] and report["result"]["matched"] == []


def test_missing_file_exits_2_with_one_line(cli, tmp_path):
    result = cli("explain", str(tmp_path / "nope.log"))
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0 and "cannot read" in result.stderr
