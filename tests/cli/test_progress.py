"""Long work shows a Rich progress bar on stderr when the output is a terminal, and only then."""

import os
import pty
import select
import subprocess
import sys

import pytest
from fixtures import ckpt_builders as build


def run_in_terminal(*args: str, timeout: float = 120) -> tuple[int, str]:
    """``python -m torchdoctor ARGS`` with stdout and stderr on a pseudo-terminal; everything it drew, raw."""
    leader, follower = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"}
    env.pop("NO_COLOR", None)
    child = subprocess.Popen([sys.executable, "-m", "torchdoctor", *args], stdin=subprocess.DEVNULL,
                             stdout=follower, stderr=follower, env=env, close_fds=True)
    os.close(follower)
    drawn = bytearray()
    try:
        while True:
            ready, _, _ = select.select([leader], [], [], timeout)
            if not ready:
                child.kill()
                pytest.fail(f"no output for {timeout} s: {drawn[-500:]!r}")
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the child closed its end
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        os.close(leader)
    return child.wait(timeout=timeout), drawn.decode(errors="replace")


@pytest.mark.slow
@pytest.mark.parametrize("command, description", [("inspect", "scanning tensor values"),
                                                  ("fix", "copying and verifying")])
def test_a_terminal_gets_a_progress_bar_and_json_does_not(tmp_path, command, description):
    source = build.dataparallel_state_dict(tmp_path)
    code, drawn = run_in_terminal("ckpt", command, str(source))
    assert code == 0, drawn[-2000:]
    assert description in drawn
    if command == "fix":
        (tmp_path / f"{source.stem}.fixed{source.suffix}").unlink()
    code, drawn = run_in_terminal("ckpt", command, str(source), "--json")
    assert code == 0 and description not in drawn and drawn.lstrip().startswith("{")


@pytest.mark.slow
def test_check_shows_each_item_on_a_terminal_as_it_starts_and_ends(tmp_path):
    build.plain_state_dict(tmp_path)
    build.dataparallel_state_dict(tmp_path)
    config = tmp_path / "torchdoctor.toml"
    config.write_text('[[ckpt]]\npath = "plain.pt"\n\n[[ckpt]]\npath = "dataparallel.pt"\n')
    code, drawn = run_in_terminal("check", "--config", str(config))
    assert code == 0, drawn[-2000:]  # module-prefix is a warning; warnings do not fail by default
    lines = [line.strip() for line in drawn.replace("\r", "\n").splitlines() if line.strip().startswith("[")]
    started = lines.index("[1/2] ckpt plain.pt …")
    assert lines[started + 1].startswith("[1/2] ckpt plain.pt: no issues (")
    assert lines[started + 2] == "[2/2] ckpt dataparallel.pt …"
    assert lines[started + 3].startswith("[2/2] ckpt dataparallel.pt: 1 warning (")
    assert lines[started + 3].endswith(" s)")
    assert drawn.index("[2/2] ckpt dataparallel.pt: 1 warning") < drawn.index("module-prefix")  # then the report
    code, drawn = run_in_terminal("check", "--config", str(config), "--json")
    assert code == 0 and "[1/2]" not in drawn and drawn.lstrip().startswith("{")
