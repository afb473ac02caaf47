"""Golden renders of the human output (regenerate with TORCHDOCTOR_REGEN_GOLDEN=1), and colour rules."""

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from torchdoctor.codes import SectionMissing, make_finding
from torchdoctor.render.human import render_human, summary_line
from torchdoctor.report import Report, Section, Severity

GOLDEN = Path(__file__).parent / "golden"


def sample_report() -> Report:
    shm = make_finding("shm-too-small", "/dev/shm has 64.0 MiB free of 64.0 MiB.", severity=Severity.ERROR)
    threads = make_finding("threads-oversubscribed", "OMP_NUM_THREADS=64 exceed the 2 usable CPU(s).",
                           fix="export OMP_NUM_THREADS=2")
    info = make_finding("cuda-unavailable", "This PyTorch build is CPU-only.", severity=Severity.INFO, fix=None)
    sections = (
        Section("devices", "Devices", "no CUDA device", (info,)),
        Section("shm", "Shared memory", "/dev/shm: 64.0 MiB free of 64.0 MiB", (shm,)),
        Section("threads", "CPU threads", "2 intra-op threads", (threads,)),
        Section("memory", "Memory", "RAM 20 GiB available", ()),
    )
    return Report("env", (info, shm, threads), {}, sections)


def render(report: Report) -> str:
    buffer = io.StringIO()
    render_human(report, Console(file=buffer, width=100, color_system=None, soft_wrap=True))
    return buffer.getvalue()


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("TORCHDOCTOR_REGEN_GOLDEN"):
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8")


def test_env_report_golden():
    check_golden("env_report.txt", render(sample_report()))


def test_clean_report_golden():
    report = Report("env", (), {}, (Section("memory", "Memory", "RAM 20 GiB available", ()),))
    check_golden("clean_report.txt", render(report))


def test_summary_counts_and_pluralises():
    assert summary_line(sample_report()).plain == "✗ 1 error, 1 warning, 1 info."


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _env_output(**env_vars: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR")}
    env.update(env_vars)
    return subprocess.run([sys.executable, "-m", "torchdoctor", "env", "-c", "shm"], capture_output=True,
                          text=True, env=env, check=True).stdout


def test_colour_only_when_forced_and_never_with_no_color():
    assert not ANSI.search(_env_output())  # a pipe is not a terminal: plain text
    coloured = _env_output(FORCE_COLOR="1")
    assert "\x1b[32m" in coloured  # green ✓
    assert not re.search(r"\x1b\[3[0-9]m", _env_output(FORCE_COLOR="1", NO_COLOR="1"))


def test_refuses_a_finding_without_a_section_for_its_command():
    # threads-oversubscribed is an env id only: a count report has no section for it
    stray = make_finding("threads-oversubscribed", "OMP_NUM_THREADS=64 exceed the 2 usable CPU(s).")
    report = Report("count", (stray,), {}, (Section("compute", "Compute", "1 MAC", (stray,)),))
    with pytest.raises(SectionMissing, match="no section in 'count' reports"):
        render(report)


def test_refuses_a_finding_left_out_of_every_section():
    info = make_finding("cuda-unavailable", "This PyTorch build is CPU-only.")
    report = Report("env", (info,), {}, (Section("memory", "Memory", "RAM 20 GiB available", ()),))
    with pytest.raises(SectionMissing, match="in no section"):
        render(report)


def test_refuses_a_finding_in_another_section_than_the_registrys():
    info = make_finding("cuda-unavailable", "This PyTorch build is CPU-only.")
    report = Report("env", (info,), {}, (Section("memory", "Memory", "RAM 20 GiB available", (info,)),))
    with pytest.raises(SectionMissing, match="registry places it in 'devices'"):
        render(report)


def test_a_report_without_sections_needs_only_the_command():
    explained = make_finding("cuda-out-of-memory", "CUDA ran out of memory.")
    assert "cuda-out-of-memory" in render(Report("explain", (explained,), {}))
    with pytest.raises(SectionMissing):
        render(Report("ckpt diff", (explained,), {}))
