"""The rule table that maps an exception (or its text) to the finding id that explains it.

Each ``Rule`` is one row: the finding id, the exception types it applies to, a regular expression over the
normalised message, and a function building the finding's sentence from the match. Rules are tried in
order, so specific rows (raw uint8 input) come before general ones (any dtype mismatch). The table is
data: adding an explanation is adding a row and a test that produces the real error. No torch import.
"""

from __future__ import annotations

import builtins
import re
import unicodedata
from dataclasses import dataclass

from torchdoctor.codes import make_finding
from torchdoctor.explain.catalog import CATALOG_RULES
from torchdoctor.explain.history import HISTORICAL_RULES
from torchdoctor.explain.rule import Match, Rule, different_dtypes, dtype_name, fixed, numpy_sample_message
from torchdoctor.report import Finding, Severity

__all__ = ["RULES", "Explanation", "Rule", "explain_exception", "match_exception", "normalize_message"]

MAX_QUOTE_CHARS = 240


@dataclass(frozen=True)
class Explanation:
    """A rule that matched: the sentence it builds, and the real exception's type and normalised message."""

    rule: Rule
    sentence: str
    exc_type: str | None
    error: str

    @property
    def id(self) -> str:
        return self.rule.id

    @property
    def quote(self) -> str:
        """``Type: message``, shortened: the error the user saw, as evidence for the sentence."""
        text = f"{self.exc_type}: {self.error}" if self.exc_type else self.error
        return text if len(text) <= MAX_QUOTE_CHARS else text[: MAX_QUOTE_CHARS - 1] + "…"

    def finding(self) -> Finding:
        return make_finding(self.rule.id, f"{self.sentence} ({self.quote})", severity=self.rule.severity,
                            details={"exception": self.exc_type, "error": self.error, "pattern": self.rule.pattern})


# --- message builders ---------------------------------------------------------------------------------


def _maybe_dtype_mismatch(match: Match) -> str:
    if match["a"] is None:
        return "A matrix multiply got operands of different dtypes: the input's dtype differs from the weights'."
    return _dtype_mismatch(match)


def _dtype_mismatch(match: Match) -> str:
    return (f"The model's input is {dtype_name(match['a'])} but its weights are {dtype_name(match['b'])}: "
            "convert the input in the Dataset.")


def _float_index(match: Match) -> str:
    return (f"cross_entropy needs int64 class indices but the targets are {dtype_name(match['got'])}: "
            "use labels.long().")


def _channels_last(match: Match) -> bool:
    dims = [int(d) for d in match["shape"].split(",") if d.strip()]
    return len(dims) >= 3 and dims[-1] == int(match["want"]) and dims[1] != int(match["want"])


def _channels_last_message(match: Match) -> str:
    return (f"The first convolution expects {match['want']} channels in dim 1, but the input "
            f"[{match['shape']}] has them last ([B, H, W, C]): permute it to [B, C, H, W].")


def _stack_message(match: Match) -> str:
    return (f"default_collate cannot stack samples of different shapes ([{match['a']}] at entry {match['i']}, "
            f"[{match['b']}] at entry {match['j']}).")


def _unknown_sample_type(match: Match) -> str:
    kind = re.sub(r"^torchdoctor_target_[^.]*\.", "", match["type"])  # a class from a file.py:name spec's module
    if kind.startswith("PIL.") and kind.endswith("Image"):
        return ("default_collate got PIL images: the dataset's transform is missing transforms.ToTensor() (or "
                "PILToTensor), so samples are never turned into tensors.")
    return f"default_collate cannot batch {kind} objects: __getitem__ returns a type it does not know."


def _worker_pids(match: Match) -> str:
    signal = match.groupdict().get("signal")
    how = f"was killed by signal {signal}" if signal else "exited unexpectedly"
    return f"A DataLoader worker process (pid {match['pids']}) {how}."


def _few(quoted: str, shown: int = 3) -> str:
    """``"a", "b", "c", "d"`` → ``a, b, c and 1 more``."""
    keys = re.findall(r'"([^"]+)"', quoted)
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more


