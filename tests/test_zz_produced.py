"""Every registry id is produced by torchdoctor's code during a full test run (tests/_produced/td_produced.py).

Runs last (conftest orders it) and only when the whole suite was selected: a subset cannot produce every id.
"""

import os

import pytest
import td_produced

from torchdoctor.codes import REGISTRY


def test_every_finding_id_is_produced_by_some_test(full_run):
    if not full_run:
        pytest.skip("judged only when the whole suite runs (a subset cannot produce every id)")
    produced = td_produced.read_log(os.environ[td_produced.LOG_VARIABLE])
    never = sorted(set(REGISTRY) - produced, key=lambda finding_id: REGISTRY[finding_id].code)
    assert not never, f"ids no test made torchdoctor produce: {never}"


def test_only_findings_made_by_torchdoctor_count(tmp_path, monkeypatch):
    from torchdoctor.check.run import report_from_dict
    from torchdoctor.codes import make_finding
    from torchdoctor.env.threads import check_threads
    from torchdoctor.report import Finding

    log = tmp_path / "ids"
    monkeypatch.setenv(td_produced.LOG_VARIABLE, str(log))
    make_finding("divergence", "made by a test")  # a test's own findings do not count
    Finding("budget-exceeded", "TD612", REGISTRY["budget-exceeded"].severity, "made by a test")
    report_from_dict({"findings": [{"id": "nonfinite-loss", "code": "TD303", "severity": "error", "message": "x"}]})
    check_threads({"usable_cpus": 2, "torch_num_threads": 64, "env": {"OMP_NUM_THREADS": "64"}})
    assert td_produced.read_log(log) == {"threads-oversubscribed"}


def test_subprocesses_record_what_they_produce(tmp_path):
    from tests.conftest import run_torchdoctor

    log, traceback = tmp_path / "ids", tmp_path / "log.txt"
    traceback.write_text("RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB\n")
    done = run_torchdoctor("explain", str(traceback), env={td_produced.LOG_VARIABLE: str(log)})
    assert "cuda-out-of-memory" in done.stdout
    assert td_produced.read_log(log) == {"cuda-out-of-memory"}
