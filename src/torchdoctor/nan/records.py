"""Plain records nan-hunt keeps: one recorded root-module call, a located producer, the first non-finite event."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

PHASES = ("input", "forward", "loss", "backward", "optimizer")


@dataclass
class RootCall:
    """One outermost module call, kept so it can be replayed exactly (same inputs, RNG, grad and autocast)."""

    module: Any
    step: int
    rng: dict[str, Any]
    grad_enabled: bool
    inference: bool
    autocast: list[tuple[str, bool, Any]]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    out_grads: list[Any] = field(default_factory=list)  # dL/d(output leaf i), filled by tensor hooks in backward
    hooks: list[Any] = field(default_factory=list)
    output_storages: frozenset[int] = frozenset()
    site: tuple[str, int] | None = None  # the user's line that called the model
    # (sum of a submodule's output, that submodule), in the order they finished: children before their parent
    seen_outputs: list[tuple[Any, Any]] = field(default_factory=list)
    last_output: tuple[Any, int] | None = None  # (weak reference to the last output summed, its version then)

    def new_output(self, tensor: Any) -> bool:
        """False for the tensor summed last, unchanged since (a Sequential returns its last child's output)."""
        last = self.last_output
        if last is not None and last[0]() is tensor and last[1] == tensor._version:
            return False
        self.last_output = (weakref.ref(tensor), tensor._version)
        return True

    def capture_grad(self, index: int, grad: Any) -> None:
        self.out_grads[index] = grad

    def release(self) -> None:
        """Drop the tensor hooks on the outputs so nothing of ours outlives the hunt."""
        for handle in self.hooks:
            handle.remove()
        self.hooks.clear()
        self.seen_outputs.clear()
        self.last_output = None


@dataclass(frozen=True)
class Producer:
    """The op that turned finite values into NaN/inf: aten name, module, user line, output dtype."""

    kind: str
    op: str | None
    module: str | None
    source: dict[str, Any] | None
    dtype: str | None
    overflow: bool = False  # an inf in float16/bfloat16 whose exact value exceeded the dtype's max


@dataclass(frozen=True)
class NonFinite:
    """The first non-finite value of a run, in the shape of the contract's ``first_nonfinite``."""

    kind: str
    phase: str
    step: int
    module: str | None = None
    op: str | None = None
    source: dict[str, Any] | None = None
    dtype: str | None = None
    param: str | None = None
    model: str | None = None
    no_grad: bool = False  # the forward ran under no_grad / inference_mode: logging, not training
    overflow: bool = False
    sample_index: int | None = None
    sample_indices: tuple[int, ...] = ()
    note: str | None = None  # why localisation fell short, when it did
    replay: str | None = None  # "missed": the cheap watch saw it, the exact replay did not reproduce it
    # (optimizer class, step() calls before this event) per optimizer, in the order they first stepped; with
    # more than one (a GAN's generator and discriminator) ``step`` counts the calls of all of them
    optimizer_steps: tuple[tuple[str, int], ...] = ()

    @classmethod
    def from_producer(cls, producer: Producer, phase: str, step: int, **extra: Any) -> NonFinite:
        return cls(
            kind=producer.kind, phase=phase, step=step, module=producer.module, op=producer.op,
            source=producer.source, dtype=producer.dtype, overflow=producer.overflow, **extra,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "phase": self.phase,
            "step": self.step,
            "module": self.module,
            "op": self.op,
            "source": dict(self.source) if self.source else None,
            "dtype": self.dtype,
            "param": self.param,
            "model": self.model,
            "no_grad": self.no_grad,
            "overflow": self.overflow,
            "sample_index": self.sample_index,
            "sample_indices": list(self.sample_indices),
            "note": self.note,
            "replay": self.replay,
            "optimizer_steps": [{"optimizer": name, "steps": steps} for name, steps in self.optimizer_steps],
        }


class HuntStopped(BaseException):
    """Ends the user's training from inside a hook; BaseException so ``except Exception`` lets it through.

    ``reason`` is "first-nonfinite" (the first NaN/inf was found and localised) or "max-steps".
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
