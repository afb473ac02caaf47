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


def test_no_argument_on_a_terminal_reads_a_paste_ended_with_ctrl_d():
    """A real pseudo-terminal on stdin: the prompt says how to end, Ctrl-D on an empty line ends the paste."""
    import os
    import pty
    import select
    import subprocess
    import sys

    leader, follower = pty.openpty()
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    child = subprocess.Popen([sys.executable, "-m", "torchdoctor", "explain"], stdin=follower, stdout=follower,
                             stderr=follower, env=env, close_fds=True)
    os.close(follower)
    drawn = bytearray()

    def read_until(needle: bytes) -> None:
        while needle not in drawn:
            ready, _, _ = select.select([leader], [], [], 30)
            assert ready, f"waited for {needle!r}, got {bytes(drawn)!r}"
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the child closed its end
                return
            if not chunk:
                return
            drawn.extend(chunk)

    try:
        read_until(b"Ctrl-D")
        os.write(leader, TRACEBACK.encode() + b"\x04")  # the paste ends with a newline, so ^D is on an empty line
        read_until(b"fix:")
        assert child.wait(timeout=30) == 1
    finally:
        child.kill()
        os.close(leader)
    text = drawn.decode(errors="replace")
    assert "Paste the traceback or log, then press Ctrl-D" in text
    assert "label-out-of-range" in text and "nothing to explain" not in text


def test_strict_counts_warnings_and_is_accepted_like_every_command(cli, tmp_path):
    # torch's own warning text (torch/nn/functional.py, mse_loss) is explained as a warning-severity finding
    log = tmp_path / "train.log"
    log.write_text("UserWarning: Using a target size (torch.Size([4])) that is different to the input size "
                   "(torch.Size([4, 1])). This will likely lead to incorrect results due to broadcasting.\n")
    plain, strict = cli("explain", str(log), "--json"), cli("explain", str(log), "--json", "--strict")
    report = json.loads(plain.stdout)
    assert [f["severity"] for f in report["findings"]] == ["warning"], report
    assert (plain.exit_code, strict.exit_code) == (0, 1)
    assert cli("explain", "TD109", "--strict").exit_code == 0  # an entry is not a finding


def test_the_device_side_assert_paste_exits_1_and_names_data_num_classes(cli):
    from typer.testing import CliRunner

    from torchdoctor.cli import app

    paste = ("RuntimeError: CUDA error: device-side assert triggered\nCUDA kernel errors might be asynchronously "
             "reported at some other API call, so the stacktrace below might be incorrect.\nFor debugging consider "
             "passing CUDA_LAUNCH_BLOCKING=1\nCompile with `TORCH_USE_CUDA_DSA` to enable device-side assertions.\n")
    result = CliRunner().invoke(app, ["explain", "-"], input=paste)
    assert result.exit_code == 1, result.output
    assert "cuda-device-assert" in result.stdout and "torchdoctor data LOADER --num-classes" in result.stdout
    assert "check --num-classes" not in result.stdout
