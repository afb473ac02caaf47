"""``add_distributed``: the Python twin of ``torchdoctor env --distributed`` — launch, judge, add a section."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torchdoctor.dist.checks import check_distributed, headline_distributed
from torchdoctor.dist.collect import DistOptions, collect_distributed
from torchdoctor.report import Report, Section

__all__ = ["DistOptions", "add_distributed", "distributed_section", "run_distributed"]


def run_distributed(options: DistOptions | None = None) -> tuple[Section, dict[str, Any]]:
    """Launch ``options.nproc`` local ranks and judge them: the section to show and the facts for ``result``."""
    facts = collect_distributed(options or DistOptions())
    return distributed_section(facts), facts


def add_distributed(report: Report, options: DistOptions | None = None) -> Report:
    """``report`` (an env report) with the distributed section, its findings and ``result["distributed"]``."""
    section, facts = run_distributed(options)
    result = {**report.result, "distributed": facts}
    return Report(report.command, report.findings + section.findings, result, (*report.sections, section))


def distributed_section(facts: Mapping[str, Any]) -> Section:
    title = f"Distributed ({facts.get('backend')}, {facts.get('world_size')} ranks)"
    return Section("distributed", title, headline_distributed(facts), tuple(check_distributed(facts)),
                   tuple(format_lines(facts)))


def format_lines(facts: Mapping[str, Any]) -> list[str]:
    """Per-phase times of rank 0, bandwidth per message size, the parameter checksum per rank."""
    ranks = facts.get("ranks") or {}
    first = ranks.get("0", {}).get("phases", {})
    lines = []
    if first:
        lines.append("phases (rank 0): " + ", ".join(
            f"{name} {'ok' if phase.get('ok') else 'failed'}" + (f" {phase['ms']:.1f} ms" if "ms" in phase else "")
            for name, phase in first.items()))
    rates = first.get("bandwidth", {}).get("gb_per_s", {})
    if rates:
        lines.append("all_reduce bandwidth: " + ", ".join(f"{label} {value:.3g} GB/s" for label, value in rates.items()))
    sums = {name: rank["phases"]["param_check"].get("param_checksum") for name, rank in ranks.items()
            if rank.get("phases", {}).get("param_check")}
    if sums:
        lines.append("param checksum: " + ", ".join(f"rank {name} {digest}" for name, digest in sums.items()))
    return lines
