"""The watch page in a real headless Chromium: it loads with no console errors, and it draws."""

from __future__ import annotations

import re

from tests.render.browser import attribute, load
from tests.render.watch_reports import watch_report_dict

from torchdoctor.render.watch_html import render_watch_html


def test_the_page_loads_without_errors_and_draws_every_heat_cell(tmp_path):
    report = watch_report_dict(layers=5, steps=40, hostile=True)
    page = tmp_path / "watch.html"
    page.write_text(render_watch_html(report), encoding="utf-8")
    loaded = load(page, tmp_path / "profile")
    assert attribute(loaded.dom, "data-ready") == "1", "the page's script did not run to the end"
    assert attribute(loaded.dom, "data-errors") is None and loaded.console == []
    # two heatmaps (gradient norm, update ratio), one cell per layer × sampled step, counted by the page itself
    assert attribute(loaded.dom, "data-heat-cells") == str(2 * 5 * 40)
    assert len(re.findall(r'<polyline class="line"', loaded.dom)) >= 3  # loss (split at its gap) and lr
    assert "<script>alert" not in loaded.dom


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