# --- the table ----------------------------------------------------------------------------------------

_NUM = r"(?P<value>-?\d+)"
_SIZE = r"torch\.Size\(\[[\d, ]*\]\)"

_STATE_DICT_KEY = r"(?:Missing|Unexpected) key\(s\) in state_dict: [^\n]*?\"{prefix}"

_CHECKPOINT_RULES: tuple[Rule, ...] = (
    # the prefix rows before size mismatch: a wrapped model's keys are the first thing to fix
    Rule("compile-prefix", _STATE_DICT_KEY.format(prefix=r"_orig_mod\."),
         fixed("The state dict was saved from a torch.compile'd model: its keys start with '_orig_mod.'."), ()),
    Rule("module-prefix", _STATE_DICT_KEY.format(prefix=r"module\."),
         fixed("The state dict and the model disagree on the 'module.' prefix that DataParallel/DDP adds to keys."),
         ()),
    Rule("shape-mismatch", rf"size mismatch for (?P<key>[\w.]+): copying a param with shape (?P<a>{_SIZE}) from "
                           rf"checkpoint, the shape in current model is (?P<b>{_SIZE})",
         lambda m: (f"The checkpoint's {m['key']} has shape {m['a']} but the model's has {m['b']}: a different "
                    "architecture or configuration."), ()),
    # a strict load_state_dict with only missing or only unexpected keys (no prefix, no size to blame): tied
    # weights left out by safetensors, or a different architecture
    Rule("missing-keys", r"Error\(s\) in loading state_dict for (?P<cls>\w+):? Missing key\(s\) in state_dict: "
                         r"(?P<keys>\"[^\n]*?\")\.(?: Unexpected key\(s\) in state_dict: (?P<extra>\"[^\n]*?\")\.)?",
         lambda m: (f"{m['cls']}.load_state_dict(strict=True) found model keys the state dict lacks ({_few(m['keys'])})"
                    + (f" and keys the model lacks ({_few(m['extra'])})" if m["extra"] else "")
                    + ": a different architecture or config, or tied weights that safetensors stores once (then "
                      "`torchdoctor ckpt inspect FILE --model SPEC` says so)."), ()),
    Rule("unexpected-keys", r"Error\(s\) in loading state_dict for (?P<cls>\w+):? Unexpected key\(s\) in "
                            r"state_dict: (?P<keys>\"[^\n]*?\")\.",
         lambda m: f"{m['cls']}.load_state_dict(strict=True) got keys the model lacks ({_few(m['keys'])}).", ()),
    # numpy values (np.float64 scores, RNG states) are refused by weights_only=True like a class is, but hold no code
    Rule("weights-only-numpy", r"Weights only load failed.*?Unsupported global: GLOBAL (?P<name>numpy\.[\w.]+)",
         lambda m: (f"torch.load(weights_only=True) refused {m['name']}: the file holds numpy arrays or "
                    "scalars (a score, an RNG state), not code."), ()),
    # torch >= 2.6 loads with weights_only=True by default; a pickled nn.Module names its class as a GLOBAL
    Rule("full-module-pickle", r"Weights only load failed.*?Unsupported global: GLOBAL (?P<name>[\w.]+)",
         lambda m: f"The file pickles a whole object ({m['name']}), not a state dict, so weights_only=True refuses it.",
         ()),
    Rule("zip-format-on-old-torch", r"is a zip archive \(did you mean to use torch\.jit\.load\(\)\?\)",
         fixed("A zip-format checkpoint (torch >= 1.6) or a TorchScript archive met an old torch.load."), ()),
    Rule("zip-format-on-old-torch", r"with TorchScript archives passed to `*torch\.load",
         fixed("A TorchScript archive was passed to torch.load: load it with torch.jit.load."), ()),
)

