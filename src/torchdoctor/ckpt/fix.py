"""``fix_checkpoint``: the Python twin of ``torchdoctor ckpt fix`` — plan, write a temp file, verify, rename."""

from __future__ import annotations

import copy
import os
import stat
import tempfile
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from torchdoctor.ckpt.formats import Format, detect_format
from torchdoctor.ckpt.judge import check_detection, check_globals, corrupt_finding
from torchdoctor.ckpt.plan import Plan, build_plan, parse_options, planned_devices, remaining_findings
from torchdoctor.ckpt.reader import CheckpointCorrupt, CheckpointReading, collect_tensors, read_checkpoint
from torchdoctor.ckpt.records import TensorRecord
from torchdoctor.codes import make_finding
from torchdoctor.errors import InputError, TorchdoctorError, UsageError
from torchdoctor.report import Finding, Report, Severity

# A fix report's findings are the problems the *output* still has (usually none); what was done is
# result["plan"], what the written file was checked for is result["verified"]. The input is only read.
COMMAND = "ckpt fix"
# Measured: 32 Ki elements per chunk compare 1 GiB ~3x faster than 256 Ki (large reads pay page faults).
COMPARE_ELEMENTS = 1 << 15
OUT_OF_SCOPE = {
    Format.TORCHSCRIPT: "is a TorchScript archive (torch.jit.save), not a torch.save checkpoint: save "
                        "torch.jit.load(PATH).state_dict() with torch.save and fix that file",
    Format.HF_SHARDED: "is a sharded Hugging Face checkpoint: fix its shard files one at a time, or load and "
                       "re-save it with transformers (from_pretrained, save_pretrained)",
    Format.PICKLE: "is a plain pickle without torch.save's tensor storages: there are no weights to fix",
}


class WriteFailed(TorchdoctorError):
    """The output could not be written (disk full, permissions, ...): the temp file is gone, the input untouched."""


class VerificationFailed(WriteFailed):
    """The written file does not hold what the plan promised: it was removed, nothing was renamed into place."""


@dataclass(frozen=True)
class _Job:
    reading: CheckpointReading
    plan: Plan
    fixed: Any
    """The fixed tree, as the reader's records."""
    writer: str
    model: Any
    input_shapes: Sequence[Sequence[int]] | None


def fix_checkpoint(
    path: str | os.PathLike[str],
    *,
    output: str | os.PathLike[str] | None = None,
    model: Any = None,
    to: str | Format | None = None,
    strip_prefixes: Sequence[str] = (),
    drop_mismatched: bool = False,
    keep_wrapper: bool = False,
    dry_run: bool = False,
    force: bool = False,
    input_shapes: Sequence[Sequence[int]] | None = None,
) -> Report:
    """Plan the fixes for the checkpoint at ``path``, write them to ``output``, verify it (``dry_run``: plan only)."""
    source = Path(path)
    options = parse_options(to, strip_prefixes, drop_mismatched, keep_wrapper)
    result: dict[str, Any] = {"input": str(source), "output": None, "format_in": None, "format_out": None,
                              "plan": [], "written": False, "verified": {}, "bytes_in": _size(source),
                              "bytes_out": None}
    reading = _read_or_refuse(source, result)
    if isinstance(reading, Report):
        return reading
    if reading.format is Format.DCP:  # a directory: consolidated into one zip first (ckpt/dcp.py)
        from torchdoctor.ckpt.dcp import fix_dcp

        return fix_dcp(reading, result, output=output, to=options.to, dry_run=dry_run, force=force, model=model,
                       strip_prefixes=strip_prefixes, drop_mismatched=drop_mismatched, keep_wrapper=keep_wrapper,
                       input_shapes=input_shapes)
    plan = build_plan(reading, options, model.state_dict() if model is not None else None)
    target = _output_path(source, output, plan)
    fixed = plan.apply(reading.tree)
    writer, why = _choose_writer(reading, plan, fixed)
    job = _Job(reading, plan, fixed, writer, model, input_shapes)
    result.update(output=str(target), format_out=plan.format_out.value, plan=plan.to_dicts(),
                  notes=list(plan.notes) + ([f"written through torch.load: {why}"] if why else []),
                  dropped=list(plan.dropped), reinitialise=list(plan.match.missing) if plan.match else [])
    findings = tuple(remaining_findings(plan, fixed, planned_devices(fixed, writer == "zip")))
    if not plan.steps:
        result["nothing_to_fix"] = True
        return _report(findings, result)
    _check_target(target, force)
    result["dry_run"] = dry_run
    if not dry_run:
        result["writer"], result["verified"] = _write_atomically(source, target, job)
        result.update(written=True, bytes_out=_size(target))
    return _report(findings, result)


