"""Sharded Hugging Face layouts whose shards are not all there: git-lfs pointers and missing files."""

from __future__ import annotations

from typing import Any

from torchdoctor.ckpt.formats import Detection, Format
from torchdoctor.codes import make_finding
from torchdoctor.report import Finding
from torchdoctor.units import format_bytes

SHOWN = 5


def check_shards(detection: Detection, path: str, total_size: Any = None) -> list[Finding]:
    """One lfs-pointer finding for all pointer shards, one shard-missing for all missing ones."""
    if detection.format is not Format.HF_SHARDED:
        return []
    details = detection.details
    shards, index = details.get("shards", []), details.get("index", "the index")
    findings = []
    pointers: dict[str, int | None] = details.get("pointer_shards") or {}
    if pointers:
        findings.append(_pointer_finding(pointers, len(shards), index, path, total_size))
    missing: list[str] = details.get("missing_shards") or []
    if missing:
        findings.append(make_finding(
            "shard-missing", f"{len(missing)} of {len(shards)} shard files that {index} names are not on disk: "
            f"{_names(missing)}.", location=path, details={"missing": missing, "shards": len(shards)}))
    return findings


def _pointer_finding(pointers: dict[str, int | None], shards: int, index: str, path: str,
                     total_size: Any) -> Finding:
    pointed = sum(size for size in pointers.values() if size)
    total = total_size if type(total_size) is int else None
    of_total = f"; the index's metadata.total_size is {format_bytes(total)}" if total else ""
    message = (f"{len(pointers)} of {shards} shard files that {index} names are git-lfs pointers standing for "
               f"{format_bytes(pointed)} ({_names(list(pointers))}){of_total}: the clone never fetched them; "
               "run git lfs pull.")
    return make_finding("lfs-pointer", message, location=path, details={
        "pointer_shards": sorted(pointers), "pointers": len(pointers), "shards": shards,
        "pointed_bytes": pointed, "total_size": total})


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:SHOWN])
    return shown + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")