_AUTOGRAD_RULES: tuple[Rule, ...] = (
    Rule("numpy-requires-grad", r"Can't call numpy\(\) on (?:Tensor|Variable) that requires grad",
         fixed("numpy() was called on a tensor that is part of the autograd graph: use t.detach().cpu().numpy()."),
         ("RuntimeError",)),
    Rule("deepcopy-non-leaf", r"Only Tensors created explicitly by the user \(graph leaves\) support the deepcopy",
         fixed("copy.deepcopy met a tensor computed from others (a non-leaf): copy t.detach().clone() instead."),
         ("RuntimeError",)),
    Rule("non-leaf-optimized", r"can't optimize a non-leaf Tensor",
         fixed("The optimizer got a tensor computed from a parameter (w * 2, w.to(device)), not the leaf itself."),
         ("ValueError",)),
    Rule("inplace-modification", r"one of the variables needed for gradient computation has been modified by an "
                                 r"inplace operation",
         fixed("An in-place operation changed a tensor that backward still needed."), ("RuntimeError",)),
    Rule("backward-twice", r"Trying to backward through the graph a second time",
         fixed("backward ran twice through one graph, whose saved tensors the first backward freed."),
         ("RuntimeError",)),
    # nn.Embedding / index_select on the CPU (aten/src/ATen/native/TensorAdvancedIndexing.cpp); on CUDA it is
    # the srcIndex device-side assert
    Rule("embedding-index-out-of-range", r"^index out of range in self$",
         fixed("An index passed to an embedding (or index_select) is not below its num_embeddings: a token id >= "
               "vocab_size, or a position id >= the model's maximum sequence length."), ("IndexError",)),
    # torch >= 2.1: a meta weight meets real input ("is not on the expected device"), or .to() copies it
    Rule("meta-tensor-weights", r"Tensor on device meta is not on the expected device|Cannot copy out of meta "
                                r"tensor; no data",
         fixed("A tensor on the meta device (a weight created without data: init_empty_weights, device='meta', or "
               "one the checkpoint did not provide) was used as if it held values."),
         ("RuntimeError", "NotImplementedError")),
    # transformers' tokenization_utils_base and Trainer.compute_loss (4.x-5.x)
    Rule("tokenizer-no-pad-token", r"Asking to pad but the tokenizer does not have a padding token",
         fixed("The tokenizer was asked to pad a batch but has no pad_token."), ("ValueError",)),
    Rule("trainer-no-loss", r"The model did not return a loss from the inputs, only the following keys: "
                            r"(?P<keys>[\w, ]+)\. For reference, the inputs it received are (?P<inputs>[\w, ]+)",
         lambda m: (f"The Trainer's batches ({m['inputs']}) hold no labels, so the model returned no loss, only "
                    f"{m['keys']}."), ("ValueError",)),
    Rule("cat-zero-dim", r"zero-dimensional tensor \(at position (?P<value>\d+)\) cannot be concatenated",
         lambda m: f"torch.cat got a 0-d tensor (position {m['value']}): use torch.stack, or unsqueeze it first.",
         ("RuntimeError",)),
    # DDP's reducer (torch/csrc/distributed/c10d/reducer.cpp); a RuntimeError on every rank
    Rule("ddp-unused-parameters", r"Expected to have finished reduction in the prior iteration before starting a "
                                  r"new one",
         fixed("DDP waited for gradients of parameters the forward did not use."), ()),
)

_LIKELY_ASSERTS = ("Likely causes, most common first: a class label that is negative or not below the number of "
                   "classes (cross_entropy, nll_loss); an index out of bounds (a token id >= an embedding's "
                   "num_embeddings, x[idx], gather, index_select).")