def _read_or_refuse(source: Path, result: dict[str, Any]) -> CheckpointReading | Report:
    """The safe reader's description of the input, or the report of why nothing will be written."""
    detection = detect_format(source)
    result["format_in"] = detection.format.value
    early = check_detection(detection, str(source))
    if early or not detection.format.is_checkpoint:
        return _refused(result, early, "the input is not a readable checkpoint")
    if detection.format in OUT_OF_SCOPE:
        raise InputError(f"{source} {OUT_OF_SCOPE[detection.format]}")
    try:
        reading = read_checkpoint(source, detection)
    except CheckpointCorrupt as exc:
        return _refused(result, [corrupt_finding(str(source), exc.message, detection.format.value)],
                        "the input is damaged")
    unsafe = _unsafe_findings(reading)
    if unsafe:
        return _refused(result, unsafe, "the pickle names globals that only a full unpickler would run; torchdoctor "
                        "rewrites only files it can load with weights_only=True")
    return reading


def _refused(result: dict[str, Any], findings: Sequence[Finding], why: str) -> Report:
    result["plan"] = [{"action": "refuse", "safe": False, "detail": f"Nothing written: {why}"}]
    return _report(findings, result)


def _unsafe_findings(reading: CheckpointReading) -> list[Finding]:
    # In a fix report a pickled nn.Module is a problem that stays in the file: an error, not a warning.
    return [make_finding(f.id, f.message, severity=Severity.ERROR, details=f.details)
            for f in check_globals(reading.globals, reading.format.value)]


def _choose_writer(reading: CheckpointReading, plan: Plan, fixed: Any) -> tuple[str, str | None]:
    """``zip`` (records, no deserialising), ``safetensors``, or ``torch`` (torch.load + torch.save) and why."""
    from torchdoctor.ckpt.writers import why_not_streamable

    if plan.format_out is Format.SAFETENSORS:
        return "safetensors", None
    why = why_not_streamable(reading, fixed) if plan.format_out is Format.ZIP else None
    if plan.format_out is Format.ZIP and why is None:
        return "zip", None
    if reading.format is Format.LEGACY_TAR:
        raise UsageError(f"{reading.path.name} (legacy tar) can be rewritten as zip or safetensors only",
                         hint="pass --to zip")
    return "torch", why


def _output_path(source: Path, output: str | os.PathLike[str] | None, plan: Plan) -> Path:
    if output is not None:
        target = Path(output)
    elif plan.format_out is Format.SAFETENSORS:
        target = source.with_name(f"{source.stem}.fixed.safetensors")
    else:
        suffix = ".pt" if plan.format_in is Format.SAFETENSORS else source.suffix
        target = source.with_name(f"{source.stem}.fixed{suffix}")
    if target.resolve() == source.resolve() or (target.exists() and os.path.samefile(source, target)):
        raise UsageError(f"the output {target} is the input itself: ckpt fix never modifies its input",
                         hint="pass another --output path")
    return target


def _check_target(target: Path, force: bool) -> None:
    if target.is_dir():
        raise UsageError(f"the output {target} is a directory", hint="pass a file path with --output")
    if target.exists() and not force:
        raise UsageError(f"{target} already exists", hint="pass --force to overwrite it, or choose another --output")
    if not target.parent.is_dir():
        raise UsageError(f"the output folder {target.parent} does not exist")


# --- writing: temp file in the output folder, fsync, verify, rename ----------------------------------------------


def _write_atomically(source: Path, target: Path, job: _Job) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as e:
        raise WriteFailed(f"cannot create a file in {target.parent}: {e.strerror or e}") from None
    temp = Path(name)
    try:
        with open(fd, "w+b") as out, ThreadPoolExecutor(1) as pool:
            facts = _write(job, out)
            out.flush()
            # fsync waits for the disk and releases the GIL: verify the page cache meanwhile
            synced = pool.submit(os.fsync, out.fileno())
            verified = _verify(temp, job)
            synced.result()
        os.chmod(temp, stat.S_IMODE(source.stat().st_mode))
        os.replace(temp, target)
    except BaseException as e:
        temp.unlink(missing_ok=True)
        if isinstance(e, TorchdoctorError) or not isinstance(e, Exception):
            raise
        raise WriteFailed(f"writing {target} failed: {_one_line(e)}") from e
    _sync_folder(target.parent)
    return facts, verified


