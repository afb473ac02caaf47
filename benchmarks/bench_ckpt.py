"""`ckpt fix` and `ckpt inspect` on a 1 GiB checkpoint, against the naive torch.load + torch.save script.

Builds 16 float32 tensors (4096 x 4096 at the full size) under ``module.`` keys, zip and legacy, in a
temp folder, then runs each command as its own process: wall time and peak RSS (``wait4`` rusage of
that child alone), medians of ``--runs`` rounds, minus the floor of a bare ``python -c "import torch"``.
Every run starts after ``os.sync()`` with its output deleted, so no run pays for the previous one's
dirty pages.

Run: ``python benchmarks/bench_ckpt.py [--mib 1024] [--runs 3] [--dir /tmp]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

TENSORS = 16
COLUMNS = 4096
NAIVE = """import sys, torch
sd = torch.load(sys.argv[1], weights_only=True)
torch.save({k.removeprefix("module."): v for k, v in sd.items()}, sys.argv[2])
"""
FLOOR, NAIVE_NAME, FIX = "floor: python -c 'import torch'", "naive: torch.load + torch.save", "torchdoctor ckpt fix"
COPY = "cp + fsync (any new file's floor)"
INSPECT = ("torchdoctor ckpt inspect (zip)", "torchdoctor ckpt inspect (legacy)")
GOALS = {"fix_time_ratio": 0.25, "fix_rss_mib": 128, "inspect_seconds": 1.0, "inspect_rss_mib": 64}


@dataclass(frozen=True)
class Measure:
    seconds: float
    peak_mib: float


BUILD = """import sys, torch
folder, rows, tensors, columns = sys.argv[1], *map(int, sys.argv[2:])
generator = torch.Generator().manual_seed(0)
state = {f"module.layer{i}.weight": torch.randn(rows, columns, generator=generator) for i in range(tensors)}
torch.save(state, f"{folder}/model.pt")
torch.save(state, f"{folder}/model_legacy.pt", _use_new_zipfile_serialization=False)
"""


def build(folder: Path, mib: int) -> tuple[Path, Path]:
    # In a child: a child's ru_maxrss starts at its parent's RSS (fork), so this process stays small.
    rows = mib * (1 << 20) // (TENSORS * COLUMNS * 4)
    subprocess.run([sys.executable, "-c", BUILD, str(folder), str(rows), str(TENSORS), str(COLUMNS)], check=True)
    return folder / "model.pt", folder / "model_legacy.pt"


def run_once(command: list[str], output: Path | None) -> Measure:
    if output is not None:
        output.unlink(missing_ok=True)
    os.sync()  # the previous run's dirty pages are written back before this one starts
    with tempfile.TemporaryFile() as errors:
        start = time.perf_counter()
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - start
        child.returncode = code = os.waitstatus_to_exitcode(status)
        if code not in (0, 1):  # 1: findings (inspect), not a failure of the command
            errors.seek(0)
            sys.exit(f"{' '.join(command[:6])} failed ({code}): {errors.read().decode()[-2000:]}")
    return Measure(seconds, usage.ru_maxrss / 1024)  # ru_maxrss is in KiB on Linux


def measure(commands: dict[str, tuple[list[str], Path | None]], runs: int) -> dict[str, list[Measure]]:
    """``runs`` rounds; each round runs every command once, so slow spells hit all of them alike."""
    done: dict[str, list[Measure]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, (command, output) in commands.items():
            done[name].append(run_once(command, output))
    return done


def median(runs: list[Measure]) -> Measure:
    return Measure(statistics.median(m.seconds for m in runs), statistics.median(m.peak_mib for m in runs))


def paired_ratio(done: dict[str, list[Measure]]) -> float:
    """Median over rounds of (fix - floor) / (naive - floor), each round against its own floor and naive run."""
    rounds = zip(done[FLOOR], done[NAIVE_NAME], done[FIX], strict=True)
    return statistics.median((fix.seconds - floor.seconds) / (naive.seconds - floor.seconds)
                             for floor, naive, fix in rounds)


def commands(zipped: Path, legacy: Path, out: Path) -> dict[str, tuple[list[str], Path | None]]:
    python, cli = sys.executable, [sys.executable, "-m", "torchdoctor", "ckpt"]
    copy = ["sh", "-c", 'cp "$1" "$2" && sync "$2"', "sh", str(zipped), str(out)]
    return {
        FLOOR: ([python, "-c", "import torch"], None),
        NAIVE_NAME: ([python, "-c", NAIVE, str(zipped), str(out)], out),
        FIX: ([*cli, "fix", str(zipped), "-o", str(out)], out),
        COPY: (copy, out),
        INSPECT[0]: ([*cli, "inspect", str(zipped)], None),
        INSPECT[1]: ([*cli, "inspect", str(legacy)], None),
    }


def report(done: dict[str, list[Measure]]) -> None:
    results = {name: median(runs) for name, runs in done.items()}
    floor = results[FLOOR]
    print(f"{'command (medians)':<36} {'wall s':>7} {'- floor':>8} {'peak MiB':>9} {'- floor':>8}")
    for name, m in results.items():
        print(f"{name:<36} {m.seconds:7.2f} {m.seconds - floor.seconds:8.2f} {m.peak_mib:9.0f} "
              f"{m.peak_mib - floor.peak_mib:8.0f}")
    naive = results[NAIVE_NAME].seconds - floor.seconds
    copy = results[COPY].seconds  # no Python start-up to subtract
    ratio, fix_rss = paired_ratio(done), results[FIX].peak_mib - floor.peak_mib
    print()
    verdict(f"fix time {ratio:.2f}x naive, median of paired rounds (goal <= {GOALS['fix_time_ratio']}x; a plain "
            f"cp + fsync alone is {copy / naive:.2f}x)", ratio <= GOALS["fix_time_ratio"])
    verdict(f"fix peak RSS {fix_rss:.0f} MiB above the floor (goal <= {GOALS['fix_rss_mib']} MiB)",
            fix_rss <= GOALS["fix_rss_mib"])
    for name in INSPECT:
        beyond, rss = results[name].seconds - floor.seconds, results[name].peak_mib - floor.peak_mib
        verdict(f"{name.removeprefix('torchdoctor ')}: {beyond:.2f} s and {rss:.0f} MiB beyond the floor (goals "
                f"<= {GOALS['inspect_seconds']} s, <= {GOALS['inspect_rss_mib']} MiB)",
                beyond <= GOALS["inspect_seconds"] and rss <= GOALS["inspect_rss_mib"])


def verdict(text: str, met: bool) -> None:
    print(f"{'meets ' if met else 'MISSES'}  {text}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=1024, help="checkpoint size in MiB (1024 = 16 x 4096^2 float32)")
    parser.add_argument("--runs", type=int, default=3, help="runs per command; medians are reported")
    parser.add_argument("--dir", default=None, help="where to build the checkpoints (default: the temp folder)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench_ckpt_", dir=args.dir))
    try:
        zipped, legacy = build(folder, args.mib)
        print(f"{zipped.stat().st_size / 2**20:.0f} MiB checkpoint, {TENSORS} tensors, {args.runs} runs each, "
              f"{os.cpu_count()} CPUs, in {folder}")
        report(measure(commands(zipped, legacy, folder / "out.pt"), args.runs))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
