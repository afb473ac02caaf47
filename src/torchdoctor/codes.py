"""The one registry of finding ids: code, default severity, summary, why it matters, fix, and where it shows.

``docs/findings.md`` is generated from this table (``python -m torchdoctor.docs``) and
``torchdoctor explain ID`` prints an entry. Ids and codes are contracts: never reuse or
renumber one. Hundreds digit of the code = family (``FAMILIES``): 1 env, 2 ckpt, 3 nan-hunt, 4 count,
5 data, 6 errors (torchdoctor's own, ``check``'s, and errors that only ``explain`` recognises),
7 distributed, 8 watch. The family says where an id was born, not every command that reports it:
``training-step-failed`` (1xx) also comes from ckpt, data and count; ``nonfinite-input`` (3xx) also from
data; the 3xx ids of a NaN/inf and of the script's ending also from watch; ``distributed-hang`` and
``ranks-diverged`` (7xx) also from nan-hunt and watch, ``ddp-unused-parameters`` and
``syncbn-missing`` (7xx) only from nan-hunt and watch (under torchrun); ``layer-shape-mismatch`` (6xx) from
count; ``check-crashed`` (6xx) from env and check; any id explain recognises from data or count when their
step fails with it. ``commands`` on each spec is the full list (README.md has the same story as a table).

Each spec also says which human-report section shows the id for each command (``section``); the
commands' section tables are built from it and the human renderer refuses a finding without one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torchdoctor.errors import UsageError
from torchdoctor.report import Finding, Severity

FAMILIES = {
    1: "env",
    2: "ckpt",
    3: "nan-hunt",
    4: "count",
    5: "data",
    6: "errors",
    7: "distributed",
    8: "watch",
}

ANY_SECTION = "*"
"""A section name meaning "whichever section the producing check or item is": env's check-crashed, check's items."""
CHECK_KINDS = ("env", "ckpt inspect", "data", "count", "nan-hunt", "watch")
"""The commands whose reports ``torchdoctor check`` runs as items: their ids show in the item's section."""
EXPLAINED_IN = {"data": "step", "count": "compute"}
"""Commands that report an error of the user's step as the id ``explain``'s rules match, and where it shows."""

INSPECT, FIX, DIFF = "ckpt inspect", "ckpt fix", "ckpt diff"


class SectionMissing(LookupError):
    """A finding that no section of its report would show: the registry lacks a section for that command."""