def _write(job: _Job, out: BinaryIO) -> dict[str, Any]:
    from torchdoctor.ckpt import writers

    if job.writer == "zip":
        return writers.write_zip(job.reading, job.fixed, out)
    if job.writer == "safetensors":
        metadata = job.reading.metadata if job.reading.format is Format.SAFETENSORS else {}
        kept = {str(k): v for k, v in metadata.items() if isinstance(v, str)}
        return writers.write_safetensors(job.reading, job.fixed, out, kept)
    return writers.save_with_torch(job.plan.apply(writers.load_tree(job.reading)), out, job.plan.format_out)


def _sync_folder(folder: Path) -> None:
    # the rename itself is durable only once the folder's entry is on disk
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot fsync a directory; the data itself already is
    finally:
        os.close(fd)


# --- verification ---------------------------------------------------------------------------------------------------


def _verify(temp: Path, job: _Job) -> dict[str, Any]:
    """Re-read the temp file and hold it to the plan: keys, shapes, dtypes, every byte, sharing, the model."""
    out = read_checkpoint(temp)
    if out.format is not job.plan.format_out:
        raise VerificationFailed(f"the written file reads as {out.format.value}, not {job.plan.format_out.value}")
    expected = collect_tensors(job.fixed)
    verified: dict[str, Any] = {"reread": f"{out.format.value}, by torchdoctor's reader",
                                "tensors": len(expected), "keys_shapes_dtypes": "equal to the plan",
                                "bytes_compared": _compare_tensors(job.reading, expected, out),
                                "bit_identical": True}
    weights = None
    if out.format is not Format.SAFETENSORS:
        import torch

        mmap = out.format is Format.ZIP
        loaded = torch.load(temp, weights_only=True, map_location="cpu", mmap=mmap)
        verified["torch_load"] = f"torch.load(weights_only=True, mmap={mmap}) succeeded"
        verified["shared_storages"] = _check_shared(expected, out, loaded)
        path = job.plan.output_weights_path
        weights = _at(loaded, path) if path is not None else None
    if job.model is not None:
        verified["model"] = _check_model(job, out, weights)
    return verified


def _compare_tensors(source: CheckpointReading, expected: Mapping[str, TensorRecord], out: CheckpointReading) -> int:
    if list(out.tensors) != list(expected):
        missing, extra = sorted(set(expected) - set(out.tensors)), sorted(set(out.tensors) - set(expected))
        raise VerificationFailed(f"the written keys differ from the plan (missing {missing[:3]}, extra {extra[:3]})")
    source_keys = {id(record): key for key, record in source.tensors.items()}
    compared, done = 0, set()
    for key, record in expected.items():
        got = out.tensors[key]
        if (got.shape, got.dtype) != (record.shape, record.dtype):
            raise VerificationFailed(f"{key}: written as {got.dtype} {list(got.shape)}, planned as "
                                     f"{record.dtype} {list(record.shape)}")
        pair = (_place(record), _place(got))
        if record.storage_key is None or pair in done:  # meta tensors hold no bytes; tied ones are compared once
            continue
        done.add(pair)
        compared += _compare_values(source, source_keys[id(record)], out, key)
    return compared


def _place(record: TensorRecord) -> tuple[Any, ...]:
    return record.storage_key, record.storage_offset, record.shape, record.stride, record.dtype


def _compare_values(source: CheckpointReading, source_key: str, out: CheckpointReading, key: str) -> int:
    """Bytes of both tensors, chunk by chunk in bounded memory; NaN equals NaN because bits are compared."""
    from torchdoctor.ckpt.tensor_data import iter_tensor_values

    compared = 0
    chunks = zip(iter_tensor_values(source, source_key, COMPARE_ELEMENTS),
                 iter_tensor_values(out, key, COMPARE_ELEMENTS), strict=False)
    for before, after in chunks:
        if not _same_bits(before, after):
            raise VerificationFailed(f"{key}: the written bytes differ from the input's near element "
                                     f"{compared // max(1, before.itemsize)}")
        compared += before.nbytes
    if compared != (out.tensors[key].nbytes or 0):
        raise VerificationFailed(f"{key}: {compared} bytes compared, the tensor has {out.tensors[key].nbytes}")
    return compared


def _same_bits(before: Any, after: Any) -> bool:
    import numpy as np

    if before.shape != after.shape:
        return False
    words = []
    for chunk in (before, after):
        raw = chunk.astype(chunk.dtype.newbyteorder("<"), copy=False).view(np.uint8)
        words.append(raw.view(np.uint64) if raw.size % 8 == 0 else raw)  # wider words compare faster
    return bool(np.array_equal(words[0], words[1]))


