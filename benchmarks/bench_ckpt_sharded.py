"""`ckpt inspect` of a sharded Hugging Face layout: 100 safetensors shards holding 10 GiB (sparse files), and the
speed of `--scan-values` over real data from the page cache.

1. Headers: ``python -m torchdoctor ckpt inspect DIR --json`` as its own process (above 4 GiB the default reads
   headers only), median wall of ``--runs``; goal <= 2 s. Named baseline: a bare Python that opens the index and
   json-parses the 100 shard headers (the least any reader must do), so the ratio is torchdoctor's overhead.
2. Scan: a ``--gib`` GiB safetensors file of random float32 (real bytes, read once so the page cache holds it),
   ``ckpt inspect FILE --scan-values --json`` minus the same command with ``--no-values``: the scan's own
   throughput; goal >= 1 GiB/s. Named baseline: ``numpy.fromfile`` + ``isfinite().all()`` in 256 MiB slices
   over the same file, in-process (one core, no framework around it).

Run: ``python benchmarks/bench_ckpt_sharded.py [--runs 5] [--gib 2] [--dir /tmp]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GOAL_SECONDS, GOAL_GIB_S = 2.0, 1.0
HEADERS = """import json, struct, sys, pathlib
folder = pathlib.Path(sys.argv[1])
index = json.loads((folder / "model.safetensors.index.json").read_text())
for shard in sorted(set(index["weight_map"].values())):
    with open(folder / shard, "rb") as f:
        json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
"""


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seconds = time.perf_counter() - start
    if done.returncode not in (0, 1):
        sys.exit(f"{' '.join(command[:6])} failed ({done.returncode}): {done.stderr.decode()[-2000:]}")
    return seconds


def medians(commands: dict[str, list[str]], runs: int) -> dict[str, float]:
    """Each round runs every command once, so slow spells hit all of them alike."""
    seen: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, command in commands.items():
            seen[name].append(timed(command))
    return {name: statistics.median(values) for name, values in seen.items()}


def real_safetensors(path: Path, gib: int) -> Path:
    import numpy as np

    tensors, per = 16, (gib << 30) // 16
    header = {f"w{i}": {"dtype": "F32", "shape": [per // 4], "data_offsets": [i * per, (i + 1) * per]}
              for i in range(tensors)}
    raw = json.dumps(header).encode()
    rng = np.random.default_rng(0)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for _ in range(tensors):
            f.write(rng.standard_normal(per // 4, dtype=np.float32).tobytes())
    return path


def numpy_scan(path: Path) -> float:
    import numpy as np

    start = time.perf_counter()
    with path.open("rb") as f:
        f.seek(8 + struct.unpack("<Q", f.read(8))[0])
        while True:
            chunk = np.fromfile(f, dtype=np.float32, count=64 << 20)
            if not chunk.size:
                break
            assert np.isfinite(chunk).all()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--gib", type=int, default=2)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from fixtures.sharded_builders import sparse_sharded_dir

    cli = [sys.executable, "-m", "torchdoctor", "ckpt", "inspect"]
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder = sparse_sharded_dir(Path(tmp))
        found = medians({"baseline: json-parse 100 headers": [sys.executable, "-c", HEADERS, str(folder)],
                         "ckpt inspect DIR --json": [*cli, str(folder), "--json"]}, args.runs)
        for name, seconds in found.items():
            print(f"{name:<40} {seconds:6.2f} s")
        inspect = found["ckpt inspect DIR --json"]
        ratio = inspect / found["baseline: json-parse 100 headers"]
        verdict(f"100 shards / 10 GiB, whole process {inspect:.2f} s ({ratio:.1f}x the bare header read; "
                f"goal <= {GOAL_SECONDS} s)", inspect <= GOAL_SECONDS)

        data = real_safetensors(Path(tmp) / "real.safetensors", args.gib)
        numpy_scan(data)  # warm the page cache
        scan = medians({"--scan-values": [*cli, str(data), "--scan-values", "--json"],
                        "--no-values": [*cli, str(data), "--no-values", "--json"]}, args.runs)
        baseline = statistics.median(numpy_scan(data) for _ in range(args.runs))
        speed = args.gib / max(scan["--scan-values"] - scan["--no-values"], 1e-9)
        print(f"{'baseline: numpy fromfile + isfinite':<40} {args.gib / baseline:6.2f} GiB/s")
        verdict(f"--scan-values {speed:.2f} GiB/s from the page cache ({speed * baseline / args.gib:.2f}x the numpy "
                f"baseline; {os.cpu_count()} cores; goal >= {GOAL_GIB_S} GiB/s)", speed >= GOAL_GIB_S)


def verdict(text: str, ok: bool) -> None:
    print(f"{'PASS' if ok else 'MISS'}  {text}")


if __name__ == "__main__":
    main()
