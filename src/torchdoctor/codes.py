"""The one registry of finding ids: code, default severity, summary, why it matters, fix.

``docs/findings.md`` is generated from this table (``python -m torchdoctor.docs``) and
``torchdoctor explain ID`` prints an entry. Ids and codes are contracts: never reuse or
renumber one. Hundreds digit of the code = family (1 env, 2 ckpt, 3 nan, 4 count,
5 data, 6 explain/errors, 7 distributed).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torchdoctor.errors import UsageError
from torchdoctor.report import Finding, Severity

FAMILIES = {
    1: "env",
    2: "ckpt",
    3: "nan-hunt",
    4: "count",
    5: "data",
    6: "explain / errors",
    7: "distributed",
}


@dataclass(frozen=True)
class FindingSpec:
    """Registry entry for one finding id."""

    id: str
    code: str
    severity: Severity
    summary: str
    why: str
    fix: str | None

    @property
    def family(self) -> str:
        return FAMILIES[int(self.code[2])]


def _spec(id: str, code: str, severity: str, summary: str, why: str, fix: str | None) -> FindingSpec:
    return FindingSpec(id, code, Severity(severity), summary, why, fix)


_SPECS = (
    # --- 1xx: env -------------------------------------------------------------------------
    _spec(
        "cuda-unavailable", "TD101", "info",
        "No usable CUDA device (info on a CPU-only build, warning when the build has CUDA).",
        "Training silently falls back to the CPU, often 10-100x slower, when the wheel is CPU-only, "
        "the driver is missing, or CUDA_VISIBLE_DEVICES hides every GPU.",
        "Install a CUDA build that fits the driver (https://pytorch.org/get-started/locally/), "
        "check `nvidia-smi`, and unset an empty CUDA_VISIBLE_DEVICES.",
    ),
    _spec(
        "cuda-driver-too-old", "TD102", "error",
        "The NVIDIA driver is older than the CUDA runtime this PyTorch build needs.",
        "torch.cuda.is_available() returns False and every model runs on the CPU.",
        "Update the NVIDIA driver, or install a PyTorch build for an older CUDA "
        "(e.g. `pip install torch --index-url https://download.pytorch.org/whl/cu118`).",
    ),
    _spec(
        "cuda-arch-unsupported", "TD103", "error",
        "A GPU's compute capability is not among the architectures this PyTorch wheel was built for.",
        "Kernels fail with 'no kernel image is available for execution on the device' (or PTX JIT is slow).",
        "Install a PyTorch build that lists the GPU's sm_XY in torch.cuda.get_arch_list(), or build from source "
        "with TORCH_CUDA_ARCH_LIST set.",
    ),
    _spec(
        "training-step-failed", "TD104", "error",
        "A real training step (forward, loss, backward, optimizer step) failed on a device.",
        "What fails in torchdoctor's tiny step fails in every training run on that device and precision.",
        "Read the cause in the finding; rerun with `torchdoctor env --check training --debug` for the traceback.",
    ),
    _spec(
        "numerics-mismatch", "TD105", "error",
        "A device's training-step loss differs from the CPU float32 reference beyond tolerance.",
        "Silent wrong numbers (broken kernels, faulty hardware, bad overclock) waste whole training runs.",
        "Rerun `torchdoctor env --check training`; if it persists, test the GPU (e.g. `nvidia-smi -q -d ECC`, "
        "a vendor burn-in) and try another driver.",
    ),
    _spec(
        "tf32-disabled", "TD106", "info",
        "TF32 matmuls are off on a GPU with Tensor Cores for TF32 (Ampere or newer).",
        "float32 matmuls run up to ~8x slower than TF32 for accuracy most training does not need.",
        "torch.backends.cuda.matmul.allow_tf32 = True  (or torch.set_float32_matmul_precision('high'))",
    ),
    _spec(
        "no-tensor-cores", "TD107", "info",
        "The GPU has no Tensor Cores (compute capability below 7.0), so mixed precision gains little.",
        "AMP on such cards saves memory but rarely time; expectations set from newer cards will be wrong.",
        None,
    ),
    _spec(
        "amp-unsupported", "TD108", "warning",
        "A mixed-precision mode is not supported by the GPU's hardware (e.g. bfloat16 below compute capability 8.0).",
        "bfloat16 on pre-Ampere GPUs is emulated or refused; it is slow or fails outright.",
        "Use torch.autocast(device_type='cuda', dtype=torch.float16) with torch.amp.GradScaler instead.",
    ),
    _spec(
        "shm-too-small", "TD109", "warning",
        "/dev/shm is small or nearly full (warning below 1 GiB free, error below 256 MiB).",
        "DataLoader workers hand batches over through /dev/shm; when it runs out they die with "
        "'Bus error' or 'unable to allocate shared memory'. Docker gives containers 64 MB by default.",
        "docker run --shm-size=8g ...  (or --ipc=host; on Kubernetes mount an emptyDir with medium: Memory "
        "at /dev/shm)",
    ),
    _spec(
        "dataloader-workers-failed", "TD110", "error",
        "A real DataLoader step with 2 worker processes failed.",
        "Any training run with num_workers > 0 will fail or hang the same way.",
        "Follow the cause named in the finding; as a stopgap use num_workers=0.",
    ),
    _spec(
        "threads-oversubscribed", "TD111", "warning",
        "More intra-op / OpenMP threads than usable CPUs.",
        "Oversubscribed threads fight for cores; CPU ops and data loading slow down several-fold.",
        "export OMP_NUM_THREADS=<usable CPUs>  (or torch.set_num_threads(n)); in containers count the "
        "CPU quota, not os.cpu_count().",
    ),
    _spec(
        "threads-underused", "TD112", "info",
        "PyTorch uses at most half of the usable CPUs for intra-op parallelism.",
        "CPU-side work (preprocessing, CPU training, evaluation) runs slower than the machine allows.",
        "Unset OMP_NUM_THREADS or raise it to the usable CPU count; torch.set_num_threads(n).",
    ),
    _spec(
        "low-memory", "TD113", "warning",
        "Little RAM is available (below 1 GiB or 5% of total).",
        "DataLoader workers, pinned memory and checkpoint loading get killed by the OOM killer "
        "('DataLoader worker is killed by signal: Killed').",
        "Free memory, lower num_workers / batch size, or load checkpoints with mmap=True.",
    ),
    _spec(
        "cublas-workspace-unset", "TD114", "info",
        "CUBLAS_WORKSPACE_CONFIG is not set, so deterministic algorithms cannot be used on CUDA.",
        "torch.use_deterministic_algorithms(True) raises on the first cuBLAS matmul without it.",
        "export CUBLAS_WORKSPACE_CONFIG=:4096:8",
    ),
    _spec(
        "gpu-memory-busy", "TD115", "warning",
        "Most of a GPU's memory is already taken by other processes.",
        "Your training will hit 'CUDA out of memory' at a fraction of the batch size the card allows.",
        "nvidia-smi  (find and stop the other process, or pick another GPU with CUDA_VISIBLE_DEVICES)",
    ),
    # --- 2xx: ckpt ------------------------------------------------------------------------
    _spec(
        "lfs-pointer", "TD201", "error",
        "The file is a git-lfs pointer (a few lines of text), not the checkpoint it points to.",
        "The repository was cloned without git-lfs, so every load fails with an unpickling error.",
        "git lfs install && git lfs pull  (in the repository the file came from)",
    ),
    _spec(
        "not-a-checkpoint", "TD202", "error",
        "The file is not a checkpoint: text, HTML (an error page saved by a download), or unknown bytes.",
        "torch.load fails with 'invalid load key' or 'could not find MARK'; the real file was never downloaded.",
        "Download the checkpoint again and compare its size and checksum with the source.",
    ),
    _spec(
        "corrupt-checkpoint", "TD203", "error",
        "The checkpoint is damaged: empty, truncated, or its structure is inconsistent.",
        "A partial download or an interrupted save loads as garbage or not at all.",
        "Download or save it again; compare the size with the source (a truncated file is shorter).",
    ),
    _spec(
        "nested-state-dict", "TD204", "warning",
        "The weights are nested inside a wrapper dict (e.g. checkpoint['state_dict']), not at the top level.",
        "model.load_state_dict(torch.load(path)) fails with every key missing and every key unexpected.",
        "torchdoctor ckpt fix PATH  (unwraps to a plain state dict), or load checkpoint[KEY] explicitly.",
    ),
    _spec(
        "training-state-present", "TD205", "info",
        "Optimizer, LR-scheduler or GradScaler state is stored beside the weights.",
        "Handy for resuming; it can double the file size when only the weights are needed.",
        "torchdoctor ckpt fix PATH  (writes the weights alone), or keep it to resume training.",
    ),
    _spec(
        "module-prefix", "TD206", "warning",
        "Every key starts with 'module.': the checkpoint was saved from nn.DataParallel or DDP.",
        "Loading into a plain model fails with missing keys 'x' and unexpected keys 'module.x'.",
        "torchdoctor ckpt fix PATH  (or torch.nn.modules.utils.consume_prefix_in_state_dict_if_present(sd, 'module.'))",
    ),
    _spec(
        "compile-prefix", "TD207", "warning",
        "Keys start with '_orig_mod.': the checkpoint was saved from a torch.compile'd model.",
        "Loading into the uncompiled model fails with every key missing and unexpected.",
        "torchdoctor ckpt fix PATH  (or save model._orig_mod.state_dict() next time)",
    ),
    _spec(
        "key-prefix", "TD208", "warning",
        "The checkpoint's keys differ from the model's only by a prefix (e.g. 'model.' from Lightning, 'backbone.').",
        "load_state_dict reports every key missing and unexpected although the weights fit.",
        "torchdoctor ckpt fix PATH --model SPEC  (renames the keys to the model's)",
    ),
    _spec(
        "legacy-format", "TD209", "warning",
        "The checkpoint uses the legacy (pre-1.6) pickle format, not the zip format.",
        "It loads slower, cannot be memory-mapped (torch.load(mmap=True)) and some tools cannot read it.",
        "torchdoctor ckpt fix PATH --to zip",
    ),
    _spec(
        "torchscript-archive", "TD210", "info",
        "The file is a TorchScript archive (torch.jit.save), not a torch.save checkpoint.",
        "torch.load refuses it ('is a zip archive (did you mean to use torch.jit.load()?)').",
        "torch.jit.load(PATH); its state_dict() gives plain weights.",
    ),
    _spec(
        "full-module-pickle", "TD211", "warning",
        "The whole nn.Module object was pickled (torch.save(model)), not its state dict.",
        "Loading needs the exact class code importable under the same module path and weights_only=False, "
        "which also allows arbitrary code to run.",
        "Load it once where the class code exists and save model.state_dict() instead.",
    ),
    _spec(
        "unsafe-pickle", "TD212", "error",
        "The pickle references a global outside what torch.save of tensors and containers produces.",
        "Unpickling it can run arbitrary code (e.g. os.system); torch.load(weights_only=True) refuses it.",
        "Do not load it unless you trust its source; never pass weights_only=False for files from the internet.",
    ),
    _spec(
        "nonfinite-weights", "TD213", "error",
        "Some stored tensors contain NaN or inf values.",
        "A model loaded from it outputs NaN from the first step; the run that saved it had already diverged.",
        "Use an earlier checkpoint; torchdoctor nan-hunt the training run that produced it.",
    ),
    _spec(
        "missing-keys", "TD214", "error",
        "The model has parameters or buffers the checkpoint does not provide.",
        "load_state_dict(strict=True) fails; with strict=False those weights silently stay randomly initialised.",
        "Check that the checkpoint belongs to this architecture; re-initialise or train the missing parts on purpose.",
    ),
    _spec(
        "unexpected-keys", "TD215", "warning",
        "The checkpoint has keys the model does not have.",
        "load_state_dict(strict=True) fails; with strict=False they are ignored, which may hide a wrong model.",
        "torchdoctor ckpt fix PATH --model SPEC  (drops or renames them), or load with strict=False on purpose.",
    ),
    _spec(
        "shape-mismatch", "TD216", "error",
        "A tensor's shape in the checkpoint differs from the model's parameter of the same name.",
        "load_state_dict raises 'size mismatch for KEY' (e.g. a 1000-class head loaded into a 10-class model).",
        "torchdoctor ckpt fix PATH --model SPEC --drop-mismatched  (then re-initialise those layers)",
    ),
    _spec(
        "dtype-mismatch", "TD217", "info",
        "A tensor's dtype in the checkpoint differs from the model's (e.g. float16 weights, float32 model).",
        "load_state_dict casts silently; precision is lost or memory doubles without notice.",
        None,
    ),
    _spec(
        "cuda-saved-tensors", "TD218", "info",
        "Tensors were saved from a CUDA device.",
        "On a machine without that GPU, torch.load fails unless it is told where to put them.",
        "torch.load(PATH, map_location='cpu')",
    ),
    # --- 6xx: errors of torchdoctor itself ---------------------------------------------------
    _spec(
        "check-crashed", "TD601", "error",
        "A torchdoctor check raised an unexpected exception; the other checks still ran.",
        "The facts that check gathers are missing from this report.",
        "Rerun with --debug and report the traceback at torchdoctor's issue tracker.",
    ),
)

REGISTRY: Mapping[str, FindingSpec] = {spec.id: spec for spec in _SPECS}


def get_spec(finding_id: str) -> FindingSpec:
    """Registry entry for ``finding_id``; ``UsageError`` naming close ids when unknown."""
    try:
        return REGISTRY[finding_id]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(finding_id, list(REGISTRY), n=3)
        hint = f"did you mean: {', '.join(close)}?" if close else "see docs/findings.md for every id"
        raise UsageError(f"unknown finding id {finding_id!r}", hint) from None


def make_finding(
    finding_id: str,
    message: str,
    *,
    severity: Severity | None = None,
    fix: str | None = "",
    location: str | None = None,
    details: Mapping[str, Any] | None = None,
) -> Finding:
    """Build a ``Finding`` for a registered id; ``fix=""`` means the registry's fix."""
    spec = get_spec(finding_id)
    return Finding(
        id=spec.id,
        code=spec.code,
        severity=severity or spec.severity,
        message=message,
        fix=spec.fix if fix == "" else fix,
        location=location,
        details=dict(details or {}),
    )