def _check_shared(expected: Mapping[str, TensorRecord], out: CheckpointReading, loaded: Any) -> dict[str, Any]:
    """Tensors that shared a storage in the input share one in the output (in the file and after torch.load)."""
    planned = _groups(expected)
    if sorted(planned) != sorted(_groups(out.tensors)):
        raise VerificationFailed("storage sharing differs from the input's (tied weights would come apart)")
    tensors = _real_tensors(loaded)
    for group in planned:
        if len({tensors[key].untyped_storage().data_ptr() for key in group}) != 1:
            raise VerificationFailed(f"after torch.load, {', '.join(group)} no longer share one storage")
    return {"groups": planned, "still_shared": True}


def _groups(tensors: Mapping[str, TensorRecord]) -> list[list[str]]:
    by_storage: dict[str, list[str]] = {}
    for key, record in tensors.items():
        if record.storage_key is not None:
            by_storage.setdefault(record.storage_key, []).append(key)
    return sorted(sorted(keys) for keys in by_storage.values() if len(keys) > 1)


def _real_tensors(tree: Any) -> dict[str, Any]:
    """torch.load's tensors by the same dotted paths the reader gives its records."""
    import torch

    found: dict[str, Any] = {}
    seen: set[int] = set()
    todo: list[tuple[Any, tuple[str, ...]]] = [(tree, ())]
    while todo:
        node, path = todo.pop()
        if isinstance(node, torch.Tensor):
            found.setdefault(".".join(path), node)
        elif isinstance(node, dict | list | tuple) and id(node) not in seen:
            seen.add(id(node))
            items = node.items() if isinstance(node, dict) else enumerate(node)
            todo.extend((child, (*path, str(name))) for name, child in items)
    return found


def _check_model(job: _Job, out: CheckpointReading, weights: Mapping[str, Any] | None) -> dict[str, Any]:
    """A real ``load_state_dict`` into a copy of the model, then one real training step."""
    match = job.plan.match
    facts: dict[str, Any] = {"class": type(job.model).__name__}
    if match is None or match.shape_mismatches:
        facts["skipped"] = ("no state dict in the checkpoint" if match is None else
                            "shape mismatches remain (see the findings): pass drop_mismatched to drop them")
        return facts
    if weights is None:  # safetensors: the whole file is the state dict, read back by the streaming reader
        from torchdoctor.ckpt.against_model import materialize

        weights = materialize(out, out.tree)
    trial = copy.deepcopy(job.model)
    strict = match.ok
    try:
        loaded = trial.load_state_dict(weights, strict=strict)
    except RuntimeError as e:
        raise VerificationFailed(f"the fixed weights do not load into {facts['class']}: {_one_line(e)}") from None
    if not (set(loaded.missing_keys) <= set(match.missing) and set(loaded.unexpected_keys) <= set(match.unexpected)):
        raise VerificationFailed(f"load_state_dict found other missing/unexpected keys than planned: "
                                 f"{loaded.missing_keys[:3]} / {loaded.unexpected_keys[:3]}")
    facts.update(load_state_dict=f"strict={strict}", missing=list(loaded.missing_keys),
                 unexpected=list(loaded.unexpected_keys))
    facts["training_step"] = _training_step(trial, job.input_shapes)
    return facts


def _training_step(model: Any, input_shapes: Sequence[Sequence[int]] | None) -> dict[str, Any]:
    from torchdoctor.ckpt.against_model import example_inputs, surrogate_loss
    from torchdoctor.step import run_training_step

    inputs = example_inputs(model, input_shapes)
    if inputs is None:
        return {"skipped": "cannot guess the input shape from the first layer: pass input_shapes"}
    outcome = run_training_step(model, (inputs, None), loss_fn=surrogate_loss, copy_model=False)
    if not outcome.ok:
        failure = outcome.failure
        raise VerificationFailed(f"a training step with the fixed weights failed in {failure.phase}: "
                                 f"{failure.exc_type}: {failure.headline}")
    return {"ok": True, "loss": outcome.loss, "input_shapes": [list(x.shape) for x in inputs]}


def _at(tree: Any, path: Sequence[Any]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size if path.is_file() else None
    except OSError:
        return None


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200]}" if text else type(error).__name__


def _report(findings: Any, result: dict[str, Any]) -> Report:
    from torchdoctor.ckpt.sections import fix_sections

    findings = tuple(findings)
    return Report(COMMAND, findings, result, fix_sections(result, findings))
