"""`torchdoctor watch` overhead vs a plain run (and vs nan-hunt, which it builds on).

Workload: ``fixtures/nan_scripts/transformer_bench.py`` (4-layer nn.TransformerEncoder, d_model 64,
4 heads, batch 16, seq 32, 40 Adam steps, CPU). Whole-process wall time of the commands, paired
runs, medians:

- plain:    ``python transformer_bench.py``
- nan-hunt: ``python -m torchdoctor nan-hunt transformer_bench.py``
- watch:    ``python -m torchdoctor watch transformer_bench.py`` (default ``--every 10``)

Goal: watch / plain <= 1.3 (whole process). The training loop alone (from the script's
``--timestamps``) is printed too, since start-up (~2.5 s of imports) hides it; so is watch with
``--every 1`` (every step sampled: the cost of the statistics themselves).
Every child runs with ``OMP_NUM_THREADS=1`` by default (``--threads``), as in bench_nan.py.
Run: ``python benchmarks/bench_watch.py [--runs 5] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys

from bench_nan import CHILD_ENV, SCRIPT, timed

COMMANDS = {
    "plain": [sys.executable, str(SCRIPT)],
    "nan-hunt": [sys.executable, "-m", "torchdoctor", "nan-hunt", str(SCRIPT), "--"],
    "watch": [sys.executable, "-m", "torchdoctor", "watch", str(SCRIPT), "--"],
    "watch-every-1": [sys.executable, "-m", "torchdoctor", "watch", "--every", "1", str(SCRIPT), "--"],
}


def overhead(runs: int) -> None:
    for command in COMMANDS.values():  # warm the page cache so the first round is not penalised
        timed(command)
    samples: dict[str, list[tuple[float, float, float]]] = {name: [] for name in COMMANDS}
    for _ in range(runs):
        for name, command in COMMANDS.items():
            samples[name].append(timed(command))
    for name, values in samples.items():
        walls = [wall for wall, _, _ in values]
        print(f"{name:<14} process wall median {statistics.median(walls):.2f} s (min {min(walls):.2f}, "
              f"max {max(walls):.2f}); CPU {statistics.median(v[1] for v in values):.2f} s; "
              f"training loop {statistics.median(v[2] for v in values):.3f} s")
    plain = samples["plain"]
    for index, label in enumerate(("process wall", "process CPU", "training loop")):
        ratios = {name: statistics.median(v[index] / p[index] for p, v in zip(plain, samples[name], strict=True))
                  for name in COMMANDS if name != "plain"}
        print(f"{label:<14} " + "; ".join(f"{name}/plain {ratio:.2f}x" for name, ratio in ratios.items())
              + ("  (goal: watch <= 1.3x)" if index == 0 else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS for the children (0: inherit)")
    args = parser.parse_args()
    if args.threads:
        CHILD_ENV["OMP_NUM_THREADS"] = str(args.threads)
    print(f"{args.runs} paired runs, OMP_NUM_THREADS={CHILD_ENV.get('OMP_NUM_THREADS', 'unset')}")
    overhead(args.runs)


if __name__ == "__main__":
    main()
