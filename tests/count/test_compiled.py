"""A model holding a ``torch.compile``d submodule: the user's names in every table, torch's hooks warning kept
off the terminal, the counts of the eager ops."""

import warnings

import pytest
import torch
from fixtures import count_models as models
from tests.conftest import run_torchdoctor

from torchdoctor.count import count

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # importing dynamo warns about torch.jit

USER_NAMES = ["stem", "body", "body.0", "body.1", "body.2"]


def counted(**options):
    """Count with every warning recorded (``always``: a warning already shown elsewhere is not hidden)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = count(models.CompiledBody(), torch.randn(2, 8), depth=3, **options)
    return report, [str(warning.message) for warning in caught]


def test_a_compiled_submodule_is_one_row_under_the_users_name_and_torch_does_not_warn():
    report, caught = counted()
    rows = {row["name"]: row for row in report.result["layers"]}
    assert list(rows) == USER_NAMES
    assert rows["body"]["type"] == "Sequential" and rows["body"]["depth"] == 1
    assert rows["body"]["macs"] == 2 * (16 * 16 + 16 * 4) and rows["body.2"]["output_shape"] == [2, 4]
    assert report.result["macs"] == 2 * 448
    assert not [message for message in caught if "global hooks" in message]


def test_train_step_and_memory_tables_use_the_same_names():
    step, caught = counted(train_step=True)
    assert [row["name"] for row in step.result["layers"]] == USER_NAMES
    assert step.result["phases"]["forward"]["macs"] == 2 * 448
    memory, caught_too = counted(memory=True)
    names = [row["name"] for row in memory.result["memory"]["by_module"]]
    assert "body.0" in names and not [name for name in names if "_orig_mod" in name]
    assert not [message for message in caught + caught_too if "global hooks" in message]


def test_a_failure_inside_the_compiled_part_names_the_users_layer():
    report = count(models.CompiledBody(fail=True), torch.randn(2, 8))
    finding = report.findings[0]
    assert finding.id == "layer-shape-mismatch" and finding.location == finding.details["layer"] == "body.2"
    assert finding.details["input_shapes"] == [[2, 16]]


@pytest.mark.slow
def test_the_cli_table_and_stderr_of_a_real_process(repo_root):
    done = run_torchdoctor("count", f"{repo_root / 'fixtures' / 'count_models.py'}:CompiledBody",
                           "--input-shape", "2,8", "--depth", "2")
    assert done.returncode == 0, done.stderr
    assert "body.0" in done.stdout and "_orig_mod" not in done.stdout and "OptimizedModule" not in done.stdout
    assert "global hooks" not in done.stderr and "Warning" not in done.stderr
