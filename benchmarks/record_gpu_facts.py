"""Record ``fixtures/gpu_facts/<card>.json`` from the real GPU(s) of this machine.

The files in ``fixtures/gpu_facts/`` feed the device and training judgements' tests on machines without a
GPU. Until a card is recorded here, its file is transcribed from public outputs (its ``provenance`` says
so); this script replaces that with what ``collect_devices`` (the env ``devices`` check's collector) sees
on the card itself, one file per visible card, named by the card (``NVIDIA H100 80GB HBM3`` -> ``h100``).

Run on a machine with CUDA: ``python benchmarks/record_gpu_facts.py [--out fixtures/gpu_facts]``, then
commit the files. Without a usable CUDA device it writes nothing and exits 2 with one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Mapping
from datetime import date
from pathlib import Path
from typing import Any

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "fixtures" / "gpu_facts"
_VENDOR_WORDS = {"nvidia", "tesla", "geforce", "quadro", "amd", "radeon", "instinct"}


class NoGpu(Exception):
    """No usable CUDA (or ROCm) device: nothing can be recorded."""


def card_slug(name: str) -> str:
    """A file name for a card: vendor and brand words dropped, the model kept (``Tesla T4`` -> ``t4``)."""
    words = [word for word in re.split(r"[^a-z0-9]+", name.lower()) if word and word not in _VENDOR_WORDS]
    return words[0] if words else "gpu"


def card_files(facts: Mapping[str, Any], provenance: str) -> dict[str, dict[str, Any]]:
    """``{slug: fixture}``: one fixture per visible card, shaped like the transcribed ones (devices = [that card]).

    Raises ``NoGpu`` naming why when no card is usable.
    """
    if not facts.get("cuda_available") or not facts.get("devices"):
        why = facts.get("cuda_init_error") or ("this PyTorch build has no CUDA" if not facts.get(
            "cuda_compiled_version") and not facts.get("hip_compiled_version") else "no visible CUDA device")
        raise NoGpu(why)
    files: dict[str, dict[str, Any]] = {}
    for device in facts["devices"]:
        slug = card_slug(device["name"])
        if slug in files:  # several cards of one model: the first stands for them all
            continue
        files[slug] = {"provenance": provenance, **{k: v for k, v in facts.items() if k != "devices"},
                       "devices": [{**device, "index": 0}]}
    return files


def provenance_line(torch_version: str, today: date) -> str:
    return (f"Recorded by benchmarks/record_gpu_facts.py on the card itself with torch {torch_version} on "
            f"{today.isoformat()}.")


def record(out: Path, collect: Callable[[], Mapping[str, Any]], torch_version: str) -> list[Path]:
    """Write every card's fixture under ``out``; returns the paths written."""
    files = card_files(collect(), provenance_line(torch_version, date.today()))
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for slug, fixture in files.items():
        path = out / f"{slug}.json"
        path.write_text(json.dumps(fixture, indent=2) + "\n", encoding="utf-8")
        written.append(path)
    return written


def _collect_here() -> Mapping[str, Any]:
    import os

    from torchdoctor.env.base import EnvContext
    from torchdoctor.env.device_facts import collect_devices

    return collect_devices(dict(os.environ), EnvContext().path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the <card>.json files")
    args = parser.parse_args(argv)
    import torch

    try:
        written = record(args.out, _collect_here, torch.__version__)
    except NoGpu as exc:
        print(f"record_gpu_facts: nothing recorded: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
