"""nan-hunt (and watch) under torchrun: each rank writes its report to a shared folder; rank 0 merges them.

Files, not ``torch.distributed``: the script may never have initialised a process group, or destroyed
it, or a rank may have crashed — a file written after the run survives all three.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torchdoctor.codes import make_finding
from torchdoctor.nan.ddp import checksums_differ
from torchdoctor.report import Finding, Report, Section, Severity

__all__ = ["RankContext", "check_ranks", "earliest_nonfinite", "gather_ranks", "merge_reports", "rank_context",
           "rank_findings", "release_ranks"]

WAIT_SECONDS = 30.0  # how long rank 0 waits for the other ranks' files once its own run is over
_POLL_SECONDS = 0.05


@dataclass(frozen=True)
class RankContext:
    """This process's place in a torchrun job and the folder the ranks share."""

    rank: int
    world_size: int
    folder: Path

    def report_path(self, rank: int) -> Path:
        return self.folder / f"rank-{rank}.json"

    def waiting_path(self, rank: int) -> Path:
        return self.folder / f"waiting-{rank}"

    def seen_path(self, rank: int) -> Path:
        return self.folder / f"seen-{rank}"

    @property
    def merged_path(self) -> Path:
        return self.folder / "merged"


def rank_context(environ: Mapping[str, str] = os.environ, temp_dir: str | None = None, *,
                 command: str = "nan-hunt") -> RankContext | None:
    """The rank context when torchrun (or a launcher setting RANK, WORLD_SIZE, LOCAL_RANK) started us, else None.

    ``command`` names the shared folder, so two commands of one job never read each other's files.
    """
    try:
        rank, world_size = int(environ["RANK"]), int(environ["WORLD_SIZE"])
        int(environ["LOCAL_RANK"])
    except (KeyError, ValueError):
        return None
    if world_size < 2 or not 0 <= rank < world_size:
        return None
    job = "-".join(environ.get(key, "") for key in ("TORCHELASTIC_RUN_ID", "MASTER_ADDR", "MASTER_PORT",
                                                    "TORCHELASTIC_RESTART_COUNT"))
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in job)
    return RankContext(rank, world_size, Path(temp_dir or tempfile.gettempdir()) / f"torchdoctor-{command}-{safe}")


def gather_ranks(context: RankContext, report: Report, *,
                 merge: Callable[[Mapping[int, Mapping[str, Any] | None]], Report] | None = None,
                 script_exit_code: int | None = None) -> tuple[Report | None, int]:
    """Rank 0: (the merged report, its exit code). Another rank: (None, its exit code) once rank 0 has merged.

    A rank other than 0 exits 0 unless its script failed: the verdict is rank 0's to give. ``merge`` makes the
    one report (default: nan-hunt's); ``script_exit_code`` is what the rank's script exited with (default:
    nan-hunt's ``result.script.exit_code``).
    """
    if context.rank != 0:
        if script_exit_code is None:
            script_exit_code = (report.result.get("script") or {}).get("exit_code")
        exit_code = script_exit_code or 0
        write_rank_report(context, report)
        if exit_code:
            _close_process_group()  # ranks blocked in a collective with us get an error now, not at our exit
            wait_for_merge(context)
        return None, exit_code
    others = collect_rank_reports(context)
    merged = (merge or merge_reports)({0: report.to_dict(), **others})
    return merged, merged.exit_code()


# --- exchanging files ---------------------------------------------------------------------------------------


def write_rank_report(context: RankContext, report: Report) -> None:
    """This rank's report, written to a temp name and renamed so a reader never sees half a file."""
    from torchdoctor.render.json import render_json

    context.folder.mkdir(parents=True, exist_ok=True)
    target = context.report_path(context.rank)
    temp = target.with_suffix(".tmp")
    temp.write_text(render_json(report), encoding="utf-8")
    os.replace(temp, target)


