"""``ckpt fix`` of a sharded Hugging Face checkpoint: every shard merged into one file.

The safe reader already describes the shards as one checkpoint (``layouts.read_hf_sharded``: every storage
keeps its shard's file), so the usual plan, writers and verification run on it unchanged: safetensors
values and zip records are streamed shard by shard into the output, one chunk or one kernel copy at a
time, never the whole model in memory. What is particular to shards lives here: refusing an incomplete
folder, the output's format and place, the merge step.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from torchdoctor.ckpt.formats import Format
from torchdoctor.ckpt.plan import FixOptions, Plan, Step
from torchdoctor.ckpt.reader import CheckpointReading
from torchdoctor.ckpt.sharded import check_shards
from torchdoctor.errors import UsageError
from torchdoctor.report import Finding

TARGETS = (Format.SAFETENSORS, Format.ZIP)
SHOWN = 3


def incomplete_findings(detection: Any, path: str) -> list[Finding]:
    """Shards that are git-lfs pointers or missing: a merge would silently leave their tensors out."""
    return check_shards(detection, path)


def folder_of(source: Path) -> Path:
    """The shards' folder, whether the folder or its ``*.index.json`` was passed."""
    return source if source.is_dir() else source.parent


def index_of(reading: CheckpointReading) -> Path:
    return folder_of(reading.path) / reading.detection.details["index"]


def merge_options(reading: CheckpointReading, options: FixOptions) -> FixOptions:
    """The output format: ``--to`` (safetensors or zip), else the shards' own (safetensors, or zip for .bin)."""
    if options.to is not None and options.to not in TARGETS:
        raise UsageError(f"sharded checkpoints are merged into safetensors or zip, not {options.to.value}",
                         hint="pass --to safetensors or --to zip")
    shard_formats = {_shard_format(reading, name) for name in set(reading.shards.values())}
    default = Format.SAFETENSORS if shard_formats == {Format.SAFETENSORS} else Format.ZIP
    return dataclasses.replace(options, to=options.to or default)


def _shard_format(reading: CheckpointReading, shard: str) -> Format:
    record = next(record for key, record in reading.tensors.items() if reading.shards.get(key) == shard)
    info = reading.storages.get(record.storage_key or "")
    return Format.ZIP if info is not None and info.record is not None else Format.SAFETENSORS


def with_merge_step(plan: Plan, reading: CheckpointReading) -> Plan:
    shards = sorted(set(reading.shards.values()))
    shown = ", ".join(shards[:SHOWN]) + (f" and {len(shards) - SHOWN} more" if len(shards) > SHOWN else "")
    merge = Step("merge-shards", True, f"Merge the {len(shards)} shards that {index_of(reading).name} names "
                 f"({shown}) into one {plan.format_out.value} file of {len(reading.tensors)} tensors, streamed "
                 "shard by shard; the shards and the index stay as they are",
                 {"shards": shards, "index": index_of(reading).name, "tensors": len(reading.tensors)})
    return dataclasses.replace(plan, steps=(merge, *plan.steps))


def default_target(source: Path, format_out: Format) -> Path:
    """Beside the folder, never inside it (a folder with an index and a merged file would load twice)."""
    folder = folder_of(source)
    suffix = ".safetensors" if format_out is Format.SAFETENSORS else ".pt"
    return folder.with_name(f"{folder.name}.fixed{suffix}")


def shards_bytes(reading: CheckpointReading) -> int:
    folder = folder_of(reading.path)
    return sum((folder / name).stat().st_size for name in set(reading.shards.values()))


def check_writer(writer: str, why: str | None, reading: CheckpointReading) -> None:
    """Shards are merged by streaming only: torch.load of one merged object is what this avoids."""
    if writer == "torch":
        raise UsageError(f"{reading.path.name}: the shards cannot be merged into one zip by copying records "
                         f"({why}); ckpt fix does not load the whole model to re-save it",
                         hint="pass --to safetensors")
