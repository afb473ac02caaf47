"""``watch --html``: one self-contained page (inline SVG and CSS, no network) for a watch report's dict."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from torchdoctor.render.watch_series import (
    display_name,
    format_value,
    layer_for,
    mapping,
    matrix,
    names,
    number,
    numbers,
    steps_of,
)
from torchdoctor.render.watch_svg import Line, Mark, heatmap, line_chart, lines_chart

# The page may not load anything: the policy makes the browser refuse (and report) any fetch, so a stray link
# to a CDN or a font fails the browser test instead of quietly working online and breaking offline.
_POLICY = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:"
USUAL_UPDATE_RATIO = 1e-3
_SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}

_STYLE = """
:root{--ink:#1f2933;--muted:#616e7c;--line:#d9dde3;--paper:#fbfbfa;--error:#b42318;--warning:#b54708;
--info:#175cd3;--accent:#2c728e;--card:#fff;--chip:#eef1f4;--grid:#eceef1;--hit:#eef6f8}
@media (prefers-color-scheme:dark){:root{--ink:#e4e7eb;--muted:#9aa5b1;--line:#3e4c59;--paper:#14191f;
--card:#1c232b;--chip:#27313b;--grid:#27313b;--hit:#1f3540;--accent:#5fb3c9;--error:#f97066;--warning:#fdb022;
--info:#84adff}}
*{box-sizing:border-box}
body{margin:0;background:var(--paper);color:var(--ink);font:15px/1.5 system-ui,-apple-system,"Segoe UI",
Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1040px;margin:0 auto;padding:28px 24px 64px}
h1{font-size:24px;margin:0 0 4px;font-weight:600}h2{font-size:18px;margin:36px 0 8px;font-weight:600}
.meta,.note,.empty{color:var(--muted)}.note{margin:0 0 8px;font-size:14px}
code{font:13px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;background:var(--chip);padding:1px 5px;
border-radius:4px}
.counts span{display:inline-block;margin:10px 8px 0 0;padding:2px 10px;border-radius:999px;background:var(--chip)}
ol.findings{list-style:none;padding:0;margin:0}
.finding{background:var(--card);border:1px solid var(--line);border-left:4px solid var(--info);border-radius:6px;
padding:10px 14px;margin:0 0 10px}
.finding.error{border-left-color:var(--error)}.finding.warning{border-left-color:var(--warning)}
.badge{font-size:12px;font-weight:600;text-transform:uppercase;letter-spacing:.04em;margin-right:8px}
.error .badge{color:var(--error)}.warning .badge{color:var(--warning)}.info .badge{color:var(--info)}
.finding .id{color:var(--muted);font-size:13px}.finding p{margin:4px 0}
.fix{color:var(--ink)}.fix b{font-weight:600}
svg{display:block;width:100%;height:auto;background:var(--card);border:1px solid var(--line);border-radius:6px}
.line{fill:none;stroke:var(--accent);stroke-width:2}.lr .line{stroke:#5e6ad2}
.dot{fill:transparent}.dot:hover{fill:var(--accent)}
.grid{stroke:var(--grid)}.axis{stroke:#b6bcc5}.marker{stroke:var(--error);stroke-dasharray:4 3;stroke-width:1.5}
.band{stroke:var(--ink);stroke-width:1.5}
.tick,.row-label{font-size:11px;fill:var(--muted)}.row-label{fill:var(--ink)}
a .row-label:hover{fill:var(--accent);text-decoration:underline}
.row rect:hover{stroke:var(--ink);stroke-width:1}
.mark{fill:none;stroke:#d92d20;stroke-width:2;stroke-dasharray:5 3}.mark:hover{stroke-width:3}
.readout{min-height:1.5em;font-size:13px;color:var(--muted);margin:4px 0 0}
table{border-collapse:collapse;width:100%;background:var(--card);border:1px solid var(--line);font-size:14px}
th,td{text-align:left;padding:5px 10px;border-bottom:1px solid var(--grid)}th{font-weight:600;color:var(--muted)}
td.num{font-variant-numeric:tabular-nums}
tr:target,li:target{outline:2px solid var(--accent);background:var(--hit)}
.bar{display:inline-block;height:8px;background:var(--accent);border-radius:2px;vertical-align:middle;
margin-right:8px}
a{color:var(--accent)}
footer{margin-top:40px;font-size:13px;color:var(--muted)}
"""

# Records any script error or console.error into a DOM attribute (so a headless --dump-dom can see it), and
# shows the value under the pointer without waiting for the native tooltip.
_SCRIPT = """
(function(){
var root=document.documentElement,errors=[];
function note(text){errors.push(String(text));root.setAttribute('data-errors',errors.join('\\n'));}
window.addEventListener('error',function(e){note(e.message||'resource failed to load');},true);
window.addEventListener('securitypolicyviolation',function(e){note('blocked '+e.blockedURI);});
var original=console.error;console.error=function(){note([].slice.call(arguments).join(' '));
return original.apply(console,arguments);};
document.addEventListener('DOMContentLoaded',function(){
document.querySelectorAll('svg.heatmap').forEach(function(map){
var readout=map.nextElementSibling;
map.addEventListener('mouseover',function(e){var t=e.target,row=t.parentNode;
if(t.tagName==='rect'&&row.classList.contains('row')&&readout){
readout.textContent=row.getAttribute('data-layer')+': '+t.firstChild.textContent.split(' · ').slice(1).join(' · ');}});
});
root.setAttribute('data-heat-cells',String(document.querySelectorAll('svg.heatmap g.row rect').length));
root.setAttribute('data-ready','1');
});
})();
"""


def render_watch_html(report_dict: Mapping[str, Any]) -> str:
    """The whole page for a ``watch`` report's ``to_dict()`` (or its ``--json`` object)."""
    result = mapping(report_dict.get("result"))
    series = mapping(result.get("series"))
    layers = names(series.get("layers"))
    activations = _activation_names(series)
    listed = report_dict.get("findings")
    findings = sorted((f for f in (listed if isinstance(listed, list) else ()) if isinstance(f, Mapping)),
                      key=lambda f: _SEVERITY_ORDER.get(str(f.get("severity")), 3))
    unseen = _unseen_modules(findings, layers, activations)
    links = _finding_links(findings, layers + unseen, activations)
    body = [_header(report_dict, result, findings), _findings_section(findings, links.anchor_of),
            _curves_section(series, result), _heatmaps_section(series, layers, _marks(findings, links), result),
            _layers_section(series, layers, unseen, links, _of_rank(result)),
            _activations_section(series, activations, links, _of_rank(result)),
            f'<footer>torchdoctor {escape(str(report_dict.get("version", "")))} · this page is self-contained '
            "and loads nothing from the network.</footer>"]
    title = f"torchdoctor watch · {result.get('script') or 'training run'}"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{_POLICY}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(title)}</title><script>{_SCRIPT}</script><style>{_STYLE}</style></head>"
            f"<body><main>{''.join(body)}</main></body></html>\n")


def _unseen_modules(findings: Sequence[Mapping[str, Any]], layers: list[str], activations: list[str]) -> list[str]:
    """Modules a watch finding names that have no series (a head in no optimizer): they get a row of their own,
    so every finding about a layer still links to one."""
    unseen: list[str] = []
    for finding in findings:
        location = finding.get("location")
        if str(finding.get("code", "")).startswith("TD8") and isinstance(location, str) and location \
                and location not in activations and layer_for(location, layers) is None and location not in unseen:
            unseen.append(location)
    return unseen


def _activation_names(series: Mapping[str, Any]) -> list[str]:
    found: list[str] = []
    for key in ("dead_fraction", "saturated_fraction"):
        found += [name for name in names(mapping(series.get(key))) if name not in found]
    return found


class _Links:
    """Which page row each finding points at, and the findings each row points back to."""

    def __init__(self) -> None:
        self.anchor_of: dict[int, str] = {}
        self.back: dict[str, list[tuple[int, Mapping[str, Any]]]] = {}

    def add(self, index: int, finding: Mapping[str, Any], anchor: str) -> None:
        self.anchor_of[index] = anchor
        self.back.setdefault(anchor, []).append((index, finding))


def _finding_links(findings: Sequence[Mapping[str, Any]], layers: list[str], activations: list[str]) -> _Links:
    links = _Links()
    for index, finding in enumerate(findings):
        location = finding.get("location") if isinstance(finding.get("location"), str) else None
        if location in activations:  # dead-relu, saturated-activation: a parameter-free module
            links.add(index, finding, f"act-{activations.index(location)}")
        elif (layer := layer_for(location, layers)) is not None:
            links.add(index, finding, f"layer-{layer}")
    return links


def _header(report: Mapping[str, Any], result: Mapping[str, Any], findings: Sequence[Mapping[str, Any]]) -> str:
    script = result.get("script")
    args = " ".join(str(arg) for arg in result.get("args") or ())
    facts = [f"{result.get('steps_watched', 0)} {_step_word(result)} watched"]
    if result.get("exit_code") is not None:
        facts.append(f"script exit code {result['exit_code']}")
    if result.get("script_failed"):
        facts.append("the script failed")
    counts = {s: sum(1 for f in findings if f.get("severity") == s) for s in ("error", "warning", "info")}
    chips = "".join(f"<span>{n} {s}{'s' if n != 1 else ''}</span>" for s, n in counts.items())
    command = f"<p class=\"meta\"><code>{escape(f'python {script} {args}'.strip())}</code></p>" if script else ""
    return (f"<header><h1>Training watch: {escape(str(script or 'in-process run'))}</h1>{command}"
            f"<p class=\"meta\">{escape(' · '.join(facts))}</p><div class=\"counts\">{chips}</div></header>")


def _step_word(result: Mapping[str, Any]) -> str:
    return "backward passes" if result.get("step_counting") == "backward" else "optimizer steps"


def _findings_section(findings: Sequence[Mapping[str, Any]], anchor_of: Mapping[int, str]) -> str:
    if not findings:
        return "<h2>Findings</h2><p class=\"empty\">Nothing stood out in the watched steps.</p>"
    items = [_finding_item(index, finding, anchor_of.get(index)) for index, finding in enumerate(findings)]
    return f"<h2>Findings</h2><ol class=\"findings\">{''.join(items)}</ol>"


def _finding_item(index: int, finding: Mapping[str, Any], anchor: str | None) -> str:
    severity = str(finding.get("severity", "info"))
    location = finding.get("location")
    where = ""
    if location is not None:
        name = escape(str(location))
        where = f'<a href="#{anchor}">{name}</a>' if anchor else f"<code>{name}</code>"
    steps = mapping(finding.get("details")).get("steps")
    if isinstance(steps, (list, tuple)) and len(steps) == 2:
        where += f" · steps {escape(str(steps[0]))}–{escape(str(steps[1]))}"
    fix = finding.get("fix")
    return (f'<li class="finding {escape(severity)}" id="finding-{index}"><p><span class="badge">{escape(severity)}'
            f'</span><span class="id">{escape(str(finding.get("id", "")))} {escape(str(finding.get("code", "")))}'
            f"</span></p><p>{escape(str(finding.get('message', '')))}</p>"
            + (f"<p class=\"meta\">{where}</p>" if where else "")
            + (f'<p class="fix"><b>fix:</b> {escape(str(fix))}</p>' if fix else "") + "</li>")


def _curves_section(series: Mapping[str, Any], result: Mapping[str, Any]) -> str:
    steps = steps_of(series)
    first = result.get("first_nonfinite")
    marker = first.get("step") if isinstance(first, dict) and isinstance(first.get("step"), int) else None
    ranks = rank_lines(result)
    if len(ranks) > 1:
        parts = ["<h2>Loss</h2><p class=\"note\">Every rank's own loss, each on its own data.</p>",
                 lines_chart(ranks, label="loss", css_class="loss", marker_step=marker)]
    else:
        parts = ["<h2>Loss</h2>", line_chart(steps, numbers(series.get("loss")), label="loss", css_class="loss",
                                             marker_step=marker)]
    learning_rates = numbers(series.get("lr"))
    if any(value is not None for value in learning_rates):
        parts += [f"<h2>Learning rate{_of_rank(result)}</h2>",
                  line_chart(steps, learning_rates, label="learning rate", css_class="lr", height=140)]
    return "".join(parts)


def rank_lines(result: Mapping[str, Any]) -> list[Line]:
    """Each reporting rank's loss curve (``result.ranks`` of a report merged under torchrun), in its order: the
    merge lists rank 0 first, and the first reporting rank is the one whose series the report keeps."""
    listed = result.get("ranks")
    ranks = [mapping(rank) for rank in (listed if isinstance(listed, list) else ())]
    return [Line(f"rank {rank.get('rank')}", steps_of(rank), numbers(rank.get("loss")))
            for rank in ranks if rank.get("reported")]


def _series_rank(result: Mapping[str, Any]) -> str:
    """``rank 0`` (escaped) where the report merges several ranks: its series, and so every picture but the loss
    chart, are the lowest rank's alone; "" for a single run."""
    ranks = rank_lines(result)
    return escape(ranks[0].name) if len(ranks) > 1 else ""


def _of_rank(result: Mapping[str, Any]) -> str:
    """`` (rank 0)``, for a heading, where the report merges several ranks; "" for a single run."""
    rank = _series_rank(result)
    return f" ({rank})" if rank else ""


def _marks(findings: Sequence[Mapping[str, Any]], links: _Links) -> list[Mark]:
    """Findings about a layer with a ``details.steps`` range, as outlines on that layer's heatmap rows."""
    marks = []
    for index, anchor in links.anchor_of.items():
        steps = mapping(findings[index].get("details")).get("steps")
        if anchor.startswith("layer-") and isinstance(steps, (list, tuple)) and len(steps) == 2 \
                and all(isinstance(step, int) for step in steps):
            title = f"{findings[index].get('id')}: steps {steps[0]}–{steps[1]}"
            marks.append(Mark(int(anchor.removeprefix("layer-")), steps[0], steps[1], title, f"#finding-{index}"))
    return marks


def _heatmaps_section(series: Mapping[str, Any], layers: list[str], marks: Sequence[Mark],
                      result: Mapping[str, Any]) -> str:
    steps = steps_of(series)
    rank = _series_rank(result)
    # the merged report keeps one rank's per-layer series (under DDP the all-reduced gradients are alike anyway)
    whose = f"<p class=\"note\">Drawn from {rank}'s layers alone.</p>" if rank else ""
    rank = f" ({rank})" if rank else ""
    anchors = [f"layer-{index}" for index in range(len(layers))]
    grad = heatmap(layers, steps, matrix(series.get("grad_norm"), len(layers)), label="gradient norm",
                   css_class="grad-norm", anchors=anchors, marks=marks)
    ratio = heatmap(layers, steps, matrix(series.get("update_ratio"), len(layers)), label="update ratio",
                    css_class="update-ratio", anchors=anchors, band=USUAL_UPDATE_RATIO, marks=marks)
    readout = '<p class="readout">Point at a cell to read its value.</p>'
    return (f"<h2>Gradient norm per layer{rank}</h2>{whose}<p class=\"note\">Layers from input (top) to output "
            "(bottom); colour on a log scale; a dashed outline marks a finding's layer and steps.</p>"
            f"{grad}{readout}"
            f"<h2>Update ratio |Δw| / |w| per layer{rank}</h2><p class=\"note\">Around 1e-3 per step is usual; "
            f"far above, the learning rate is too high; far below, too low.</p>{ratio}{readout}")


def _layers_section(series: Mapping[str, Any], layers: list[str], unseen: list[str], links: _Links,
                    rank: str = "") -> str:
    if not layers and not unseen:
        return ""
    grads = matrix(series.get("grad_norm"), len(layers))
    ratios = matrix(series.get("update_ratio"), len(layers))
    rows = [f'<tr id="layer-{index}"><td>{escape(display_name(name))}</td>'
            f'<td class="num">{_median(grads[index])}</td><td class="num">{_median(ratios[index])}</td>'
            f"<td>{_back_links(links, f'layer-{index}')}</td></tr>" for index, name in enumerate(layers)]
    rows += [f'<tr id="layer-{index}"><td>{escape(name)}</td><td class="empty" colspan="2">not in the watched '
             f"series</td><td>{_back_links(links, f'layer-{index}')}</td></tr>"
             for index, name in enumerate(unseen, start=len(layers))]
    return (f"<h2>Layers{rank}</h2><table><thead><tr><th>layer</th><th>median gradient norm</th>"
            f"<th>median update ratio</th><th>findings</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")


def _activations_section(series: Mapping[str, Any], names: list[str], links: _Links, rank: str = "") -> str:
    if not names:
        return ""
    dead, saturated = mapping(series.get("dead_fraction")), mapping(series.get("saturated_fraction"))
    rows = [f'<tr id="act-{index}"><td>{escape(display_name(name))}</td><td>{_fraction(dead.get(name))}</td>'
            f"<td>{_fraction(saturated.get(name))}</td><td>{_back_links(links, f'act-{index}')}</td></tr>"
            for index, name in enumerate(names)]
    return (f"<h2>Activations{rank}</h2><p class=\"note\">Dead: ReLU-family units inactive for every sample watched. "
            "Saturated: tanh/sigmoid units pinned at their bounds.</p><table><thead><tr><th>module</th>"
            "<th>dead</th><th>saturated</th><th>findings</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def _fraction(value: Any) -> str:
    share = number(value)
    if share is None:
        return "<span class=\"empty\">—</span>"
    width = max(0.0, min(1.0, share)) * 120
    return f'<span class="bar" style="width:{width:.0f}px"></span>{share:.0%}'


def _median(values: Sequence[float | None]) -> str:
    finite = [value for value in values if value is not None and math.isfinite(value)]
    return format_value(statistics.median(finite)) if finite else "—"


def _back_links(links: _Links, anchor: str) -> str:
    return " ".join(f'<a href="#finding-{index}">{escape(str(finding.get("id", "finding")))}</a>'
                    for index, finding in links.back.get(anchor, ()))
