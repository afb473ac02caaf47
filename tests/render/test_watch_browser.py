"""The watch page in a real headless Chromium: it loads with no console errors, and it draws."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys

import pytest
from tests.render.browser import attribute, load
from tests.render.watch_reports import watch_report_dict

from torchdoctor.render.watch_html import render_watch_html
from torchdoctor.render.watch_series import layer_for

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}  # the page lists errors first


# what a pointer over the first heat cell does, for the readout under the heatmap
POINT_AT_FIRST_CELL = ("<script>document.addEventListener('DOMContentLoaded',function(){"
                       "document.querySelector('svg.heatmap g.row rect')"
                       ".dispatchEvent(new MouseEvent('mouseover',{bubbles:true}));});</script>")


def test_the_page_loads_without_errors_and_draws_every_heat_cell(tmp_path):
    report = watch_report_dict(layers=5, steps=40, hostile=True)
    page = tmp_path / "watch.html"
    page.write_text(render_watch_html(report).replace("</body>", POINT_AT_FIRST_CELL + "</body>"), encoding="utf-8")
    loaded = load(page, tmp_path / "profile")
    assert '<p class="readout">blocks.0.linear: step 1 · gradient norm 1e-06</p>' in loaded.dom
    assert attribute(loaded.dom, "data-ready") == "1", "the page's script did not run to the end"
    assert attribute(loaded.dom, "data-errors") is None and loaded.console == []
    # two heatmaps (gradient norm, update ratio), one cell per layer × sampled step, counted by the page itself
    assert attribute(loaded.dom, "data-heat-cells") == str(2 * 5 * 40)
    assert len(re.findall(r'<polyline class="line"', loaded.dom)) >= 3  # loss (split at its gap) and lr
    assert "<script>alert" not in loaded.dom
    assert loaded.dom.count("<script>") == 2  # the page's own, and the pointer above


def test_a_page_merged_from_several_ranks_loads_without_errors_and_draws_each_ranks_loss(tmp_path):
    from tests.learning.rank_reports import watched

    from torchdoctor.learning.ranks import merge_watch_reports

    merged = merge_watch_reports({0: watched(True), 1: watched(False)}).to_dict()
    page = tmp_path / "ranks.html"
    page.write_text(render_watch_html(merged), encoding="utf-8")
    loaded = load(page, tmp_path / "profile")
    assert attribute(loaded.dom, "data-ready") == "1" and attribute(loaded.dom, "data-errors") is None
    assert loaded.console == []
    chart = re.search(r'<svg class="chart loss".*?</svg>', loaded.dom).group(0)
    assert len(re.findall(r"<polyline", chart)) == 2 and ">rank 0</text>" in chart and ">rank 1</text>" in chart


def test_a_broken_page_is_caught_so_the_check_above_can_fail(tmp_path):
    """The same load on the page plus a script error and a network fetch: both must show up."""
    html = render_watch_html(watch_report_dict(layers=2, steps=3))
    broken = html.replace("</main>", '</main><img src="https://example.invalid/x.png"><script>noSuchFunction()</script>')
    page = tmp_path / "broken.html"
    page.write_text(broken, encoding="utf-8")
    loaded = load(page, tmp_path / "profile")
    errors = attribute(loaded.dom, "data-errors") or ""
    assert "noSuchFunction" in errors and "example.invalid" in errors
    assert any("noSuchFunction" in line for line in loaded.console)


# A small classifier whose head was left out of the optimizer: it learns a little, and there is a layer to link to.
TRAIN_PY = """
import torch
from torch import nn

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3))
optimizer = torch.optim.SGD([*model[0].parameters(), *model[2].parameters()], lr=0.1)
inputs = torch.randn(64, 8)
labels = (inputs[:, 0] > 0).long() + (inputs[:, 1] > 0).long()
for step in range(30):
    loss = nn.functional.cross_entropy(model(inputs), labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print("trained")
"""


@pytest.mark.slow
def test_torchdoctor_watch_on_a_terminal_draws_its_pictures_and_a_page_that_loads_in_a_browser(tmp_path):
    """One real run: stderr on a pseudo-terminal (the pictures), the report to --report, the page to --html."""
    pytest.importorskip("torchdoctor.learning", reason="the watch engine (branch watch) is not merged here yet")
    (tmp_path / "train.py").write_text(TRAIN_PY)
    stdout, terminal = _run_on_a_terminal(
        [sys.executable, "-m", "torchdoctor", "watch", "train.py", "--report", "report.json", "--html", "watch.html"],
        tmp_path)
    assert stdout == b"trained\n"  # the script's stdout, untouched
    assert "gradient norm per layer" in terminal and any(spark in terminal for spark in "▁▂▃▄▅▆▇█")
    assert re.search(r"^\s+2  \S", terminal, re.MULTILINE)  # a layer's strip, named by its module
    report = json.loads((tmp_path / "report.json").read_text())
    assert "params-not-updated" in [f["id"] for f in report["findings"]]  # the head "4" is in no optimizer
    series = report["result"]["series"]
    assert series["layers"][:2] == ["0", "2"] and series["step"]  # "4" too, once the engine lists non-optimized
    loaded = load(tmp_path / "watch.html", tmp_path / "profile")
    assert attribute(loaded.dom, "data-ready") == "1"
    assert attribute(loaded.dom, "data-errors") is None and loaded.console == []
    assert attribute(loaded.dom, "data-heat-cells") == str(2 * len(series["layers"]) * len(series["step"]))
    for index, finding in enumerate(sorted(report["findings"], key=lambda f: SEVERITY_ORDER[f["severity"]])):
        item = re.search(rf'<li class="finding \w+" id="finding-{index}">.*?</li>', loaded.dom).group(0)
        assert finding["id"] in item
        if finding["location"] and finding["code"].startswith("TD8"):  # about a layer: linked both ways
            row = re.search(r'href="#((?:layer|act)-\d+)"', item).group(1)
            assert re.search(rf'<tr id="{row}">.*?href="#finding-{index}"', loaded.dom)
            if (watched := layer_for(finding["location"], series["layers"])) is not None:
                assert row == f"layer-{watched}"


def _run_on_a_terminal(command: list[str], cwd) -> tuple[bytes, str]:
    """Run with stderr on a pseudo-terminal (so the CLI sees a TTY); its stdout, and the terminal's text."""
    master, slave = pty.openpty()
    env = {**os.environ, "COLUMNS": "100", "TERM": "xterm-256color"}
    with subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=slave) as process:
        os.close(slave)
        chunks = []
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        os.close(master)
        stdout = process.stdout.read()
        assert process.wait(timeout=300) in (0, 1)
    return stdout, ANSI.sub("", b"".join(chunks).decode("utf-8", "replace"))
