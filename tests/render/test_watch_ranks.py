"""The watch pictures of a report merged under torchrun: every rank's loss curve, and the lowest rank named on the
pictures that show its series alone. Merged from real in-process watch runs, as rank 0 merges them."""

from __future__ import annotations

import io
import json
import re

import pytest
from rich.console import Console
from tests.learning.rank_reports import watched
from tests.render.watch_reports import HOSTILE

from torchdoctor.learning.ranks import merge_watch_reports
from torchdoctor.render.watch_html import render_watch_html
from torchdoctor.render.watch_terminal import render_watch_pictures


@pytest.fixture(scope="module")
def merged() -> dict:
    """Three ranks: 0 and 2 learn, 1 trains on labels drawn apart from its inputs (its loss stays up)."""
    healthy, at_chance = watched(True), watched(False)
    return json.loads(json.dumps(merge_watch_reports({0: healthy, 1: at_chance, 2: healthy}).to_dict()))


def loss_chart(page: str) -> str:
    return re.search(r'<svg class="chart loss".*?</svg>', page).group(0)


def test_the_loss_chart_draws_every_ranks_curve_with_a_legend_rank_0_first(merged):
    page = render_watch_html(merged)
    chart = loss_chart(page)
    assert re.findall(r'<text class="tick" x="[\d.]+" y="14">(rank \d)</text>', chart) == ["rank 0", "rank 1", "rank 2"]
    lines = re.findall(r'<polyline class="line"( style="stroke:[^"]+")? points="([^"]+)"/>', chart)
    assert len(lines) == 3 and len({style for style, _ in lines}) == 3  # one colour each
    # drawn last-to-first so rank 0 sits on top: its points are the last line's, and they are rank 0's own
    heights = [[float(point.split(",")[1]) for point in points.split()] for _, points in lines]
    assert heights[-1] == heights[0] and heights[1] != heights[0]  # ranks 0 and 2 ran alike; rank 1 did not
    losses = [rank["loss"] for rank in merged["result"]["ranks"]]
    assert all(len(height) == len(loss) for height, loss in zip(heights, reversed(losses), strict=True))
    first_dot = re.search(r"<circle[^>]*><title>([^<]*)</title>", chart).group(1)
    assert first_dot.startswith("rank 2 · step ")


def test_the_per_layer_pictures_say_they_are_rank_0s(merged):
    page = render_watch_html(merged)
    for heading in ("Gradient norm per layer", "Update ratio |Δw| / |w| per layer", "Layers", "Learning rate"):
        assert f"<h2>{heading} (rank 0)</h2>" in page
    assert "Drawn from rank 0's layers alone." in page


def test_a_single_run_page_names_no_rank(merged):
    single = {**merged, "result": {k: v for k, v in merged["result"].items() if k != "ranks"}}
    page = render_watch_html(single)
    assert "(rank 0)" not in page and 'y="14">rank' not in page
    assert len(re.findall(r"<polyline", loss_chart(page))) == 1


def test_rank_labels_from_a_hand_edited_report_are_escaped(merged):
    edited = json.loads(json.dumps(merged))
    edited["result"]["ranks"][1]["rank"] = HOSTILE
    page = render_watch_html(edited)
    assert "<script>alert" not in page and "rank head&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;" in page
    console = Console(file=io.StringIO(), width=100)
    edited["result"]["ranks"][0]["rank"] = "0\x1b[2J"
    render_watch_pictures(edited["result"], console)
    assert "\x1b" not in console.file.getvalue() and "rank 0?[2J loss" in console.file.getvalue()


def test_the_terminal_sparkline_says_which_rank_it_draws(merged):
    console = Console(file=io.StringIO(), width=100)
    render_watch_pictures(merged["result"], console)
    lines = console.file.getvalue().splitlines()
    assert lines[0].startswith("rank 0 loss  ") and lines[1].endswith("rank 0 of 3 (each rank's: result.ranks[].loss)")
    assert "rank 0 gradient norm per layer" in lines[2]
    alone = Console(file=io.StringIO(), width=100)
    render_watch_pictures({k: v for k, v in merged["result"].items() if k != "ranks"}, alone)
    assert alone.file.getvalue().startswith("loss  ") and "rank" not in alone.file.getvalue()
