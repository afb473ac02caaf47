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
