"""Child of the DataLoader worker probe: one real multi-worker DataLoader pass, one JSON line on stdout."""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback

# Values cycle through this many small integers: exact in float32, and a page that lands in the
# wrong place or batch (shared-memory corruption) changes them.
_PATTERN = 251
_ITEMS_PER_BATCH = 4


def _item(index: int, numel: int):
    import torch

    return torch.arange(numel, dtype=torch.float32).remainder_(_PATTERN).add_(index)


class PatternDataset:
    """Map-style dataset of float32 vectors with contents fixed by the index.

    A plain class, not a ``torch.utils.data.Dataset`` subclass, so this module imports without
    torch; it lives at module level so spawn/forkserver workers can unpickle it.
    """

    def __init__(self, length: int, numel: int) -> None:
        self.length = length
        self.numel = numel

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        return _item(index, self.numel)


def run(batch_mib: int, batches: int, num_workers: int) -> dict:
    """Iterate the DataLoader, verify every batch, and return the facts (raises on failure)."""
    import torch
    import torch.multiprocessing as mp
    from torch.utils.data import DataLoader

    numel = batch_mib * 2**20 // 4 // _ITEMS_PER_BATCH
    dataset = PatternDataset(batches * _ITEMS_PER_BATCH, numel)
    loader = DataLoader(dataset, batch_size=_ITEMS_PER_BATCH, num_workers=num_workers)
    start = time.perf_counter()
    checking = 0.0  # verification time, left out of the throughput
    seen = 0
    for number, batch in enumerate(loader):
        check_start = time.perf_counter()
        first = number * _ITEMS_PER_BATCH
        expected = torch.stack([_item(first + k, numel) for k in range(_ITEMS_PER_BATCH)])
        if not torch.equal(batch, expected):
            bad = int((batch != expected).sum())
            raise ValueError(f"batch {number} came back corrupted: {bad} of {batch.numel()} values differ")
        seen += 1
        checking += time.perf_counter() - check_start
    # includes starting the workers, as every epoch of a real DataLoader without persistent_workers does
    seconds = time.perf_counter() - start - checking
    if seen != batches:
        raise ValueError(f"expected {batches} batches, got {seen}")
    batch_bytes = numel * 4 * _ITEMS_PER_BATCH
    return {
        "ok": True,
        "num_workers": num_workers,
        "batch_bytes": batch_bytes,
        "batches": seen,
        "seconds": round(seconds, 4),
        "mib_per_s": round(batch_bytes * seen / 2**20 / seconds, 1),
        "start_method": mp.get_start_method(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="torchdoctor.env._worker_child")
    parser.add_argument("--batch-mib", type=int, default=8)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--num-workers", type=int, default=2)
    args = parser.parse_args(argv)
    try:
        facts = run(args.batch_mib, args.batches, args.num_workers)
    except Exception as exc:  # any failure is the probe's result, reported to the parent as JSON
        traceback.print_exc()
        print(json.dumps({"ok": False, "exc_type": type(exc).__name__, "error": str(exc)}), flush=True)
        return 1
    print(json.dumps(facts), flush=True)
    return 0


if __name__ == "__main__":
    import gc

    # Only torchdoctor's own short-lived code runs here: the cyclic GC would only walk torch's import (~1M
    # long-lived objects, ~0.09 s CPU per child on the 2-core machine; env vs collect_env median 1.25x vs 1.31x).
    gc.disable()
    sys.exit(main())
