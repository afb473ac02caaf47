"""`torchdoctor count --memory`: a 6.7 B-parameter LLaMA-like decoder with AdamW, whole process, on this machine.

``count fixtures/count_models.py:llama_7b --meta --memory --optimizer adamw --input-shape 1,2048 --json``
(32 layers, d 4096, FFN 11008, vocab 32000; batch 1 x 2048 tokens): wall time and peak RSS of the process
(``wait4`` rusage of that child alone). Goals: <= 15 s and <= 1.5 GiB. Baselines in the same run: the same
command without ``--memory`` (what the fake training step adds) and a bare ``python -c "import torch"``.
Medians over ``--runs`` rounds.

Run: ``python benchmarks/bench_memory.py [--runs 3]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = f"{ROOT / 'fixtures' / 'count_models.py'}:llama_7b"
GOALS = {"seconds": 15.0, "rss_mib": 1536}
COUNT = [sys.executable, "-m", "torchdoctor", "count", SPEC, "--meta", "--input-shape", "1,2048", "--json"]
MEMORY = [*COUNT, "--memory", "--optimizer", "adamw"]
GIB = 2**30


def run_measured(command: list[str]) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MiB, ``wait4`` rusage of that child alone) and stdout of one process (this script
    never imports torch, so a forked child's ``ru_maxrss`` starts low)."""
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = child.stdout.read()
    err = child.stderr.read()
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) not in (0, 1):
        sys.exit(f"{' '.join(command[3:6])} failed: {err.decode()[-2000:]}")
    return seconds, usage.ru_maxrss / 1024, out.decode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="rounds; medians reported")
    args = parser.parse_args()
    from importlib.metadata import version

    print(f"torch {version('torch')}, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.1f}")
    rounds = []
    for _ in range(args.runs):
        memory = run_measured(MEMORY)
        plain = run_measured(COUNT)
        floor = run_measured([sys.executable, "-c", "import torch"])
        rounds.append((memory, plain, floor))
    seconds = statistics.median(r[0][0] for r in rounds)
    rss = statistics.median(r[0][1] for r in rounds)
    plain_s, floor_s = (statistics.median(r[i][0] for r in rounds) for i in (1, 2))
    plain_rss, floor_rss = (statistics.median(r[i][1] for r in rounds) for i in (1, 2))
    facts = json.loads(rounds[-1][0][2])["result"]["memory"]
    print("7B AdamW at 1x2048 (GiB): " + ", ".join(
        f"{key.removesuffix('_bytes')} {facts[key] / GIB:.2f}"
        for key in ("params_bytes", "grads_bytes", "optimizer_bytes", "activations_bytes", "peak_bytes"))
        + f" (peak in {facts['peak_phase']})")
    met = seconds <= GOALS["seconds"] and rss <= GOALS["rss_mib"]
    print(f"{'meets ' if met else 'MISSES'}  count --meta --memory --optimizer adamw: {seconds:.2f} s wall, peak RSS "
          f"{rss:.0f} MiB (goals <= {GOALS['seconds']} s, <= {GOALS['rss_mib']} MiB); without --memory "
          f"{plain_s:.2f} s, {plain_rss:.0f} MiB (memory adds {seconds - plain_s:.2f} s = "
          f"{seconds / plain_s:.2f}x); bare `import torch` {floor_s:.2f} s, {floor_rss:.0f} MiB", flush=True)


if __name__ == "__main__":
    main()
