"""What nan-hunt watches of DistributedDataParallel on each rank: unused parameters, BatchNorm, a weight checksum."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from torchdoctor.codes import make_finding
from torchdoctor.nan.patches import Patches
from torchdoctor.report import Finding

__all__ = ["DdpFacts", "DdpWatch", "check_ddp", "checksums_differ"]

_CHECKSUM_RELATIVE_TOLERANCE = 1e-9  # replicas of one DDP model are bit-identical; leave room for printing only


@dataclass
class DdpFacts:
    """Plain facts about the DDP models a rank's script trained (JSON-safe, written in the rank file)."""

    models: list[str] = field(default_factory=list)
    unused_parameters: list[str] = field(default_factory=list)  # requires_grad, yet no grad at an optimizer step
    unused_step: int | None = None
    batchnorm_layers: list[str] = field(default_factory=list)  # BatchNorm that is not SyncBatchNorm
    checksum_step: int | None = None  # optimizer steps completed when ``checksum`` was taken
    checksum: float | None = None  # sum of every DDP parameter, in float64, after the last optimizer step

    def to_dict(self) -> dict[str, Any]:
        return {
            "models": list(self.models), "unused_parameters": list(self.unused_parameters),
            "unused_step": self.unused_step, "batchnorm_layers": list(self.batchnorm_layers),
            "checksum_step": self.checksum_step, "checksum": self.checksum,
        }


class DdpWatch:
    """Context manager: global module and optimizer hooks that notice DDP models; removed on exit."""

    def __init__(self) -> None:
        self.facts = DdpFacts()
        self._models: dict[int, Any] = {}
        self._patches = Patches()
        self._steps = 0
        self._checksum: tuple[int, Any] | None = None  # (step, a device tensor): read back once, on exit

    def __enter__(self) -> DdpWatch:
        from torch.nn.modules import module as nn_module
        from torch.optim import optimizer as optim

        self._patches.handle(nn_module.register_module_forward_pre_hook(self._forward_pre))
        self._patches.handle(optim.register_optimizer_step_pre_hook(self._step_pre))
        self._patches.handle(optim.register_optimizer_step_post_hook(self._step_post))
        return self

    def __exit__(self, *exc_info: Any) -> bool:
        self._patches.undo()
        if self._checksum is not None:
            self.facts.checksum_step, self.facts.checksum = self._checksum[0], _read_back(self._checksum[1])
        self._checksum = None
        self._models.clear()  # keep only plain facts, never the user's model
        return False

    def _forward_pre(self, module: Any, args: tuple) -> None:
        from torch.nn.parallel import DistributedDataParallel

        if not isinstance(module, DistributedDataParallel) or id(module) in self._models:
            return
        self._models[id(module)] = module
        self.facts.models.append(f"{type(module.module).__module__}.{type(module.module).__qualname__}")
        self.facts.batchnorm_layers.extend(_plain_batchnorms(module.module))

    def _step_pre(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self.facts.unused_parameters:
            return
        unused = [name for model in self._models.values() for name, p in model.module.named_parameters()
                  if p.requires_grad and p.grad is None]
        if unused:
            self.facts.unused_parameters, self.facts.unused_step = unused, self._steps

    def _step_post(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self._steps += 1
        if self._models:
            self._checksum = (self._steps, _checksum(self._models.values()))


def _plain_batchnorms(module: Any) -> list[str]:
    from torch.nn import SyncBatchNorm
    from torch.nn.modules.batchnorm import _BatchNorm

    return [f"{name or '(root)'} ({type(layer).__name__})" for name, layer in module.named_modules()
            if isinstance(layer, _BatchNorm) and not isinstance(layer, SyncBatchNorm)]


def _checksum(models: Any) -> Any:
    """The sum of every parameter in float64, as a tensor on the first parameter's device: computed at every step
    but read back only once, so that watching never makes the host wait for the device during training."""
    import torch

    params = [p for model in models for p in model.module.parameters()]
    if not params:
        return None
    with torch.no_grad():
        device = params[0].device
        return torch.stack([p.detach().double().sum().to(device) for p in params]).sum()


def _read_back(checksum: Any) -> float | None:
    try:
        return None if checksum is None else float(checksum.item())
    except Exception:  # noqa: BLE001 - a device lost with the script's crash: no checksum, not a second failure
        return None


# --- judging one rank's facts (pure) ------------------------------------------------------------------------


def check_ddp(facts: DdpFacts, *, failure_explained_by: str | None = None) -> list[Finding]:
    """Findings from one rank's DDP facts; ``failure_explained_by`` is the KB id of the script's crash, if any."""
    findings = []
    if facts.unused_parameters or failure_explained_by == "ddp-unused-parameters":
        findings.append(_unused_finding(facts, crashed=failure_explained_by == "ddp-unused-parameters"))
    if facts.batchnorm_layers:
        names = ", ".join(facts.batchnorm_layers)
        findings.append(make_finding(
            "syncbn-missing",
            f"BatchNorm layer(s) {names} under DistributedDataParallel normalise with each rank's own batch statistics",
            details={"layers": list(facts.batchnorm_layers)},
        ))
    return findings


def _unused_finding(facts: DdpFacts, *, crashed: bool) -> Finding:
    names = ", ".join(facts.unused_parameters) or "(not seen: the run ended before an optimizer step)"
    ending = "; DDP then raised at the next iteration" if crashed else ""
    message = f"parameters that got no gradient under DistributedDataParallel: {names}{ending}"
    details = {"parameters": list(facts.unused_parameters), "step": facts.unused_step, "crashed": crashed}
    return make_finding("ddp-unused-parameters", message, details=details)


def checksums_differ(first: float | None, second: float | None) -> bool:
    if first is None or second is None:
        return False
    if math.isnan(first) and math.isnan(second):
        return False
    return not math.isclose(first, second, rel_tol=_CHECKSUM_RELATIVE_TOLERANCE, abs_tol=1e-12)
