"""`torchdoctor nan-hunt` overhead vs a plain run and vs anomaly mode, and how fast it names a NaN.

Workload: ``fixtures/nan_scripts/transformer_bench.py`` (4-layer nn.TransformerEncoder, d_model 64,
4 heads, batch 16, seq 32, 40 Adam steps, CPU). Whole-process wall time of three commands, paired
runs, medians:

- plain:    ``python transformer_bench.py``
- nan-hunt: ``python -m torchdoctor nan-hunt transformer_bench.py``
- anomaly:  ``python -c "...torch.autograd.set_detect_anomaly(True); runpy.run_path(...)"``

Goals: nan-hunt / plain <= 1.3; (nan-hunt - plain) / (anomaly - plain) <= 0.5. The training loop
alone (from the script's ``--timestamps``) is printed too, since start-up (~2.5 s of imports) hides it.

Gradient accumulation (``--accum``): the same model trained the way nanoGPT accumulates, 4
micro-steps (forward, loss / 4, backward) per optimizer step, clip, step, ``zero_grad(set_to_none)``,
20 optimizer steps; nan-hunt vs plain only. Goal <= 1.3x as well.

Localisation: ``--nan-at 20`` turns an activation into NaN at step 20. The time from the start of
step 20 (the script's timestamp) to the report file's modification time (``--report``, written
atomically once the producer is named) is compared with one step's time. Goal <= 10x.
Update log (``--only updates``): in this process, the median step time of the same model under nan-hunt
with its update log (‖Δw‖/‖w‖ of each optimizer step, for ``update-explosion``) on vs off, paired runs
of 30 steps; the process figures above are too noisy on a shared machine to show a cost this small.
Goal: it keeps nan-hunt within its 1.3x, so <= 1.05x here.
Every child runs with ``OMP_NUM_THREADS=1`` by default (``--threads``): on a small shared machine two
intra-op threads per process fighting other work made single runs vary 10x; one thread keeps the
paired ratios stable and affects all three commands alike.
Run: ``python benchmarks/bench_nan.py [--runs 5] [--threads 1] [--only overhead|accum|localisation|updates]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "fixtures" / "nan_scripts" / "transformer_bench.py"
ANOMALY = (
    "import runpy, sys, torch; torch.autograd.set_detect_anomaly(True); sys.argv = sys.argv[1:]; "
    "runpy.run_path(sys.argv[0], run_name='__main__')"
)
COMMANDS = {
    "plain": [sys.executable, str(SCRIPT)],
    "nan-hunt": [sys.executable, "-m", "torchdoctor", "nan-hunt", str(SCRIPT), "--"],
    "anomaly": [sys.executable, "-c", ANOMALY, str(SCRIPT)],
}
NAN_AT = 20
ACCUM_ARGS = ["--accum", "4", "--steps", "20"]  # nanoGPT's shape: 4 micro-steps per optimizer step


CHILD_ENV = dict(os.environ)


def timed(command: list[str], extra: list[str] = ()) -> tuple[float, float, float]:
    """Whole-process wall seconds, its CPU seconds (user + sys), and training-loop wall seconds."""
    cpu_before = _children_cpu()
    start = time.perf_counter()
    done = subprocess.run([*command, *extra, "--timestamps"], capture_output=True, text=True, check=False,
                          env=CHILD_ENV)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    stamps = step_stamps(done.stderr)
    return wall, _children_cpu() - cpu_before, stamps["end"] - stamps[0]


def _children_cpu() -> float:
    """CPU seconds of finished children: unlike wall time, barely moved by other work on a shared machine."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def step_stamps(stderr: str) -> dict[int | str, float]:
    """``{step: unix time, "end": unix time}`` from the lines ``--timestamps`` prints."""
    stamps: dict[int | str, float] = {}
    for line in stderr.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "step" and parts[1].isdigit():
            stamps[int(parts[1])] = float(parts[2])
        elif len(parts) == 2 and parts[0] == "end":
            stamps["end"] = float(parts[1])
    return stamps


def step_time(stamps: dict[int | str, float], last: int) -> float:
    """Median seconds per step over steps 1..last (step 0 pays one-off warm-up costs)."""
    return statistics.median(stamps[i + 1] - stamps[i] for i in range(1, last) if i + 1 in stamps)


