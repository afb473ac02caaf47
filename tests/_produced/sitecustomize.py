"""Test-only (tests/_produced is on PYTHONPATH during the test run only): record the finding ids this
Python process's torchdoctor code creates. See td_produced.py."""

import importlib.util
import os
import sys

if os.environ.get("TORCHDOCTOR_PRODUCED_LOG"):
    import td_produced

    td_produced.install()


def _run_shadowed() -> None:
    """The machine's own sitecustomize (if any), which this file hides, still runs."""
    here = os.path.dirname(os.path.abspath(__file__))
    for entry in sys.path:
        folder = os.path.abspath(entry or os.curdir)
        candidate = os.path.join(folder, "sitecustomize.py")
        if folder != here and os.path.isfile(candidate):
            spec = importlib.util.spec_from_file_location("_shadowed_sitecustomize", candidate)
            spec.loader.exec_module(importlib.util.module_from_spec(spec))
            return


_run_shadowed()
