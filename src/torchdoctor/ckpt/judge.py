"""Pure judgements of what the safe reader found: file kind, pickle safety, format, devices, values."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from torchdoctor.ckpt.formats import Detection, Format
from torchdoctor.codes import make_finding
from torchdoctor.report import Finding
from torchdoctor.units import format_bytes

MAX_NAMED = 5
PASS_THE_CHECKPOINT = ("Pass the checkpoint itself: the file torch.save or save_pretrained wrote (often .pt, .pth, "
                       ".ckpt, .bin or .safetensors), or its folder.")


def check_detection(detection: Detection, path: str) -> list[Finding]:
    """Findings for files that are not (usable) checkpoints; [] for a readable checkpoint."""
    if detection.format is Format.LFS_POINTER:
        size = detection.details.get("size")
        points_to = f" to a {format_bytes(int(size))} object" if str(size or "").isdigit() else ""
        return [make_finding("lfs-pointer", f"{path} is a git-lfs pointer{points_to}, not the checkpoint itself; "
                             "run git lfs pull.", location=path, details=dict(detection.details))]
    if detection.format is Format.TEXT and detection.details.get("looks_like") != "an HTML page":
        # a script, a config or notes: passed by mistake, not a failed download (an HTML page is one)
        return [make_finding("not-a-checkpoint", f"{path} is {detection.details.get('looks_like', 'text')}, not a "
                             "checkpoint.", location=path, fix=PASS_THE_CHECKPOINT,
                             details={"format": detection.format.value, **detection.details})]
    if detection.format in (Format.TEXT, Format.UNKNOWN):
        return [make_finding("not-a-checkpoint", f"{path} is not a checkpoint: {detection.reason}", location=path,
                             details={"format": detection.format.value, **detection.details})]
    if detection.format is Format.EMPTY:
        return [make_finding("corrupt-checkpoint", f"{path} is empty (0 bytes): the save or download never wrote it.",
                             location=path, details={"format": "empty"})]
    if detection.corrupt:
        return [corrupt_finding(path, detection.corrupt, detection.format.value)]
    return []


def corrupt_finding(path: str, what: str, format_name: str) -> Finding:
    return make_finding("corrupt-checkpoint", f"{path} is damaged: {what}", location=path,
                        details={"format": format_name, "problem": what})


# numpy arrays and scalars (np.float64 scores, RNG states): torch's weights_only unpickler refuses them like any
# global outside its list, but they build data, never run code; the element types are globals of their own
_NUMPY_DATA = re.compile(r"numpy\.(?:_?core\.multiarray\.(?:_reconstruct|scalar)|ndarray|dtype|dtypes\.\w+DType)")


def is_numpy_data(name: str) -> bool:
    """A numpy global that builds arrays or scalars (refused by weights_only, but no code)."""
    return _NUMPY_DATA.fullmatch(name) is not None


def check_globals(globals_: list[Mapping[str, Any]], format_name: str) -> list[Finding]:
    """unsafe-pickle for every global outside the allow-list (numpy's data globals: weights-only-numpy);
    full-module-pickle for pickled nn.Modules."""
    findings = []
    refused = [row["name"] for row in globals_ if row["kind"] == "unsafe"]
    numpy = [name for name in refused if is_numpy_data(name)]
    unsafe = [name for name in refused if name not in numpy]
    modules = [row["name"] for row in globals_ if row["kind"] == "module"]
    if numpy:
        findings.append(make_finding(
            "weights-only-numpy",
            f"The {format_name} pickle holds numpy arrays or scalars ({_names(numpy)}): data, not code, but "
            "torch.load(weights_only=True), the default since torch 2.6, refuses them.",
            details={"globals": numpy},
        ))
    if unsafe:
        findings.append(make_finding(
            "unsafe-pickle",
            f"The {format_name} pickle calls or builds {_names(unsafe)}, outside what torch.save of tensors "
            "produces; torchdoctor did not run it.",
            details={"globals": unsafe},
        ))
    if modules:
        findings.append(make_finding(
            "full-module-pickle",
            f"The whole model object was pickled ({_names(modules)}): loading needs that class code and "
            "weights_only=False.",
            details={"classes": modules},
        ))
    return findings


def check_format(format_: Format, layout: str | None = None) -> list[Finding]:
    """legacy-format and torchscript-archive; ``layout`` (a detection detail) tells TorchScript kinds apart."""
    if format_ is Format.LEGACY_TAR:
        return [make_finding("legacy-format", "The checkpoint uses the tar format of torch < 0.4: torch.load reads "
                             "it only with weights_only=False, and no other tool reads it.",
                             details={"format": format_.value})]
    if format_ is Format.LEGACY:
        return [make_finding("legacy-format", "The checkpoint uses the legacy (pre-1.6) format: slower to load, "
                             "not mmap-able, unreadable by some tools.", details={"format": format_.value})]
    if format_ is Format.TORCHSCRIPT and layout == "model.json":
        return [make_finding("torchscript-archive", "This is a TorchScript archive of PyTorch 1.0-1.2 (model.json "
                             "layout): today's torch.jit.load refuses it ('Legacy model format is not supported'); "
                             "its tensors are listed from model.json.",
                             fix="torchdoctor ckpt fix PATH --to zip  (writes its tensors as a state dict that "
                             "torch.load reads)", details={"layout": layout})]
    if format_ is Format.TORCHSCRIPT and layout == "flatbuffer":
        return [make_finding("torchscript-archive", "This is a PyTorch Mobile flatbuffer model, not a torch.save "
                             "checkpoint; torchdoctor does not list its tensors.",
                             fix="torch.jit.load(PATH) (or the mobile runtime) loads it; its state_dict() gives the "
                             "weights.", details={"layout": layout})]
    if format_ is Format.TORCHSCRIPT and layout == "lite":
        return [make_finding("torchscript-archive", "This is a TorchScript lite-interpreter archive (PyTorch Mobile, "
                             "bytecode.pkl): load it with torch.jit.load or the mobile runtime, not torch.load.",
                             details={"layout": layout})]
    if format_ is Format.TORCHSCRIPT:
        return [make_finding("torchscript-archive", "This is a TorchScript archive (torch.jit.save): load it with "
                             "torch.jit.load, not torch.load.")]
    return []


def check_devices(devices: Mapping[str, int]) -> list[Finding]:
    """cuda-saved-tensors (info) when tensors were saved from a GPU: naming the devices and counts."""
    gpu = {device: count for device, count in devices.items() if device.startswith("cuda")}
    if not gpu:
        return []
    listed = ", ".join(f"{count} from {device}" for device, count in sorted(gpu.items()))
    return [make_finding("cuda-saved-tensors", f"Tensors were saved from a GPU ({listed}); on a machine without it "
                         "load with map_location.", details={"devices": dict(gpu)})]


def check_nonfinite(counts: Mapping[str, tuple[int, int]]) -> list[Finding]:
    """nonfinite-weights naming the keys with NaN/inf counts."""
    bad = {key: {"nan": nan, "inf": inf} for key, (nan, inf) in counts.items() if nan or inf}
    if not bad:
        return []
    shown = ", ".join(f"{key} ({v['nan']} NaN, {v['inf']} inf)" for key, v in list(bad.items())[:MAX_NAMED])
    more = f" and {len(bad) - MAX_NAMED} more" if len(bad) > MAX_NAMED else ""
    return [make_finding("nonfinite-weights", f"{len(bad)} tensor(s) hold NaN or inf values: {shown}{more}.",
                         location=next(iter(bad)), details={"tensors": bad})]


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_NAMED])
    return shown + (f" and {len(names) - MAX_NAMED} more" if len(names) > MAX_NAMED else "")


