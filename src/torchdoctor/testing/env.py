"""The ``torchdoctor_env`` fixture's judgement: run ``torchdoctor env``, and say why the machine is broken."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from torchdoctor.testing.failures import failing, format_failure

__all__ = ["DEFAULT_ENV_CHECKS", "env_verdict"]

# The checks that judge whether a device trains correctly; shm, workers, threads... are not about the device.
DEFAULT_ENV_CHECKS = ("build", "devices", "training")


def env_verdict(checks: Sequence[str], model_spec: str = "", *, rootdir: str | None = None) -> tuple[Any, str | None]:
    """The env report and, when it holds errors, one line for the skip or failure (None when healthy).

    ``model_spec`` (``file.py:factory``, relative to ``rootdir``) is the model env's training step runs.
    """
    from torchdoctor.env.api import run_env
    from torchdoctor.env.base import EnvContext

    context = EnvContext(model_factory=_factory(model_spec, rootdir)) if model_spec else EnvContext()
    report = run_env(list(checks), context=context)
    bad = failing(report.findings)
    return report, (format_failure("torchdoctor env judges this machine broken", bad) if bad else None)


def _factory(spec: str, rootdir: str | None) -> Any:
    from torchdoctor.targets import resolve_target

    where, _, name = spec.rpartition(":")
    if rootdir and where.endswith(".py") and not os.path.isabs(where):
        spec = f"{os.path.join(rootdir, where)}:{name}"
    return lambda: resolve_target(spec)
