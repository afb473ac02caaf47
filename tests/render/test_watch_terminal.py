"""The terminal pictures: golden plain render, fitting any width, colour only when the console has colour."""

from __future__ import annotations

import io
import os
import pty
import re
import subprocess
import sys

import pytest
from rich.console import Console
from tests.render.test_human import check_golden
from tests.render.watch_reports import watch_report_dict

from torchdoctor.render.watch_terminal import render_watch_pictures

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _render(result, width=80, color_system=None) -> str:
    buffer = io.StringIO()
    render_watch_pictures(result, Console(file=buffer, width=width, color_system=color_system,
                                          force_terminal=color_system is not None))
    return buffer.getvalue()


def test_golden_plain_pictures():
    check_golden("watch_pictures.txt", _render(watch_report_dict(layers=4, steps=30)["result"]))


@pytest.mark.parametrize("width", [30, 57, 80, 200])
def test_every_line_fits_the_console(width):
    text = _render(watch_report_dict(layers=40, steps=300, hostile=True)["result"], width=width)
    assert max(len(line) for line in text.splitlines()) <= width
    assert "24 of 40 layers" in text or width < 60  # many layers: an even pick, said so when there is room


def test_the_strip_runs_from_faint_at_the_input_to_full_at_the_output():
    rows = _render(watch_report_dict(layers=4, steps=30)["result"]).splitlines()
    label = len("blocks.0.linear  ")
    strips = [line[label:] for line in rows if line.lstrip().startswith(("blocks.", "head"))]
    assert [set(strip) - {" "} for strip in strips] == [{"░"}, {"▒"}, {"▓"}, {"█"}]  # " ": the gap in blocks.1
    assert strips[1].count(" ") == 2 and len({len(strip) for strip in strips}) == 1


def test_colour_only_with_a_colour_console_and_names_cannot_drive_the_terminal():
    result = watch_report_dict(layers=3, steps=5)["result"]
    result["series"]["layers"][0] = "evil\x1b[2Jname"
    assert "\x1b[38;2;" in _render(result, color_system="truecolor")
    plain = _render(result)
    assert "\x1b" not in plain and "evil?[2Jname" in plain


def test_nothing_to_draw_is_one_dim_line():
    assert _render({"series": {}}) == "watch: no steps were recorded, so there is nothing to draw\n"


def test_the_cli_draws_the_pictures_on_stderr_when_it_is_a_terminal(tmp_path):
    pytest.importorskip("torchdoctor.learning", reason="the watch engine (branch watch) is not merged here yet")
    from tests.render.test_watch_browser import TRAIN_PY

    (tmp_path / "train.py").write_text(TRAIN_PY)
    master, slave = pty.openpty()
    env = {**os.environ, "COLUMNS": "100", "TERM": "xterm-256color"}
    with subprocess.Popen([sys.executable, "-m", "torchdoctor", "watch", "train.py"], cwd=tmp_path, env=env,
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave) as process:
        os.close(slave)
        terminal = _read_all(master)
        stdout = process.stdout.read()
        process.wait(timeout=300)
    text = ANSI.sub("", terminal.decode("utf-8", "replace"))
    assert b"trained" in stdout and "trained" not in text  # the script's stdout stays on stdout
    assert "gradient norm per layer" in text and any(spark in text for spark in "▁▂▃▄▅▆▇█")
    assert re.search(r"^\s+2  \S", text, re.MULTILINE)  # a layer's strip, named by its module


def _read_all(fd: int) -> bytes:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)