def collect_rank_reports(context: RankContext, *, wait: float = WAIT_SECONDS,
                         clock: Callable[[], float] = time.monotonic,
                         sleep: Callable[[float], None] = time.sleep) -> dict[int, dict[str, Any] | None]:
    """Every other rank's report dict, waiting up to ``wait`` seconds; None for a rank whose file never came."""
    deadline = clock() + wait
    found: dict[int, dict[str, Any] | None] = {}
    missing = [r for r in range(context.world_size) if r != context.rank]
    while True:
        for rank in list(missing):
            with contextlib.suppress(OSError, ValueError):
                found[rank] = json.loads(context.report_path(rank).read_text(encoding="utf-8"))
                missing.remove(rank)
        if not missing or clock() >= deadline:
            return {**found, **dict.fromkeys(missing)}
        sleep(_POLL_SECONDS)


def _close_process_group() -> None:
    import sys

    dist = sys.modules.get("torch.distributed")
    with contextlib.suppress(Exception):
        if dist is not None and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def wait_for_merge(context: RankContext, *, wait: float = WAIT_SECONDS * 2,
                   clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
    """A rank about to exit non-zero waits for rank 0 to merge first.

    Why: torchrun stops every rank as soon as one exits non-zero, which would kill rank 0 mid-merge.
    """
    context.waiting_path(context.rank).touch()
    deadline = clock() + wait
    while not context.merged_path.exists() and clock() < deadline:
        sleep(_POLL_SECONDS)
    with contextlib.suppress(OSError):
        context.seen_path(context.rank).touch()


def release_ranks(context: RankContext, *, wait: float = 10.0, clock: Callable[[], float] = time.monotonic,
                  sleep: Callable[[float], None] = time.sleep) -> None:
    """Rank 0, report written: let the others exit, then remove the shared folder once they saw the signal."""
    context.folder.mkdir(parents=True, exist_ok=True)
    context.merged_path.touch()
    deadline = clock() + wait
    waiting = [r for r in range(1, context.world_size) if context.waiting_path(r).exists()]  # only failed ranks wait
    while not all(context.seen_path(r).exists() for r in waiting) and clock() < deadline:
        sleep(_POLL_SECONDS)
    shutil.rmtree(context.folder, ignore_errors=True)


# --- merging (pure) -----------------------------------------------------------------------------------------


def merge_reports(reports: Mapping[int, Mapping[str, Any] | None]) -> Report:
    """One report from every rank's report dict (rank -> dict, None where a rank's file never came)."""
    present = {rank: reports[rank] for rank in sorted(reports) if reports[rank] is not None}
    stopped = [rank for rank, report in present.items()
               if report.get("result", {}).get("stopped") == "first-nonfinite"]
    findings = _deduplicated([_as_consequence(f, stopped) for rank, report in present.items()
                              for f in rank_findings(rank, report)])
    findings += check_ranks(reports)
    result = dict(present[min(present)]["result"]) if present else {}
    result["ranks"] = [_rank_summary(rank, reports[rank]) for rank in sorted(reports)]
    result["first_nonfinite"] = earliest_nonfinite(present)
    result["world_size"] = len(reports)
    headline = _headline(result["first_nonfinite"], len(reports))
    return Report("nan-hunt", tuple(findings), result, (Section("nan-hunt", "NaN hunt", headline, tuple(findings)),))


def rank_findings(rank: int, report: Mapping[str, Any]) -> list[Finding]:
    """A rank's findings from its report dict, the message prefixed with ``rank N: `` and ``details.rank`` set."""
    return [
        Finding(id=f["id"], code=f["code"], severity=Severity(f["severity"]), message=f"rank {rank}: {f['message']}",
                fix=f.get("fix"), location=f.get("location"), details={**(f.get("details") or {}), "rank": rank})
        for f in report.get("findings", ())
    ]


def _as_consequence(finding: Finding, stopped: list[int]) -> Finding:
    """A rank whose script died because another rank stopped at its NaN (a collective lost its peer) is an
    echo of that rank's finding, not a second problem: say so and keep it as info."""
    from dataclasses import replace

    others = [rank for rank in stopped if rank != finding.details.get("rank")]
    if finding.id != "script-failed" or not others:
        return finding
    cause = f"rank {others[0]} stopped at its first non-finite value, so this rank's collectives lost their peer"
    return replace(finding, severity=Severity.INFO, message=f"{finding.message} ({cause})",
                   details={**finding.details, "consequence_of_rank": others[0]})


def _deduplicated(findings: list[Finding]) -> list[Finding]:
    """One finding per (id, message without the rank): the same problem on every rank is said once."""
    kept: dict[tuple[str, str], Finding] = {}
    for finding in findings:
        key = (finding.id, finding.message.split(": ", 1)[-1])
        if key not in kept:
            kept[key] = finding
        else:
            ranks = kept[key].details.get("ranks", [kept[key].details["rank"]])
            kept[key] = _with_ranks(kept[key], [*ranks, finding.details["rank"]])
    return list(kept.values())


def _with_ranks(finding: Finding, ranks: list[int]) -> Finding:
    from dataclasses import replace

    text = finding.message.split(": ", 1)[-1]
    label = "ranks " + ", ".join(map(str, ranks))
    return replace(finding, message=f"{label}: {text}", details={**finding.details, "ranks": ranks})


def check_ranks(reports: Mapping[int, Mapping[str, Any] | None], command: str = "nan-hunt") -> list[Finding]:
    """Across ranks: a rank without a report (``distributed-hang``), DDP weights that differ (``ranks-diverged``)."""
    findings = []
    silent = [rank for rank, report in reports.items() if report is None]
    if silent:
        findings.append(make_finding(
            "distributed-hang", f"rank(s) {', '.join(map(str, silent))} wrote no {command} report within "
            f"{WAIT_SECONDS:.0f} s of rank 0's end", severity=Severity.WARNING, details={"ranks": silent}))
    sums = {rank: (r["result"].get("ddp") or {}) for rank, r in reports.items() if r is not None}
    steps = {s.get("checksum_step") for s in sums.values() if s.get("checksum") is not None}
    unused = any(s.get("unused_parameters") for s in sums.values())  # its unreduced grads differ anyway
    if len(steps) == 1 and not unused:
        first_rank = min(sums)
        differ = [r for r in sums if checksums_differ(sums[first_rank].get("checksum"), sums[r].get("checksum"))]
        if differ:
            findings.append(make_finding(
                "ranks-diverged", f"DDP parameters of rank(s) {', '.join(map(str, differ))} differ from rank "
                f"{first_rank}'s after step {steps.pop()}",
                details={"checksums": {str(r): s.get("checksum") for r, s in sums.items()}}))
    return findings


def _rank_summary(rank: int, report: Mapping[str, Any] | None) -> dict[str, Any]:
    if report is None:
        return {"rank": rank, "reported": False}
    result = report["result"]
    return {
        "rank": rank, "reported": True, "status": report.get("status"), "steps": result.get("steps"),
        "stopped": result.get("stopped"), "first_nonfinite": result.get("first_nonfinite"),
        "script": result.get("script"), "ddp": result.get("ddp"),
    }


def earliest_nonfinite(present: Mapping[int, Mapping[str, Any]]) -> dict[str, Any] | None:
    """The first NaN/inf of all ranks (earliest step, then lowest rank), with its ``rank``; None when none had one."""
    events = [(r["result"]["first_nonfinite"]["step"], rank, r["result"]["first_nonfinite"])
              for rank, r in present.items() if r["result"].get("first_nonfinite")]
    if not events:
        return None
    step, rank, event = min(events, key=lambda e: (e[0], e[1]))
    return {**event, "rank": rank}


def _headline(first: Mapping[str, Any] | None, world_size: int) -> str:
    if first is None:
        return f"no non-finite value on any of {world_size} ranks"
    return f"rank {first['rank']} hit the first {first['kind']} at step {first['step']} ({first['phase']})"
