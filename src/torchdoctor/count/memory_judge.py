"""``count --memory``: collect the step's bytes (and the fit), build ``result.memory``, judge it (pure checks)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torchdoctor.codes import make_finding
from torchdoctor.count.memory import MemoryFacts, MemoryPlan, collect_memory
from torchdoctor.count.memory_fit import Fix, find_max_batch, plan_fixes
from torchdoctor.report import Finding
from torchdoctor.units import format_bytes

# "Most of the peak": above this share, batch, checkpointing and autocast are the levers, not the optimizer.
ACTIVATIONS_DOMINATE = 0.5
TOP_FIXES = 3
TOP_MODULES = 3


def collect_memory_result(model: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any], *, plan: MemoryPlan,
                          dtype: Any, device_bytes: int | None, depth: int) -> tuple[dict[str, Any], list[Finding]]:
    """``result.memory`` and its findings; with ``device_bytes`` also the fit and, when it does not fit, fixes."""
    def measure(changed: MemoryPlan) -> MemoryFacts:
        return collect_memory(model, args, kwargs, changed, dtype=dtype)

    facts = measure(plan)
    memory = memory_dict(facts, plan, depth)
    fixes: list[Fix] = []
    if device_bytes is not None:
        max_batch, found = find_max_batch(facts, plan, measure, device_bytes)
        fits = facts.peak_bytes <= device_bytes
        memory["fit"] = {"device_bytes": device_bytes, "max_batch_size": max_batch, "fits": fits}
        if not fits:
            fixes = plan_fixes(facts, plan, measure, device_bytes, (max_batch, found))
            memory["fixes"] = [fix.to_dict() for fix in fixes]
    return memory, check_memory(memory, fixes)


def memory_dict(facts: MemoryFacts, plan: MemoryPlan, depth: int) -> dict[str, Any]:
    """The contract fields (integers in bytes) and the facts behind them."""
    total = facts.activations_bytes
    by_module = [{"name": row.name, "type": row.type, "activations_bytes": row.saved_bytes,
                  "share": round(row.saved_bytes / total, 6) if total else 0.0}
                 for row in facts.modules if row.name and row.saved_bytes and row.name.count(".") < depth]
    return {
        "params_bytes": facts.params_bytes,
        "grads_bytes": facts.grads_bytes,
        "optimizer_bytes": facts.optimizer_bytes,
        "activations_bytes": facts.activations_bytes,
        "peak_bytes": facts.peak_bytes,
        "batch_size": facts.batch_size,
        "by_module": by_module,
        "buffers_bytes": facts.buffers_bytes,
        "peak_phase": facts.peak_phase,
        "phase_peaks": {phase: facts.phase_peaks.get(phase, 0) for phase in ("forward", "backward", "optimizer")},
        "optimizer": plan.optimizer,
        "optimizer_implementation": "fused" if plan.fused else "foreach",
        "amp": plan.amp,
        # autocast keeps the float32 parameters (params_bytes) as the master weights the optimizer updates, and
        # saves a low-precision copy of each weight for backward: counted in activations_bytes, named here.
        "amp_weight_copies_bytes": facts.weight_copies_bytes,
        "method": "a fake-tensor training step (FakeTensorMode, CPU kernels): forward, surrogate loss, backward "
                  "and one torch.optim step after a first step created the optimizer state",
    }


def check_memory(memory: Mapping[str, Any], fixes: Sequence[Fix]) -> list[Finding]:
    """``memory-exceeds-device`` when the peak does not fit ``--fit``; ``activations-dominate`` when saved
    activations are most of the peak."""
    findings = []
    fit = memory.get("fit")
    if fit is not None and not fit["fits"]:
        findings.append(_exceeds(memory, fit, fixes))
    peak, activations = memory["peak_bytes"], memory["activations_bytes"]
    if peak and activations / peak > ACTIVATIONS_DOMINATE:
        top = top_modules(memory["by_module"], TOP_MODULES)
        named = ", ".join(f"{row['name']} {format_bytes(row['activations_bytes'])}" for row in top)
        findings.append(make_finding(
            "activations-dominate",
            f"Saved activations ({format_bytes(activations)}) are {activations / peak:.0%} of the training step's "
            f"peak ({format_bytes(peak)}) at batch {memory['batch_size']}" + (f"; most in {named}." if named else "."),
            details={"activations_bytes": activations, "peak_bytes": peak, "share": round(activations / peak, 6),
                     "top_modules": [row["name"] for row in top]},
        ))
    return findings


def top_modules(by_module: Sequence[Mapping[str, Any]], limit: int) -> list[Mapping[str, Any]]:
    """The rows that save the most among those without a child row (``blocks.0`` rather than ``blocks``, which
    only sums them)."""
    names = [row["name"] for row in by_module]
    leaves = [row for row in by_module if not any(name.startswith(row["name"] + ".") for name in names)]
    return sorted(leaves, key=lambda row: -row["activations_bytes"])[:limit]


def _exceeds(memory: Mapping[str, Any], fit: Mapping[str, Any], fixes: Sequence[Fix]) -> Finding:
    peak, device = memory["peak_bytes"], fit["device_bytes"]
    batch = fit["max_batch_size"]
    largest = "" if batch is None else (f"; no batch size fits (model states alone: "
                                        f"{format_bytes(_states(memory))})" if batch == 0
                                        else f"; the largest batch that fits is {batch}")
    fix = "; ".join(f"{fix.action}: -{format_bytes(fix.bytes_saved)} -> {format_bytes(fix.peak_bytes)}"
                    f"{' (fits)' if fix.fits else ''}" for fix in fixes[:TOP_FIXES])
    return make_finding(
        "memory-exceeds-device",
        f"The training step's peak ({format_bytes(peak)}, {memory['optimizer']}, batch {memory['batch_size']}) "
        f"does not fit the device ({format_bytes(device)}){largest}.",
        fix=fix or "",
        details={"peak_bytes": peak, "device_bytes": device, "max_batch_size": batch,
                 "fixes": [fix.to_dict() for fix in fixes]},
    )


def _states(memory: Mapping[str, Any]) -> int:
    return memory["params_bytes"] + memory["grads_bytes"] + memory["optimizer_bytes"]
