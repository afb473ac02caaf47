"""``ckpt fix`` on a torch.distributed.checkpoint directory: consolidate into one torch.save zip, verify, fix."""

from __future__ import annotations

import io
import os
import pickle
import re
import stat
import tempfile
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torchdoctor.ckpt.fix_output import check_target, fix_report, sync_folder
from torchdoctor.ckpt.formats import Format
from torchdoctor.ckpt.reader import CheckpointReading
from torchdoctor.errors import InputError, TorchdoctorError, UsageError
from torchdoctor.report import Report

# The default output is DIRNAME.pt (DIRNAME.safetensors with --to safetensors) next to the directory: the
# directory is not a file with a stem, and "consolidated" is the point, so no ".fixed" infix.
CONSOLIDATE_DETAIL = "read every shard of the torch.distributed.checkpoint directory and write one torch.save zip"


def fix_dcp(reading: CheckpointReading, result: dict[str, Any], *, output: str | os.PathLike[str] | None,
            to: Format | None, dry_run: bool, force: bool, fix_file: Callable[..., Report],
            **fix_options: Any) -> Report:
    """Consolidate ``reading.path`` into a verified temp zip next to the output, then run the usual fix on it
    (``fix_file``: fix.fix_checkpoint, passed in because fix.py calls this module)."""
    source = reading.path
    if to is Format.DCP:
        raise UsageError("ckpt fix cannot write a torch.distributed.checkpoint directory",
                         hint="pass --to zip (the default), safetensors or legacy")
    target = _output_path(source, output, to)
    check_target(target, force)
    temp = _consolidated_temp(reading, target)
    try:
        consolidated = _verify_consolidated(temp, reading)
        inner = fix_file(temp, output=target, to=to, dry_run=dry_run, force=force, **fix_options)
        if inner.result.get("nothing_to_fix") and not dry_run:
            os.replace(temp, target)  # nothing more to do: the verified consolidated zip is the output
            sync_folder(target.parent)
    finally:
        temp.unlink(missing_ok=True)
    return fix_report(inner.findings, _merged(result, inner.result, target, consolidated, dry_run))


def _output_path(source: Path, output: str | os.PathLike[str] | None, to: Format | None) -> Path:
    suffix = ".safetensors" if to is Format.SAFETENSORS else ".pt"
    target = Path(output) if output is not None else source.with_name(f"{source.name}{suffix}")
    if target.resolve().is_relative_to(source.resolve()):
        raise UsageError(f"the output {target} is inside the input directory: ckpt fix never modifies its input",
                         hint="pass an --output path outside the directory")
    return target


def _merged(result: dict[str, Any], inner: Mapping[str, Any], target: Path,
            consolidated: dict[str, Any], dry_run: bool) -> dict[str, Any]:
    """The inner (zip -> output) report's result, seen from the directory: consolidate is its first step."""
    step = {"action": "consolidate", "safe": True, "detail": CONSOLIDATE_DETAIL,
            "tensors": consolidated["tensors"], "shards": consolidated["shards"]}
    nothing_more = bool(inner.get("nothing_to_fix"))
    steps = [] if nothing_more else list(inner.get("plan", []))
    written = (nothing_more and not dry_run) or bool(inner.get("written"))
    merged = {**inner, **{key: result[key] for key in ("input", "format_in", "bytes_in")}}
    merged.pop("nothing_to_fix", None)
    merged.update(output=str(target), plan=[step, *steps], dry_run=dry_run, written=written,
                  bytes_out=target.stat().st_size if written else None,
                  verified={"consolidation": consolidated, **(inner.get("verified") or {})},
                  notes=[*inner.get("notes", []), f"the default output for a directory is DIRNAME{target.suffix} "
                                                  "next to it"])
    return merged


# --- consolidation: PyTorch's own loader, with pickled non-tensor values read weights_only -----------------------


def _consolidated_temp(reading: CheckpointReading, target: Path) -> Path:
    """A fsynced torch.save zip of the whole directory in the output folder (so the final rename is atomic)."""
    import torch

    from torchdoctor.ckpt.verify import one_line
    from torchdoctor.errors import WriteFailed

    try:
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".consolidated.tmp")
    except OSError as e:
        raise WriteFailed(f"cannot create a file in {target.parent}: {e.strerror or e}") from None
    temp = Path(name)
    try:
        state = load_dcp(reading.path)
        with open(fd, "wb") as out:
            torch.save(state, out)
            out.flush()
            os.fsync(out.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temp, stat.S_IMODE(0o666 & ~umask))  # a new file's usual mode: mkstemp's 0600 is for temp files
    except BaseException as e:
        temp.unlink(missing_ok=True)
        if isinstance(e, TorchdoctorError) or not isinstance(e, Exception):
            raise
        raise WriteFailed(f"consolidating {reading.path} failed: {one_line(e)}") from e
    return temp


