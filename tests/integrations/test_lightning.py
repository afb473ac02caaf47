"""lightning.Trainer (closure-based optimizer.step, GradScaler) under nan-hunt and under TorchdoctorCallback."""

from __future__ import annotations

import csv
import json

import pytest
from tests.integrations._scripts import PRODUCER, SCRIPTS, hunt, load_script, marker_line, source_of, watch

pytest.importorskip("lightning", reason="lightning is not installed (pip install 'torchdoctor[lightning]')")

SCRIPT = "lightning_regressor.py"
STEPS = 6


@pytest.fixture(scope="module")
def pl_script():
    return load_script(SCRIPT)


# --- nan-hunt on an unchanged script -----------------------------------------------------------------------


def test_healthy_lightning_run_is_quiet_and_every_closure_step_is_seen():
    report = hunt(SCRIPT)
    assert report.result["steps"] == STEPS  # optimizer.step(closure): forward and backward run inside step()
    assert report.exit_code() == 0 and report.status.value == "ok", [f.message for f in report.findings]


def test_gradscaler_steps_are_seen_and_calibration_skips_stay_info():
    report = hunt(SCRIPT, "--fp16")
    amp = report.result["amp"]
    assert amp["steps"] == STEPS  # every GradScaler.update, skipped steps included
    assert report.result["steps"] == STEPS - amp["skipped_steps"]  # a skipped step never calls optimizer.step
    assert report.exit_code() == 0 and all(f.severity.value == "info" for f in report.findings)


def test_nan_in_the_users_forward_is_named_at_the_users_line():
    report = hunt(SCRIPT, "--nan")
    assert report.findings[0].id == "nonfinite-forward"
    source = source_of(report)
    assert source["file"].endswith(SCRIPT) and source["line"] == marker_line(SCRIPT, PRODUCER)


def test_a_nan_made_inside_the_body_training_step_calls_is_named_by_its_path_in_the_lightning_module():
    report = hunt(SCRIPT, "--nan-body")
    first = report.result["first_nonfinite"]
    assert (first["phase"], first["op"], first["module"]) == ("forward", "aten.log", "body.3"), first  # not "3"
    assert first["source"]["line"] == marker_line(SCRIPT, "# <-- body producer")


def test_nan_gradient_inside_the_closure_is_named_in_the_backward_not_blamed_on_the_optimizer():
    # optimizer.step(closure) runs forward and backward inside step(): the gradients are judged after the closure
    report = hunt(SCRIPT, "--nan-backward")
    assert report.findings[0].id == "nonfinite-backward"
    assert source_of(report)["line"] == marker_line(SCRIPT, "# <-- backward producer")


def test_watch_on_a_healthy_lightning_script_is_quiet():
    report = watch(SCRIPT, "--steps", "20")
    assert report.result["steps_watched"] == 20
    assert report.status.value == "ok", [f.message for f in report.findings]


# --- TorchdoctorCallback ---------------------------------------------------------------------------------------


def _fit(pl_script, tmp_path, callback, *, nan=False, model=None, steps=STEPS):
    from lightning.pytorch.loggers import CSVLogger

    logger = CSVLogger(str(tmp_path), name="logs", version=0)
    trainer = pl_script.build_trainer(steps, callbacks=[callback], logger=logger, root=str(tmp_path))
    trainer.fit(model or pl_script.Regressor(nan=nan), pl_script.build_data())
    return trainer, list(csv.DictReader((tmp_path / "logs" / "version_0" / "metrics.csv").open()))


def test_callback_on_a_healthy_run_writes_a_clean_report_and_logs_nothing(pl_script, tmp_path, validate_report):
    from torchdoctor.integrations.lightning import TorchdoctorCallback

    callback = TorchdoctorCallback(watch=False)
    trainer, rows = _fit(pl_script, tmp_path, callback)
    written = validate_report(json.loads((tmp_path / "torchdoctor-report.json").read_text()))  # default_root_dir
    assert written["status"] == "ok" and written["result"]["steps"] == STEPS == trainer.global_step
    assert written["result"]["callback"] == {"library": "lightning", "global_step": STEPS, "stopped_early": False,
                                             "ended": "completed"}
    assert rows and not any(key.startswith("torchdoctor/") for row in rows for key in row)  # the loss is logged


def test_callback_fail_fast_stops_at_the_first_nan_and_tells_the_loggers(pl_script, tmp_path):
    from torchdoctor.integrations.lightning import TorchdoctorCallback

    callback = TorchdoctorCallback(watch=False, fail_fast=True, report="run.json")
    trainer, rows = _fit(pl_script, tmp_path, callback, nan=True)
    assert trainer.global_step == 1  # stopped cleanly after the first batch, not after 6
    written = json.loads((tmp_path / "run.json").read_text())
    assert written["findings"][0]["id"] == "nonfinite-forward"
    assert written["result"]["first_nonfinite"]["source"]["line"] == marker_line(SCRIPT, PRODUCER)
    assert written["result"]["callback"]["stopped_early"] is True
    assert any(row.get("torchdoctor/nonfinite-forward") for row in rows)  # self.log at the failing batch
    assert any(row.get("torchdoctor/errors") == "1.0" for row in rows)  # the loggers, at the end


