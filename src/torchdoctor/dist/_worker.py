"""One rank of ``torchdoctor env --distributed``, started by ``torch.distributed.run``.

Each phase appends JSON events (start, arrived, done, error, stalled) to ``rank<R>.jsonl`` in the
folder the parent names, because torchrun interleaves the ranks' stdout. ``arrived`` is written just
before a phase's first collective, so the parent can tell the rank that never got there from the
ranks that waited for it. A watchdog per phase ends the rank when the phase outlives its timeout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

ENV_KEYS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")
BANDWIDTH_SIZES = {"1KiB": 1 << 10, "1MiB": 1 << 20, "16MiB": 16 << 20}
STALLED_EXIT = 124


class Rank:
    """This rank's event log and watchdog."""

    def __init__(self, folder: str, phase_timeout_s: float) -> None:
        self.rank = int(os.environ.get("RANK", "0"))
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.phase_timeout_s = phase_timeout_s
        self.lock = threading.Lock()
        self.handle = open(os.path.join(folder, f"rank{self.rank}.jsonl"), "a", encoding="utf-8")  # noqa: SIM115

    def write(self, event: str, **fields: Any) -> None:
        with self.lock:
            self.handle.write(json.dumps({"event": event, "rank": self.rank, "t": time.time(), **fields}) + "\n")
            self.handle.flush()

    def phase(self, name: str, body: Callable[[], dict[str, Any] | None]) -> None:
        """Run one phase under a watchdog; record done (with its facts) or error, then re-raise errors."""
        self.write("start", phase=name)
        timer = threading.Timer(self.phase_timeout_s, self._stalled, args=(name,))
        timer.daemon = True
        timer.start()
        started = time.perf_counter()
        try:
            facts = body() or {}
        except Exception as exc:
            self.write("error", phase=name, type=type(exc).__name__, error=_first_line(exc))
            raise
        finally:
            timer.cancel()
        self.write("done", phase=name, ms=(time.perf_counter() - started) * 1000, **facts)

    def _stalled(self, name: str) -> None:
        self.write("stalled", phase=name, timeout_s=self.phase_timeout_s)
        os._exit(STALLED_EXIT)  # the main thread is blocked in C++ or asleep: nothing else can end it


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    rank = Rank(args.out, args.phase_timeout)
    rank.write("env", environ={key: os.environ.get(key) for key in ENV_KEYS}, pid=os.getpid())
    import torch
    import torch.distributed as dist

    device = torch.device(f"cuda:{rank.local_rank}" if args.backend == "nccl" else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    run = _Phases(torch, dist, rank, device, args)
    try:
        rank.phase("init", run.init)
        for name in ("all_reduce", "broadcast", "barrier", "bandwidth", "ddp_step", "param_check"):
            rank.phase(name, getattr(run, name))
    except Exception:
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


class _Phases:
    """The phases' bodies; each returns the facts its ``done`` event carries."""

    def __init__(self, torch: Any, dist: Any, rank: Rank, device: Any, args: Any) -> None:
        self.torch, self.dist, self.rank, self.device = torch, dist, rank, device
        self.backend, self.pg_timeout = args.backend, timedelta(seconds=args.phase_timeout * 2)
        self.model: Any = None

    def _arrive(self, name: str) -> None:
        self.rank.write("arrived", phase=name)

    def init(self) -> dict[str, Any]:
        self._arrive("init")
        self.dist.init_process_group(self.backend, timeout=self.pg_timeout)
        return {"world_size": self.dist.get_world_size()}

    def all_reduce(self) -> dict[str, Any]:
        tensor = self.torch.full((1024,), float(self.rank.rank + 1), device=self.device)
        self._arrive("all_reduce")
        self.dist.all_reduce(tensor)
        world = self.rank.world_size
        return _checksum(float(tensor[0]), world * (world + 1) / 2, bool((tensor == tensor[0]).all()))

    def broadcast(self) -> dict[str, Any]:
        tensor = self.torch.arange(1024, dtype=self.torch.float32, device=self.device) * (self.rank.rank + 1)
        self._arrive("broadcast")
        self.dist.broadcast(tensor, src=0)
        return _checksum(float(tensor.sum()), 1023 * 1024 / 2, True)

    def barrier(self) -> None:
        self._arrive("barrier")
        self.dist.barrier()

    def bandwidth(self) -> dict[str, Any]:
        self._arrive("bandwidth")
        return {"gb_per_s": {label: self._time_all_reduce(size) for label, size in BANDWIDTH_SIZES.items()}}

    def _time_all_reduce(self, size: int) -> float:
        tensor = self.torch.ones(size // 4, device=self.device)
        iterations = 3 if size > (1 << 20) else 10
        self.dist.all_reduce(tensor)  # warm-up: connections, buffers
        self._sync()
        started = time.perf_counter()
        for _ in range(iterations):
            self.dist.all_reduce(tensor)
        self._sync()
        seconds = (time.perf_counter() - started) / iterations
        return size / seconds / 1e9  # algorithm bandwidth: bytes reduced per second per rank

    def _sync(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)

    def ddp_step(self) -> dict[str, Any]:
        from torch.nn.parallel import DistributedDataParallel

        from torchdoctor.env.training import MomentumSGD, build_reference_batch, build_reference_net

        net = build_reference_net().to(self.device)
        inputs, targets = build_reference_batch()
        world, index = self.rank.world_size, self.rank.rank
        inputs, targets = inputs.chunk(world)[index].to(self.device), targets.chunk(world)[index].to(self.device)
        self._arrive("ddp_step")
        self.model = DistributedDataParallel(net, device_ids=[self.device.index] if self.device.index is not None
                                             else None)
        optimizer = MomentumSGD(self.model.parameters())
        loss = self.torch.nn.functional.cross_entropy(self.model(inputs), targets)
        loss.backward()
        optimizer.step()
        return {"loss": loss.item()}

    def param_check(self) -> dict[str, Any]:
        torch = self.torch
        with torch.no_grad():
            flat = torch.cat([p.detach().reshape(-1) for p in self.model.parameters()]).float()
            gathered = [torch.empty_like(flat) for _ in range(self.rank.world_size)]
            self._arrive("param_check")
            self.dist.all_gather(gathered, flat)
            max_diff = max(float((other - flat).abs().max()) for other in gathered)
        digest = hashlib.sha256(flat.cpu().numpy().tobytes()).hexdigest()[:16]
        return {"param_checksum": digest, "param_sum": float(flat.double().sum()), "max_abs_diff": max_diff}


def _checksum(got: float, expected: float, uniform: bool) -> dict[str, Any]:
    return {"checksum": got, "expected": expected, "checksum_ok": uniform and abs(got - expected) < 1e-3}


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:500] if lines else ""


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="torchdoctor.dist._worker")
    parser.add_argument("--out", required=True)
    parser.add_argument("--backend", default="gloo")
    parser.add_argument("--phase-timeout", type=float, default=30.0)
    return parser.parse_args(argv)


if __name__ == "__main__":
    raise SystemExit(main())
