"""`torchdoctor --help` median wall time (goal <= 0.3 s), beside bare `python -c pass` for scale.

Run: ``python benchmarks/bench_help.py [--runs 15]``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time


def wall(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "torchdoctor --help": [sys.executable, "-m", "torchdoctor", "--help"],
    }
    medians = {name: statistics.median(wall(cmd) for _ in range(args.runs)) for name, cmd in commands.items()}
    for name, seconds in medians.items():
        print(f"{name:<20} median {seconds:.3f} s")
    verdict = "meets" if medians["torchdoctor --help"] <= 0.3 else "MISSES"
    print(f"torchdoctor --help {verdict} the 0.3 s goal")


if __name__ == "__main__":
    main()
