"""Shared test fixtures: the repo root on sys.path (for ``fixtures/``), a CLI runner, the report schema."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

# Which finding ids torchdoctor's code really creates during the run, in this process and in every Python
# subprocess (tests/_produced, CONTRIBUTING.md "Every id is produced by a test").
PRODUCED_DIR = REPO_ROOT / "tests" / "_produced"
PRODUCED_TEST = "test_every_finding_id_is_produced_by_some_test"
if "TORCHDOCTOR_PRODUCED_LOG" not in os.environ:  # a nested pytest run keeps its parent's log
    os.environ["TORCHDOCTOR_PRODUCED_LOG"] = str(Path(tempfile.mkdtemp(prefix="torchdoctor-produced-")) / "ids")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PRODUCED_DIR), os.environ.get("PYTHONPATH")]))
sys.path.insert(0, str(PRODUCED_DIR))
import td_produced  # noqa: E402  (needs PRODUCED_DIR on sys.path)

td_produced.install()
_DESELECTED: list = []


def pytest_deselected(items) -> None:
    _DESELECTED.extend(items)


def pytest_collection_modifyitems(session, config, items) -> None:
    """The produced-ids check runs last, and only knows it may judge when the whole suite was selected."""
    config.stash[FULL_RUN] = _whole_suite(config) and not _DESELECTED
    items.sort(key=lambda item: item.name == PRODUCED_TEST)


def _whole_suite(config) -> bool:
    option = config.option
    if option.keyword or option.markexpr or getattr(option, "deselect", None) or getattr(option, "lf", False):
        return False
    roots = {REPO_ROOT.resolve(), (REPO_ROOT / "tests").resolve()}
    return all("::" not in arg and Path(arg).resolve() in roots for arg in config.args)


FULL_RUN = pytest.StashKey[bool]()


@pytest.fixture(scope="session")
def full_run(request) -> bool:
    """Whether this run selected the whole test suite (no -k, -m, node ids, sub-folders, deselection)."""
    return request.config.stash.get(FULL_RUN, False)

SCHEMA_CANDIDATES = (REPO_ROOT.parent / "shared" / "contract" / "report.schema.json",
                     REPO_ROOT / "tests" / "report.schema.json")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def report_schema() -> dict:
    """The report contract; the shared copy when present, else the one vendored in tests/."""
    for candidate in SCHEMA_CANDIDATES:
        if candidate.exists():
            return json.loads(candidate.read_text())
    pytest.fail("report.schema.json not found")


@pytest.fixture()
def validate_report(report_schema):
    import jsonschema

    def validate(report: dict) -> dict:
        jsonschema.validate(report, report_schema)
        return report

    return validate


@pytest.fixture()
def cli():
    """Invoke the Typer app in-process; returns typer's Result (exit_code, stdout, stderr)."""
    from typer.testing import CliRunner

    from torchdoctor.cli import app

    runner = CliRunner()

    def invoke(*args: str, env: dict | None = None):
        return runner.invoke(app, list(args), env=env)

    return invoke


def run_torchdoctor(*args: str, env: dict | None = None, prefix: tuple[str, ...] = (),
                    timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m torchdoctor ARGS`` in a real subprocess (exit codes, stdout/stderr separation)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([*prefix, sys.executable, "-m", "torchdoctor", *args], capture_output=True,
                          text=True, env=full_env, timeout=timeout)