# the kernel's own assertion line names the op; without it only the likely causes can be ranked
_DEVICE_ASSERT_RULES: tuple[Rule, ...] = (
    # aten/src/ATen/native/cuda/IndexKernel.cu (x[idx], index_put): "-sizes[i] <= index" since torch 1.13,
    # "index >= -sizes[i]" before
    Rule("cuda-device-assert", r"(?:-sizes\[i\] <= index && index < sizes\[i\]|index >= -sizes\[i\] && index < "
                               r"sizes\[i\]) && \"index out of bounds\"",
         fixed("A CUDA indexing kernel (x[idx], index_put_) asserted: an index is out of bounds for its "
                "dimension."), (), device_assert="kernel"),
    # Indexing.cu (ATen) and THCTensorIndex.cu (THC): index_select, and so nn.Embedding's forward
    Rule("cuda-device-assert", r"srcIndex < srcSelectDimSize",
         fixed("index_select asserted on the GPU (nn.Embedding uses it): an index, usually a token id, is not "
                "below the table's size (num_embeddings)."), (), device_assert="kernel"),
    # ScatterGatherKernel.cu: gather, scatter, scatter_add
    Rule("cuda-device-assert", r"idx_dim >= 0 && idx_dim < index_size",
         fixed("A CUDA gather/scatter kernel asserted: an index is out of bounds for the dimension it indexes."),
         (), device_assert="kernel"),
    # the exception alone: "CUDA error: device-side assert triggered" (torch >= 1.0; torch.AcceleratorError
    # since 2.8), "cuda runtime error (59) : device-side assert triggered at ..." (THC, torch <= 1.0), and
    # THCudaCheck's "THCudaCheck FAIL file=... line=... error=59 : device-side assert triggered"
    Rule("cuda-device-assert", r"device-side assert triggered",
         fixed("A CUDA kernel hit a device-side assert; the kernel's assertion line, which would say which "
                f"op, is not in the text. {_LIKELY_ASSERTS}"), (), device_assert="bare"),
)

_CUDA_RULES: tuple[Rule, ...] = (
    Rule("cuda-out-of-memory", r"CUDA out of memory\. Tried to allocate (?P<size>[\d.]+ [KMGT]?i?B)",
         lambda m: f"The GPU ran out of memory allocating {m['size']}.", ()),
    Rule("cuda-out-of-memory", r"CUDA error: out of memory|CUDA out of memory",
         fixed("The GPU ran out of memory."), ()),
    Rule("cuda-arch-unsupported", r"no kernel image is available for execution on the device",
         fixed("This torch build has no kernels for the GPU's compute capability."), ()),
    # the warnings torch/cuda/__init__.py prints when CUDA starts: _check_cubins (1.x-2.13), and
    # _warn_unsupported_code (2.13: "Found GPU0 ... which is of compute capability (CC) 12.0. ...")
    Rule("cuda-arch-unsupported", r"with CUDA capability sm_(?P<sm>\d+) is not compatible with the current "
                                  r"PyTorch installation",
         lambda m: f"This torch build has no kernels for the GPU's compute capability (sm_{m['sm']}).", ()),
    Rule("cuda-arch-unsupported", r"which is of compute capability \(CC\) (?P<cc>\d+\.\d+)\.|does not include kernels "
                                  r"for this GPU|No published PyTorch CUDA builds for release \S+ support this GPU",
         lambda m: ("This torch build has no kernels for the GPU's compute capability"
                    + (f" ({m['cc']})." if m["cc"] else ".")), ()),
    Rule("cuda-driver-too-old", r"The NVIDIA driver on your system is too old",
         fixed("The NVIDIA driver is older than the CUDA version this torch was built with."), ()),
    *_DEVICE_ASSERT_RULES,
)


