"""``run_script``: each fixture script with a known NaN/inf producer, run in-process under the hunt.

The expected source line is found by the ``# <-- producer`` marker in the script, so editing a
script never silently breaks a line number here.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from torchdoctor.errors import InputError, UserCodeError
from torchdoctor.nan.runner import run_script, write_report

SCRIPTS = Path(__file__).resolve().parents[2] / "fixtures" / "nan_scripts"


def marker_line(script: Path, marker: str = "# <-- producer") -> int:
    """The 1-based line of ``marker`` in ``script`` (exactly one)."""
    lines = [n for n, text in enumerate(script.read_text().splitlines(), start=1) if marker in text]
    assert len(lines) == 1, f"{script.name} must hold exactly one '{marker}'"
    return lines[0]


def errors(report) -> list:
    return [f for f in report.findings if f.severity.value == "error"]


# script -> (finding id, phase, module, op, step, dtype)
BUGGY = {
    "underflow_log_loss.py": ("nonfinite-loss", "loss", None, "aten.log", 0, "float32"),
    "sqrt_distance.py": ("nonfinite-backward", "backward", None, "aten.sqrt", 0, "float32"),
    "norm_no_eps.py": ("nonfinite-forward", "forward", "norm", "aten.div", 0, "float32"),
    "exploding_lr.py": ("divergence", "loss", None, "aten.mse_loss", 23, "float32"),
    "half_overflow.py": ("low-precision-overflow", "forward", "pool", "aten.sum", 0, "float16"),
    "masked_attention.py": ("nonfinite-forward", "forward", "attn", "aten._softmax", 0, "float32"),
}


@pytest.fixture()
def in_scripts_dir(monkeypatch):
    monkeypatch.chdir(SCRIPTS)
    return SCRIPTS


@pytest.mark.parametrize("name", sorted(BUGGY))
def test_buggy_script_names_its_producer(name, in_scripts_dir, capsys):
    finding_id, phase, module, op, step, dtype = BUGGY[name]
    report = run_script(name)
    ids = [f.id for f in errors(report)]
    assert finding_id in ids, ids
    first = report.result["first_nonfinite"]
    assert (first["phase"], first["module"], first["op"], first["step"]) == (phase, module, op, step), first
    assert first["dtype"] == dtype
    assert Path(first["source"]["file"]).name == name
    assert first["source"]["line"] == marker_line(SCRIPTS / name)
    assert "# <-- producer" in first["source"]["code"]
    assert report.result["stopped"] == "first-nonfinite"
    assert report.exit_code() == 1


def test_two_optimizers_per_iteration_say_which_step_of_which(in_scripts_dir, capsys):
    report = run_script("gan_two_optimizers.py")
    first = report.result["first_nonfinite"]
    assert (first["phase"], first["op"], first["kind"]) == ("loss", "aten.log", "inf"), first
    assert first["source"]["line"] == marker_line(SCRIPTS / "gan_two_optimizers.py")
    # iteration 6: the discriminator has stepped 7 times (its step comes first), the generator 6
    assert first["optimizer_steps"] == [{"optimizer": "SGD", "steps": 7}, {"optimizer": "SGD", "steps": 6}]
    assert first["step"] == 13
    message = next(f.message for f in errors(report) if f.id == "nonfinite-loss")
    assert ("Step 13 counts the step() calls of all 2 optimizers: optimizer 1 (SGD) had stepped 7 times, "
            "optimizer 2 (SGD) had stepped 6 times.") in message
    assert capsys.readouterr().out.count("iteration") == 6


def test_one_optimizer_adds_no_step_note(in_scripts_dir, capsys):
    report = run_script("underflow_log_loss.py")
    first = report.result["first_nonfinite"]
    assert len(first["optimizer_steps"]) <= 1 and "counts the step() calls" not in errors(report)[0].message


def test_corrupt_sample_is_an_input_problem_naming_the_sample(in_scripts_dir, capsys):
    report = run_script("corrupt_sample.py")
    assert [f.id for f in errors(report)] == ["nonfinite-input"]
    first = report.result["first_nonfinite"]
    assert (first["phase"], first["step"], first["kind"]) == ("input", 4, "nan")
    assert first["sample_index"] == 37 and first["sample_indices"] == [37]
    # The NaN was made in the Dataset's __init__; what can be named is where the model received the batch.
    assert first["source"]["line"] == marker_line(SCRIPTS / "corrupt_sample.py", "# <-- the model sees the batch")
    # The script printed four healthy steps before the hunt stopped it at the fifth batch.
    assert capsys.readouterr().out.count("loss") == 4


def test_healthy_script_completes_without_errors_and_sees_its_argv(in_scripts_dir, capsys):
    report = run_script("healthy_argparse.py", ["--lr", "0.1", "--epochs", "2"])
    assert errors(report) == [] and report.exit_code() == 0
    assert report.result["first_nonfinite"] is None
    assert report.result["script"] == {
        "path": "healthy_argparse.py",
        "ended": "completed",
        "exit_code": 0,
        "argv": ["healthy_argparse.py", "--lr", "0.1", "--epochs", "2"],
    }
    assert report.result["steps"] == 8  # 2 epochs x 4 batches
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "argv: ['healthy_argparse.py', '--lr', '0.1', '--epochs', '2']"
    assert out.endswith("done\n")


def test_steps_limit_stops_cleanly(in_scripts_dir, capsys):
    report = run_script("healthy_argparse.py", ["--epochs", "5"], steps=3)
    assert errors(report) == [] and report.exit_code() == 0
    assert report.result["stopped"] == "max-steps" and report.result["steps"] == 3
    assert report.result["script"]["ended"] == "stopped"
    assert "done" not in capsys.readouterr().out


def test_shape_error_is_a_script_failure_at_the_users_line(in_scripts_dir, capsys):
    report = run_script("shape_error.py")
    (finding,) = report.findings
    line = marker_line(SCRIPTS / "shape_error.py", "# <-- error")
    assert finding.id == "script-failed" and finding.location == f"shape_error.py:{line}"
    assert finding.message.startswith("RuntimeError: mat1 and mat2 shapes cannot be multiplied (8x20 and 30x5)")
    assert finding.message.endswith(f" at shape_error.py:{line}")
    frames = finding.details["traceback"]
    assert all(frame["file"] == "shape_error.py" for frame in frames)  # no torch internals
    assert frames[-1]["line"] == line and len(frames) <= 10
    assert report.result["script"]["ended"] == "failed" and report.exit_code() == 1


@pytest.mark.parametrize(("args", "marker", "headline"), [
    ((), "# <-- assert", "AssertionError: Cannot forward sequence of length 65, block size is only 64 "
                         "(assert t <= self.block_size failed)"),
    (("--bare",), "# <-- bare assert", "AssertionError: assert t <= self.block_size failed"),
])
def test_a_users_assert_names_its_condition_message_and_line(args, marker, headline, in_scripts_dir, capsys):
    # nanoGPT's block_size check: explain knows no cause for it, the user's own line is the cause
    report = run_script("block_size_assert.py", list(args))
    (finding,) = report.findings
    line = marker_line(SCRIPTS / "block_size_assert.py", marker)
    assert finding.id == "script-failed" and finding.location == f"block_size_assert.py:{line}"
    assert finding.message == f"{headline} at block_size_assert.py:{line}"
    assert finding.details["assertion"] == "t <= self.block_size" and "explained_by" not in finding.details


def test_an_assert_raised_inside_a_library_is_not_the_users(tmp_path, monkeypatch, capsys):
    (tmp_path / "train.py").write_text("import unittest\n\nunittest.TestCase().assertEqual(1, 2)\n")
    monkeypatch.chdir(tmp_path)
    (finding,) = run_script("train.py").findings
    assert finding.message == "AssertionError: 1 != 2 at train.py:3" and "assertion" not in finding.details


def test_nonzero_exit_code_is_a_finding(in_scripts_dir, capsys):
    report = run_script("exits_3.py")
    (finding,) = report.findings
    line = marker_line(SCRIPTS / "exits_3.py", "# <-- exit")
    assert finding.id == "script-exit-code" and finding.details["exit_code"] == 3
    assert "code 3" in finding.message and finding.location == f"exits_3.py:{line}"
    assert report.result["script"]["exit_code"] == 3 and report.exit_code() == 1


@pytest.mark.parametrize(
    ("body", "findings", "exit_code"),
    [
        ("import sys\nsys.exit(0)\n", [], 0),
        ("import sys\nsys.exit()\n", [], 0),
        ("import sys\nsys.exit('fatal: no data')\n", ["script-exit-code"], 1),
        ("raise KeyError('lr')\n", ["script-failed"], 1),
    ],
)
def test_endings(tmp_path, body, findings, exit_code):
    script = tmp_path / "train.py"
    script.write_text(body)
    report = run_script(script)
    assert [f.id for f in report.findings] == findings
    assert report.result["script"]["exit_code"] == exit_code
    if findings == ["script-exit-code"]:
        assert report.findings[0].message.endswith(": fatal: no data")


def test_keyboard_interrupt_gives_a_partial_report(tmp_path):
    script = tmp_path / "train.py"
    script.write_text("import torch\nx = torch.ones(2)\nraise KeyboardInterrupt\n")
    report = run_script(script)
    assert report.result["interrupted"] is True and report.result["script"]["ended"] == "interrupted"
    assert report.exit_code() == 0


def test_failure_in_a_sibling_module_points_at_that_module(tmp_path, monkeypatch):
    (tmp_path / "helpers.py").write_text("def load():\n    return {}['batch_size']\n")
    (tmp_path / "train.py").write_text("import helpers\n\nhelpers.load()\n")
    monkeypatch.chdir(tmp_path)
    report = run_script("train.py")
    (finding,) = report.findings
    assert finding.location == "helpers.py:2" and finding.message == "KeyError: 'batch_size' at helpers.py:2"
    assert [(f["file"], f["line"]) for f in finding.details["traceback"]] == [("train.py", 3), ("helpers.py", 2)]


def test_restores_argv_path_main_and_working_folder(tmp_path, monkeypatch):
    script = tmp_path / "train.py"
    script.write_text("import os, sys\nsys.path.append('/nowhere')\nsys.argv.append('x')\nos.chdir('/')\n")
    monkeypatch.chdir(tmp_path.parent)
    argv, path, main, cwd = sys.argv, list(sys.path), sys.modules["__main__"], os.getcwd()
    report = run_script(str(script), ["--x", "1"])
    assert report.result["script"]["argv"] == [str(script), "--x", "1"]
    assert (sys.argv, sys.path, sys.modules["__main__"], os.getcwd()) == (argv, path, main, cwd)


def test_leaves_no_hook_behind(in_scripts_dir, capsys):
    from torch.nn.modules import module
    from torch.optim import optimizer

    hooks = (
        module._global_forward_pre_hooks,
        module._global_forward_hooks,
        optimizer._global_optimizer_pre_hooks,
        optimizer._global_optimizer_post_hooks,
    )
    before = [len(h) for h in hooks]
    run_script("norm_no_eps.py")
    run_script("healthy_argparse.py", ["--epochs", "1"])
    assert [len(h) for h in hooks] == before


def test_the_script_sees_what_python_would_show_it(tmp_path, capfd):
    script = tmp_path / "probe.py"
    script.write_text("import sys\nprint(sys.argv, sys.path[0], __file__, __name__)\n")
    run_script(str(script), ["a", "--b"])
    out = capfd.readouterr().out
    assert out == f"{[str(script), 'a', '--b']} {tmp_path} {script} __main__\n"


def test_stdout_to_stderr_keeps_stdout_clean(tmp_path, capsys):
    script = tmp_path / "train.py"
    script.write_text("print('hello from the script')\n")
    run_script(script, stdout_to_stderr=True)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == "hello from the script\n"


def test_missing_script_and_folder_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="no such file: 'nope.py'"):
        run_script("nope.py")
    with pytest.raises(InputError, match="is not a file"):
        run_script(tmp_path)


def test_syntax_error_is_user_code_failing_to_load(tmp_path, monkeypatch):
    (tmp_path / "train.py").write_text("import torch\n\nmodel = (\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserCodeError, match=r"^train\.py:3: SyntaxError: '\(' was never closed$"):
        run_script("train.py")


def test_write_report_is_atomic_and_leaves_no_temp_file(tmp_path, capsys):
    script = tmp_path / "train.py"
    script.write_text("pass\n")
    target = write_report(run_script(script), tmp_path / "report.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json", "train.py"]
    assert target.read_text().startswith("{") and oct(target.stat().st_mode & 0o777) != oct(0o600)
    with pytest.raises(InputError, match="no such folder"):
        write_report(run_script(script), tmp_path / "missing" / "report.json")
