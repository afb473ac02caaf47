"""The integration fixture scripts: their paths, marker lines, and the scripts loaded as modules."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

SCRIPTS = Path(__file__).resolve().parents[2] / "fixtures" / "integration_scripts"
PRODUCER = "# <-- producer"
USER_CALL = "# <-- the user's call"


def marker_line(name: str, marker: str) -> int:
    lines = (SCRIPTS / name).read_text().splitlines()
    return next(number for number, text in enumerate(lines, start=1) if marker in text)


def load_script(name: str) -> ModuleType:
    """Import a fixture script under a private name (its ``main()`` does not run)."""
    spec = importlib.util.spec_from_file_location(f"_td_fixture_{Path(name).stem}", SCRIPTS / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def hunt(name: str, *args: str):
    """``torchdoctor nan-hunt SCRIPT ARGS`` in this process (the CLI's own runner): its Report."""
    from torchdoctor.nan.runner import run_script

    return run_script(SCRIPTS / name, args)


def watch(name: str, *args: str):
    """``torchdoctor watch SCRIPT ARGS`` in this process (the CLI's own runner): its Report."""
    from torchdoctor.learning.runner import run_watch_script

    return run_watch_script(SCRIPTS / name, args)


def source_of(report) -> dict:
    first = report.result["first_nonfinite"]
    assert first is not None, [f.message for f in report.findings]
    return first["source"]