RULES: tuple[Rule, ...] = (
    *HISTORICAL_RULES,  # older torch's wordings, each specific to its old form
    # label-out-of-range: CPU says it plainly; CUDA asserts in the kernel and the text reaches stderr.
    Rule("label-out-of-range", rf"Target {_NUM} is out of bounds",
         lambda m: f"A label ({m['value']}) is negative or not below the number of classes the model outputs.",
         ("IndexError", "RuntimeError")),
    # torch <= 1.2 on the CPU (THNN's THAssert, aten/src/THNN/generic/ClassNLLCriterion.c and
    # SpatialClassNLLCriterion.c): "Assertion `cur_target >= 0 && cur_target < n_classes' failed.  at ..."
    Rule("label-out-of-range", r"Assertion `(?:cur_target|t) >= 0 && (?:cur_target|t) < n_classes' failed",
         fixed("The loss asserted a label is negative or not below the number of classes the model outputs "
                "(THNN's ClassNLLCriterion, torch <= 1.2)."), device_assert="kernel"),
    # CUDA kernels: THCUNN's ClassNLLCriterion.cu (t), SpatialClassNLLCriterion.cu and ATen's NLLLoss2d.cu
    # (cur_target), ATen's Loss.cu today (t)
    Rule("label-out-of-range", r"\b(?:cur_target|t) >= 0 && (?:cur_target|t) < n_classes",
         fixed("A CUDA device-side assert in the loss (t < n_classes): a label is negative or not below the "
                "number of classes the model outputs."), device_assert="kernel"),
    # uint8-input before the general dtype rows: raw images are the usual way a Byte tensor reaches a layer.
    Rule("uint8-input", r"Input type \((?:unsigned char|torch\.(?:cuda\.)?ByteTensor)\) and (?:weight|bias) type",
         fixed("Raw uint8 images reached the model: layers need float input scaled to [0, 1]."),
         ("RuntimeError", "TypeError")),
    Rule("uint8-input", r"(?:mat1 and mat2 must have the same dtype, but got Byte and"
                        r"|expected m1 and m2 to have the same dtype, but got: (?:unsigned char|Byte) !="
                        r"|expected scalar type \w+ but found Byte|\"\w+\" not implemented for 'Byte')",
         fixed("Raw uint8 input reached the model: layers need float input (x.float() / 255, then normalise)."),
         ("RuntimeError",)),
    Rule("label-dtype", r"expected target dtype to be Long or Byte, but got (?P<got>\w+)", _float_index,
         ("RuntimeError",)),
    Rule("label-dtype", r"expected scalar type Long but found (?P<got>\w+)", _float_index, ("RuntimeError",)),
    # torch 1.x wording (pitfalls A13)
    Rule("label-dtype", r"Expected object of scalar type Long but got scalar type (?P<got>\w+)", _float_index,
         ("RuntimeError",)),
    Rule("label-dtype", r"\"\w*(?:nll_loss|cross_entropy)\w*\" not implemented for '(?P<got>\w+)'", _float_index,
         ("RuntimeError",)),
    Rule("label-dtype", r"result type (?:Float|Double|Half|BFloat16) can't be cast to the desired output type "
                        r"(?P<got>Long|Int|Short|Char|Byte|Bool)",
         lambda m: f"A float loss (BCE, MSE) got {dtype_name(m['got'])} targets: use targets.float().",
         ("RuntimeError",)),
    Rule("target-shape", r"0D or 1D target tensor expected, multi-target not supported",
         fixed("cross_entropy got 2-D class indices ([B, 1] or one-hot [B, C]); it wants shape [B]."),
         ("RuntimeError", "ValueError")),
    Rule("target-shape", r"Expected floating point type for target with class probabilities, got (?P<got>\w+)",
         fixed("cross_entropy got integer targets shaped like the logits (one-hot) where class indices of shape "
                "[B] are expected: use target.argmax(1)."),
         ("RuntimeError",)),
    Rule("target-shape", rf"Target size \((?P<target>{_SIZE})\) must be the same as input size \((?P<input>{_SIZE})\)",
         lambda m: f"The loss needs targets shaped like the output: targets {m['target']}, output {m['input']}.",
         ("ValueError", "RuntimeError")),
    Rule("target-shape", r"Expected input batch_size \((?P<input>\d+)\) to match target batch_size \((?P<target>\d+)\)",
         lambda m: f"The output has {m['input']} rows but the targets have {m['target']}: targets of the wrong shape.",
         ("ValueError", "RuntimeError")),
    Rule("target-shape", rf"Using a target size \((?P<target>{_SIZE})\) that is different to the input size "
                         rf"\((?P<input>{_SIZE})\)",
         lambda m: f"The loss broadcasts targets {m['target']} against the output {m['input']}: wrong results.",
         (), severity=Severity.WARNING),  # a UserWarning: the run goes on, silently wrong
    Rule("input-dtype-mismatch", r"mat1 and mat2 must have the same dtype, but got (?P<a>\w+) and (?P<b>\w+)",
         _dtype_mismatch, ("RuntimeError",), different_dtypes),
    # the CUDA matmul's wording (torch 1.13-2.x); older builds stop after "dtype"
    Rule("input-dtype-mismatch", r"expected m1 and m2 to have the same dtype(?:, but got: (?P<a>[\w: ]+?) != "
                                 r"(?P<b>[\w:]+))?", _maybe_dtype_mismatch, ("RuntimeError",), different_dtypes),
    Rule("input-dtype-mismatch", r"Input type \((?P<a>[^)]+)\) and (?:weight|bias) type \((?P<b>[^)]+)\) should be "
                                 r"the same", _dtype_mismatch, ("RuntimeError", "TypeError"), different_dtypes),
    # raised by backward (torch < 2): float64 data, inputs or regression targets, met float32 weights
    Rule("input-dtype-mismatch", r"[Ff]ound dtype (?P<a>\w+) but expected (?P<b>\w+)",
         lambda m: (f"{dtype_name(m['a'])} data (numpy's default, in the inputs or the regression targets) met "
                    f"{dtype_name(m['b'])} weights in backward: convert both in the Dataset."),
         ("RuntimeError",), different_dtypes),
    # torch 1.x wording (pitfalls A12): "Expected object of scalar type Float but got scalar type Double"
    Rule("input-dtype-mismatch", r"Expected object of scalar type (?P<b>\w+) but got scalar type (?P<a>\w+)",
         _dtype_mismatch, ("RuntimeError",), different_dtypes),
    Rule("input-dtype-mismatch", r"expected scalar type (?P<b>\w+) but found (?P<a>\w+)", _dtype_mismatch,
         ("RuntimeError",), different_dtypes),
    Rule("input-dtype-mismatch", r"Expected tensor for argument #1 'indices' to have one of the following scalar "
                                 r"types: Long, Int; but got torch\.(?:cuda\.)?(?P<a>\w+) instead",
         lambda m: f"An embedding got {dtype_name(m['a'])} input; it needs integer token ids (x.long()).",
         ("RuntimeError",)),
    Rule("channels-last-input", r"expected input\[(?P<shape>[\d, ]+)\] to have (?P<want>\d+) channels, but got "
                                r"(?P<got>\d+) channels instead", _channels_last_message, ("RuntimeError",),
         _channels_last),
    # the same message when it is not channels-last, and the matmul's: the layer and its input disagree
    Rule("layer-shape-mismatch", r"weight of size \[(?P<weight>[\d, ]+)\], expected input\[(?P<shape>[\d, ]+)\] "
                                 r"to have (?P<want>\d+) channels, but got (?P<got>\d+) channels",
         lambda m: (f"A convolution with weight [{m['weight']}] expects {m['want']} input channels but got "
                    f"{m['got']} (input [{m['shape']}])."), ("RuntimeError",),
         model_error=True),
    Rule("layer-shape-mismatch", r"mat1 and mat2 shapes cannot be multiplied \((?P<rows>\d+)x(?P<got>\d+) and "
                                 r"(?P<want>\d+)x(?P<out>\d+)\)",
         lambda m: (f"The linear layer with in_features={m['want']}, out_features={m['out']} got {m['got']} "
                    f"features per row (input {m['rows']}x{m['got']}): its in_features differs from the flattened "
                    "size of what reaches it."), ("RuntimeError",),
         model_error=True),
    # torch 1.x wordings (pitfalls A19): the CPU BLAS check and the old matmul message
    Rule("layer-shape-mismatch", r"On entry to SGEMM parameter number \d+ had an illegal value|size mismatch, "
                                 r"m1: \[[\d x]+\], m2: \[[\d x]+\]",
         fixed("A linear layer's in_features differs from the flattened size of its input."), (),
         model_error=True),
    Rule("variable-size-samples", r"stack expects each tensor to be equal size, but got \[(?P<a>[\d, ]*)\] at entry "
                                  r"(?P<i>\d+) and \[(?P<b>[\d, ]*)\] at entry (?P<j>\d+)", _stack_message,
         ("RuntimeError",)),
    # with worker processes default_collate stacks into shared memory and fails earlier, with this message
    Rule("variable-size-samples", r"Trying to resize storage that is not resizable",
         fixed("default_collate in a worker cannot stack samples of different shapes into one batch."),
         ("RuntimeError",)),
    Rule("variable-size-samples", r"each element in list of batch should be of equal size",
         # the usual lists are token ids: a tokenizer's output without padding
         fixed("default_collate got samples whose lists have different lengths (token ids of different lengths? "
               "pad them in a collate_fn, such as transformers.DataCollatorWithPadding(tokenizer))."),
         ("RuntimeError",)),
    Rule("batchnorm-single-sample-batch", rf"Expected more than 1 value per channel when training, got input size "
                                          rf"(?P<size>{_SIZE})",
         lambda m: f"BatchNorm in training mode got a batch of one sample ({m['size']}).", ("ValueError",)),
    Rule("negative-strides", r"stride in the given numpy array is negative|negative strides? (?:is|are) not "
                             r"(?:currently )?supported",
         fixed("A numpy array with negative strides (a [::-1] flip) reached torch: copy it first."),
         ("ValueError", "RuntimeError")),
    # a bus error in a worker is /dev/shm running out (pitfalls A7/A8): before the generic dead-worker rows
    Rule("shm-too-small", r"insufficient shared memory|unable to write to file </torch_|unable to allocate shared "
                          r"memory|killed by signal: Bus error|Unexpected bus error encountered in worker",
         fixed("DataLoader workers ran out of shared memory (/dev/shm) handing batches to the main process."), ()),
    Rule("cuda-fork-init", r"Cannot re-initialize CUDA in forked subprocess|CUDA error: initialization error",
         fixed("A forked DataLoader worker touched CUDA, which the parent had already initialised."), ()),
    Rule("collate-failed", r"default_collate: batch must contain tensors, numpy arrays, numbers, dicts or lists; "
                           r"found <class '(?P<type>[\w.]+)'>", _unknown_sample_type, ("TypeError",)),
    # numpy arrays it cannot convert: the message names their numpy dtype (torch 1.5-2.13)
    Rule("collate-failed", r"default_collate: batch must contain tensors, numpy arrays, numbers, dicts or lists; "
                           r"found (?P<dtype>object|[<>|=]?[SUa]\d+)\b", lambda m: numpy_sample_message(m["dtype"]),
         ("TypeError",)),
    Rule("loader-hang", r"DataLoader timed out after (?P<seconds>[\d.]+) seconds",
         lambda m: (f"The DataLoader's own timeout expired: no batch arrived from its worker processes within "
                    f"{m['seconds']} s (DataLoader(timeout={m['seconds']}))."), ("RuntimeError",)),
    Rule("worker-failed", r"DataLoader worker \(pid\(s\) (?P<pids>[\d, ]+)\) exited unexpectedly", _worker_pids,
         ("RuntimeError",)),
    Rule("worker-failed", r"DataLoader worker \(pid (?P<pids>\d+)\) is killed by signal: (?P<signal>[^.]+)",
         _worker_pids, ("RuntimeError",)),
    *_CHECKPOINT_RULES,
    *_AUTOGRAD_RULES,
    *_CUDA_RULES,
    *CATALOG_RULES,  # the pitfalls catalogs' common errors
    # last: any other error raised inside a Dataset's __getitem__ as the DataLoader fetched it (in a worker's
    # "Original Traceback" or in the main process); the frames must show the fetch, since a ModuleList's or a
    # dict's __getitem__ raises too
    Rule("getitem-failed", r".", fixed("The Dataset's __getitem__ raised while the DataLoader fetched a sample: "
                                       "the last frames above the error name the line and the sample's index."),
         ("Exception",), context=r'fetch\.py", line \d+, in (?:fetch|<listcomp>|__getitem__)[\s\S]*, in '
                                 r'__getitem__(?:\s|$)'),
)


