"""``watch`` under torchrun: rank 0 merges every rank's watch report into one.

The exchange of files between ranks is nan-hunt's (``nan/ranks.py``); this module only says how watch
reports merge. Under DDP every rank trains the same weights, so a finding seen on some ranks only points at
what differs between ranks: their data or their code path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from torchdoctor.codes import section_of
from torchdoctor.learning.api import COMMAND, SECTIONS
from torchdoctor.nan.ranks import check_ranks, earliest_nonfinite, rank_findings
from torchdoctor.report import Finding, Report, Section, Severity

__all__ = ["merge_watch_reports"]

# ids whose message says the same thing on every rank where they occur (a NaN, the script's ending): merged
# by their text, as nan-hunt merges them; watch's own findings carry each rank's numbers: merged by location
_RUN_SECTION = "run"
_FAILED = "script-failed"
# what a collective raises when the rank at the other end went away: gloo's socket errors, NCCL's watchdog,
# the rendezvous store; ``DistBackendError:`` last, as the vaguest (it also names a peer's own NCCL bug). Not
# "Broken pipe": a script writing to a closed pipe of its own says that too.
_LOST_PEER = ("Connection closed by peer", "Connection reset by peer", "remote process exited",
              "DistNetworkError:", "DistBackendError:")


def merge_watch_reports(reports: Mapping[int, Mapping[str, Any] | None]) -> Report:
    """One watch report from every rank's report dict (rank -> dict, None where a rank's file never came)."""
    present = {rank: reports[rank] for rank in sorted(reports) if reports[rank] is not None}
    under_ddp = any((report["result"].get("ddp") or {}).get("models") for report in present.values())
    findings = fold_knock_ons(by_rank([f for rank, report in present.items() for f in rank_findings(rank, report)],
                                      list(present), under_ddp=under_ddp))
    findings += check_ranks(reports, command=COMMAND)
    result = dict(present[min(present)]["result"]) if present else {}  # the series and script facts: rank 0's
    result["ranks"] = [rank_summary(rank, reports[rank]) for rank in sorted(reports)]
    result["world_size"] = len(reports)
    result["first_nonfinite"] = earliest_nonfinite(present)
    result["knock_on_ranks"] = next((f.details["knock_on_ranks"] for f in findings if "knock_on_ranks" in f.details),
                                    [])
    return Report(COMMAND, tuple(findings), result, merged_sections(tuple(findings), result))


def by_rank(findings: Sequence[Finding], ranks: Sequence[int], *, under_ddp: bool) -> list[Finding]:
    """One finding per problem, saying on which ranks it was seen (the lowest rank's numbers are shown)."""
    groups: dict[tuple[str, str | None], list[Finding]] = {}
    for finding in findings:
        text = finding.message.split(": ", 1)[-1]
        same_text = section_of(finding.id, COMMAND) == _RUN_SECTION
        groups.setdefault((finding.id, text if same_text else finding.location), []).append(finding)
    return [_labelled(group, ranks, under_ddp=under_ddp) for group in groups.values()]


def _labelled(group: list[Finding], ranks: Sequence[int], *, under_ddp: bool) -> Finding:
    first = group[0]
    seen = [f.details["rank"] for f in group]
    quiet = [rank for rank in ranks if rank not in seen]
    text = first.message.split(": ", 1)[-1]
    details = {**first.details, "ranks": seen, "quiet_ranks": quiet}
    if not quiet:
        return replace(first, message=f"{_ranks(seen)}: {text}", details=details)
    message = f"{_ranks(seen)} only: {text}"
    if under_ddp and section_of(first.id, COMMAND) != _RUN_SECTION:
        message += (f" DDP keeps the weights the same on every rank and {_ranks(quiet)} did not show this, so the "
                    f"data (or the code path) of {_ranks(seen)} differ from the others'.")
    return replace(first, message=message, details=details)


def fold_knock_ons(findings: Sequence[Finding]) -> list[Finding]:
    """A rank whose script failed only because another rank's crashed (a collective lost its peer) is named inside
    the crash's finding, as its consequence, instead of as a second error of its own."""
    failures = [f for f in findings if f.id == _FAILED]
    causes = [f for f in failures if not lost_peer(f)]
    echoes = [f for f in failures if lost_peer(f)]
    if not causes or not echoes:
        return list(findings)
    cause, echo_ranks = causes[0], [rank for echo in echoes for rank in echo.details["ranks"]]
    said = ", ".join(sorted({_peer_error(echo) for echo in echoes}))
    their = "its" if len(echo_ranks) == 1 else "their"
    message = (f"{cause.message.rstrip('.')}. {_ranks(echo_ranks).capitalize()} then failed as a knock-on of this "
               f"crash: {their} collectives lost their peer ({said}).")
    knock_ons = [{"rank": rank, "exc_type": echo.details.get("exc_type"), "message": echo.details.get("message"),
                  "location": echo.location} for echo in echoes for rank in echo.details["ranks"]]
    folded = replace(cause, message=message,
                     details={**cause.details, "knock_on_ranks": echo_ranks, "knock_ons": knock_ons})
    return [folded if f is cause else f for f in findings if not any(f is echo for echo in echoes)]


def lost_peer(finding: Finding) -> bool:
    """A ``script-failed`` that says a collective lost its peer (gloo's, NCCL's or the store's words for it)."""
    text = f"{finding.details.get('exc_type', '')}: {finding.details.get('message', finding.message)}"
    return any(marker in text for marker in _LOST_PEER)


def _peer_error(finding: Finding) -> str:
    text = f"{finding.details.get('exc_type', '')}: {finding.details.get('message', '')}"
    return f"{finding.details.get('exc_type', 'error')}: " + next(m for m in _LOST_PEER if m in text).strip(": ")


def _ranks(ranks: Sequence[int]) -> str:
    return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(map(str, ranks))


def rank_summary(rank: int, report: Mapping[str, Any] | None) -> dict[str, Any]:
    """What one rank saw: its run, its findings' ids and its own loss curve (``result.series`` is rank 0's)."""
    if report is None:
        return {"rank": rank, "reported": False}
    result = report["result"]
    series = result.get("series") or {}
    return {
        "rank": rank, "reported": True, "status": report.get("status"),
        "steps_watched": result.get("steps_watched"), "exit_code": result.get("exit_code"),
        "script_failed": result.get("script_failed"), "first_nonfinite": result.get("first_nonfinite"),
        "findings": [f["id"] for f in report.get("findings", ())],
        "step": series.get("step", []), "loss": series.get("loss", []), "ddp": result.get("ddp"),
    }


# --- the human report's sections ---------------------------------------------------------------------------


def merged_sections(findings: tuple[Finding, ...], result: Mapping[str, Any]) -> tuple[Section, ...]:
    placed = {name: tuple(f for f in findings if section_of(f.id, COMMAND) == name) for name, _ in SECTIONS}
    bugs = len(placed["bugs"])
    headlines = {
        "run": _run_headline(result),
        "bugs": f"{bugs} program bug(s) found" if bugs else "no program bug found",
        "dynamics": _dynamics_headline(placed["dynamics"], result),
    }
    return tuple(Section(name, title, headlines[name], placed[name]) for name, title in SECTIONS)


def _run_headline(result: Mapping[str, Any]) -> str:
    ranks = result["ranks"]
    first = result.get("first_nonfinite")
    knock_ons = set(result.get("knock_on_ranks") or ())
    failed = [r["rank"] for r in ranks if r.get("script_failed") and r["rank"] not in knock_ons]
    text = (f"rank {first['rank']} hit the first {first['kind']} at step {first['step']} ({first['phase']})"
            if first else f"no non-finite value on any of {len(ranks)} ranks")
    their = "its" if len(knock_ons) == 1 else "their"
    echo = f" ({_ranks(sorted(knock_ons))} then lost {their} peer)" if knock_ons and failed else ""
    return text + (f"; the script failed on {_ranks(failed)}{echo}" if failed else "")


def _dynamics_headline(findings: tuple[Finding, ...], result: Mapping[str, Any]) -> str:
    steps = sorted({r["steps_watched"] for r in result["ranks"] if r.get("reported")})
    counted = f"{steps[0]}" if len(steps) == 1 else f"{steps[0]}-{steps[-1]}"
    unit = "optimizer step(s)" if result.get("step_counting") == "optimizer" else "backward call(s) (no optimizer)"
    problems = sum(1 for f in findings if f.severity is not Severity.INFO)
    verdict = f"{problems} warning(s)" if problems else "no sign of a run that does not learn"
    return f"watched {counted} {unit} on each of {len(result['ranks'])} ranks: {verdict}"
