"""How file paths are shown in messages and reports: relative to the current folder when inside it."""

from __future__ import annotations

from pathlib import Path


def display_path(filename: str) -> str:
    """Relative to the current folder when inside it (what the user typed), else as given."""
    if filename.startswith("<"):  # <stdin>, <string>: not files
        return filename
    try:
        return str(Path(filename).resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return filename
