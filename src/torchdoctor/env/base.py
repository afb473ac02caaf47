"""What every env check returns, and the context (injected side effects) they run in."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from torchdoctor.report import Finding


@dataclass(frozen=True)
class CheckOutcome:
    """Facts gathered (JSON-safe, they become ``result[check name]``), findings, and a headline."""

    facts: Mapping[str, Any]
    findings: list[Finding]
    headline: str


@dataclass
class EnvContext:
    """Side effects of the env checks, injectable so tests pass real alternatives instead of patching.

    ``root`` prefixes every absolute path read (``/proc``, ``/sys``, ``/.dockerenv``) so a test can
    point the checks at a recorded tree.
    """

    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    root: str = "/"
    shm_path: str = "/dev/shm"
    python: str = sys.executable
    worker_timeout_s: float = 60.0
    training_timeout_s: float = 300.0  # first CUDA use may JIT kernels and autotune cuDNN for minutes
    model_factory: Callable[[], Any] | None = None  # the model env's training steps run; None: embedded net
    started_probes: dict[str, Any] = field(default_factory=dict)

    def path(self, absolute: str) -> str:
        """``absolute`` under ``root``."""
        return os.path.join(self.root, absolute.lstrip("/"))

    @cached_property
    def devices(self) -> Mapping[str, Any]:
        """Device facts, gathered once: the build, devices, training and memory checks all read them."""
        from torchdoctor.env.devices import collect_devices

        return collect_devices(self.environ, self.path)


@dataclass(frozen=True)
class EnvCheck:
    """A named, selectable env check."""

    name: str
    title: str
    description: str
    run: Callable[[EnvContext], CheckOutcome]
    # started before every other check so its subprocess overlaps with them (see api.run_env)
    start: Callable[[EnvContext], None] | None = None