@dataclass(frozen=True)
class FindingSpec:
    """Registry entry for one finding id.

    ``commands``: the commands whose reports produce the id (``"explain"`` when explain's rules match it).
    ``section``: the human-report section showing it, one name for every command or a mapping per command.
    ``explain_only``: no command judges it itself; it appears when explain's rules match an error (also a
    failing step in data or count, see ``EXPLAINED_IN``).
    """

    id: str
    code: str
    severity: Severity
    summary: str
    why: str
    fix: str | None
    commands: tuple[str, ...] = ()
    section: str | Mapping[str, str] | None = None
    explain_only: bool = False
    sections: Mapping[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sections", self._sections())

    def __hash__(self) -> int:  # ``section`` may be a dict: the id alone identifies a spec
        return hash(self.id)

    @property
    def family(self) -> str:
        return FAMILIES[int(self.code[2])]

    def section_for(self, command: str) -> str | None:
        """The section of ``command``'s human report that shows this id; None when that command never makes it."""
        return self.sections.get(command)

    def _sections(self) -> dict[str, str]:
        named = self.section if isinstance(self.section, Mapping) else dict.fromkeys(self.commands, self.section)
        found = {command: named[command] for command in self.commands if named.get(command)}
        if "explain" in self.commands:
            found["explain"] = ANY_SECTION  # explain's report has no sections: one flat list
            found.update({command: name for command, name in EXPLAINED_IN.items() if command not in found})
        if any(command in CHECK_KINDS for command in found) or "check" in self.commands:
            found["check"] = ANY_SECTION  # check shows each item's findings under the item
        return found


def _spec(id: str, code: str, severity: str, summary: str, why: str, fix: str | None, *,
          commands: tuple[str, ...] = (), section: str | Mapping[str, str] | None = None,
          explain_only: bool = False) -> FindingSpec:
    return FindingSpec(id, code, Severity(severity), summary, why, fix, commands=commands, section=section,
                       explain_only=explain_only)


_SPECS = (
    # --- 1xx: env -------------------------------------------------------------------------
    _spec(
        "cuda-unavailable", "TD101", "info",
        "No usable CUDA device (info on a CPU-only build, warning when the build has CUDA).",
        "Training silently falls back to the CPU, often 10-100x slower, when the wheel is CPU-only, "
        "the driver is missing, or CUDA_VISIBLE_DEVICES hides every GPU.",
        "Install a CUDA build that fits the driver (https://pytorch.org/get-started/locally/), "
        "check `nvidia-smi`, and unset an empty CUDA_VISIBLE_DEVICES.",
        commands=("env",), section="devices",
    ),
    _spec(
        "cuda-driver-too-old", "TD102", "error",
        "The NVIDIA driver is older than the CUDA runtime this PyTorch build needs.",
        "torch.cuda.is_available() returns False and every model runs on the CPU.",
        "Update the NVIDIA driver, or install a PyTorch build for an older CUDA "
        "(e.g. `pip install torch --index-url https://download.pytorch.org/whl/cu118`).",
        commands=("env", "explain"), section="devices",
    ),
    _spec(
        "cuda-arch-unsupported", "TD103", "error",
        "A GPU's compute capability is not among the architectures this PyTorch wheel was built for.",
        "Kernels fail with 'no kernel image is available for execution on the device' (or PTX JIT is slow).",
        "Install a PyTorch build that lists the GPU's sm_XY in torch.cuda.get_arch_list(), or build from source "
        "with TORCH_CUDA_ARCH_LIST set.",
        commands=("env", "explain"), section="devices",
    ),
    _spec(
        "training-step-failed", "TD104", "error",
        "A real training step (forward, loss, backward, optimizer step) failed on a device.",
        "What fails in torchdoctor's tiny step fails in every training run on that device and precision.",
        "Read the cause in the finding; rerun with `torchdoctor env --check training --debug` for the traceback.",
        commands=("env", INSPECT, "data", "count"),
        section={"env": "training", INSPECT: "model", "data": "step", "count": "compute"},
    ),
    _spec(
        "numerics-mismatch", "TD105", "error",
        "A device's training-step loss differs from the CPU float32 reference beyond tolerance.",
        "Silent wrong numbers (broken kernels, faulty hardware, bad overclock) waste whole training runs.",
        "Rerun `torchdoctor env --check training`; if it persists, test the GPU (e.g. `nvidia-smi -q -d ECC`, "
        "a vendor burn-in) and try another driver.",
        commands=("env",), section="training",
    ),
    _spec(
        "tf32-disabled", "TD106", "info",
        "TF32 matmuls are off on a GPU with Tensor Cores for TF32 (Ampere or newer).",
        "float32 matmuls run up to ~8x slower than TF32 for accuracy most training does not need.",
        "torch.backends.cuda.matmul.allow_tf32 = True  (or torch.set_float32_matmul_precision('high'))",
        commands=("env",), section="training",
    ),
    _spec(
        "no-tensor-cores", "TD107", "info",
        "The GPU has no Tensor Cores (compute capability below 7.0), so mixed precision gains little.",
        "AMP on such cards saves memory but rarely time; expectations set from newer cards will be wrong.",
        None,
        commands=("env",), section="training",
    ),
    _spec(
        "amp-unsupported", "TD108", "warning",
        "A mixed-precision mode is not supported by the GPU's hardware (e.g. bfloat16 below compute capability 8.0).",
        "bfloat16 on pre-Ampere GPUs is emulated or refused; it is slow or fails outright.",
        "Use torch.autocast(device_type='cuda', dtype=torch.float16) with torch.amp.GradScaler instead.",
        commands=("env",), section="training",
    ),
    _spec(
        "shm-too-small", "TD109", "warning",
        "/dev/shm is small or nearly full (warning below 1 GiB free, error below 256 MiB).",
        "DataLoader workers hand batches over through /dev/shm; when it runs out they die with "
        "'Bus error' or 'unable to allocate shared memory'. Docker gives containers 64 MB by default.",
        "docker run --shm-size=8g ...  (or --ipc=host; on Kubernetes mount an emptyDir with medium: Memory "
        "at /dev/shm)",
        commands=("env", "explain"), section="shm",
    ),
    _spec(
        "dataloader-workers-failed", "TD110", "error",
        "A real DataLoader step with 2 worker processes failed.",
        "Any training run with num_workers > 0 will fail or hang the same way.",
        "Follow the cause named in the finding; as a stopgap use num_workers=0.",
        commands=("env",), section="dataloader",
    ),
    _spec(
        "threads-oversubscribed", "TD111", "warning",
        "More intra-op / OpenMP threads than usable CPUs.",
        "Oversubscribed threads fight for cores; CPU ops and data loading slow down several-fold.",
        "export OMP_NUM_THREADS=<usable CPUs>  (or torch.set_num_threads(n)); in containers count the "
        "CPU quota, not os.cpu_count().",
        commands=("env",), section="threads",
    ),
    _spec(
        "threads-underused", "TD112", "info",
        "PyTorch uses at most half of the usable CPUs for intra-op parallelism.",
        "CPU-side work (preprocessing, CPU training, evaluation) runs slower than the machine allows.",
        "Unset OMP_NUM_THREADS or raise it to the usable CPU count; torch.set_num_threads(n).",
        commands=("env",), section="threads",
    ),
    _spec(
        "low-memory", "TD113", "warning",
        "Little RAM is available (below 1 GiB or 5% of total).",
        "DataLoader workers, pinned memory and checkpoint loading get killed by the OOM killer "
        "('DataLoader worker is killed by signal: Killed').",
        "Free memory, lower num_workers / batch size, or load checkpoints with mmap=True.",
        commands=("env",), section="memory",
    ),
    _spec(
        "cublas-workspace-unset", "TD114", "info",
        "CUBLAS_WORKSPACE_CONFIG is not set, so deterministic algorithms cannot be used on CUDA.",
        "torch.use_deterministic_algorithms(True) raises on the first cuBLAS matmul without it.",
        "export CUBLAS_WORKSPACE_CONFIG=:4096:8",
        commands=("env",), section="reproducibility",
    ),
    _spec(
        "gpu-memory-busy", "TD115", "warning",
        "Most of a GPU's memory is already taken by other processes.",
        "Your training will hit 'CUDA out of memory' at a fraction of the batch size the card allows.",
        "nvidia-smi  (find and stop the other process, or pick another GPU with CUDA_VISIBLE_DEVICES)",
        commands=("env",), section="memory",
    ),
    # --- 2xx: ckpt ------------------------------------------------------------------------
    _spec(
        "lfs-pointer", "TD201", "error",
        "The file is a git-lfs pointer (a few lines of text), not the checkpoint it points to.",
        "The repository was cloned without git-lfs, so every load fails with an unpickling error.",
        "git lfs install && git lfs pull  (in the repository the file came from)",
        commands=(INSPECT, FIX, DIFF), section={INSPECT: "file", FIX: "output", DIFF: "diff"},
    ),
    _spec(
        "not-a-checkpoint", "TD202", "error",
        "The file is not a checkpoint: text, HTML (an error page saved by a download), or unknown bytes.",
        "torch.load fails with 'invalid load key' or 'could not find MARK'; the real file was never downloaded.",
        "Download the checkpoint again and compare its size and checksum with the source.",
        commands=(INSPECT, FIX, DIFF), section={INSPECT: "file", FIX: "output", DIFF: "diff"},
    ),
    _spec(
        "corrupt-checkpoint", "TD203", "error",
        "The checkpoint is damaged: empty, truncated, or its structure is inconsistent.",
        "A partial download or an interrupted save loads as garbage or not at all.",
        "Download or save it again; compare the size with the source (a truncated file is shorter).",
        commands=(INSPECT, FIX, DIFF), section={INSPECT: "file", FIX: "output", DIFF: "diff"},
    ),
    _spec(
        "nested-state-dict", "TD204", "warning",
        "The weights are nested inside a wrapper dict (e.g. checkpoint['state_dict']), not at the top level.",
        "model.load_state_dict(torch.load(path)) fails with every key missing and every key unexpected.",
        "torchdoctor ckpt fix PATH  (unwraps to a plain state dict), or load checkpoint[KEY] explicitly.",
        commands=(INSPECT, FIX), section={INSPECT: "structure", FIX: "output"},
    ),
    _spec(
        "training-state-present", "TD205", "info",
        "Optimizer, LR-scheduler or GradScaler state is stored beside the weights.",
        "Handy for resuming; it can double the file size when only the weights are needed.",
        "torchdoctor ckpt fix PATH  (writes the weights alone), or keep it to resume training.",
        commands=(INSPECT, FIX), section={INSPECT: "structure", FIX: "output"},
    ),
    _spec(
        "module-prefix", "TD206", "warning",
        "Every key starts with 'module.': the checkpoint was saved from nn.DataParallel or DDP.",
        "Loading into a plain model fails with missing keys 'x' and unexpected keys 'module.x'.",
        "torchdoctor ckpt fix PATH  (or torch.nn.modules.utils.consume_prefix_in_state_dict_if_present(sd, 'module.'))",
        commands=(INSPECT, FIX, "explain"), section={INSPECT: "keys", FIX: "output"},
    ),
    _spec(
        "compile-prefix", "TD207", "warning",
        "Keys start with '_orig_mod.': the checkpoint was saved from a torch.compile'd model.",
        "Loading into the uncompiled model fails with every key missing and unexpected.",
        "torchdoctor ckpt fix PATH  (or save model._orig_mod.state_dict() next time)",
        commands=(INSPECT, FIX, "explain"), section={INSPECT: "keys", FIX: "output"},
    ),
    _spec(
        "key-prefix", "TD208", "warning",
        "The checkpoint's keys differ from the model's only by a prefix (e.g. 'model.' from Lightning, 'backbone.').",
        "load_state_dict reports every key missing and unexpected although the weights fit.",
        "torchdoctor ckpt fix PATH --model SPEC  (renames the keys to the model's)",
        commands=(INSPECT, FIX), section={INSPECT: "keys", FIX: "output"},
    ),
    _spec(
        "legacy-format", "TD209", "warning",
        "The checkpoint uses the legacy (pre-1.6) pickle format, not the zip format.",
        "It loads slower, cannot be memory-mapped (torch.load(mmap=True)) and some tools cannot read it.",
        "torchdoctor ckpt fix PATH --to zip",
        commands=(INSPECT, FIX), section={INSPECT: "file", FIX: "output"},
    ),
    _spec(
        "torchscript-archive", "TD210", "info",
        "The file is a TorchScript archive (torch.jit.save), not a torch.save checkpoint.",
        "torch.load refuses it ('is a zip archive (did you mean to use torch.jit.load()?)').",
        "torch.jit.load(PATH); its state_dict() gives plain weights.",
        commands=(INSPECT, FIX), section={INSPECT: "file", FIX: "output"},
    ),
    _spec(
        "full-module-pickle", "TD211", "warning",
        "The whole nn.Module object was pickled (torch.save(model)), not its state dict.",
        "Loading needs the exact class code importable under the same module path and weights_only=False, "
        "which also allows arbitrary code to run.",
        "Load it once where the class code exists and save model.state_dict() instead.",
        commands=(INSPECT, FIX, DIFF, "explain"), section={INSPECT: "safety", FIX: "output", DIFF: "diff"},
    ),
    _spec(
        "unsafe-pickle", "TD212", "error",
        "The pickle references a global outside what torch.save of tensors and containers produces.",
        "Unpickling it can run arbitrary code (e.g. os.system); torch.load(weights_only=True) refuses it.",
        "Do not load it unless you trust its source; never pass weights_only=False for files from the internet.",
        commands=(INSPECT, FIX, DIFF), section={INSPECT: "safety", FIX: "output", DIFF: "diff"},
    ),
    _spec(
        "nonfinite-weights", "TD213", "error",
        "Some stored tensors contain NaN or inf values.",
        "A model loaded from it outputs NaN from the first step; the run that saved it had already diverged.",
        "Use an earlier checkpoint; torchdoctor nan-hunt the training run that produced it.",
        commands=(INSPECT,), section="values",
    ),
    _spec(
        "missing-keys", "TD214", "error",
        "The model has parameters or buffers the checkpoint does not provide.",
        "load_state_dict(strict=True) fails; with strict=False those weights silently stay randomly initialised.",
        "Check that the checkpoint belongs to this architecture; re-initialise or train the missing parts on purpose.",
        commands=(INSPECT, FIX, "explain"), section={INSPECT: "model", FIX: "output"},
    ),
    _spec(
        "unexpected-keys", "TD215", "warning",
        "The checkpoint has keys the model does not have.",
        "load_state_dict(strict=True) fails; with strict=False they are ignored, which may hide a wrong model.",
        "torchdoctor ckpt fix PATH --model SPEC  (drops or renames them), or load with strict=False on purpose.",
        commands=(INSPECT, FIX, "explain"), section={INSPECT: "model", FIX: "output"},
    ),
    _spec(
        "shape-mismatch", "TD216", "error",
        "A tensor's shape in the checkpoint differs from the model's parameter of the same name.",
        "load_state_dict raises 'size mismatch for KEY' (e.g. a 1000-class head loaded into a 10-class model).",
        "torchdoctor ckpt fix PATH --model SPEC --drop-mismatched  (then re-initialise those layers)",
        commands=(INSPECT, FIX, "explain"), section={INSPECT: "model", FIX: "output"},
    ),
    _spec(
        "dtype-mismatch", "TD217", "info",
        "A tensor's dtype in the checkpoint differs from the model's (e.g. float16 weights, float32 model).",
        "load_state_dict casts silently; precision is lost or memory doubles without notice.",
        None,
        commands=(INSPECT, FIX), section={INSPECT: "model", FIX: "output"},
    ),
    _spec(
        "cuda-saved-tensors", "TD218", "info",
        "Tensors were saved from a CUDA device.",
        "On a machine without that GPU, torch.load fails unless it is told where to put them.",
        "torch.load(PATH, map_location='cpu')",
        commands=(INSPECT, FIX, "explain"), section={INSPECT: "structure", FIX: "output"},
    ),
    _spec(
        "shard-missing", "TD219", "error",
        "Shard files that a sharded checkpoint's index (*.index.json) names are not on disk.",
        "from_pretrained and load_checkpoint_and_dispatch stop at the first missing shard; a partial download "
        "or a copy of only some files looks complete until then.",
        "Download the missing shards named in the finding (huggingface-cli download REPO --include 'FILE').",
        commands=(INSPECT,), section={INSPECT: "file"},
    ),
    _spec(
        "weights-only-numpy", "TD220", "error",
        "The file holds numpy arrays or scalars, which torch.load(weights_only=True), the default since torch 2.6, "
        "refuses.",
        "Checkpoints that store numpy values beside the weights (a best score as np.float64, RNG states, "
        "metrics) stop loading on torch >= 2.6 although they hold no code.",
        "Allow the numpy globals the error names, for this load only: with torch.serialization.safe_globals("
        "[np._core.multiarray._reconstruct, np.ndarray, np.dtype, ...]): torch.load(path) (numpy 1.x: "
        "np.core.multiarray), or weights_only=False only for a file you trust; next time save float(x) and "
        "tensors, not numpy values.",
        commands=(INSPECT, FIX, DIFF, "explain"), section={INSPECT: "safety", FIX: "output", DIFF: "diff"},
    ),
    # --- 3xx: nan-hunt ----------------------------------------------------------------------
    _spec(
        "nonfinite-input", "TD301", "error",
        "A batch already held NaN or inf before the model saw it.",
        "Every later NaN is the data's fault; the model and the learning rate are not to blame.",
        "Find the sample (the finding names its data-set index) and fix or filter it in the Dataset.",
        commands=("nan-hunt", "data", "watch"), section={"nan-hunt": "nan-hunt", "data": "inputs", "watch": "run"},
    ),
    _spec(
        "nonfinite-forward", "TD302", "error",
        "An op in the model's forward produced NaN or inf from finite inputs.",
        "The loss and every gradient after it are NaN; training silently stops learning.",
        "Guard the named op: add an eps (x / (std + eps)), clamp before log/sqrt, avoid fully masked rows.",
        commands=("nan-hunt", "watch"), section={"nan-hunt": "nan-hunt", "watch": "run"},
    ),
    _spec(
        "nonfinite-loss", "TD303", "error",
        "The loss computation produced NaN or inf from a finite model output.",
        "A custom loss taking log of an underflowed probability is the classic cause.",
        "Use the fused, stable form (F.cross_entropy / log_softmax instead of log(softmax)), or clamp(min=eps).",
        commands=("nan-hunt", "watch"), section={"nan-hunt": "nan-hunt", "watch": "run"},
    ),
    _spec(
        "nonfinite-backward", "TD304", "error",
        "A gradient became NaN or inf in backward although the loss was finite.",
        "The optimizer step writes NaN into the weights; every later step is wasted.",
        "Fix the forward op whose derivative blows up (e.g. sqrt at 0: use sqrt(x + eps)); clip gradients.",
        commands=("nan-hunt", "watch", "explain"), section={"nan-hunt": "nan-hunt", "watch": "run"},
    ),
    _spec(
        "nonfinite-optimizer", "TD305", "error",
        "A parameter became NaN or inf in optimizer.step() although its gradient was finite.",
        "The learning rate or optimizer state (e.g. Adam's eps, a zero second moment) overflowed the weights.",
        "Lower the learning rate, raise the optimizer's eps, or clip gradients.",
        commands=("nan-hunt", "watch"), section={"nan-hunt": "nan-hunt", "watch": "run"},
    ),
    _spec(
        "divergence", "TD306", "error",
        "The loss or gradient norm grew geometrically in the steps before the first NaN/inf.",
        "The run was diverging, not hitting a bug in one op: the NaN is a symptom of the step size.",
        "Lower the learning rate, add warm-up, or clip gradients (torch.nn.utils.clip_grad_norm_).",
        commands=("nan-hunt", "watch"), section={"nan-hunt": "nan-hunt", "watch": "run"},
    ),
    _spec(
        "low-precision-overflow", "TD307", "error",
        "A float16/bfloat16 value exceeded the dtype's largest finite number and became inf.",
        "float16 overflows above 65504: a model cast to .half() or run without loss scaling produces inf.",
        "Train under torch.autocast with torch.amp.GradScaler (or in bfloat16) instead of casting the model.",
        commands=("nan-hunt", "watch"), section={"nan-hunt": "nan-hunt", "watch": "run"},
    ),
    _spec(
        "amp-skipped-steps", "TD308", "info",
        "GradScaler skipped optimizer steps because of inf/NaN gradients (error when it skipped every step).",
        "A few skips while the scale calibrates are normal; skipping every step means nothing trains.",
        "If every step is skipped, look for a real NaN source (nan-hunt names it) or a too-large init_scale.",
        commands=("nan-hunt", "watch"), section={"nan-hunt": "nan-hunt", "watch": "run"},
    ),
    _spec(
        "script-failed", "TD309", "error",
        "The training script raised an exception.",
        "The run ended early; the traceback's last user frame is where to look.",
        "Fix the error at the named line; `torchdoctor explain` turns the message into a cause.",
        commands=("nan-hunt", "watch"), section={"nan-hunt": "nan-hunt", "watch": "run"},
    ),
    _spec(
        "script-exit-code", "TD310", "error",
        "The training script exited with a non-zero exit code by itself.",
        "CI and schedulers treat the run as failed.",
        "See the script's own output for why it called sys.exit with that code.",
        commands=("nan-hunt", "watch"), section={"nan-hunt": "nan-hunt", "watch": "run"},
    ),
    _spec(
        "loss-explosion", "TD311", "error",
        "The loss jumped to 20x or more its starting value and stayed there, without any value going NaN/inf.",
        "The run goes on but learns nothing: the step size is far too large (nanoGPT at lr 10 sits at ~400x "
        "its first loss with a gradient norm of 4e15). No NaN ever appears, so only the loss series shows it.",
        "Lower the learning rate (a 10x step down first), add warm-up, or clip gradients "
        "(torch.nn.utils.clip_grad_norm_).",
        commands=("nan-hunt", "watch"), section={"nan-hunt": "nan-hunt", "watch": "run"},
    ),
    _spec(
        "update-explosion", "TD312", "error",
        "An optimizer step moved the weights by more than their own norm (‖Δw‖/‖w‖ >= 1) just before the first "
        "NaN/inf.",
        "The learning rate is far too large: one update threw the weights orders of magnitude away and the next "
        "forward or backward overflowed (nanoGPT at lr 1e9: NaN from step 1). Only one finite loss comes before "
        "the NaN, so no divergence series forms; the op where the NaN appears is not at fault.",
        "Lower the learning rate (10x-100x down first) or warm it up from a small value; clip gradients for "
        "SGD-like optimizers (Adam moves each weight by about lr whatever the gradient, so clipping does not "
        "bound its update).",
        commands=("nan-hunt", "watch"), section={"nan-hunt": "nan-hunt", "watch": "run"},
    ),
    # --- 4xx: count ------------------------------------------------------------------------
    _spec(
        "uncounted-ops", "TD401", "warning",
        "Some ops that ran have no FLOP formula, so their cost is not in the totals.",
        "A silent zero makes a model look cheaper than it is; the named ops are where the gap is.",
        "Check whether the named ops are significant; register a formula with "
        "torch.utils.flop_counter.register_flop_formula if they are.",
        commands=("count",), section="uncounted",
    ),
    _spec(
        "memory-exceeds-device", "TD402", "error",
        "The training step's peak memory (count --memory) does not fit the device given with --fit.",
        "The run would stop with 'CUDA out of memory' at its first step, after the data and the model were loaded.",
        "Apply the top fixes in the finding (each with the bytes it saves, computed): activation checkpointing, "
        "bf16 autocast, a smaller batch, a fused or 8-bit optimizer, or FSDP/ZeRO sharding over N GPUs.",
        commands=("count",), section="memory",
    ),
    _spec(
        "activations-dominate", "TD403", "info",
        "What autograd saves for backward is most of the training step's peak memory.",
        "Then the batch size, activation checkpointing and autocast move the peak, while a smaller optimizer "
        "state barely does.",
        "Checkpoint the modules that save the most (torch.utils.checkpoint), train under bf16 autocast, or lower "
        "the batch size and accumulate gradients.",
        commands=("count",), section="memory",
    ),
    # --- 5xx: data -------------------------------------------------------------------------
    _spec(
        "label-out-of-range", "TD501", "error",
        "A label is negative or not below the number of classes.",
        "On CUDA this is the 'device-side assert triggered' that surfaces at an unrelated line and kills the "
        "process; on CPU 'Target N is out of bounds'.",
        "Remap labels to 0..C-1 (labels 1..C: subtract 1), or give the model C outputs; "
        "`torchdoctor data LOADER --num-classes C` lists the labels out of range.",
        commands=("data", "explain"), section="labels",
    ),
    _spec(
        "label-dtype", "TD502", "error",
        "Labels have the wrong dtype for the loss (float class indices for cross-entropy, int targets for BCE).",
        "cross_entropy wants int64 class indices; BCE wants float targets shaped like the logits.",
        "Cross-entropy: labels.long(); BCEWithLogits: targets.float().",
        commands=("data", "explain"), section="labels",
    ),
    _spec(
        "target-shape", "TD503", "error",
        "Targets have the wrong shape for the loss ([B, 1] class indices, one-hot where indices are expected, ...).",
        "cross_entropy raises '0D or 1D target tensor expected, multi-target not supported' or trains on the "
        "wrong targets.",
        "Class indices: target.squeeze(1) (shape [B]); one-hot: target.argmax(1), or use soft-label cross-entropy.",
        commands=("data", "explain"), section="labels",
    ),
    _spec(
        "input-dtype-mismatch", "TD504", "error",
        "Input dtype differs from the model's weights (e.g. float64 from numpy vs float32 weights).",
        "The first layer raises 'mat1 and mat2 must have the same dtype' / 'Input type and weight type should be "
        "the same'.",
        "Convert in the Dataset: torch.from_numpy(x.astype(np.float32)) or x.float().",
        commands=("data", "explain"), section="inputs",
    ),
    _spec(
        "uint8-input", "TD505", "error",
        "Raw uint8 images are fed to the model (no ToTensor / scaling).",
        "Layers refuse Byte input, or, cast blindly, train on 0..255 values.",
        "Use torchvision.transforms.ToTensor() (or x.float() / 255) and Normalize.",
        commands=("data", "explain"), section="inputs",
    ),
    _spec(
        "channels-last-input", "TD506", "error",
        "Images arrive as [B, H, W, C] while the first convolution expects channels first.",
        "Conv2d raises 'expected input to have C channels, but got W channels'; x.view would scramble pixels.",
        "x.permute(0, 3, 1, 2) in the Dataset (or ToTensor, which does it).",
        commands=("data", "explain"), section="inputs",
    ),
    _spec(
        "unnormalized-input", "TD507", "warning",
        "Float inputs are in 0..255 or far outside a normalised range.",
        "Training converges slowly or not at all with huge activations.",
        "Scale to [0, 1] and Normalize(mean, std).",
        commands=("data",), section="inputs",
    ),
    _spec(
        "variable-size-samples", "TD508", "error",
        "Samples have different shapes, which default_collate cannot stack.",
        "The DataLoader raises 'stack expects each tensor to be equal size'.",
        "Resize/crop to one size in the transform, pad in a collate_fn, or use batch_size=1.",
        commands=("data", "explain"), section="batches",
    ),
    _spec(
        "batchnorm-single-sample-batch", "TD509", "error",
        "The last batch holds one sample and the model has BatchNorm in training mode.",
        "BatchNorm raises 'Expected more than 1 value per channel when training' at the end of the epoch.",
        "DataLoader(..., drop_last=True), or change batch_size so len(dataset) % batch_size != 1.",
        commands=("data", "explain"), section="loader",
    ),
    _spec(
        "unshuffled-classes", "TD510", "warning",
        "shuffle is off and early batches hold a single class (the data set is sorted by label).",
        "Each batch pulls the model towards one class; training oscillates and BatchNorm statistics are skewed.",
        "DataLoader(..., shuffle=True) or a sampler that mixes classes.",
        commands=("data",), section="loader",
    ),
    _spec(
        "negative-strides", "TD511", "error",
        "__getitem__ returns numpy arrays with negative strides (e.g. a [::-1] flip).",
        "torch.from_numpy and default_collate raise 'At least one stride in the given numpy array is negative'.",
        "np.ascontiguousarray(x) (or x.copy()) before returning it.",
        commands=("data", "explain"), section="batches",
    ),
    _spec(
        "getitem-failed", "TD512", "error",
        "The Dataset's __getitem__ raised for some index.",
        "The first epoch crashes when it reaches that sample.",
        "Fix the sample or the code at the named line; skip broken files in __getitem__ deliberately if needed.",
        commands=("data", "explain"), section="batches",
    ),
    _spec(
        "worker-failed", "TD513", "error",
        "A DataLoader worker process died.",
        "Training stops with 'DataLoader worker (pid N) exited unexpectedly'.",
        "Follow the named cause (shared memory, CUDA before fork, an unpicklable dataset); try num_workers=0 to see "
        "the underlying error.",
        commands=("data", "explain"), section="batches",
    ),
    _spec(
        "too-many-workers", "TD514", "warning",
        "num_workers is above the number of usable CPUs.",
        "Workers compete for cores with each other and the training loop; loading gets slower, not faster.",
        "num_workers = usable CPUs (or fewer).",
        commands=("data",), section="loader",
    ),
    _spec(
        "pin-memory-without-gpu", "TD515", "info",
        "pin_memory=True but no GPU is used.",
        "Pinning costs time and page-locked memory for nothing.",
        "pin_memory=torch.cuda.is_available()",
        commands=("data",), section="loader",
    ),
    _spec(
        "dataloader-bottleneck", "TD516", "warning",
        "Loading a batch takes longer than a training step on it.",
        "The GPU (or CPU) waits for data; the run is input-bound.",
        "More workers, persistent_workers=True, lighter transforms, or pre-processed data.",
        commands=("data",), section="batches",
    ),
    _spec(
        "collate-failed", "TD518", "error",
        "The DataLoader's collate function raised while combining samples into a batch.",
        "Every batch (or every batch holding such samples) fails before training sees it; __getitem__ is fine.",
        "Fix the collate_fn at the named line (the details list the samples it was given); when torch's "
        "default_collate raised, return tensors, numpy arrays, numbers or dicts/lists of them from __getitem__ "
        "(add transforms.ToTensor() for PIL images) or pass a collate_fn that knows your sample type.",
        commands=("data", "explain"), section="batches",
    ),
    _spec(
        "loader-hang", "TD517", "error",
        "The DataLoader did not deliver a batch within the time limit (--timeout, default 60 s).",
        "Training stalls at that batch with no error and no output: a __getitem__ blocked on a lock, the network "
        "or a full queue, or worker processes deadlocked after fork.",
        "For a named line: make it return (a timeout on the I/O, no lock shared with another process). If only "
        "workers hang: open files, database handles and thread pools lazily in __getitem__ or in worker_init_fn, "
        "not before iter(); or use multiprocessing_context='spawn'.",
        commands=("data", "explain"), section="batches",
    ),
    # --- 6xx: errors of torchdoctor itself ---------------------------------------------------
    _spec(
        "check-crashed", "TD601", "error",
        "A torchdoctor check raised an unexpected exception; the other checks still ran.",
        "The facts that check gathers are missing from this report.",
        "Rerun with --debug and report the traceback at torchdoctor's issue tracker.",
        commands=("env", "check"), section=ANY_SECTION,
    ),
    _spec(
        "layer-shape-mismatch", "TD602", "error",
        "An input does not fit a layer: its shape differs from what the layer's weight expects.",
        "The forward raises 'mat1 and mat2 shapes cannot be multiplied' or a channel mismatch at that layer.",
        "Make in_features / in_channels of the layer the message describes match what reaches it (or use "
        "nn.LazyLinear / AdaptiveAvgPool2d), or feed the input shape the model was built for.",
        commands=("count", "explain"), section="compute",
    ),
    _spec(
        "zip-format-on-old-torch", "TD603", "error",
        "A zip-format checkpoint (torch >= 1.6) met an older torch, or a TorchScript archive met torch.load.",
        "torch < 1.6 cannot read the zip format; torch.load cannot read TorchScript archives.",
        "Re-save with torch.save(obj, path, _use_new_zipfile_serialization=False) on the new torch, or use "
        "torch.jit.load for TorchScript.",
        commands=("explain",), explain_only=True,
    ),
    _spec(
        "numpy-requires-grad", "TD604", "error",
        "numpy() was called on a tensor that requires grad.",
        "NumPy cannot hold the autograd graph, so PyTorch refuses the conversion.",
        "tensor.detach().cpu().numpy()  (or .item() for a scalar)",
        commands=("explain",), explain_only=True,
    ),
    _spec(
        "deepcopy-non-leaf", "TD605", "error",
        "copy.deepcopy met a non-leaf tensor (one with a grad_fn), e.g. a cached activation or weight_norm.",
        "Only graph leaves support deepcopy; copying the model or a tensor fails.",
        "Copy with tensor.detach().clone(); for models, copy via state_dict() / load_state_dict().",
        commands=("explain",), explain_only=True,
    ),
    _spec(
        "non-leaf-optimized", "TD606", "error",
        "A non-leaf tensor (the result of an op, e.g. w.cuda() or w * 2) was given to an optimizer.",
        "Optimizers can only update leaf tensors; its .grad is never populated.",
        "Create the tensor on the device directly (torch.randn(..., device=d, requires_grad=True)) or use "
        "nn.Parameter.",
        commands=("explain",), explain_only=True,
    ),
    _spec(
        "inplace-modification", "TD607", "error",
        "A tensor needed for the backward pass was modified in place.",
        "Autograd saved it for the gradient; the in-place op changed its version, so backward cannot run.",
        "Replace the in-place op (x += y, relu_(), x[...] = ...) with its out-of-place form; rerun with "
        "torch.autograd.set_detect_anomaly(True) to see which op.",
        commands=("explain",), explain_only=True,
    ),
    _spec(
        "backward-twice", "TD608", "error",
        "backward was run a second time through a graph whose saved tensors were already freed.",
        "Typical with a hidden state carried across batches or a loss summed over iterations.",
        "Detach carried state (h = h.detach()) each step; use retain_graph=True only if you truly need two passes.",
        commands=("explain",), explain_only=True,
    ),
    _spec(
        "cat-zero-dim", "TD609", "error",
        "torch.cat got zero-dimensional tensors (scalars), which have no dimension to concatenate.",
        "Collecting losses or metrics with cat fails.",
        "torch.stack(list_of_scalars), or t.unsqueeze(0) before cat.",
        commands=("explain",), explain_only=True,
    ),
    _spec(
        "cuda-fork-init", "TD610", "error",
        "CUDA was initialised before a forked subprocess (a DataLoader worker) tried to use it.",
        "A forked child cannot use the parent's CUDA context: workers crash.",
        "Do not touch CUDA before starting workers, or use multiprocessing_context='spawn'.",
        commands=("explain",), explain_only=True,
    ),
    _spec(
        "cuda-out-of-memory", "TD611", "error",
        "The GPU ran out of memory.",
        "The batch, the model or leaked tensors (kept graphs, growing lists) do not fit.",
        "Run `torchdoctor count MODEL --input-shape ... --memory --fit cuda` to see what the step needs and "
        "the fixes that make it fit (smaller batch, bf16 autocast, checkpointing); or free leaked references.",
        commands=("explain",), explain_only=True,
    ),
    _spec(
        "budget-exceeded", "TD612", "error",
        "A budget configured for `torchdoctor check` (max-params, max-macs) was exceeded.",
        "The model grew past what the project agreed to ship or to fit on its hardware.",
        "Shrink the model, or raise the budget in [tool.torchdoctor] deliberately.",
        commands=("check",), section=ANY_SECTION,
    ),
    _spec(
        "cuda-device-assert", "TD613", "error",
        "A CUDA kernel hit a device-side assert: most often a class label out of range, else an index out of "
        "bounds.",
        "The assert kills the CUDA context; the traceback points at whatever call synchronised next, not at the "
        "op that failed, and every later CUDA call fails too.",
        "Find which op: rerun with CUDA_LAUNCH_BLOCKING=1 (the traceback then stops at it), or run the same step "
        "on the CPU (it raises a plain IndexError there); check the labels with "
        "`torchdoctor data LOADER --num-classes C`, and token ids against the embedding's num_embeddings.",
        commands=("explain",), explain_only=True,
    ),
    _spec(
        "embedding-index-out-of-range", "TD614", "error",
        "An index given to an embedding (or index_select) is not below the table's size: a token id >= "
        "vocab_size, or a position >= max_position_embeddings.",
        "On the CPU it is 'IndexError: index out of range in self', raised from deep inside the model; on a GPU "
        "the same input is a device-side assert that kills the CUDA context.",
        "Compare the input's max() with the embedding's num_embeddings: a tokenizer whose vocabulary is larger "
        "than the model's config (resize_token_embeddings(len(tokenizer))), or sequences longer than the model's "
        "positions (truncate to max_position_embeddings / block_size).",
        commands=("explain",), explain_only=True,
    ),
    _spec(
        "meta-tensor-weights", "TD615", "error",
        "Some of the model's weights are still on the meta device: shapes without data.",
        "A model built under init_empty_weights / device='meta' (accelerate, from_pretrained with a device_map or "
        "low_cpu_mem_usage) keeps every weight the checkpoint did not provide on 'meta'; the first forward or "
        ".to(device) then fails.",
        "Load real values into every weight: load_state_dict(state, assign=True) with a state dict that has all "
        "the keys (check missing_keys), or model.to_empty(device=...) and initialise what the checkpoint lacks; "
        "list the culprits with [n for n, p in model.named_parameters() if p.is_meta].",
        commands=("explain",), explain_only=True,
    ),
    _spec(
        "tokenizer-no-pad-token", "TD616", "error",
        "A Hugging Face tokenizer was asked to pad a batch but has no padding token (GPT-2, LLaMA and most "
        "decoder-only tokenizers ship without one).",
        "Batching sequences of different lengths (padding=True, DataCollatorWithPadding) fails before training "
        "starts.",
        "tokenizer.pad_token = tokenizer.eos_token (and model.config.pad_token_id = tokenizer.pad_token_id), or "
        "add one with tokenizer.add_special_tokens({'pad_token': '[PAD]'}) and model.resize_token_embeddings("
        "len(tokenizer)).",
        commands=("explain",), explain_only=True,
    ),
    _spec(
        "trainer-no-loss", "TD617", "error",
        "The Hugging Face Trainer got no loss from the model: the batches carry no labels the model uses.",
        "Trainer.compute_loss reads outputs['loss'], which a model computes only when it is given labels.",
        "Give the batches labels: for causal LM DataCollatorForLanguageModeling(tokenizer, mlm=False); for "
        "classification a 'labels' (or 'label') column; check the collator and remove_unused_columns did not "
        "drop it (TrainingArguments(label_names=[...]) for other names).",
        commands=("explain",), explain_only=True,
    ),
    # pitfalls catalogs A and B: the common errors of a training script, each produced by explain's tests
    _spec(
        "view-non-contiguous", "TD618", "error",
        "view() was called on a non-contiguous tensor (the result of transpose, permute, .t() or expand).",
        "view only reinterprets the existing memory; after a permute the elements are no longer laid out in the "
        "order the new shape needs, so PyTorch refuses instead of copying.",
        "Use .reshape(...) (copies only when it must) or .contiguous().view(...); to flatten features, "
        "torch.flatten(x, 1).",
        commands=("explain",), explain_only=True,
    ),
    _spec(
        "backward-non-scalar", "TD619", "error",
        "backward() was called on a tensor with more than one element.",
        "backward() without an argument needs a scalar loss: a per-sample loss (reduction='none'), a loss of "
        "shape [1, ...] or the model's output was passed instead.",
        "Reduce it first (loss.mean().backward() or loss.sum()), or pass the gradient explicitly: "
        "out.backward(torch.ones_like(out)).",
        commands=("explain",), explain_only=True,
    ),
    _spec(
        "leaf-inplace", "TD620", "error",
        "An in-place op changed a leaf tensor that requires grad (a parameter, or a tensor made with "
        "requires_grad=True) while autograd was recording.",
        "A hand-written update (w -= lr * w.grad, w.sub_(...)) or initialisation (w.fill_, w[...] = v) outside "
        "torch.no_grad() would be recorded as part of the graph, so autograd refuses it.",
        "Wrap manual updates and initialisation in `with torch.no_grad():`, or use nn.init.* and an optimizer.",
        commands=("explain",), explain_only=True,
    ),
    _spec(
        "overlapping-inplace-write", "TD621", "error",
        "An in-place op wrote into a tensor whose elements share memory (an expand()ed or broadcast view).",
        "expand() returns a view with stride 0: one memory location stands for many elements, so an in-place "
        "write to it is ambiguous.",
        "Clone the view before writing (x = x.expand(n, -1).clone()), or use the out-of-place op and reassign.",
        commands=("explain",), explain_only=True,
    ),
    _spec(
        "index-dtype", "TD622", "error",
        "A tensor used as indices (x[idx], gather, scatter, index_select) has a floating-point dtype.",
        "Indices must be integers (int64, or int32 for these ops; bool for masks): float indices come from labels "
        "read as float, or from a division.",
        "Convert the index: idx.long() (and use // instead of / to compute it).",
        commands=("explain",), explain_only=True,
    ),
    _spec(
        "too-many-indices", "TD623", "error",
        "A tensor (or numpy array) was indexed with more indices than it has dimensions.",
        "Its shape is not what the code assumes: labels of shape [B] indexed as [B, 1], a batch of one squeezed "
        "away, or a 1-D output indexed per class. .long() does not fix this (it fixes 'tensors used as indices "
        "must be long ...').",
        "Print x.shape before that line and index with as many indices as it has dimensions; squeeze(dim) with "
        "an explicit dim keeps a batch of one.",
        commands=("explain",), explain_only=True,
    ),
    _spec(
        "device-mismatch", "TD624", "error",
        "One op got tensors on different devices (a GPU and the CPU): the model, its input, the labels or a "
        "loss module's weight are not all moved.",
        "Tensor.to(device) returns a copy that must be assigned (x = x.to(device)); Module.to moves in place; "
        "modules kept in a plain list, and tensors created in forward without device=, stay behind.",
        "Move everything the step uses: model.to(device), x, y = x.to(device), y.to(device), criterion.to(device); "
        "register sub-modules in nn.ModuleList / ModuleDict and create new tensors with device=x.device.",
        commands=("explain",), explain_only=True,
    ),
    _spec(
        "optimizer-state-mismatch", "TD625", "error",
        "optimizer.load_state_dict got a state saved for other parameter groups (a different number of groups, "
        "or groups of another size).",
        "The optimizer state stores parameters by position, so it only fits an optimizer built over the same "
        "parameters in the same order and groups: a changed model, frozen layers left out, or another param-"
        "group split breaks a resume.",
        "Build the model and the optimizer exactly as when saving before optimizer.load_state_dict; if the model "
        "changed on purpose, start with a fresh optimizer state.",
        commands=("explain",), explain_only=True,
    ),
    _spec(
        "scaler-unscale-twice", "TD626", "error",
        "GradScaler.unscale_(optimizer) was called twice for one optimizer step.",
        "unscale_ divides the gradients by the scale once per step; with gradient accumulation calling it every "
        "micro-batch, or clipping code calling it again, the second call is refused.",
        "Per optimizer step: scaler.scale(loss).backward() for each micro-batch, then once scaler.unscale_(opt), "
        "clip_grad_norm_, scaler.step(opt), scaler.update().",
        commands=("explain",), explain_only=True,
    ),
    _spec(
        "module-init-missing", "TD627", "error",
        "A Module subclass assigned a layer or parameter before nn.Module.__init__ ran.",
        "super().__init__() is missing, comes after the first self.layer = ..., or never runs (a misspelt "
        "__init, or the class does not inherit nn.Module).",
        "Call super().__init__() as the first line of the subclass's __init__.",
        commands=("explain",), explain_only=True,
    ),
    _spec(
        "module-forward-missing", "TD628", "error",
        "A Module subclass has no forward method, so calling it raised nn.Module's placeholder.",
        "forward is misspelt (foward, forword), nested inside __init__, or indented outside the class.",
        "Define forward(self, ...) as a method of the class, at the same indentation as __init__.",
        commands=("explain",), explain_only=True,
    ),
    _spec(
        "dataset-getitem-missing", "TD629", "error",
        "A Dataset subclass has no __getitem__, so indexing it raised torch.utils.data.Dataset's placeholder.",
        "__getitem__ is misspelt (__getitem, __get_item__) or indented outside the class.",
        "Define __getitem__(self, index) and __len__(self) (returning an int) on the Dataset subclass.",
        commands=("explain",), explain_only=True,
    ),
    _spec(
        "loader-option-conflict", "TD630", "error",
        "The DataLoader got options that exclude each other (shuffle with a sampler, batch_size with a "
        "batch_sampler, or shuffle/sampler with an IterableDataset).",
        "A sampler already decides the order and a batch_sampler the batches; an IterableDataset yields its own "
        "order, so the DataLoader refuses to build.",
        "Keep one: shuffle=True or a sampler (RandomSampler, DistributedSampler(shuffle=True)); batch_sampler "
        "alone; for an IterableDataset shuffle inside __iter__ (a buffer) and shard with get_worker_info().",
        commands=("explain",), explain_only=True,
    ),
    _spec(
        "random-split-lengths", "TD631", "error",
        "random_split got lengths that do not add up to the data set's length.",
        "int(0.8 * n) + int(0.2 * n) rounds down and loses a sample; lengths must sum to len(dataset) exactly.",
        "Compute the last length as the rest (n_val = len(ds) - n_train), or pass fractions that sum to 1 "
        "(random_split(ds, [0.8, 0.2]), torch >= 1.13).",
        commands=("explain",), explain_only=True,
    ),
    _spec(
        "loader-iter-next", "TD632", "error",
        "The DataLoader's iterator was called with .next(), which it does not have.",
        "Python 3 iterators have __next__, not a next() method; the dataiter.next() of old tutorials no longer "
        "exists.",
        "next(iter(loader)), or it = iter(loader) then next(it).",
        commands=("explain",), explain_only=True,
    ),
    _spec(
        "dataparallel-attribute", "TD633", "error",
        "An attribute of the model was read through its DataParallel / DistributedDataParallel wrapper.",
        "The wrapper is a Module of its own: the wrapped model's layers, methods and attributes are under "
        ".module.",
        "model.module.NAME (or keep a reference to the unwrapped model: net = Net(); model = DDP(net); net.NAME).",
        commands=("explain",), explain_only=True,
    ),
    _spec(
        "numpy-on-device", "TD634", "error",
        "numpy() was called on a tensor that is not on the CPU (a GPU, or the meta device).",
        "NumPy arrays live in host memory; PyTorch does not copy a device tensor implicitly.",
        "tensor.detach().cpu().numpy()  (or .item() for a scalar, .tolist() for a small tensor)",
        commands=("explain",), explain_only=True,
    ),
    _spec(
        "loader-unpicklable", "TD635", "error",
        "The DataLoader's worker processes could not be started: something they need (a lambda or local "
        "function as collate_fn / worker_init_fn, or the dataset holding one) cannot be pickled.",
        "With the spawn start method (the default on Windows and macOS, or multiprocessing_context='spawn') "
        "each worker receives the dataset, collate_fn and worker_init_fn pickled; lambdas and functions defined "
        "inside another function cannot be.",
        "Define collate_fn / worker_init_fn at module top level (functools.partial(fn, **options) for "
        "parameters), or a top-level class with __call__; keep open files and handles out of the dataset's "
        "__init__.",
        commands=("explain",), explain_only=True,
    ),
    _spec(
        "inplace-broadcast", "TD636", "error",
        "An in-place op would have to grow its tensor to the broadcast shape of its operands.",
        "An in-place result keeps the tensor's own shape; the classic case is transforms.Normalize with 3-channel "
        "mean/std on grayscale (1-channel) images, which subtracts in place.",
        "Give Normalize one mean and std per channel the images have (or convert the images to RGB first); "
        "elsewhere use the out-of-place op (x = x - y).",
        commands=("explain",), explain_only=True,
    ),
    _spec(
        "amp-import-path", "TD637", "error",
        "Mixed precision was imported from a path that does not exist: torch.cuda.amp.autocast imported as a "
        "module, or NVIDIA apex.",
        "autocast and GradScaler are classes, so `import torch.cuda.amp.autocast` fails; torch.cuda.amp is "
        "deprecated since torch 2.4 and apex's amp is superseded by torch.amp.",
        "from torch.amp import autocast, GradScaler; then `with autocast('cuda'):` and GradScaler('cuda').",
        commands=("explain",), explain_only=True,
    ),
    _spec(
        "scheduler-resume-initial-lr", "TD638", "error",
        "An LR scheduler was created with last_epoch >= 0 (to resume) over an optimizer that has no "
        "'initial_lr' in its param groups.",
        "Resuming by passing last_epoch needs the optimizer state of the original run, which holds initial_lr; "
        "a fresh optimizer does not.",
        "Create the scheduler with the default last_epoch=-1, then scheduler.load_state_dict(saved_scheduler) "
        "after optimizer.load_state_dict(saved_optimizer); save both in the checkpoint.",
        commands=("explain",), explain_only=True,
    ),
    # warnings torch prints while training goes on: explained from a pasted log
    _spec(
        "checkpoint-no-grad-inputs", "TD639", "warning",
        "torch.utils.checkpoint (use_reentrant=True) got no input that requires grad.",
        "The reentrant checkpoint then records no graph: the checkpointed block's parameters get no gradients "
        "and silently stop training (typical for the first block, fed data that never requires grad).",
        "checkpoint(fn, x, use_reentrant=False) (the recommended form), or x.requires_grad_() before the first "
        "checkpointed block.",
        commands=("explain",), explain_only=True,
    ),
    _spec(
        "softmax-implicit-dim", "TD640", "warning",
        "softmax / log_softmax was called without dim=.",
        "PyTorch guesses the dimension (dim 0 for 1-D and 3-D input, 1 otherwise), which is the batch dimension "
        "for some shapes: the probabilities then sum to 1 over the batch, not over the classes.",
        "Give the class dimension explicitly: F.softmax(x, dim=-1), nn.Softmax(dim=1).",
        commands=("explain",), explain_only=True,
    ),
    _spec(
        "kl-div-mean", "TD641", "warning",
        "F.kl_div / nn.KLDivLoss was used with reduction='mean'.",
        "'mean' divides by the number of elements, not the batch size, so the value is not the KL divergence "
        "(and kl_div(input, target) expects input as log-probabilities, target as probabilities).",
        "F.kl_div(q_logits.log_softmax(-1), p, reduction='batchmean') (log_target=True if p is a log-"
        "probability).",
        commands=("explain",), explain_only=True,
    ),
    _spec(
        "nonleaf-grad-access", "TD642", "warning",
        "The .grad of a non-leaf tensor (the result of an op) was read; it is None.",
        "Autograd keeps gradients only for leaves (parameters, tensors made with requires_grad=True); code that "
        "inspects or clips such a .grad sees None.",
        "Call t.retain_grad() before backward, or register a hook (t.register_hook(fn)); for a parameter moved "
        "with .to(), create it on the device instead.",
        commands=("explain",), explain_only=True,
    ),
    _spec(
        "scheduler-before-optimizer", "TD643", "warning",
        "lr_scheduler.step() was called before optimizer.step().",
        "Since torch 1.1 the scheduler must step after the optimizer, or the first value of the schedule is "
        "skipped; with AMP it also shows when GradScaler skipped the first optimizer step (harmless then).",
        "Call optimizer.step() then scheduler.step(); with GradScaler, ignore it if it appears only at the start.",
        commands=("explain",), explain_only=True,
    ),
    _spec(
        "extension-abi-mismatch", "TD644", "error",
        "A compiled PyTorch extension (torch_scatter, apex, mmcv, a custom op) needs a C++ symbol of torch that "
        "this torch does not have.",
        "The extension's binary was built against another torch version (or CUDA build); torch's C++ ABI changes "
        "between releases, so it fails to load.",
        "Install the extension's wheel built for this torch and CUDA version (e.g. pip install torch-scatter -f "
        "https://data.pyg.org/whl/torch-VERSION+CUDA.html), or rebuild it from source against this torch "
        "(pip install --no-build-isolation --force-reinstall --no-cache-dir PACKAGE).",
        commands=("explain",), explain_only=True,
    ),
    _spec(
        "trace-nondeterministic", "TD645", "error",
        "torch.jit.trace (also used by SummaryWriter.add_graph) ran the model again to check the trace and got a "
        "different graph or different outputs.",
        "A trace records one run: a forward that decides in Python (random numbers, counters, if on a tensor's "
        "value) or runs dropout in training mode records something else each time, so the trace is not the model.",
        "Trace in eval mode (model.eval()) with deterministic inputs; for data-dependent control flow use "
        "torch.export or torch.compile instead of tracing (check_trace=False only hides the difference).",
        commands=("explain",), explain_only=True,
    ),
    _spec(
        "bce-autocast", "TD646", "error",
        "F.binary_cross_entropy / nn.BCELoss ran inside a GPU autocast region, which refuses it.",
        "Under autocast the probabilities reaching BCE may be float16, where log(p) near 0 and 1 is not "
        "representable; a sigmoid followed by BCE is also less stable than the fused form.",
        "Remove the final sigmoid and use nn.BCEWithLogitsLoss / F.binary_cross_entropy_with_logits on the logits "
        "(safe under autocast); or compute BCE outside the autocast region on p.float().",
        commands=("explain",), explain_only=True,
    ),
    _spec(
        "torchvision-pillow", "TD647", "error",
        "An old torchvision (< 0.5) imports PIL.PILLOW_VERSION, which Pillow 7.0 removed.",
        "import torchvision fails as soon as Pillow is upgraded: the two were installed at different times.",
        "Upgrade torchvision to the release made for your torch (pip install -U torch torchvision); pinning "
        "Pillow < 7 also works but keeps its old security fixes out.",
        commands=("explain",), explain_only=True,
    ),
    _spec(
        "conv-groups", "TD648", "error",
        "A grouped convolution's in_channels or out_channels is not divisible by groups.",
        "Each group convolves in_channels / groups inputs into out_channels / groups outputs (weight shape "
        "[out, in / groups, k, k]), so both must divide evenly; depthwise convolution is groups = in_channels.",
        "Pick groups that divide both channel counts (e.g. groups=in_channels with out_channels a multiple of it "
        "for depthwise), or change the channel counts.",
        commands=("explain",), explain_only=True,
    ),
    _spec(
        "grad-none", "TD649", "error",
        "A parameter's .grad was used (p.grad.zero_()) while it was None.",
        "A .grad is None before the first backward, for a parameter the loss does not use (frozen, or a layer "
        "left out of forward), and after optimizer.zero_grad(), which sets it to None by default since torch 2.0.",
        "Guard it (if p.grad is not None) or zero with optimizer.zero_grad() / model.zero_grad(); for a manual "
        "update, run backward first and skip parameters without a gradient.",
        commands=("explain",), explain_only=True,
    ),
    _spec(
        "module-device-attribute", "TD650", "error",
        "A Module was asked for .device, which nn.Module does not have (only tensors do).",
        "A model's parameters may even sit on several devices, so a Module has no single device attribute.",
        "next(model.parameters()).device, or keep the device you moved it to (device = torch.device('cuda'); "
        "model.to(device)) and use that.",
        commands=("explain",), explain_only=True,
    ),
    _spec(
        "tensor-copy-construct", "TD651", "warning",
        "torch.tensor() was given a tensor (or a list of tensors) to copy.",
        "torch.tensor always copies and detaches: gradients stop flowing through the copy, and a list of "
        "tensors is converted element by element, slowly.",
        "t.detach().clone() for a copy (add .requires_grad_() for a new leaf); torch.stack(list_of_tensors) to "
        "combine tensors while keeping the graph.",
        commands=("explain",), explain_only=True,
    ),
    _spec(
        "loss-legacy-reduction", "TD652", "warning",
        "A loss was built with the legacy size_average= / reduce= arguments.",
        "They are deprecated in favour of reduction=; the combination is easy to misread (reduce=False ignores "
        "size_average).",
        "Use reduction='mean' (the default), 'sum' or 'none' instead.",
        commands=("explain",), explain_only=True,
    ),
    _spec(
        "pin-memory-no-accelerator", "TD653", "info",
        "DataLoader(pin_memory=True) ran on a machine without an accelerator, so nothing is pinned.",
        "Pinned memory only speeds up host-to-GPU copies (with non_blocking=True); on a CPU-only run the "
        "option does nothing but print this warning.",
        "pin_memory=torch.cuda.is_available() (or drop it on CPU-only machines).",
        commands=("explain",), explain_only=True,
    ),
    _spec(
        "ddp-unused-parameters", "TD701", "error",
        "DDP expected every parameter to get a gradient, but some did not take part in the loss.",
        "DDP's reducer waits for gradients that never come and raises at the next iteration.",
        "Find the unused parameters (TORCH_DISTRIBUTED_DEBUG=DETAIL names them) and remove them, or pass "
        "find_unused_parameters=True to DistributedDataParallel.",
        commands=("nan-hunt", "watch", "explain"), section={"nan-hunt": "nan-hunt", "watch": "run"},
    ),
    _spec(
        "distributed-unavailable", "TD702", "error",
        "This torch build has no torch.distributed, or not the requested backend (gloo, nccl).",
        "init_process_group fails at once: multi-process training cannot start on this install.",
        "Install a build with the backend (NCCL ships only with CUDA builds; "
        "https://pytorch.org/get-started/locally/), or pick one it has: torchdoctor env --distributed --backend gloo",
        commands=("env",), section="distributed",
    ),
    _spec(
        "distributed-init-failed", "TD703", "error",
        "A rank could not join the process group: the rendezvous (address, port, store) did not come together.",
        "Training hangs at start or dies with a connect timeout before the first step.",
        "Check MASTER_ADDR / MASTER_PORT (reachable, port free and not firewalled), RANK / WORLD_SIZE / LOCAL_RANK, "
        "or let torchrun set them: torchrun --standalone --nproc-per-node N script.py",
        commands=("env",), section="distributed",
    ),
    _spec(
        "distributed-step-failed", "TD704", "error",
        "A collective (all_reduce, broadcast, barrier, all_gather) or the DDP training step raised on some rank.",
        "Every distributed training step runs these operations; one failing rank stops the whole job.",
        "Read the named rank's error; rerun with TORCH_DISTRIBUTED_DEBUG=DETAIL (and NCCL_DEBUG=INFO for nccl).",
        commands=("env",), section="distributed",
    ),
    _spec(
        "distributed-hang", "TD705", "error",
        "A rank stalled in a phase past its timeout while the others waited for it in the collective.",
        "One slow or stuck rank blocks every rank: the job hangs until the process-group timeout kills it.",
        "Look at what the named rank does before that collective (uneven data, a rank-only branch, I/O); "
        "py-spy dump --pid PID shows where it is stuck.",
        commands=("env", "nan-hunt", "watch"), section={"env": "distributed", "nan-hunt": "nan-hunt", "watch": "run"},
    ),
    _spec(
        "ranks-diverged", "TD706", "error",
        "Model parameters differ across ranks after a DDP step.",
        "The replicas no longer train the same model; results depend on which rank saves the checkpoint.",
        "Make every rank start from the same weights (DDP broadcasts them at construction), avoid rank-dependent "
        "updates outside DDP, and keep the same seed and code path on every rank.",
        commands=("env", "nan-hunt", "watch"), section={"env": "distributed", "nan-hunt": "nan-hunt", "watch": "run"},
    ),
    _spec(
        "nccl-env", "TD707", "info",
        "NCCL_* variables are set in the environment (shown so a report explains NCCL's behaviour).",
        "NCCL_P2P_DISABLE, NCCL_IB_DISABLE, NCCL_SOCKET_IFNAME and friends change NCCL's transport and speed.",
        None,
        commands=("env",), section="distributed",
    ),
    _spec(
        "syncbn-missing", "TD708", "info",
        "BatchNorm layers train under DistributedDataParallel without SyncBatchNorm.",
        "Each rank normalises with its own (smaller) batch's statistics and keeps its own running stats; "
        "with small per-rank batches this trains and evaluates differently from one large batch.",
        "model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model) before wrapping it in "
        "DistributedDataParallel (fine to keep plain BatchNorm when per-rank batches are large).",
        commands=("nan-hunt", "watch"), section={"nan-hunt": "nan-hunt", "watch": "run"},
    ),
    # --- 8xx: watch (why a training run does not learn; thresholds live in torchdoctor.learning.judge) ------
    _spec(
        "grad-not-zeroed", "TD801", "error",
        "Gradients are carried over from one optimizer step into the next: zero_grad is missing or misplaced.",
        "Every step adds the new gradient to all the old ones, so the update grows and points at stale batches. "
        "Checked on sampled steps: the gradient at the next step equals the previous step's gradient plus "
        "everything backward added since (to 1e-3), or that sum times 0 < c <= 1 (clip_grad_norm_ or an AMP "
        "unscale shrank it; tensors of 8 elements or more) while no multiple of the new gradient alone. "
        "Deliberate accumulation "
        "(several backwards, step, "
        "zero_grad) resets after the step and is not this.",
        "Call optimizer.zero_grad() once per optimizer step, before the backward (or right after step()).",
        commands=("watch",), section="bugs",
    ),
    _spec(
        "double-softmax", "TD802", "error",
        "The input of cross_entropy / CrossEntropyLoss is already a probability distribution (a Softmax "
        "before a loss that applies log_softmax itself).",
        "Every sampled call had rows >= 0 summing to 1 (to 1e-3): the loss squashes probabilities again, "
        "its gradients shrink and the model barely learns.",
        "Return raw logits from the model and drop the Softmax; apply softmax only at inference.",
        commands=("watch",), section="bugs",
    ),
    _spec(
        "sigmoid-before-logits-loss", "TD803", "error",
        "The input of binary_cross_entropy_with_logits / BCEWithLogitsLoss comes out of a sigmoid.",
        "Every sampled call (at least 2) got a sigmoid's output (its autograd node, reshapes aside), all "
        "values in (0, 1): the loss applies a second sigmoid, so predictions never go below 0.5 and learning "
        "stalls.",
        "Remove the final sigmoid (keep it for inference only), or use BCELoss on probabilities.",
        commands=("watch",), section="bugs",
    ),
    _spec(
        "nll-on-logits", "TD804", "error",
        "nll_loss / NLLLoss gets raw scores instead of log-probabilities.",
        "NLLLoss only picks -input[target]; on raw scores (some > 0, or rows whose logsumexp is not 0 "
        "within 1e-2, in every sampled call) it rewards making the score unbounded, not a distribution.",
        "Apply log_softmax before nll_loss, or use cross_entropy on the raw logits.",
        commands=("watch",), section="bugs",
    ),
    _spec(
        "params-not-updated", "TD805", "error",
        "Parameters with requires_grad=True receive gradients but belong to no optimizer.",
        "Typically a layer (a new head) replaced after the optimizer was built: it computes gradients "
        "that nothing applies, so it never trains. Frozen parameters (requires_grad=False) are not this.",
        "Build the optimizer after the last change to the model, or add the parameters with "
        "optimizer.add_param_group({'params': layer.parameters()}).",
        commands=("watch",), section="bugs",
    ),
    _spec(
        "params-no-grad", "TD806", "error",
        "Parameters given to an optimizer never receive a gradient (grouped by module).",
        "A .detach(), .data, torch.no_grad() or an unused branch cuts them off the loss: they never train.",
        "Find where the module's output leaves the graph (.detach(), .data, no_grad) or remove the unused "
        "module; freeze parameters on purpose with requires_grad_(False).",
        commands=("watch",), section="bugs",
    ),
    _spec(
        "eval-mode-training", "TD807", "error",
        "The optimizer steps while modules that behave differently in training (dropout, batch norm) are "
        "in eval mode.",
        "After model.eval() without model.train(), dropout is off and batch norm uses frozen running "
        "statistics: the model trains as a different network. Reported when the whole model is in eval "
        "mode, or a batch-norm layer whose own parameters are being optimized is.",
        "Call model.train() at the start of every training epoch (after each evaluation).",
        commands=("watch",), section="bugs",
    ),
    _spec(
        "loss-not-decreasing", "TD808", "warning",
        "The loss shows no downward trend over the watched window.",
        "With at least 20 steps, the median loss of the last quarter is not 1% below that of the first "
        "quarter, or it sits at the chance level (within 5% of the entropy of the labels seen: ln C for C "
        "balanced classes), where the labels look unrelated to the inputs. A loss that came down to the "
        "chance level from more than 5% above it is not this (a language model in its first steps learns "
        "the label frequencies first). Runs with several optimizers "
        "(GANs) are not judged.",
        "Check that inputs and labels match (shuffle them together), then the learning rate; "
        "overfit one small batch first.",
        commands=("watch",), section="dynamics",
    ),
    _spec(
        "update-ratio-high", "TD809", "warning",
        "Per layer, |Δw| / |w| per step is far above the usual band (around 1e-3).",
        "The median ratio over sampled steps (after warm-up: lr at least half its maximum) is above 1e-1: "
        "each step rewrites a tenth of the weights, so the learning rate is too high. Also a layer that made "
        "one such step after which its gradient (median of the later samples) fell 100x or more while the "
        "loss stalled: the step switched off the ReLUs behind it, leaving too few moves for a median.",
        "Lower the learning rate (about 10x), or add warm-up.",
        commands=("watch",), section="dynamics",
    ),
    _spec(
        "update-ratio-low", "TD810", "warning",
        "Per layer, |Δw| / |w| per step is far below the usual band (around 1e-3).",
        "The median ratio over sampled steps (after warm-up) is below 1e-6: the weights barely move, so "
        "the learning rate is too low (or the gradients vanish).",
        "Raise the learning rate (about 10-100x) and watch the ratio reach about 1e-3.",
        commands=("watch",), section="dynamics",
    ),
    _spec(
        "grad-vanishing", "TD811", "warning",
        "Gradient norms fall by orders of magnitude from the output layers to the input layers.",
        "The first layer's median gradient RMS is below 1e-3 times the last layer's (embeddings and "
        "frozen layers left out): early layers barely learn.",
        "Use ReLU/GELU instead of sigmoid/tanh in deep stacks, residual connections, normalisation "
        "layers, and the default (Kaiming) initialisation.",
        commands=("watch",), section="dynamics",
    ),
    _spec(
        "grad-exploding", "TD812", "warning",
        "Gradient norms grow by orders of magnitude from the output layers to the input layers.",
        "The first layer's median gradient RMS is above 1e3 times the last layer's: early layers take "
        "huge steps and the run tends to diverge.",
        "Clip gradients (torch.nn.utils.clip_grad_norm_), lower the initialisation scale, add "
        "normalisation layers.",
        commands=("watch",), section="dynamics",
    ),
    _spec(
        "dead-relu", "TD813", "warning",
        "A ReLU layer where (nearly) every unit is inactive for every sample watched.",
        "At least 90% of its units (features, or channels of a convolution) output 0 for every sample "
        "of every sampled training step: no gradient flows through them. An nn.ReLU module is named by its "
        "name; a relu called as a function in a module's method (F.relu(x), torch.relu(x), x.relu(), or in "
        "place: x.relu_()) by the module, the spelling and the line ('Net (F.relu, line 18)', "
        "'Net (Tensor.relu, line 21)').",
        "Lower the learning rate, check the initialisation and the bias of the layer before, or use "
        "LeakyReLU/GELU.",
        commands=("watch",), section="dynamics",
    ),
    _spec(
        "saturated-activation", "TD814", "warning",
        "tanh/sigmoid units pinned at their bounds for (nearly) every sample.",
        "At least half the units of a hidden tanh/sigmoid layer are within 1% of their bounds for every "
        "sample of every sampled training step: their gradient is almost 0. An nn.Tanh/nn.Sigmoid module "
        "is named by its name; a call in a module's method (F.tanh(x), torch.sigmoid(x), x.tanh(), ...) by "
        "the module, the spelling and the line ('Net (torch.sigmoid, line 20)'). The model's own output "
        "activation (what it returns, or a sigmoid of it) and the tanh/sigmoid factor inside a GELU/SiLU-style "
        "activation module are not judged.",
        "Normalise the inputs, lower the initialisation scale or learning rate, or use ReLU/GELU.",
        commands=("watch",), section="dynamics",
    ),
    _spec(
        "loss-oscillating", "TD815", "warning",
        "The loss jumps by large factors from step to step without a trend.",
        "With at least 20 steps, over the last half of them the median step-to-step change of the loss is "
        "more than 2x (up or down) and the loss stays above a quarter of where that half began and of the "
        "first steps' loss (a converged loss near 0 jumps by large factors from batch noise alone). "
        "Runs with several optimizers are not judged.",
        "Lower the learning rate; check for a batch size of 1 or unnormalised inputs.",
        commands=("watch",), section="dynamics",
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


def section_of(finding_id: str, command: str) -> str:
    """The section of ``command``'s human report that shows ``finding_id``; ``SectionMissing`` when none does."""
    name = get_spec(finding_id).section_for(command)
    if name is None:
        raise SectionMissing(f"finding {finding_id!r} has no section in {command!r} reports: add {command!r} to its "
                             "commands and name its section in codes.py")
    return name


def section_ids(command: str, section: str) -> tuple[str, ...]:
    """The ids ``command`` shows under ``section``, in code order: the section tables of the commands."""
    return tuple(spec.id for spec in sorted(REGISTRY.values(), key=lambda spec: spec.code)
                 if spec.sections.get(command) == section)


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