def load_dcp(folder: Path) -> dict[str, Any]:
    """The whole checkpoint as one nested state dict, in this process, without a process group.

    This is ``torch.distributed.checkpoint.format_utils.dcp_to_torch_save`` minus its ``torch.save``, with one
    change: torch's planner unpickles non-tensor values with ``torch.load(weights_only=False)``, which would run
    whatever a hostile ``.distcp`` file names; here they are read with ``weights_only=True``.
    """
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    state: dict[str, Any] = {}
    planner = _weights_only_planner()
    try:
        _load_state_dict(state, storage_reader=FileSystemReader(folder), planner=planner, no_dist=True)
    except CheckpointException as e:  # a BaseException: it wraps each rank's error, with its traceback, as text
        if planner.refused is not None:
            raise InputError(f"{folder} holds a pickled non-tensor value that torch.load(weights_only=True) "
                             f"refuses ({planner.refused}): torchdoctor consolidates only what it can load "
                             "safely") from None
        raise InputError(f"torch.distributed.checkpoint cannot read the shards of {folder}: {_last_line(e)}",
                         hint="a .distcp file is missing, truncated or damaged") from None
    return state


def _last_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1][:200] if lines else type(error).__name__


def _unsupported_global(error: Exception) -> str:
    found = re.search(r"GLOBAL (\S+)", str(error))
    return f"global {found.group(1)}" if found else "a global outside its allowlist"


def _weights_only_planner() -> Any:
    import torch
    from torch.distributed.checkpoint._traverse import set_element
    from torch.distributed.checkpoint.format_utils import _EmptyStateDictLoadPlanner

    class WeightsOnlyPlanner(_EmptyStateDictLoadPlanner):
        refused: str | None = None

        def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
            try:
                loaded = torch.load(value, weights_only=True)
            except pickle.UnpicklingError as e:
                self.refused = _unsupported_global(e)
                raise
            fqn = read_item.dest_index.fqn
            if self.flatten_state_dict:
                set_element(self.original_state_dict, self.mappings[fqn], loaded)
            else:
                self.state_dict[fqn] = loaded

    return WeightsOnlyPlanner()


# --- verification: the zip against a second, independent read of the shards --------------------------------------


def _verify_consolidated(temp: Path, reading: CheckpointReading) -> dict[str, Any]:
    """Keys, shapes and dtypes equal ``.metadata``'s; every tensor bit for bit equal to ``dcp.load``'s."""
    import torch

    from torchdoctor.ckpt.verify import VerificationFailed, real_tensors

    written = real_tensors(torch.load(temp, weights_only=True, map_location="cpu"))
    if set(written) != set(reading.tensors):
        missing, extra = sorted(set(reading.tensors) - set(written)), sorted(set(written) - set(reading.tensors))
        raise VerificationFailed(f"the consolidated keys differ from .metadata's (missing {missing[:3]}, "
                                 f"extra {extra[:3]})")
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        reference = load_tensors(reading)
    except CheckpointException as e:
        raise VerificationFailed(f"torch.distributed.checkpoint cannot re-read {reading.path}: {_last_line(e)}") \
            from None
    compared = 0
    for key, expected in reference.items():
        got = written[key]
        if (got.dtype, got.shape) != (expected.dtype, expected.shape):
            raise VerificationFailed(f"{key}: consolidated as {got.dtype} {list(got.shape)}, .metadata says "
                                     f"{expected.dtype} {list(expected.shape)}")
        if not torch.equal(_bits(got), _bits(expected)):
            raise VerificationFailed(f"{key}: the consolidated bytes differ from torch.distributed.checkpoint's")
        compared += expected.nbytes
    shards = sorted(p.name for p in reading.path.iterdir() if p.suffix == ".distcp")
    return {"tensors": len(reference), "shards": shards, "bytes_compared": compared, "bit_identical": True,
            "against": "torch.distributed.checkpoint load into empty tensors shaped from .metadata",
            "torch_load": "torch.load(weights_only=True) succeeded"}


def load_tensors(reading: CheckpointReading) -> dict[str, Any]:
    """Every tensor of the directory by its ``.metadata`` key, read by torch's DefaultLoadPlanner (no process group)."""
    import torch
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    state = {key: torch.empty(record.shape, dtype=getattr(torch, record.dtype))
             for key, record in reading.tensors.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _load_state_dict(state, storage_reader=FileSystemReader(reading.path), planner=DefaultLoadPlanner(),
                         no_dist=True)
    return state


def _bits(tensor: Any) -> Any:
    """The bytes in row-major order: NaN equals NaN, -0.0 differs from 0.0."""
    import torch

    return tensor.contiguous().reshape(-1).view(torch.uint8)
