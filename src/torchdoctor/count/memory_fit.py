"""``count --memory --fit SIZE``: the device's size, the largest batch that fits, and the fixes ranked by bytes.

Every figure is computed: the batch sizes, bf16 autocast, a fused optimizer and activation checkpointing (of
the modules chosen from the measured per-module activations) by running the fake training step again with
that change (``measure``); an 8-bit optimizer and sharding from the measured optimizer and model states.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from torchdoctor.count.memory import PHASES, MemoryFacts, MemoryPlan
from torchdoctor.errors import UsageError, UserCodeError
from torchdoctor.units import format_bytes

Measure = Callable[[MemoryPlan], MemoryFacts]
UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
         "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*")
# bitsandbytes' 8-bit optimizers keep one byte per state value and one float32 absmax per block of 256.
EIGHT_BIT_BLOCK = 256
SHARDS = tuple(2**power for power in range(1, 11))
MAX_BATCH_TRIES = 24
MAX_BATCH = 2**20


@dataclass(frozen=True)
class Fix:
    """One way to make the step fit, with the peak it leads to."""

    kind: str
    """checkpointing, bf16-autocast, smaller-batch, fused-optimizer, 8bit-optimizer, sharding."""
    action: str
    bytes_saved: int
    peak_bytes: int
    fits: bool
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "action": self.action, "bytes_saved": self.bytes_saved,
                "peak_bytes": self.peak_bytes, "fits": self.fits, **self.details}


def parse_size(text: str, *, cuda_total: Callable[[], int | None] | None = None) -> int:
    """``24GiB``, ``80GB``, ``1.5 TiB``, a plain number of bytes, or ``cuda`` (the current device's total)."""
    if text.strip().lower() == "cuda":
        total = (cuda_total or _cuda_total)()
        if total is None:
            raise UsageError("--fit cuda needs a CUDA device, and torch sees none",
                             hint="give the device's size instead, e.g. --fit 80GB or --fit 24GiB")
        return total
    match = SIZE.fullmatch(text)
    unit = match and match[2].upper()
    if not match or unit not in UNITS:
        raise UsageError(f"--fit does not understand {text!r}", hint="a size like 24GiB, 80GB or 16000000000, or cuda")
    size = int(float(match[1]) * UNITS[unit])
    if size <= 0:
        raise UsageError(f"--fit needs a positive size, got {text!r}")
    return size


def _cuda_total() -> int | None:
    import torch

    if not torch.cuda.is_available():
        return None
    return int(torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory)


def find_max_batch(facts: MemoryFacts, plan: MemoryPlan, measure: Measure,
                   device_bytes: int) -> tuple[int | None, MemoryFacts | None]:
    """The largest batch whose peak fits (0: not even 1; at most ``MAX_BATCH``), and its facts; None when there
    is no batch dimension or no phase's peak grows with the batch.

    Each phase's peak is close to affine in the batch, so two measured points give a guess that the fake step
    then checks; a bisection between the largest batch known to fit and the smallest known not to settles it.
    """
    if facts.batch_size is None:
        return None, None
    known = {facts.batch_size: facts}
    other = facts.batch_size // 2 if facts.batch_size > 1 else 2
    known[other] = measure(replace(plan, batch_size=other))
    guess = _affine_guess(known[facts.batch_size], known[other], device_bytes)
    if guess is None:
        return None, None
    for batch in (guess, guess + 1) if guess else (1,):
        if batch not in known:
            known[batch] = measure(replace(plan, batch_size=batch))
    for _ in range(MAX_BATCH_TRIES):
        low = max((b for b, f in known.items() if f.peak_bytes <= device_bytes), default=0)
        high = min((b for b, f in known.items() if f.peak_bytes > device_bytes), default=None)
        if (high is not None and high - low <= 1) or (high is None and low >= MAX_BATCH):
            break
        following = 2 * max(low, 1) if high is None else (low + high) // 2
        known[following] = measure(replace(plan, batch_size=following))
    return low, known.get(low)


def _affine_guess(first: MemoryFacts, second: MemoryFacts, device_bytes: int) -> int | None:
    """The largest batch at which every phase's peak, a line through the two measured points, fits."""
    limits = []
    for phase in PHASES:
        low, high = sorted((f.batch_size, f.phase_peaks.get(phase, 0)) for f in (first, second))
        slope = (high[1] - low[1]) / (high[0] - low[0])
        base = low[1] - slope * low[0]
        if slope > 0:
            limits.append(max(0, int((device_bytes - base) // slope)))
        elif base > device_bytes:
            limits.append(0)
    return min(MAX_BATCH, *limits) if limits else None


def plan_fixes(facts: MemoryFacts, plan: MemoryPlan, measure: Measure, device_bytes: int,
               smaller: tuple[int | None, MemoryFacts | None]) -> list[Fix]:
    """Every fix that lowers the peak, each with its computed peak, ranked by bytes saved."""
    candidates = [_smaller_batch(facts, device_bytes, smaller), _eight_bit(facts, plan, device_bytes),
                  _sharding(facts, device_bytes)]
    # Checkpointing and autocast shrink what forward and backward hold; when the optimizer step is the peak they
    # cannot lower it (its parameters, gradients and state stay float32), so they are not simulated.
    activations_matter = facts.peak_phase != "optimizer"
    if activations_matter:
        candidates.append(_checkpointing(facts, plan, measure, device_bytes))
    if plan.amp is None and activations_matter:
        candidates.append(_measured("bf16-autocast", "train under torch.autocast(dtype=torch.bfloat16)",
                                    facts, measure(replace(plan, amp="bfloat16")), device_bytes))
    if not plan.fused:
        try:
            fused = measure(replace(plan, fused=True))
        except UserCodeError:  # an older torch without a fused kernel for this optimizer on the CPU
            fused = None
        if fused is not None:
            candidates.append(_measured("fused-optimizer", f"use the fused {plan.optimizer} (fused=True)",
                                        facts, fused, device_bytes))
    fixes = [fix for fix in candidates if fix is not None and fix.bytes_saved > 0]
    return sorted(fixes, key=lambda fix: -fix.bytes_saved)


def _fix(kind: str, action: str, facts: MemoryFacts, peak: int, device_bytes: int, **details: Any) -> Fix:
    return Fix(kind, action, facts.peak_bytes - peak, peak, peak <= device_bytes, details)


def _measured(kind: str, action: str, facts: MemoryFacts, changed: MemoryFacts, device_bytes: int) -> Fix:
    return _fix(kind, action, facts, changed.peak_bytes, device_bytes)


def _checkpointing(facts: MemoryFacts, plan: MemoryPlan, measure: Measure, device_bytes: int) -> Fix | None:
    """Checkpoint every module at the depth where it saves the most, and measure that step.

    The depth is chosen from the measured per-module bytes: each checkpointed module keeps only its inputs,
    and backward re-creates one module's activations at a time (the largest is added back).
    """
    best: tuple[int, list[Any]] = (0, [])
    for depth in sorted({row.name.count(".") + 1 for row in facts.modules if row.name}):
        rows = [row for row in facts.modules if row.name and row.name.count(".") + 1 == depth
                and row.called and row.saved_bytes > row.input_bytes]
        if not rows:
            continue
        gain = sum(row.saved_bytes - row.input_bytes for row in rows) - max(row.saved_bytes for row in rows)
        if gain > best[0]:
            best = (gain, sorted(rows, key=lambda row: -row.saved_bytes))
    gain, rows = best
    if gain <= 0:
        return None
    names = [row.name for row in rows]
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    checkpointed = measure(replace(plan, checkpoint=tuple(names)))
    return _fix("checkpointing", f"activation checkpointing (torch.utils.checkpoint) of {len(names)} module(s): "
                f"{shown}", facts, checkpointed.peak_bytes, device_bytes, modules=names)


def _smaller_batch(facts: MemoryFacts, device_bytes: int,
                   smaller: tuple[int | None, MemoryFacts | None]) -> Fix | None:
    batch, found = smaller
    if not batch or found is None or facts.batch_size is None or batch >= facts.batch_size:
        return None
    return _fix("smaller-batch", f"batch size {batch} (the largest that fits; gradient accumulation over "
                f"{math.ceil(facts.batch_size / batch)} steps keeps the effective batch)", facts, found.peak_bytes,
                device_bytes, batch_size=batch)


def _eight_bit(facts: MemoryFacts, plan: MemoryPlan, device_bytes: int) -> Fix | None:
    if plan.optimizer == "sgd" or not facts.optimizer_values:
        return None
    float_bytes = facts.optimizer_values * 4
    quantised = facts.optimizer_values + math.ceil(facts.optimizer_values / EIGHT_BIT_BLOCK) * 4
    saved = min(float_bytes, facts.optimizer_bytes) - quantised
    name = {"momentum": "SGD8bit", "adam": "Adam8bit", "adamw": "AdamW8bit"}[plan.optimizer]
    return _fix("8bit-optimizer", f"bitsandbytes.optim.{name} (8-bit optimizer state)", facts,
                facts.peak_bytes - saved, device_bytes)


def _sharding(facts: MemoryFacts, device_bytes: int) -> Fix | None:
    """FSDP (FULL_SHARD) / ZeRO-3 over N GPUs: each keeps 1/N of the parameters, gradients and optimizer state
    through forward and backward, and steps only its shard (so the optimizer step's temporaries shrink too)."""
    states = facts.model_state_bytes
    if states <= 0:
        return None

    def peak(gpus: int) -> int:
        kept = states - math.ceil(states / gpus)
        return max(facts.phase_peaks.get("forward", 0) - kept, facts.phase_peaks.get("backward", 0) - kept,
                   math.ceil(facts.phase_peaks.get("optimizer", 0) / gpus))

    gpus = next((n for n in SHARDS if peak(n) <= device_bytes), 8)
    return _fix("sharding", f"shard model states with FSDP / ZeRO-3 over {gpus} GPUs ({format_bytes(states)} / "
                f"{gpus} each)", facts, peak(gpus), device_bytes, gpus=gpus)


def phase_line(facts: MemoryFacts) -> str:
    return ", ".join(f"{phase} {format_bytes(facts.phase_peaks.get(phase, 0))}" for phase in PHASES)
