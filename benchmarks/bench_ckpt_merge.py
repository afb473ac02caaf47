"""`ckpt fix` merging a sharded Hugging Face checkpoint into one file, against the usual merge script.

Builds 8 safetensors shards holding ``--mib`` MiB of float32 and their ``model.safetensors.index.json`` (as
``save_pretrained(max_shard_size=...)`` lays them out), then runs each command as its own process (wall time and
peak RSS of that child alone, medians of ``--runs`` rounds; see bench_ckpt.py):

- floor: ``python -c "import torch"``;
- named baseline, the usual merge script: ``safetensors.torch.load_file`` of every shard into one dict, then
  ``save_file`` (the whole model in memory, and a second copy where ``save_file`` makes tensors contiguous);
- ``ckpt fix DIR`` (safetensors, values streamed chunk by chunk, then verified) and ``ckpt fix DIR --to zip``
  (records copied in the kernel).

Goal (the issue: "streaming, shard by shard, never the whole model in memory twice"): peak RSS at most 128 MiB
above the floor, whatever the model's size; wall time is reported against the baseline.

Run: ``python benchmarks/bench_ckpt_merge.py [--mib 1024] [--runs 3] [--dir /tmp]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_ckpt import measure, median, verdict

SHARDS = 8
GOAL_RSS_MIB = 128
BUILD = """import json, sys, torch
from safetensors.torch import save_file
folder, shards, rows = sys.argv[1], *map(int, sys.argv[2:])
generator, weight_map = torch.Generator().manual_seed(0), {}
for number in range(1, shards + 1):
    name = f"model-{number:05d}-of-{shards:05d}.safetensors"
    tensors = {f"layers.{number}.{part}.weight": torch.randn(rows, 4096, generator=generator) for part in ("a", "b")}
    save_file(tensors, f"{folder}/{name}", metadata={"format": "pt"})
    weight_map.update(dict.fromkeys(tensors, name))
index = {"metadata": {"total_size": shards * 2 * rows * 4096 * 4}, "weight_map": weight_map}
open(f"{folder}/model.safetensors.index.json", "w").write(json.dumps(index))
"""
NAIVE = """import json, pathlib, sys
from safetensors.torch import load_file, save_file
folder = pathlib.Path(sys.argv[1])
index = json.loads((folder / "model.safetensors.index.json").read_text())
merged = {}
for shard in sorted(set(index["weight_map"].values())):
    merged.update(load_file(folder / shard))
save_file(merged, sys.argv[2], metadata={"format": "pt"})
"""
FLOOR, NAIVE_NAME = "floor: python -c 'import torch'", "baseline: load_file all + save_file"
FIX, FIX_ZIP = "torchdoctor ckpt fix DIR", "torchdoctor ckpt fix DIR --to zip"


def build(folder: Path, mib: int) -> Path:
    shards = folder / "sharded"
    shards.mkdir()
    rows = mib * (1 << 20) // (SHARDS * 2 * 4096 * 4)
    subprocess.run([sys.executable, "-c", BUILD, str(shards), str(SHARDS), str(rows)], check=True)
    return shards


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench_merge_", dir=args.dir))
    try:
        shards, out = build(folder, args.mib), folder / "merged.safetensors"
        cli = [sys.executable, "-m", "torchdoctor", "ckpt", "fix", str(shards), "--force", "-o"]
        done = measure({FLOOR: ([sys.executable, "-c", "import torch"], None),
                        NAIVE_NAME: ([sys.executable, "-c", NAIVE, str(shards), str(out)], out),
                        FIX: ([*cli, str(out)], out),
                        FIX_ZIP: ([*cli, str(folder / "merged.pt"), "--to", "zip"], folder / "merged.pt")},
                       args.runs)
        results = {name: median(runs) for name, runs in done.items()}
        floor = results[FLOOR]
        print(f"{args.mib} MiB in {SHARDS} shards, {args.runs} runs each, {os.cpu_count()} CPUs, in {folder}")
        print(f"{'command (medians)':<40} {'wall s':>7} {'- floor':>8} {'peak MiB':>9} {'- floor':>8}")
        for name, m in results.items():
            print(f"{name:<40} {m.seconds:7.2f} {m.seconds - floor.seconds:8.2f} {m.peak_mib:9.0f} "
                  f"{m.peak_mib - floor.peak_mib:8.0f}")
        for name in (FIX, FIX_ZIP):
            # whole processes: the safetensors merge never imports torch, so "minus the floor" would flatter it
            ratio = statistics.median(f.seconds / n.seconds for n, f in zip(done[NAIVE_NAME], done[name], strict=True))
            rss = results[name].peak_mib - floor.peak_mib
            verdict(f"{name.removeprefix('torchdoctor ')}: peak RSS {rss:.0f} MiB above the floor (goal <= "
                    f"{GOAL_RSS_MIB} MiB; baseline {results[NAIVE_NAME].peak_mib - floor.peak_mib:.0f} MiB); "
                    f"whole process {ratio:.2f}x the baseline's time (median of paired rounds)", rss <= GOAL_RSS_MIB)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
