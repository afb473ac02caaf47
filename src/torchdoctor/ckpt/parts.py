"""What every checkpoint format's reader shares: the parts it returns, where storages live, corruption errors.

Apart from reader.py (which dispatches to the readers) so that layouts.py's readers can use them without
importing reader.py, which imports layouts.py.
"""

from __future__ import annotations

import pickle
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchdoctor.ckpt.records import GLOBAL_KINDS, TensorRecord
from torchdoctor.errors import InputError

# What parsers raise on damaged bytes. RuntimeError: zipfile's answer to a flipped "encrypted" flag bit.
CORRUPTION_ERRORS = (pickle.UnpicklingError, EOFError, ValueError, LookupError, TypeError, AttributeError,
                     struct.error, zipfile.BadZipFile, zipfile.LargeZipFile, tarfile.TarError, RuntimeError,
                     MemoryError, ArithmeticError, NotImplementedError, OSError, zlib.error)


class CheckpointCorrupt(Exception):
    """A recognised checkpoint that cannot be parsed; ``message`` is one line saying what is broken."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class StorageInfo:
    """Where one storage's bytes are: a zip record, or a byte offset in a file. Never the bytes."""

    dtype: str
    numel: int
    nbytes: int
    device: str
    path: Path
    """The file holding the bytes (a shard's file for hf-sharded checkpoints)."""
    record: str | None = None
    """Full zip record name (``archive/data/0``) for zip and TorchScript checkpoints."""
    offset: int | None = None
    """Absolute byte offset of the first byte in ``path`` for legacy, legacy-tar and safetensors files."""


@dataclass
class FormatParts:
    """What one format's reader found; ``read_checkpoint`` turns it into a ``CheckpointReading``."""

    tree: Any
    storages: dict[str, StorageInfo]
    globals: list[dict[str, Any]]
    byteorder: str | None = "little"
    version_hint: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    extra_roots: dict[str, Any] = field(default_factory=dict)
    shards: dict[str, str] = field(default_factory=dict)
    tensors: dict[str, TensorRecord] | None = None


@contextmanager
def corruption_as(what: str) -> Iterator[None]:
    """Turn whatever a damaged file makes the parsers raise into one ``CheckpointCorrupt`` line."""
    try:
        yield
    except (CheckpointCorrupt, InputError):
        raise
    except (FileNotFoundError, PermissionError) as e:
        raise InputError(f"{e.filename or what}: {e.strerror}") from None
    except CORRUPTION_ERRORS as e:
        text = str(e).splitlines()[0] if str(e) else ""
        raise CheckpointCorrupt(f"{what}: {type(e).__name__}{': ' + text[:200] if text else ''}") from None


def merge_globals(reports: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One ``globals`` list from several pickles' (shards): counts add up, the worst kind wins."""
    rank = {kind: i for i, kind in enumerate(GLOBAL_KINDS)}
    merged: dict[str, dict[str, Any]] = {}
    for rows in reports:
        for row in rows:
            seen = merged.setdefault(row["name"], {**row, "count": 0})
            seen["count"] += row["count"]
            seen["kind"] = max(seen["kind"], row["kind"], key=rank.__getitem__)
    return sorted(merged.values(), key=lambda row: (-rank[row["kind"]], row["name"]))
