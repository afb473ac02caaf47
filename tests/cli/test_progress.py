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
