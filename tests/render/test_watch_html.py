"""The watch page from contract-shaped report dicts: cells, links both ways, escaping, self-containment."""

from __future__ import annotations

import io
import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console
from tests.render.watch_reports import HOSTILE, watch_report_dict

from torchdoctor.render.json import json_safe
from torchdoctor.render.watch_html import render_watch_html
from torchdoctor.render.watch_terminal import render_watch_pictures


def _finding_anchor(html: str, fid: str) -> tuple[str, str | None]:
    """The ``finding-N`` id of the finding ``fid`` and the row it links to (None without a link)."""
    item = re.search(rf'<li class="finding \w+" id="(finding-\d+)">(?:(?!</li>).)*?{fid}.*?</li>', html)
    assert item, fid
    link = re.search(r'<a href="#((?:layer|act)-\d+)">', item.group(0))
    return item.group(1), link.group(1) if link else None


def test_one_titled_cell_per_layer_and_step_in_each_heatmap():
    html = render_watch_html(watch_report_dict(layers=3, steps=7))
    assert len(re.findall(r"<rect x=", html)) == 2 * 3 * 7
    assert "blocks.0.linear · step 1 · gradient norm 1e-06" in html
    assert "blocks.1.linear · step 5 · gradient norm no value" in html  # the gap in the series


def test_a_large_run_merges_neighbouring_steps_to_keep_the_page_small():
    html = render_watch_html(watch_report_dict(layers=100, steps=500))
    assert len(re.findall(r"<rect x=", html)) == 2 * 100 * 100  # MAX_CELLS per heatmap: 5 steps a cell
    assert "blocks.0.linear · steps 1–9 · gradient norm" in html  # sampled steps 1, 3, 5, 7, 9
    assert len(html) < 4_000_000


def test_layers_follow_model_order_and_findings_link_both_ways():
    html = render_watch_html(watch_report_dict())
    rows = re.findall(r'<tr id="layer-(\d+)"><td>([^<]*)</td>', html)
    assert [name for _, name in rows] == ["blocks.0.linear", "blocks.1.linear", "blocks.2.linear", "head"]
    finding, row = _finding_anchor(html, "grad-vanishing")  # location blocks.0.linear.weight: a parameter
    assert row == "layer-0"
    assert re.search(rf'<tr id="layer-0">.*?<a href="#{finding}">grad-vanishing</a>', html)
    finding, row = _finding_anchor(html, "dead-relu")  # a parameter-free ReLU: its activation row
    assert row == "act-0" and re.search(rf'<tr id="act-0"><td>relu1</td>.*?href="#{finding}"', html)
    assert _finding_anchor(html, "loss-not-decreasing")[1] is None  # about the run, not a layer
    assert html.index("params-not-updated") < html.index("grad-vanishing")  # errors first


def test_names_from_user_code_are_escaped_everywhere():
    html = render_watch_html(watch_report_dict(hostile=True))
    assert "<script>alert" not in html and 'alert("x")' not in html
    escaped = 'head&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;'
    assert html.count(escaped) >= 4  # finding message and link, layer row, heatmap labels and titles
    assert HOSTILE not in html


def test_the_page_needs_nothing_from_the_network():
    html = render_watch_html(watch_report_dict())
    assert not re.search(r"https?://|//cdn|@import|<link|src=", html, re.IGNORECASE)
    assert re.findall(r"url\(([^)]*)\)", html) == ["#legend-grad-norm", "#legend-update-ratio"]
    assert "default-src 'none'" in html  # the browser itself refuses any fetch


def test_a_json_round_trip_with_non_finite_values_still_renders():
    report = watch_report_dict(layers=2, steps=4)
    series = report["result"]["series"]
    series["grad_norm"][0][1] = float("inf")
    series["loss"][2] = float("nan")
    report["result"]["first_nonfinite"] = {"kind": "nan", "phase": "forward", "step": 5}
    back = json.loads(json.dumps(json_safe(report), allow_nan=False))  # what --json writes
    html = render_watch_html(back)
    assert 'fill="#c0392b"><title>blocks.0.linear · step 3 · gradient norm inf</title>' in html
    assert '<line class="marker" x1=' in html  # the first non-finite step on the loss curve


def test_a_run_without_series_or_findings_says_so():
    report = watch_report_dict()
    report["findings"], report["result"]["series"] = [], {}
    html = render_watch_html(report)
    assert "Nothing stood out in the watched steps." in html
    assert "No loss was recorded." in html and "No gradient norm was recorded." in html
    assert "<rect x=" not in html


def test_a_constant_learning_rate_gets_ticks_around_its_value():
    report = watch_report_dict(layers=2, steps=5)
    report["result"]["series"]["lr"] = [0.001] * 5
    chart = re.search(r'<svg class="chart lr".*?</svg>', render_watch_html(report)).group(0)
    ticks = [float(t) for t in re.findall(r'text-anchor="end">([^<]+)</text>', chart)]
    assert ticks and all(0.0009 <= tick <= 0.0011 for tick in ticks) and 0.001 in ticks


