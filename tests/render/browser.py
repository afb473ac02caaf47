"""Load a page in a real headless Chromium and return the DOM after its scripts ran (no CDP, no extra packages)."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
# Chromium logs console messages and uncaught errors at --v=0 as "...:INFO:CONSOLE(12)] "message", source: ..."
CONSOLE = re.compile(r"CONSOLE\(\d+\)\]|Uncaught|Refused to")


def chromium() -> str:
    found = next((path for path in map(shutil.which, BROWSERS) if path), None)
    if found is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium; .ci/run installs it in CI)")
    return found


@dataclass(frozen=True)
class Loaded:
    dom: str
    console: list[str]
    """Console and script-error lines Chromium logged while loading the page."""


def load(page: Path, profile: Path, *, screenshot: Path | None = None) -> Loaded:
    """``--dump-dom`` once the page's scripts ran; its own profile folder, so parallel runs never share a lock."""
    command = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--window-size=1100,2000"]
    if screenshot is not None:
        command.append(f"--screenshot={screenshot}")
    else:
        command.append("--dump-dom")
    done = subprocess.run([*command, page.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return Loaded(done.stdout, [line for line in done.stderr.splitlines() if CONSOLE.search(line)])


def attribute(dom: str, name: str) -> str | None:
    """An attribute of the ``<html>`` element (the page's script writes its findings there)."""
    tag = re.search(r"<html\b[^>]*>", dom)
    match = re.search(rf'\s{name}="([^"]*)"', tag.group(0)) if tag else None
    return match.group(1) if match else None
