"""The env check interface (collect → judge → headline) and the context of injected side effects."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from torchdoctor.report import Finding

Facts = Mapping[str, Any]


@dataclass
class EnvContext:
    """Side effects of the env checks, injectable so tests pass real alternatives instead of patching.

    ``root`` prefixes every absolute path read (``/proc``, ``/sys``, ``/.dockerenv``) so a test can
    point the checks at a recorded tree. ``isolate`` collects the torch facts in a child process
    (``_collect_child``) so a segfault or hang in a CUDA library cannot take torchdoctor down;
    a ``model_factory`` (a callable) can only run in this process, so it turns isolation off.
    """

    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    root: str = "/"
    shm_path: str = "/dev/shm"
    python: str = sys.executable
    isolate: bool = True
    worker_timeout_s: float = 60.0
    collector_timeout_s: float = 300.0  # first CUDA use may JIT kernels and autotune cuDNN for minutes
    model_factory: Callable[[], Any] | None = None  # the model env's training steps run; None: embedded net

    def path(self, absolute: str) -> str:
        """``absolute`` under ``root``."""
        return os.path.join(self.root, absolute.lstrip("/"))

    @property
    def in_process(self) -> bool:
        return not self.isolate or self.model_factory is not None

    @cached_property
    def devices(self) -> Facts:
        """Device facts, gathered once: the devices, training and memory collectors all read them."""
        from torchdoctor.env.device_facts import collect_devices

        return collect_devices(self.environ, self.path)


@dataclass(frozen=True)
class EnvCheck:
    """A named, selectable env check: ``collect`` gathers facts, ``judge`` and ``headline`` are pure.

    ``process``: where ``collect`` runs when isolated — ``"collector"`` (the shared child that imports
    torch), ``"dataloader"`` (its own child: it must fork workers before anything initialises CUDA) or
    ``"local"`` (cheap, torch-free, in this process).
    """

    name: str
    title: str
    description: str
    collect: Callable[[EnvContext], dict[str, Any]]
    judge: Callable[[Facts], list[Finding]]
    headline: Callable[[Facts], str]
    process: str = "collector"