# --- matching -----------------------------------------------------------------------------------------

_QUOTES = str.maketrans({"‘": "'", "’": "'", "‚": "'", "‛": "'", "“": '"', "”": '"', "„": '"', "‟": '"'})
_WORKER_HEADER = re.compile(r"Caught \w+ in DataLoader worker process \d+\.?")
_TRACEBACK_HEADER = "Original Traceback (most recent call last):"
_EXCEPTION_LINE = re.compile(r"^(?P<type>[A-Za-z_][\w.]*): ?(?P<message>.*)$")
_TYPED_TEXT = re.compile(r"^(?P<type>[A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit|Warning)): (?P<message>.*)",
                         re.DOTALL)


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # weights_only's message embeds bold escapes


def normalize_message(text: str) -> str:
    """NFKC, ANSI escapes dropped, curly quotes straight, whitespace runs collapsed: what the patterns see."""
    return " ".join(unicodedata.normalize("NFKC", _ANSI.sub("", text)).translate(_QUOTES).split())


def match_exception(exc: BaseException | str, *, model_errors: bool = False, context: str = "") -> Explanation | None:
    """The first rule that explains ``exc`` (an exception, or its text such as ``"IndexError: Target 5 ..."``).

    ``model_errors`` also tries the rows that blame the model rather than its input (layer-shape-mismatch).
    Off by default because the data probe calls this and reports those as ``training-step-failed`` with the
    user's frame; every other caller (explain, nan-hunt, env, ckpt, count) passes True. ``context`` is the
    pasted text around the error (its traceback's frames), which a few ambiguous rows need.
    """
    type_names, exc_type, raw = _type_and_text(exc)
    worker_type, raw = unwrap_worker_error(raw)
    if worker_type is not None:  # a worker's exception arrives re-raised in its own type; the text names it
        exc_type = worker_type
        type_names = type_names or _builtin_mro(worker_type)
    text = normalize_message(raw)
    for rule in RULES:
        if rule.model_error and not model_errors:
            continue
        if rule.exception_types and type_names and not set(rule.exception_types) & set(type_names):
            continue
        if rule.context is not None and not re.search(rule.context, context):
            continue
        found = rule.match(text)
        if found is not None:
            return Explanation(rule, rule.message(found), exc_type, text)
    return None


