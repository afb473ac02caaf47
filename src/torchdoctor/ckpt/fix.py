"""``fix_checkpoint``: the Python twin of ``torchdoctor ckpt fix`` — plan, write a temp file, verify, rename."""

from __future__ import annotations

import dataclasses
import os
import stat
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from torchdoctor.ckpt import shards
from torchdoctor.ckpt.fix_output import check_target, fix_report, sync_folder
from torchdoctor.ckpt.formats import Format, checkpoint_path, detect_format
from torchdoctor.ckpt.judge import check_detection, check_globals, corrupt_finding
from torchdoctor.ckpt.plan import Plan, Step, build_plan, parse_options, planned_devices, remaining_findings
from torchdoctor.ckpt.reader import CheckpointCorrupt, CheckpointReading, collect_tensors, read_checkpoint
from torchdoctor.ckpt.record_copy import CopiedStorage, start_writeback
from torchdoctor.ckpt.verify import StorageComparer, VerificationFailed, one_line, verify_output
from torchdoctor.codes import make_finding
from torchdoctor.errors import InputError, TorchdoctorError, UsageError, WriteFailed
from torchdoctor.report import Finding, Report, Severity

__all__ = ["VerificationFailed", "WriteFailed", "fix_checkpoint"]  # the errors are re-exported for API users

# A fix report's findings are the problems the *output* still has (usually none); what was done is
# result["plan"], what the written file was checked for is result["verified"]. The input is only read.
OUT_OF_SCOPE = {
    Format.TORCHSCRIPT: "is a TorchScript archive (torch.jit.save), not a torch.save checkpoint: save "
                        "torch.jit.load(PATH).state_dict() with torch.save and fix that file",
    Format.PICKLE: "is a plain pickle without torch.save's tensor storages: there are no weights to fix",
}


@dataclass(frozen=True)
class _Job:
    reading: CheckpointReading
    plan: Plan
    fixed: Any
    """The fixed tree, as the reader's records."""
    writer: str
    model: Any
    input_shapes: Sequence[Sequence[int]] | None
    on_progress: Callable[[int, int], None] | None


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
    on_progress: Callable[[int, int], None] | None = None,
) -> Report:
    """Plan the fixes for the checkpoint at ``path``, write them to ``output``, verify it (``dry_run``: plan only).

    ``on_progress(bytes_done, bytes_total)`` hears of each storage copied into a zip or legacy output.
    """
    source = checkpoint_path(path)
    options = parse_options(to, strip_prefixes, drop_mismatched, keep_wrapper)
    result: dict[str, Any] = {"input": str(source), "output": None, "format_in": None, "format_out": None,
                              "plan": [], "written": False, "verified": {}, "bytes_in": _size(source),
                              "bytes_out": None}
    reading = _read_or_refuse(source, result)
    if isinstance(reading, Report):
        return reading
    if reading.format is Format.DCP:  # a directory: consolidated into one zip first (ckpt/dcp.py)
        from torchdoctor.ckpt.dcp import fix_dcp

        return fix_dcp(reading, result, fix_file=fix_checkpoint,
                       output=output, to=options.to, dry_run=dry_run, force=force, model=model,
                       strip_prefixes=strip_prefixes, drop_mismatched=drop_mismatched, keep_wrapper=keep_wrapper,
                       input_shapes=input_shapes, on_progress=on_progress)
    sharded = reading.format is Format.HF_SHARDED  # merged into one file (ckpt/shards.py)
    if sharded:
        options, result["bytes_in"] = shards.merge_options(reading, options), shards.shards_bytes(reading)
    plan = build_plan(reading, options, model.state_dict() if model is not None else None)
    if result.pop("module_extracted", None):
        plan = _with_extraction(plan, reading)
    plan = shards.with_merge_step(plan, reading) if sharded else plan
    target = _output_path(source, output, plan)
    fixed = plan.apply(reading.tree)
    writer, why = _choose_writer(reading, plan, fixed)
    if sharded:
        shards.check_writer(writer, why, reading)
    job = _Job(reading, plan, fixed, writer, model, input_shapes, on_progress)
    result.update(output=str(target), format_out=plan.format_out.value, plan=plan.to_dicts(),
                  notes=list(plan.notes) + ([f"written through torch.load: {why}"] if why else []),
                  dropped=list(plan.dropped), reinitialise=list(plan.match.missing) if plan.match else [])
    findings = tuple(remaining_findings(plan, fixed, planned_devices(fixed, writer == "zip")))
    if not plan.steps:
        result["nothing_to_fix"] = True
        return fix_report(findings, result)
    result["dry_run"] = dry_run
    if dry_run:  # a dry run writes nothing, so an existing output never stops it: say what a real run needs
        result["notes"] += _target_notes(target, force)
    else:
        check_target(target, force)
        mode_of = shards.index_of(reading) if sharded else source  # the output gets the input's permissions
        result["writer"], result["verified"] = _write_atomically(mode_of, target, job)
        result.update(written=True, bytes_out=_size(target))
    return fix_report(findings, result)