def test_callback_without_fail_fast_lets_the_run_finish(pl_script, tmp_path):
    from torchdoctor.integrations.lightning import TorchdoctorCallback

    callback = TorchdoctorCallback(watch=False, report=None)
    trainer, _ = _fit(pl_script, tmp_path, callback, nan=True)
    assert trainer.global_step == STEPS and callback.report.findings[0].id == "nonfinite-forward"
    assert not (tmp_path / "torchdoctor-report.json").exists()


def test_callback_with_watch_finds_a_softmax_before_cross_entropy(pl_script, tmp_path, validate_report):
    from torchdoctor.integrations.lightning import TorchdoctorCallback

    trainer, rows = _fit(pl_script, tmp_path, TorchdoctorCallback(), model=pl_script.SoftmaxClassifier(), steps=20)
    written = validate_report(json.loads((tmp_path / "torchdoctor-report.json").read_text()))
    assert written["command"] == "watch" and written["result"]["steps_watched"] == 20
    double = next(f for f in written["findings"] if f["id"] == "double-softmax")
    # training_step calls self.body(x): the nn.Softmax is named by its path in the LightningModule the user holds
    assert double["location"] == "body.3" and "'body.3' (Softmax)" in double["message"]
    assert "body.3" in dict(pl_script.SoftmaxClassifier().named_modules())
    assert any(row.get("torchdoctor/double-softmax") == "1.0" for row in rows)


@pytest.mark.parametrize("options, ids, steps_key", [
    ({"watch": False}, ["nonfinite-forward", "script-failed"], "steps"),  # what was seen, then the crash
    ({"nan_hunt": False}, ["script-failed"], "steps_watched"),  # the NaN is left out, how the run ended is not
], ids=["nan-hunt", "watch"])
def test_callback_writes_the_report_of_a_run_that_raises_and_removes_its_hooks(pl_script, tmp_path, validate_report,
                                                                               options, ids, steps_key):
    from lightning.pytorch.loggers import CSVLogger
    from torch.nn.modules import module as nn_module
    from torch.optim import optimizer as optim

    from torchdoctor.integrations.lightning import TorchdoctorCallback

    class BreaksAtBatch3(pl_script.Regressor):
        def training_step(self, batch, batch_idx):
            if batch_idx == 3:  # a real shape error, raised by torch inside the user's forward
                batch = (batch[0][:, :5], batch[1])
            return super().training_step(batch, batch_idx)

    hooks = (len(nn_module._global_forward_pre_hooks), len(optim._global_optimizer_pre_hooks))
    callback = TorchdoctorCallback(**options)
    trainer = pl_script.build_trainer(STEPS, callbacks=[callback], root=str(tmp_path),
                                      logger=CSVLogger(str(tmp_path), name="logs", version=0))
    with pytest.raises(RuntimeError) as raised:
        trainer.fit(BreaksAtBatch3(nan=True), pl_script.build_data())
    assert (len(nn_module._global_forward_pre_hooks), len(optim._global_optimizer_pre_hooks)) == hooks
    written = validate_report(json.loads((tmp_path / "torchdoctor-report.json").read_text()))
    assert callback.report is not None and callback.report.findings[-1].id == "script-failed"
    assert [f["id"] for f in written["findings"]] == ids
    assert written["result"][steps_key] == 3 == trainer.global_step
    assert written["result"]["callback"] == {"library": "lightning", "global_step": 3, "stopped_early": False,
                                             "ended": "failed"}
    failed = written["findings"][-1]
    assert failed["details"]["exc_type"] == "RuntimeError" and failed["details"]["message"] == str(raised.value)
    forward_line = next(n for n, text in enumerate((SCRIPTS / SCRIPT).read_text().splitlines(), 1)
                        if "out = self.body(x)" in text)
    assert failed["location"].endswith(f"{SCRIPT}:{forward_line}")  # the user's last frame, not torch's
    rows = list(csv.DictReader((tmp_path / "logs" / "version_0" / "metrics.csv").open()))
    assert any(row.get("torchdoctor/script-failed") == "1.0" for row in rows)  # before Lightning finalized them


def test_a_report_that_cannot_be_written_never_replaces_the_users_exception(pl_script, tmp_path, caplog):
    from torch.nn.modules import module as nn_module

    from torchdoctor.integrations.lightning import TorchdoctorCallback

    class BreaksAtBatch1(pl_script.Regressor):
        def training_step(self, batch, batch_idx):
            return super().training_step((batch[0][:, :5], batch[1]) if batch_idx == 1 else batch, batch_idx)

    (tmp_path / "blocker").write_text("a file where the report's folder should be")
    hooks = len(nn_module._global_forward_pre_hooks)
    trainer = pl_script.build_trainer(STEPS, root=str(tmp_path),
                                      callbacks=[TorchdoctorCallback(watch=False, report="blocker/run.json")])
    with caplog.at_level("WARNING", logger="torchdoctor.integrations"), pytest.raises(RuntimeError) as raised:
        trainer.fit(BreaksAtBatch1(), pl_script.build_data())
    assert "mat1 and mat2" in str(raised.value)  # torch's own error reached the user, not ours
    assert len(nn_module._global_forward_pre_hooks) == hooks
    assert "the report of the run could not be written" in caplog.text