def explain_exception(exc: BaseException | str) -> Finding | None:
    """The finding that explains ``exc``, or None when no rule knows its message."""
    explanation = match_exception(exc, model_errors=True)
    return explanation.finding() if explanation is not None else None


def _type_and_text(exc: BaseException | str) -> tuple[tuple[str, ...], str | None, str]:
    if isinstance(exc, BaseException):
        names = tuple(cls.__name__ for cls in type(exc).__mro__)
        # KeyError's str() is the repr of its argument; its argument is the message
        raw = exc.args[0] if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str) \
            else str(exc)
        return names, type(exc).__name__, raw
    typed = _TYPED_TEXT.match(exc.strip())
    if typed is None:
        return (), None, exc
    name = typed["type"].rsplit(".", 1)[-1]
    return _builtin_mro(name), name, typed["message"]


def _builtin_mro(name: str) -> tuple[str, ...]:
    """MRO names of a builtin exception type; () for others (torch.AcceleratorError...): then any rule may apply."""
    cls = getattr(builtins, name, None)
    if isinstance(cls, type) and issubclass(cls, BaseException):
        return tuple(c.__name__ for c in cls.__mro__)
    return ()


def unwrap_worker_error(raw: str) -> tuple[str | None, str]:
    """``Caught X in DataLoader worker process 0. Original Traceback ... X: msg`` → ``("X", "msg")``."""
    if _TRACEBACK_HEADER not in raw or not _WORKER_HEADER.search(raw):
        return None, raw
    lines = raw.split(_TRACEBACK_HEADER, 1)[1].splitlines()
    last_frame = max((i for i, line in enumerate(lines) if line.lstrip().startswith('File "')), default=-1)
    for index in range(last_frame + 1, len(lines)):
        found = _EXCEPTION_LINE.match(lines[index])
        if found and not lines[index].startswith((" ", "\t")):
            return found["type"].rsplit(".", 1)[-1], "\n".join([found["message"], *lines[index + 1:]])
    return None, raw