def sample(runs: int, commands: dict[str, list[str]], extra: list[str] = ()
           ) -> dict[str, list[tuple[float, float, float]]]:
    """Paired runs of every command (one of each per round, so load changes hit all alike)."""
    for command in commands.values():  # warm the page cache so the first pair is not penalised
        timed(command, extra)
    samples: dict[str, list[tuple[float, float, float]]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, command in commands.items():
            samples[name].append(timed(command, extra))
    return samples


def accumulation(runs: int) -> None:
    commands = {name: COMMANDS[name] for name in ("plain", "nan-hunt")}
    samples = sample(runs, commands, ACCUM_ARGS)
    print(f"gradient accumulation ({' '.join(ACCUM_ARGS)}):")
    for index, label in enumerate(("process wall", "process CPU", "training loop")):
        plain, hunt = ([v[index] for v in samples[name]] for name in commands)
        ratio = statistics.median(h / p for p, h in zip(plain, hunt, strict=True))
        print(f"  {label:<14} plain median {statistics.median(plain):.2f} s, nan-hunt {statistics.median(hunt):.2f} s;"
              f" nan-hunt/plain {ratio:.2f}x (goal <= 1.3)")


def overhead(runs: int) -> None:
    samples = sample(runs, COMMANDS)
    for name, values in samples.items():
        walls = [wall for wall, _, _ in values]
        print(
            f"{name:<9} process wall median {statistics.median(walls):.2f} s (min {min(walls):.2f}, "
            f"max {max(walls):.2f}); CPU {statistics.median(v[1] for v in values):.2f} s; "
            f"training loop {statistics.median(v[2] for v in values):.3f} s"
        )
    for index, label in enumerate(("process wall", "process CPU", "training loop")):
        plain, hunt, anomaly = ([v[index] for v in samples[name]] for name in COMMANDS)
        ratio = statistics.median(h / p for p, h in zip(plain, hunt, strict=True))
        share = statistics.median((h - p) / (a - p) for p, h, a in zip(plain, hunt, anomaly, strict=True))
        print(
            f"{label:<14} nan-hunt/plain {ratio:.2f}x (goal <= 1.3); "
            f"(nan-hunt - plain)/(anomaly - plain) {share:.2f} (goal <= 0.5)"
        )


def localisation(runs: int) -> None:
    delays, steps, ratios = [], [], []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as folder:
            report_file = Path(folder) / "report.json"
            command = [
                sys.executable,
                "-m",
                "torchdoctor",
                "nan-hunt",
                str(SCRIPT),
                "--report",
                str(report_file),
                "--",
                "--nan-at",
                str(NAN_AT),
                "--timestamps",
            ]
            done = subprocess.run(command, capture_output=True, text=True, check=False, env=CHILD_ENV)
            report = json.loads(report_file.read_text())
            written = os.stat(report_file).st_mtime_ns / 1e9
        first = report["result"].get("first_nonfinite") or {}
        if done.returncode != 1 or first.get("step") != NAN_AT:
            sys.exit(f"expected a NaN named at step {NAN_AT}, got exit {done.returncode}: {first}")
        stamps = step_stamps(done.stderr)
        delays.append(written - stamps[NAN_AT])
        steps.append(step_time(stamps, NAN_AT))
        ratios.append(delays[-1] / steps[-1])
    print(
        f"localisation: NaN injected at step {NAN_AT}, named as {first.get('phase')} {first.get('op')} "
        f"in {first.get('module')!r} at line {(first.get('source') or {}).get('line')}"
    )
    print(
        f"  start of step {NAN_AT} -> report written: median {statistics.median(delays) * 1000:.0f} ms; "
        f"one step under nan-hunt: median {statistics.median(steps) * 1000:.1f} ms"
    )
    print(f"  localisation / one step: {statistics.median(ratios):.1f}x  (goal <= 10x)")


def update_log(runs: int) -> None:
    import runpy

    import torch

    from torchdoctor.nan.hunt import nan_hunt

    model_class = runpy.run_path(str(SCRIPT))["Model"]

    def step_time(on: bool, steps: int = 30) -> float:
        torch.manual_seed(0)
        model = model_class()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        times = []
        with nan_hunt() as hunt:
            hunt._watcher.updates.on = on
            for _ in range(steps):
                start = time.perf_counter()
                tokens = torch.randint(0, 1000, (16, 32))
                optimizer.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(tokens).flatten(0, 1), tokens.flatten())
                loss.backward()
                optimizer.step()
                times.append(time.perf_counter() - start)
        return statistics.median(times[2:])  # the first steps pay one-off warm-up costs

    step_time(True), step_time(False)
    pairs = [(step_time(True), step_time(False)) for _ in range(runs)]
    print(f"update log: step with it {statistics.median(p[0] for p in pairs) * 1000:.2f} ms, without "
          f"{statistics.median(p[1] for p in pairs) * 1000:.2f} ms; paired ratio "
          f"{statistics.median(on / off for on, off in pairs):.3f}x (goal <= 1.05)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS for the children (0: inherit)")
    parser.add_argument("--only", choices=("overhead", "accum", "localisation", "updates"), default=None)
    args = parser.parse_args()
    if args.threads:
        CHILD_ENV["OMP_NUM_THREADS"] = str(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # read when torch is imported, for ``updates``
    print(f"{args.runs} paired runs, OMP_NUM_THREADS={CHILD_ENV.get('OMP_NUM_THREADS', 'unset')}")
    for name, run in (("overhead", overhead), ("accum", accumulation), ("localisation", localisation),
                      ("updates", update_log)):
        if args.only in (None, name):
            run(args.runs)


if __name__ == "__main__":
    main()
