"""``--compare``: thop's and torchinfo's numbers beside ours, and why they differ (skipped when not installed)."""

from __future__ import annotations

import contextlib
import copy
import importlib
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from torchdoctor.errors import UsageError

WHY = {
    "thop": "thop adds MACs in forward hooks of the nn layer types it knows (Conv, Linear, BatchNorm, "
            "activations, pooling): functional ops, `@`/matmul/einsum, scaled_dot_product_attention and the "
            "QK^T/AV matmuls inside nn.MultiheadAttention have no module and count zero, while some elementwise "
            "layers (BatchNorm, ReLU) count as operations.",
    "torchinfo": "torchinfo estimates MACs per module from its weight size x output size: attention's QK^T/AV "
                 "matmuls, `@`/einsum and functional ops count zero, and modules that use their weights in a "
                 "functional call (e.g. the attention projections of nn.MultiheadAttention) are under- or "
                 "mis-counted.",
}
TOOLS = tuple(WHY)


@dataclass(frozen=True)
class Comparison:
    """One peer tool's numbers for the same model and inputs, or why there are none."""

    tool: str
    available: bool
    macs: int | None
    params: int | None
    note: str
    memory_bytes: int | None = None
    """torchinfo's "Estimated Total Size": input + 2 x every layer's output + parameters (no gradients,
    optimizer state or what autograd really saves), shown beside ``count --memory``'s peak."""

    def to_dict(self, our_macs: int | None) -> dict[str, Any]:
        difference = None
        if self.macs is not None and our_macs:
            difference = round((self.macs - our_macs) / our_macs, 6)
        return {"tool": self.tool, "available": self.available, "macs": self.macs, "params": self.params,
                "macs_difference": difference, "note": self.note, "memory_bytes": self.memory_bytes}


def parse_tools(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"thop,torchinfo"`` (or a list of such) -> the tool names; an unknown one is a usage error."""
    if not value:
        return ()
    parts = [value] if isinstance(value, str) else list(value)
    names = [name.strip().lower() for part in parts for name in part.split(",") if name.strip()]
    unknown = [name for name in names if name not in WHY]
    if unknown:
        raise UsageError(f"--compare does not know {', '.join(unknown)}", hint=f"one of: {', '.join(TOOLS)}")
    return tuple(dict.fromkeys(names))


def collect_comparisons(tools: Sequence[str], model: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any], *,
                        meta: bool, importer: Callable[[str], ModuleType] = importlib.import_module
                        ) -> list[Comparison]:
    """Run each installed tool on a copy of ``model`` (they attach hooks and buffers); note the missing ones."""
    return [_compare(tool, model, args, kwargs, meta=meta, importer=importer) for tool in tools]


def _compare(tool: str, model: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any], *, meta: bool,
             importer: Callable[[str], ModuleType]) -> Comparison:
    try:
        module = importer(tool)
    except ImportError:
        return Comparison(tool, False, None, None,
                          f"{tool} is not installed (pip install 'torchdoctor[compare]'); skipped")
    if meta:
        return Comparison(tool, True, None, None, f"not run with --meta: {tool} needs real tensors")
    try:
        # Peer tools print and warn as they go: keep stdout for the report (one JSON object with --json).
        with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            macs, params, *memory = _RUNNERS[tool](module, copy.deepcopy(model), args, kwargs)
    except Exception as exc:  # a peer tool failing is a fact to show, not a reason to stop
        return Comparison(tool, True, None, None, f"{tool} failed: {type(exc).__name__}: {exc}".splitlines()[0])
    return Comparison(tool, True, int(macs), int(params), WHY[tool], int(memory[0]) if memory else None)


def _run_thop(thop: ModuleType, model: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> tuple[Any, Any]:
    import torch

    model.eval()
    with torch.no_grad():
        return thop.profile(model, inputs=args, verbose=False)


def _run_torchinfo(torchinfo: ModuleType, model: Any, args: tuple[Any, ...],
                   kwargs: Mapping[str, Any]) -> tuple[Any, Any, Any]:
    stats = torchinfo.summary(model, input_data=list(args) or None, verbose=0, mode="eval", **dict(kwargs))
    estimated_total = stats.total_input + stats.total_output_bytes + stats.total_param_bytes
    return stats.total_mult_adds, stats.total_params, estimated_total


_RUNNERS = {"thop": _run_thop, "torchinfo": _run_torchinfo}