def test_a_finding_about_a_layer_outlines_its_steps_on_both_heatmaps():
    report = watch_report_dict(layers=4, steps=30)  # grad-vanishing on blocks.0.linear.weight, steps 1–59
    report["findings"][0]["details"]["steps"] = [21, 39]  # sampled steps 21, 23, ..., 39: columns 10..19
    html = render_watch_html(report)
    finding, _ = _finding_anchor(html, "grad-vanishing")
    marks = re.findall(rf'<a href="#{finding}"><rect class="mark" x="([\d.]+)" y="([\d.]+)" width="([\d.]+)"', html)
    assert len(marks) == 2  # gradient norm and update ratio
    x, y, width = map(float, marks[0])
    cell = 760 / 30
    assert (round((x - 1 - 210) / cell), round((width + 2) / cell), y) == (10, 10, 5.0)  # row 0, ten columns


_VALUES = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 5),
                    st.sampled_from(["NaN", "Infinity", "-Infinity", "junk"]), st.booleans())
_NAMES = st.text(min_size=0, max_size=12)


@settings(max_examples=60, deadline=None)
@given(layers=st.lists(_NAMES, max_size=5), steps=st.integers(0, 12), data=st.data())
def test_any_contract_shaped_dict_renders_and_escapes_every_name(layers, steps, data):
    """Ragged rows, wrong types, odd names: the page still renders, with nothing from the dict unescaped."""
    rows = st.lists(st.lists(_VALUES, max_size=steps + 2), max_size=len(layers) + 1)
    series = {"step": list(range(steps)), "loss": data.draw(st.lists(_VALUES, max_size=steps + 2)),
              "lr": data.draw(st.lists(_VALUES, max_size=steps)), "layers": layers,
              "grad_norm": data.draw(rows), "update_ratio": data.draw(rows),
              "dead_fraction": data.draw(st.dictionaries(_NAMES, _VALUES, max_size=3)),
              "saturated_fraction": data.draw(st.dictionaries(_NAMES, _VALUES, max_size=3))}
    findings = [{"id": "x", "code": "TD899", "severity": data.draw(st.sampled_from(["error", "warning", "info", "?"])),
                 "message": data.draw(_NAMES), "fix": data.draw(st.one_of(st.none(), _NAMES)),
                 "location": data.draw(st.one_of(st.none(), _NAMES)),
                 "details": {"steps": data.draw(st.one_of(st.none(), st.lists(st.integers(-3, 20), max_size=3)))}}]
    html = render_watch_html({"findings": findings, "result": {"script": data.draw(_NAMES), "series": series}})
    body = html[html.index("<body>"):]
    assert "<script" not in body and body.count("<svg") == body.count("</svg>")
    assert not re.search(r'\s(?:x|y|x1|x2|y1|y2|cx|cy|width|height|points)="[^"]*(?:nan|inf)', body)
    assert len(re.findall(r"<rect x=", html)) == (2 * len(layers) * steps if layers and steps else 0)


@pytest.mark.parametrize("report", [
    {},
    {"result": None, "findings": None},
    {"result": {"series": [1, 2]}, "findings": ["not a finding", {"location": 3, "details": "x"}]},
    {"result": {"series": {"step": ["a", None, 7.0], "layers": {"fc": 1}, "grad_norm": "x", "loss": {"a": 1},
                           "dead_fraction": ["relu"]}, "first_nonfinite": "yes"}},
])
def test_a_hand_edited_report_still_renders(report):
    html = render_watch_html(report)
    assert html.startswith("<!DOCTYPE html>") and html.endswith("</html>\n")
    buffer = io.StringIO()
    render_watch_pictures(report.get("result") or {}, Console(file=buffer, width=60, color_system=None))
    assert buffer.getvalue()


def test_a_finding_about_a_module_without_series_still_gets_a_row_to_link_to():
    report = watch_report_dict(layers=3, steps=4)
    report["findings"][2]["location"] = "new_head.weight"  # params-not-updated: a head in no optimizer, not watched
    html = render_watch_html(report)
    finding, row = _finding_anchor(html, "params-not-updated")
    assert row == "layer-3"  # after the three watched layers
    assert re.search(rf'<tr id="layer-3"><td>new_head.weight</td>.*?href="#{finding}"', html)
    assert len(re.findall(r"<rect x=", html)) == 2 * 3 * 4  # no heat row without a series


@pytest.mark.parametrize("value", [5e-324, -5e-324, 0.0, 1e300])
def test_a_constant_series_of_any_size_gets_a_chart(value):
    from torchdoctor.render.watch_svg import line_chart

    # found by the property test above: a tenth of the subnormal 5e-324 is 0, and the axis divided by it
    chart = line_chart([1, 2, 3], [value] * 3, label="loss", css_class="loss")
    assert chart.startswith("<svg") and "NaN" not in chart and "inf" not in chart
