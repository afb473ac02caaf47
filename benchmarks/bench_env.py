"""`torchdoctor env` wall time vs `python -m torch.utils.collect_env`, median of paired runs.

Goal (issue: foundation + env): ratio <= 1.5 (aim 1.0) while env runs its real training and
DataLoader steps. Run: ``python benchmarks/bench_env.py [--runs 7]``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "collect_env": [sys.executable, "-m", "torch.utils.collect_env"],
    "torchdoctor env": [sys.executable, "-m", "torchdoctor", "env"],
}


def wall(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    for command in COMMANDS.values():  # warm the page cache so the first pair is not penalised
        wall(command)
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    ratios = []
    for _ in range(args.runs):
        pair = {name: wall(command) for name, command in COMMANDS.items()}
        for name, seconds in pair.items():
            times[name].append(seconds)
        ratios.append(pair["torchdoctor env"] / pair["collect_env"])
    for name, values in times.items():
        print(f"{name:<16} median {statistics.median(values):.2f} s  (min {min(values):.2f}, max {max(values):.2f})")
    print(f"ratio torchdoctor env / collect_env: median of paired ratios {statistics.median(ratios):.2f}x "
          f"(goal <= 1.5x)")


if __name__ == "__main__":
    main()
