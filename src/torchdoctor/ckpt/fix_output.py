"""What ``ckpt fix`` does around its output for every input kind: refuse a bad target, make the rename durable,
build the report.

Shared by fix.py (files) and dcp.py (directories, consolidated first), which would otherwise import each other.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torchdoctor.errors import UsageError
from torchdoctor.report import Report

COMMAND = "ckpt fix"


def check_target(target: Path, force: bool) -> None:
    if target.is_dir():
        raise UsageError(f"the output {target} is a directory", hint="pass a file path with --output")
    if target.exists() and not force:
        raise UsageError(f"{target} already exists", hint="pass --force to overwrite it, or choose another --output")
    if not target.parent.is_dir():
        raise UsageError(f"the output folder {target.parent} does not exist")


def sync_folder(folder: Path) -> None:
    # the rename itself is durable only once the folder's entry is on disk
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot fsync a directory; the data itself already is
    finally:
        os.close(fd)


def fix_report(findings: Any, result: dict[str, Any]) -> Report:
    from torchdoctor.ckpt.sections import fix_sections

    findings = tuple(findings)
    return Report(COMMAND, findings, result, fix_sections(result, findings))