def _read_or_refuse(source: Path, result: dict[str, Any]) -> CheckpointReading | Report:
    """The safe reader's description of the input, or the report of why nothing will be written."""
    detection = detect_format(source)
    result["format_in"] = detection.format.value
    early = check_detection(detection, str(source))
    if early or not detection.format.is_checkpoint:
        return _refused(result, early, "the input is not a readable checkpoint")
    incomplete = shards.incomplete_findings(detection, str(source))
    if incomplete:
        return _refused(result, incomplete, "shards are missing or git-lfs pointers: a merge would leave their "
                        "tensors out")
    # a 1.0-1.2 TorchScript archive is a plain table of tensors that no torch today loads: rewriting it is a fix
    if detection.format in OUT_OF_SCOPE and detection.details.get("layout") != "model.json":
        raise InputError(f"{source} {OUT_OF_SCOPE[detection.format]}")
    try:
        reading = read_checkpoint(source, detection)
    except CheckpointCorrupt as exc:
        return _refused(result, [corrupt_finding(str(source), exc.message, detection.format.value)],
                        "the input is damaged")
    if reading.format is Format.LEGACY_TAR:  # a torch 0.1-0.3 module pickle: only its weights can still load
        reading, extracted = _module_as_state_dict(reading)
        if extracted:
            result["module_extracted"] = extracted
    unsafe = _unsafe_findings(reading)
    if unsafe:
        return _refused(result, unsafe, "the pickle names globals that only a full unpickler would run; torchdoctor "
                        "rewrites only files it can load with weights_only=True")
    return reading


def _module_as_state_dict(reading: CheckpointReading) -> tuple[CheckpointReading, str | None]:
    """A tar checkpoint's reading as the records the zip writer needs, and the class name of a pickled
    ``nn.Module`` whose weights became a state dict (the one ``state_dict()`` would give).

    No torch since 0.4 can unpickle these modules (``Variable``, the THNN backend are gone), so their
    weights are the only part anyone can still use.
    """
    from torchdoctor.ckpt.old_tar import THNN_BACKEND, VARIABLE_CLASSES
    from torchdoctor.ckpt.records import PickledObject

    # torch.cuda.* classes (GPU tensors) and Variable/Parameter wrappers became plain records, which keep
    # dtype, device and the parameter flag: all the zip writer needs. Anything unsafe stays and stops a rewrite.
    described = VARIABLE_CLASSES | {THNN_BACKEND}
    kept = [row for row in reading.globals
            if not (row["kind"] == "safe" and (row["name"].startswith("torch.cuda.") or row["name"] in described))]
    root = reading.tree
    if not (isinstance(root, PickledObject) and root.use is not None and root.use.kind == "module"):
        return dataclasses.replace(reading, globals=kept), None
    # the module object goes, and with it what only it used
    kept = [row for row in kept if row["kind"] != "module" and row["name"] != "collections.OrderedDict"]
    return dataclasses.replace(reading, tree=OrderedDict(reading.tensors), globals=kept), root.full_name()


def _with_extraction(plan: Plan, reading: CheckpointReading) -> Plan:
    extract = Step("extract-state-dict", False, f"Write the pickled module's {len(reading.tensors)} parameters and "
                   "buffers as a state dict (the names model.state_dict() gives); the module object and its class "
                   "are not kept: load the result with model.load_state_dict")
    return dataclasses.replace(plan, steps=(extract, *plan.steps))


def _target_notes(target: Path, force: bool) -> list[str]:
    if target.exists() and not force:
        return [f"{target} already exists: a real run needs --force to overwrite it, or another --output"]
    return []


def _refused(result: dict[str, Any], findings: Sequence[Finding], why: str) -> Report:
    result["plan"] = [{"action": "refuse", "safe": False, "detail": f"Nothing written: {why}"}]
    return fix_report(findings, result)


def _unsafe_findings(reading: CheckpointReading) -> list[Finding]:
    # In a fix report a pickled nn.Module is a problem that stays in the file: an error, not a warning.
    return [make_finding(f.id, f.message, severity=Severity.ERROR, details=f.details)
            for f in check_globals(reading.globals, reading.format.value)]


