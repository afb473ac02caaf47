"""Judge a distributed run: pure functions of the facts ``collect_distributed`` gathered."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torchdoctor.codes import make_finding
from torchdoctor.dist.collect import PHASES
from torchdoctor.report import Finding

Facts = Mapping[str, Any]


def check_distributed(facts: Facts) -> list[Finding]:
    """Every finding of one run, unavailability first; a run that could not launch is judged on that alone."""
    findings = [*_nccl_env(facts)]
    if not all(facts.get("availability", {}).values()):
        return [_unavailable(facts), *findings]
    ranks = facts.get("ranks", {})
    started = [rank for rank in ranks.values() if rank.get("started")]
    if not started:
        return [*findings, _launcher_failed(facts)]
    findings += _init_failed(facts) or _hang(facts) or _step_failed(facts)
    findings += _checksum_failed(ranks) + _diverged(ranks)
    return findings


def _unavailable(facts: Facts) -> Finding:
    backend = facts.get("backend")
    what = "torch.distributed" if not facts["availability"].get("distributed") else f"the {backend} backend"
    return make_finding("distributed-unavailable", f"This torch build has no {what}.",
                        details={"backend": backend, **facts["availability"]})


def _nccl_env(facts: Facts) -> list[Finding]:
    seen = facts.get("nccl_env") or {}
    if not seen:
        return []
    listed = ", ".join(f"{key}={value}" for key, value in seen.items())
    return [make_finding("nccl-env", f"NCCL settings in the environment: {listed}.", details={"nccl_env": dict(seen)})]


def _launcher_failed(facts: Facts) -> Finding:
    launcher = facts.get("launcher", {})
    tail = launcher.get("stderr_tail") or []
    last = f": {tail[-1]}" if tail else ""
    how = "timed out" if launcher.get("timed_out") else f"exited with code {launcher.get('returncode')}"
    return make_finding("distributed-init-failed", f"torchrun {how} before any rank started{last}",
                        details={"environ": facts.get("environ", {}), "launcher": dict(launcher)})


def _init_failed(facts: Facts) -> list[Finding]:
    """Ranks that raised or stalled in init: the rendezvous (address, port, store) did not come together."""
    failed = {name: _stop(rank) for name, rank in facts["ranks"].items() if _stopped_in(rank) == "init"}
    if not failed:
        return []
    name, reason = sorted(failed.items(), key=lambda item: _stop_time(facts["ranks"][item[0]]))[0]
    environ = {n: facts["ranks"][n].get("environ", {}) for n in failed}
    return [make_finding("distributed-init-failed",
                         f"Rank {name} could not join the process group ({facts.get('backend')}): {reason}",
                         location=f"rank {name}: init",
                         details={"ranks": failed, "environ": environ, "parent_environ": facts.get("environ", {})})]


def _hang(facts: Facts) -> list[Finding]:
    """A phase outlived its timeout: name the ranks that never reached the collective the others waited in."""
    ranks = facts["ranks"]
    timed_out = facts.get("launcher", {}).get("timed_out")
    stuck = {n: r for n, r in ranks.items() if r.get("current") and not r.get("error") and (r.get("stalled") or timed_out)}
    if not stuck:
        return []
    culprits = {n: r for n, r in stuck.items() if not r.get("arrived")} or stuck
    where = {n: r["current"] for n, r in stuck.items()}
    named = "; ".join(f"rank {n} stalled in {r['current']}" for n, r in sorted(culprits.items()))
    waiting = sorted(set(stuck) - set(culprits))
    waited = f" (rank {', '.join(waiting)} waited for it there)" if waiting else ""
    return [make_finding("distributed-hang", f"{named[0].upper()}{named[1:]}{waited}.",
                         location=", ".join(f"rank {n}: {r['current']}" for n, r in sorted(culprits.items())),
                         details={"stalled_ranks": sorted(culprits), "waiting_ranks": waiting, "phase_by_rank": where,
                                  "launcher_timed_out": bool(timed_out)})]


def _step_failed(facts: Facts) -> list[Finding]:
    """A collective or the DDP step raised; the first rank to raise is the cause, later ones usually echo it."""
    errors = {n: r["error"] for n, r in facts["ranks"].items() if r.get("error")}
    if not errors:
        return []
    name, error = min(errors.items(), key=lambda item: item[1].get("t", 0))
    return [make_finding("distributed-step-failed",
                         f"Rank {name} failed in {error['phase']}: {error.get('type')}: {error.get('error')}",
                         location=f"rank {name}: {error['phase']}",
                         details={"rank": int(name), "phase": error["phase"], "errors": errors})]


def _checksum_failed(ranks: Facts) -> list[Finding]:
    wrong = {n: {p: dict(r["phases"][p]) for p in ("all_reduce", "broadcast")
                 if r.get("phases", {}).get(p, {}).get("checksum_ok") is False} for n, r in ranks.items()}
    wrong = {n: phases for n, phases in wrong.items() if phases}
    if not wrong:
        return []
    name, phases = sorted(wrong.items())[0]
    phase, got = next(iter(phases.items()))
    return [make_finding("distributed-step-failed",
                         f"Rank {name}: {phase} returned {got['checksum']}, expected {got['expected']}.",
                         location=f"rank {name}: {phase}", details={"rank": int(name), "phase": phase, "wrong": wrong})]


def _diverged(ranks: Facts) -> list[Finding]:
    checks = {n: r["phases"]["param_check"] for n, r in ranks.items() if r.get("phases", {}).get("param_check")}
    digests = {n: c.get("param_checksum") for n, c in checks.items()}
    max_diff = max((c.get("max_abs_diff", 0.0) for c in checks.values()), default=0.0)
    if len(set(digests.values())) <= 1 and max_diff == 0:
        return []
    return [make_finding("ranks-diverged",
                         f"Parameters differ across ranks after the DDP step (largest difference {max_diff:.3g}).",
                         details={"param_checksum": digests, "max_abs_diff": max_diff,
                                  "param_sum": {n: c.get("param_sum") for n, c in checks.items()}})]


def _stopped_in(rank: Facts) -> str | None:
    if rank.get("error"):
        return rank["error"]["phase"]
    return rank.get("current") if rank.get("stalled") else None


def _stop(rank: Facts) -> str:
    if rank.get("error"):
        return f"{rank['error'].get('type')}: {rank['error'].get('error')}"
    return f"no rendezvous within {rank['stalled'].get('timeout_s')} s"


def _stop_time(rank: Facts) -> float:
    return (rank.get("error") or {}).get("t", float("inf"))


def headline_distributed(facts: Facts) -> str:
    """One line (the title names backend and ranks): how far the phases got, and the bandwidth at the largest message."""
    if not all(facts.get("availability", {}).values()):
        return f"{facts.get('backend')} not available in this build"
    ranks = facts.get("ranks", {})
    done = min((sum(1 for p in r.get("phases", {}).values() if p.get("ok")) for r in ranks.values()), default=0)
    head = f"{done}/{len(PHASES)} phases ok on every rank"
    rates = ranks.get("0", {}).get("phases", {}).get("bandwidth", {}).get("gb_per_s", {})
    if rates:
        label, value = list(rates.items())[-1]
        head += f", all_reduce {value:.2f} GB/s at {label}"
    return head
