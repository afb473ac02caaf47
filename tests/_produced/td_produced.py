"""Test-only bookkeeping: which finding ids torchdoctor's own code creates while the test suite runs.

``Finding.__init__`` is wrapped so that each finding that code under ``src/torchdoctor`` builds with
``make_finding`` appends its id to the log file named by ``TORCHDOCTOR_PRODUCED_LOG``. A finding a test
builds itself does not count, nor one rebuilt from a JSON report, and nothing reads test files: an id
counts only when product code judged it. The pytest process patches at conftest import; every Python
subprocess of the run (the CLI, env's collector children, torchrun ranks) patches through
``sitecustomize.py`` in this folder, which conftest puts first on ``PYTHONPATH``.
tests/test_zz_produced.py reads the log at the end of a full run.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
from pathlib import Path

LOG_VARIABLE = "TORCHDOCTOR_PRODUCED_LOG"


def install() -> None:
    """Patch ``torchdoctor.report`` now if imported, else as soon as something imports it."""
    module = sys.modules.get("torchdoctor.report")
    if module is not None:
        patch(module)
    elif not any(isinstance(finder, _PatchOnImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _PatchOnImport())


def patch(report_module) -> None:
    finding = report_module.Finding
    if getattr(finding.__init__, "_records_ids", False):
        return
    package = str(Path(report_module.__file__).resolve().parent) + os.sep
    original = finding.__init__

    def recording_init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if _made_by_product(package):
            record(self.id)

    recording_init._records_ids = True
    finding.__init__ = recording_init


def record(finding_id: str) -> None:
    path = os.environ.get(LOG_VARIABLE)
    if path:
        # one short O_APPEND write per id: concurrent processes never interleave inside a line
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{finding_id}\n".encode())
        finally:
            os.close(fd)


def read_log(path: str | os.PathLike[str]) -> set[str]:
    try:
        return set(Path(path).read_text(encoding="utf-8").split())
    except FileNotFoundError:
        return set()


def _made_by_product(package: str) -> bool:
    """Built by ``make_finding``, called from a file of the torchdoctor package (not a test, not a Finding
    rebuilt from a JSON report, whose id was counted where that report was made)."""
    constructor = sys._getframe(2)
    if constructor.f_code.co_name != "make_finding" or \
            os.path.realpath(constructor.f_code.co_filename) != package + "codes.py":
        return False
    caller = constructor.f_back
    return caller is not None and os.path.realpath(caller.f_code.co_filename).startswith(package)


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself; wraps the real loader of ``torchdoctor.report`` so the module is patched once run."""

    def find_spec(self, name, path, target=None):
        if name != "torchdoctor.report":
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            patch(module)

        spec.loader.exec_module = exec_module
        return spec