def _choose_writer(reading: CheckpointReading, plan: Plan, fixed: Any) -> tuple[str, str | None]:
    """``zip`` / ``legacy`` (records, no deserialising), ``safetensors``, or ``torch`` (torch.load + torch.save)
    and why."""
    from torchdoctor.ckpt.writers import why_not_streamable

    if plan.format_out is Format.SAFETENSORS:
        return "safetensors", None
    streamable = plan.format_out in (Format.ZIP, Format.LEGACY)
    why = why_not_streamable(reading, fixed) if streamable else None
    if plan.format_out is Format.LEGACY and why is None and (reading.byteorder or "little") != "little":
        why = "the data is big-endian, and a legacy stream is read in the loading machine's byte order"
    if streamable and why is None:
        return plan.format_out.value, None
    if reading.format is Format.LEGACY_TAR:
        raise UsageError(f"{reading.path.name} (legacy tar) can be rewritten as zip or safetensors only",
                         hint="pass --to zip")
    return "torch", why


def _output_path(source: Path, output: str | os.PathLike[str] | None, plan: Plan) -> Path:
    if output is not None:
        target = Path(output)
    elif plan.format_in is Format.HF_SHARDED:
        target = shards.default_target(source, plan.format_out)
    elif plan.format_out is Format.SAFETENSORS:
        target = source.with_name(f"{source.stem}.fixed.safetensors")
    else:
        suffix = ".pt" if plan.format_in is Format.SAFETENSORS else source.suffix
        target = source.with_name(f"{source.stem}.fixed{suffix}")
    if target.resolve() == source.resolve() or (target.exists() and os.path.samefile(source, target)):
        raise UsageError(f"the output {target} is the input itself: ckpt fix never modifies its input",
                         hint="pass another --output path")
    return target


# --- writing: temp file in the output folder, fsync, verify, rename ----------------------------------------------


def _write_atomically(source: Path, target: Path, job: _Job) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as e:
        raise WriteFailed(f"cannot create a file in {target.parent}: {e.strerror or e}") from None
    temp = Path(name)
    try:
        with open(fd, "w+b") as out, ThreadPoolExecutor(1) as pool:
            # the copy runs in the kernel with the GIL released: a second core starts the write-back of what is
            # already copied and compares it (measured ~0.1 s faster on 1 GiB than the write-back started by
            # the copying thread, which then waits on the disk's queue)
            comparer = StorageComparer(job.reading, out.fileno(), pool, before_compare=start_writeback)
            try:
                facts = _write(job, out, _progress_reported(comparer, job))
                out.flush()
                # fsync waits for the disk and releases the GIL: re-read and check the file meanwhile
                synced = pool.submit(os.fsync, out.fileno())
                verified = verify_output(temp, job, comparer)
                synced.result()
            finally:
                comparer.cancel()
        os.chmod(temp, stat.S_IMODE(source.stat().st_mode))
        os.replace(temp, target)
    except BaseException as e:
        temp.unlink(missing_ok=True)
        if isinstance(e, TorchdoctorError) or not isinstance(e, Exception):
            raise
        raise WriteFailed(f"writing {target} failed: {one_line(e)}") from e
    sync_folder(target.parent)
    return facts, verified


def _progress_reported(comparer: StorageComparer, job: _Job) -> Callable[[CopiedStorage], None]:
    if job.on_progress is None:
        return comparer
    storages = {record.storage_key for record in collect_tensors(job.fixed).values() if record.storage_key}
    total, done = sum(job.reading.storages[key].nbytes for key in storages), 0

    def on_copied(copied: CopiedStorage) -> None:
        nonlocal done
        comparer(copied)
        done += copied.nbytes
        job.on_progress(done, total)

    return on_copied


def _write(job: _Job, out: BinaryIO, on_copied: Callable[[CopiedStorage], None]) -> dict[str, Any]:
    from torchdoctor.ckpt import writers

    if job.writer == "zip":
        return writers.write_zip(job.reading, job.fixed, out, on_copied=on_copied)
    if job.writer == "legacy":
        return writers.write_legacy(job.reading, job.fixed, out, on_copied=on_copied)
    if job.writer == "safetensors":
        metadata = job.reading.metadata if job.reading.format is Format.SAFETENSORS else {}
        kept = {str(k): v for k, v in metadata.items() if isinstance(v, str)}
        return writers.write_safetensors(job.reading, job.fixed, out, kept)
    return writers.save_with_torch(job.plan.apply(writers.load_tree(job.reading)), out, job.plan.format_out)


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size if path.is_file() else None
    except OSError:
        return None
