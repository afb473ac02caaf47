"""The terminal pictures: golden plain render, fitting any width, colour only when the console has colour."""

from __future__ import annotations

import io

import pytest
from rich.console import Console
from tests.render.test_human import check_golden
from tests.render.watch_reports import watch_report_dict

from torchdoctor.render.watch_terminal import render_watch_pictures


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

