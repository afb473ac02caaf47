"""The HF Trainer (accelerate underneath) under nan-hunt and under TorchdoctorCallback: real tiny GPT-2 runs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from tests.integrations._scripts import PRODUCER, SCRIPTS, USER_CALL, hunt, load_script, marker_line, source_of, watch

pytest.importorskip("transformers", reason="transformers is not installed (pip install 'torchdoctor[transformers]')")
pytest.importorskip("accelerate", reason="accelerate is not installed (pip install 'torchdoctor[transformers]')")

SCRIPT = "hf_gpt2.py"
STEPS = 6


@pytest.fixture(scope="module")
def hf():
    return load_script(SCRIPT)


# --- nan-hunt on an unchanged script -----------------------------------------------------------------------


def test_healthy_trainer_run_is_quiet_and_every_step_is_seen():
    report = hunt(SCRIPT)
    assert report.result["steps"] == STEPS  # AcceleratedOptimizer.step reaches the global optimizer hooks
    assert report.exit_code() == 0 and report.status.value == "ok", [f.message for f in report.findings]
    assert report.result["script"]["ended"] == "completed"


def test_nan_in_the_users_forward_is_named_at_the_users_line():
    report = hunt(SCRIPT, "--nan")
    assert [f.id for f in report.findings][0] == "nonfinite-forward"
    source = source_of(report)
    assert source["file"].endswith(SCRIPT) and source["line"] == marker_line(SCRIPT, PRODUCER)
    assert report.exit_code() == 1


def test_nan_inside_transformers_points_at_the_users_call_not_a_library_line():
    report = hunt(SCRIPT, "--inf-weight")
    first = report.result["first_nonfinite"]
    assert first is not None and first["module"].startswith("transformer.")  # the library module is named...
    source = first["source"]  # ...but the line is the user's own, never one inside site-packages
    assert source["file"].endswith(SCRIPT) and source["line"] == marker_line(SCRIPT, USER_CALL)
    assert "site-packages" not in report.findings[0].message


def test_watch_on_a_healthy_trainer_script_is_quiet():
    report = watch(SCRIPT, "--steps", "20")
    assert report.result["steps_watched"] == 20 and report.result["step_counting"] == "optimizer"
    assert report.status.value == "ok", [f.message for f in report.findings]


# --- TorchdoctorCallback ---------------------------------------------------------------------------------------


def _train(hf, tmp_path, callback, *, nan=False, softmax=False, steps=STEPS):
    model = hf.build_model(nan=nan, softmax=softmax)
    trainer = hf.build_trainer(model, str(tmp_path), steps, pad=nan, callbacks=[callback])
    trainer.train()
    return trainer, callback


def test_callback_on_a_healthy_run_writes_a_clean_report_and_logs_nothing(hf, tmp_path, validate_report):
    from torch.nn.modules import module as nn_module
    from torch.optim import optimizer as optim

    from torchdoctor.integrations.transformers import TorchdoctorCallback

    hooks = (len(nn_module._global_forward_pre_hooks), len(optim._global_optimizer_pre_hooks))
    trainer, callback = _train(hf, tmp_path, TorchdoctorCallback(watch=False))
    assert (len(nn_module._global_forward_pre_hooks), len(optim._global_optimizer_pre_hooks)) == hooks
    written = json.loads((tmp_path / "torchdoctor-report.json").read_text())  # under args.output_dir
    validate_report(written)
    assert written["status"] == "ok" and written["findings"] == []
    assert written["result"]["steps"] == STEPS and trainer.state.global_step == STEPS
    assert written["result"]["callback"] == {"library": "transformers", "global_step": STEPS, "stopped_early": False,
                                             "ended": "completed"}
    assert not any(key.startswith("torchdoctor/") for entry in trainer.state.log_history for key in entry)


def test_callback_fail_fast_stops_at_the_first_nan_and_tells_the_loggers(hf, tmp_path, caplog):
    from torchdoctor.integrations.transformers import TorchdoctorCallback

    report_path = tmp_path / "reports" / "run.json"
    with caplog.at_level("WARNING", logger="torchdoctor.integrations"):
        trainer, callback = _train(hf, tmp_path, TorchdoctorCallback(watch=False, fail_fast=True,
                                                                     report=report_path), nan=True)
    assert trainer.state.global_step == 1  # stopped cleanly after the first step, not after 6
    written = json.loads(report_path.read_text())
    assert [f["id"] for f in written["findings"]] == ["nonfinite-forward"]
    assert written["result"]["first_nonfinite"]["source"]["line"] == marker_line(SCRIPT, PRODUCER)
    assert written["result"]["callback"]["stopped_early"] is True
    logged = {key: value for entry in trainer.state.log_history for key, value in entry.items()}
    assert logged["torchdoctor/nonfinite-forward"] == 1.0 and logged["torchdoctor/errors"] == 1.0
    assert "nonfinite-forward" in caplog.text and str(report_path) in caplog.text


def test_callback_without_fail_fast_lets_the_run_finish(hf, tmp_path):
    from torchdoctor.integrations.transformers import TorchdoctorCallback

    trainer, callback = _train(hf, tmp_path, TorchdoctorCallback(watch=False, report=None), nan=True)
    assert trainer.state.global_step == STEPS
    assert callback.report.findings[0].id == "nonfinite-forward"
    assert not (tmp_path / "torchdoctor-report.json").exists()


def test_callback_with_watch_finds_a_softmax_before_cross_entropy(hf, tmp_path, validate_report):
    from torchdoctor.integrations.transformers import TorchdoctorCallback

    trainer, callback = _train(hf, tmp_path, TorchdoctorCallback(), softmax=True, steps=20)  # the defaults: watch on
    written = validate_report(json.loads((tmp_path / "torchdoctor-report.json").read_text()))
    assert written["command"] == "watch" and written["result"]["steps_watched"] == 20
    assert "double-softmax" in [f["id"] for f in written["findings"]]
    assert written["result"]["series"]["loss"]  # the watch's series, for `torchdoctor watch`'s pictures
    logged = {key for entry in trainer.state.log_history for key in entry}
    assert "torchdoctor/double-softmax" in logged


# --- a run that raises: the Trainer calls no callback then -------------------------------------------------------


def _global_hooks():
    from torch.nn.modules import module as nn_module
    from torch.optim import optimizer as optim

    return len(nn_module._global_forward_pre_hooks), len(optim._global_optimizer_pre_hooks)


def test_a_run_that_raises_removes_the_hooks_and_writes_the_report_as_the_error_propagates(hf, tmp_path,
                                                                                          validate_report):
    from torchdoctor.integrations.transformers import TorchdoctorCallback

    hooks = _global_hooks()
    callback = TorchdoctorCallback()  # the defaults: watch and nan-hunt
    trainer = hf.build_trainer(hf.build_model(break_at=3), str(tmp_path), STEPS, callbacks=[callback])
    with pytest.raises(IndexError) as raised:  # the user's error still reaches the user, unchanged
        trainer.train()
    assert _global_hooks() == hooks  # no close() needed
    written = validate_report(json.loads((tmp_path / "torchdoctor-report.json").read_text()))
    assert written["command"] == "watch" and written["result"]["steps_watched"] == 2 == trainer.state.global_step
    assert written["result"]["callback"] == {"library": "transformers", "global_step": 2, "stopped_early": False,
                                             "ended": "failed"}
    assert written["result"]["script_failed"] is True
    failed = next(f for f in written["findings"] if f["id"] == "script-failed")
    assert failed["details"]["exc_type"] == "IndexError" and failed["details"]["message"] == str(raised.value)
    assert failed["location"].endswith(f"{SCRIPT}:{marker_line(SCRIPT, '# <-- the step that raises')}")
    assert callback.close() is None and callback.close() is None  # finished already: close() does nothing, twice
    assert callback.report.findings[-1].id == "script-failed"


def test_close_finishes_a_run_left_open_once(hf, tmp_path):
    from torchdoctor.integrations.transformers import TorchdoctorCallback

    hooks = _global_hooks()
    callback = TorchdoctorCallback(watch=False)
    trainer = hf.build_trainer(hf.build_model(break_at=2), str(tmp_path), STEPS)
    trainer.add_callback(callback)  # after __init__: train is not wrapped, the error goes by unseen
    with pytest.raises(IndexError):
        trainer.train()
    assert _global_hooks() != hooks and not (tmp_path / "torchdoctor-report.json").exists()
    report = callback.close()
    assert _global_hooks() == hooks and report is callback.report and callback.close() is None
    written = json.loads((tmp_path / "torchdoctor-report.json").read_text())
    assert written["result"]["callback"] == {"library": "transformers", "global_step": 1, "stopped_early": False,
                                             "ended": "unfinished"}


@pytest.mark.slow
def test_a_callback_added_later_finishes_a_run_that_raised_when_the_interpreter_exits(tmp_path):
    """``trainer.add_callback``: no ``on_init_end``, so no wrapped ``train``; the last resort writes the report."""
    driver = tmp_path / "driver.py"
    driver.write_text(
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('hf_gpt2', {str(SCRIPTS / SCRIPT)!r})\n"
        "hf = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(hf)\n"
        "from torchdoctor.integrations.transformers import TorchdoctorCallback\n"
        f"trainer = hf.build_trainer(hf.build_model(break_at=2), {str(tmp_path)!r}, 4)\n"
        "trainer.add_callback(TorchdoctorCallback(watch=False, report='crash.json'))\n"
        "trainer.train()\n")
    done = subprocess.run([sys.executable, str(driver)], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 1 and "IndexError" in done.stderr.splitlines()[-1], done.stderr[-2000:]
    written = json.loads((tmp_path / "crash.json").read_text())
    assert [f["id"] for f in written["findings"]] == ["script-failed"]
    assert written["result"]["steps"] == 1 and written["result"]["callback"]["ended"] == "failed"
