"""The wordings older PyTorch versions used for errors the table knows (0.3-1.x: TH, THNN, THC, THCUNN, ATen).

Users paste errors from whatever torch they run. Each row cites where its text came from: the C/C++/Python
source of that version, or the text users pasted from it into public threads; ``tests/explain/
test_wordings.py`` holds each text. These rows are tried before the table's current wordings, so each is
specific to its old form. No torch import.
"""

from __future__ import annotations

from torchdoctor.explain.rule import Match, Rule, different_dtypes, dtype_name, fixed, numpy_sample_message

__all__ = ["HISTORICAL_RULES"]

_TARGET_ARG = r"for argument #\d+ 'target'"
_FLOAT = r"(?:Float|Double|Half|BFloat16)"
_INTEGER = r"(?:Long|Int|Short|Char|Byte|Bool)"


def _float_target(match: Match) -> str:
    return (f"A float loss (BCE, MSE) got {dtype_name(match['got'])} targets where it wants "
            f"{dtype_name(match['want'])}: use targets.float().")


def _index_target(match: Match) -> str:
    return (f"cross_entropy / nll_loss needs int64 class indices but the targets are {dtype_name(match['got'])}: "
            "use labels.long().")


def _two_dtypes(match: Match) -> str:
    # these wordings name the op's first tensor "expected" and the other "found": which is the input depends on
    # the op (linear: the input; a loss: the output), so the sentence names both without guessing
    return (f"Tensors of two dtypes met in one op ({dtype_name(match['a'])} and {dtype_name(match['b'])}), "
            "usually float64 data (numpy's default) against float32 weights: convert the input in the Dataset.")


def _channels_last(match: Match) -> bool:
    dims = [int(d) for d in match["shape"].split(",") if d.strip()]
    return len(dims) >= 3 and dims[-1] == int(match["want"]) and dims[1] != int(match["want"])


def _old_collate_message(match: Match) -> str:
    if match["dtype"]:
        return numpy_sample_message(match["dtype"])
    if match["type"].startswith("PIL."):
        return "default_collate got PIL images: the dataset's transform is missing transforms.ToTensor()."
    return f"default_collate cannot batch {match['type']} objects: __getitem__ returns a type it does not know."


# "weight[64, 3, 7, 7], so expected input" (torch 0.4) and "weight of size 64 3 7 7, expected input" (1.0-1.3)
_OLD_CONV = (r"Given (?:groups|transposed)=\d+, weight(?:\[(?P<w1>[\d, ]+)\], so| of size (?P<w2>[\d ]+),) expected "
             r"input\[(?P<shape>[\d, ]+)\] to have (?P<want>\d+) channels, but got (?P<got>\d+) channels")


def _old_conv_message(match: Match) -> str:
    weight = ", ".join((match["w1"] or match["w2"]).replace(",", " ").split())
    return (f"A convolution with weight [{weight}] expects {match['want']} input channels but got "
            f"{match['got']} (input [{match['shape']}]).")


_LABEL_ROWS: tuple[Rule, ...] = (
    # torch 0.4 (ATen's checked_tensor_unwrap): "Expected object of type torch.LongTensor but found type
    # torch.FloatTensor for argument #2 'target'", pasted from nll_loss2d in public threads
    Rule("label-dtype", rf"Expected object of type torch\.(?:cuda\.)?LongTensor but found type "
                        rf"torch\.(?:cuda\.)?(?P<got>\w+?)(?:Tensor)? {_TARGET_ARG}", _index_target, ("RuntimeError",)),
    # a float loss given integer targets: 0.4 ("Expected object of type torch.FloatTensor but found type
    # torch.LongTensor for argument #2 'target'") and 1.0-1.5 ("Expected object of scalar type Float but got
    # scalar type Long for argument #2 'target'")
    Rule("label-dtype", rf"Expected object of type torch\.(?:cuda\.)?(?P<want>{_FLOAT})Tensor but found type "
                        rf"torch\.(?:cuda\.)?(?P<got>{_INTEGER})Tensor {_TARGET_ARG}", _float_target,
         ("RuntimeError",)),
    Rule("label-dtype", rf"Expected object of scalar type (?P<want>{_FLOAT}) but got scalar type (?P<got>{_INTEGER}) "
                        rf"{_TARGET_ARG}", _float_target, ("RuntimeError",)),
    # backward of BCE / MSE with integer targets (torch 1.x and still 2.13: "Found dtype Long but expected Float")
    Rule("label-dtype", rf"Found dtype (?P<got>{_INTEGER}) but expected (?P<want>{_FLOAT})", _float_target,
         ("RuntimeError",)),
    # torch 0.3: the THNN binding's argument check, "TypeError: FloatClassNLLCriterion_updateOutput received an
    # invalid combination of arguments - got (int, torch.FloatTensor, !torch.FloatTensor!, ...), but expected
    # (int state, torch.FloatTensor input, torch.LongTensor target, ..."
    Rule("label-dtype", r"ClassNLLCriterion_updateOutput received an invalid combination of arguments - got "
                        r"\(int, [\w.]+, !torch\.(?:cuda\.)?(?P<got>\w+?)Tensor!",
         _index_target, ("TypeError",)),
    # THNN/THCUNN ClassNLLCriterion (torch <= 1.2): "multi-target not supported at .../ClassNLLCriterion.c:22";
    # ATen since says "0D or 1D target tensor expected, multi-target not supported" (the table's current row)
    Rule("target-shape", r"^multi-target not supported at ",
         fixed("cross_entropy got 2-D class indices ([B, 1] or one-hot [B, C]); it wants shape [B]."),
         ("RuntimeError",)),
    # segmentation masks with a channel dimension: ATen today ("... but got targets of dimension: 4"), ATen 1.x
    # ("... but got targets of size: : [16, 1, 64, 64]"), THCUNN's SpatialClassNLLCriterion the same text
    Rule("target-shape", r"only batches of spatial targets supported \(3D tensors\) but got targets of "
                         r"(?:dimension: (?P<dim>\d+)|size: : \[(?P<size>[\d, ]+)\])",
         lambda m: ("cross_entropy on a [B, C, H, W] output wants class-index masks of shape [B, H, W]; these have "
                    f"{m['dim'] + ' dimensions' if m['dim'] else 'shape [' + m['size'] + ']'} (squeeze the "
                    "channel dimension of a [B, 1, H, W] mask)."),
         ("RuntimeError",)),
)

_INPUT_ROWS: tuple[Rule, ...] = (
    # torch 0.4 and 1.0-1.4 for a uint8 input against float weights (conv: argument 'weight', linear: 'mat2')
    Rule("uint8-input", r"Expected object of (?:scalar type Byte but got scalar type |type torch\.(?:cuda\.)?"
                        r"ByteTensor but found type torch\.(?:cuda\.)?)\w+ for argument #\d+ '(?:weight|mat2)'",
         fixed("Raw uint8 input reached the model: layers need float input (x.float() / 255, then normalise)."),
         ("RuntimeError",)),
    # torch 0.4: "Expected object of type torch.DoubleTensor but found type torch.FloatTensor for argument #2
    # 'mat2'" (ATen's checked_tensor_unwrap); a device-only difference is not a dtype mismatch
    Rule("input-dtype-mismatch", r"Expected object of type (?P<a>torch\.(?:cuda\.)?\w+) but found type "
                                 r"(?P<b>torch\.(?:cuda\.)?\w+) for argument #\d+ '(?:mat2|weight|input|self|mat1)'",
         _two_dtypes, ("RuntimeError",), different_dtypes),
    # nn.LSTM / GRU / RNN since torch 2.0 (torch/nn/modules/rnn.py), produced by torch 2.13
    Rule("input-dtype-mismatch", r"RNN input dtype \((?P<a>[\w.]+)\) does not match weight dtype \((?P<b>[\w.]+)\)",
         lambda m: (f"A recurrent layer got {dtype_name(m['a'])} input but has {dtype_name(m['b'])} weights: "
                    "convert the input in the Dataset."), ("ValueError",), different_dtypes),
    # torch 0.4-1.x (torch/csrc/utils/tensor_numpy.cpp) before the 2.x wording the table has
    Rule("negative-strides", r"some of the strides of a given numpy array are negative",
         fixed("A numpy array with negative strides (a [::-1] flip, np.flip, rot90) reached torch: copy it first "
               "(np.ascontiguousarray)."), ("ValueError", "RuntimeError")),
    # torch 0.3-0.4 (torch/nn/functional.py batch_norm formatted a list, not a torch.Size)
    Rule("batchnorm-single-sample-batch", r"Expected more than 1 value per channel when training, got input size "
                                          r"(?P<size>\[[\d, ]+\])",
         lambda m: f"BatchNorm in training mode got a batch of one sample (input size {m['size']}).",
         ("ValueError",)),
    # default_collate before torch 1.5 (torch/utils/data/dataloader.py, later _utils/collate.py)
    Rule("collate-failed", r"^batch must contain tensors, numbers, dicts or lists; found (?:<class '(?P<type>[\w.]+)'>|"
                           r"(?P<dtype>object|[<>|=]?[SUa]\d+)\b)", _old_collate_message, ("TypeError",)),
)

_LAYER_ROWS: tuple[Rule, ...] = (
    # torch 0.4 and 1.0-1.3 convolution wordings, channels-last first as in the table's current rows
    Rule("channels-last-input", _OLD_CONV,
         lambda m: (f"The first convolution expects {m['want']} channels in dim 1, but the input [{m['shape']}] has "
                    "them last ([B, H, W, C]): permute it to [B, C, H, W]."), ("RuntimeError",), _channels_last),
    Rule("layer-shape-mismatch", _OLD_CONV, _old_conv_message, ("RuntimeError",), model_error=True),
    # a convolution given input of the wrong rank: torch 1.x, then torch >= 1.11 (produced by 2.13)
    Rule("layer-shape-mismatch", r"Expected (?P<want>\d)-dimensional input for \d-dimensional weight "
                                 r"\[?(?P<weight>[\d, ]+?)\]?, but got (?P<got>\d)-dimensional input of size "
                                 r"\[(?P<shape>[\d, ]+)\]",
         lambda m: (f"A convolution with weight [{', '.join(m['weight'].replace(',', ' ').split())}] needs "
                    f"{m['want']}-D input but got {m['got']}-D [{m['shape']}] (a missing batch dimension, or a "
                    "flattened image)."), ("RuntimeError",), model_error=True),
    Rule("layer-shape-mismatch", r"Expected (?P<want>\d)D \(unbatched\) or (?P<batched>\d)D \(batched\) input to "
                                 r"(?P<op>conv\w+), but got input of size: \[(?P<shape>[\d, ]+)\]",
         lambda m: (f"A {m['op']} needs {m['want']}-D or {m['batched']}-D input but got [{m['shape']}] (a "
                    "flattened image, or an extra dimension)."), ("RuntimeError",), model_error=True),
)

_CUDA_ROWS: tuple[Rule, ...] = (
    # THC (torch <= 1.0): "cuda runtime error (2) : out of memory at .../THC/generic/THCStorage.cu:58"
    Rule("cuda-out-of-memory", r"cuda runtime error \(2\) : out of memory", fixed("The GPU ran out of memory."), ()),
    # cudaErrorInsufficientDriver as torch relays it: THC's "cuda runtime error (35) : CUDA driver version is
    # insufficient for CUDA runtime version at torch/csrc/cuda/Module.cpp:51", then "CUDA error: ..."
    Rule("cuda-driver-too-old", r"CUDA driver version is insufficient for CUDA runtime version",
         fixed("The NVIDIA driver is older than the CUDA runtime this torch was built with."), ()),
    # torch/cuda/__init__.py _check_capability (0.4-2.x): "Found GPU0 Tesla K40m which is of cuda capability
    # 3.5. / PyTorch no longer supports this GPU because it is too old. / The minimum cuda capability ..."
    Rule("cuda-arch-unsupported", r"PyTorch no longer supports this GPU because it is too old",
         fixed("This torch build dropped the GPU's compute capability: the GPU is older than the build supports."),
         ()),
    # a forked DataLoader worker touching CUDA under THC: "cuda runtime error (3) : initialization error"
    Rule("cuda-fork-init", r"cuda runtime error \(3\) : initialization error",
         fixed("A forked DataLoader worker touched CUDA, which the parent had already initialised."), ()),
)

_AUTOGRAD_ROWS: tuple[Rule, ...] = (
    # torch <= 0.3 called tensors that need grad Variables (torch/optim/optimizer.py, torch/autograd/variable.py)
    Rule("non-leaf-optimized", r"can't optimize a non-leaf Variable",
         fixed("The optimizer got a Variable computed from a parameter (w * 2, w.cuda()), not the leaf itself."),
         ("ValueError",)),
    Rule("deepcopy-non-leaf", r"Only Variables created explicitly by the user \(graph leaves\) support the deepcopy",
         fixed("copy.deepcopy met a Variable computed from others (a non-leaf): copy v.detach().clone() instead."),
         ("RuntimeError",)),
    # torch/csrc/DataLoader.cpp (SIGCHLD handler), still in torch 2.13's libtorch_python: "DataLoader worker
    # (pid 109) exited unexpectedly with exit code 1. Details are lost due to multiprocessing. ..."
    Rule("worker-failed", r"DataLoader worker \(pid (?P<pids>\d+)\) exited unexpectedly with exit code (?P<code>-?\d+)",
         lambda m: f"A DataLoader worker process (pid {m['pids']}) exited with code {m['code']}.", ("RuntimeError",)),
)

_OLD_SIZE = r"torch\.Size\(\[[\d, ]*\]\)"

_CHECKPOINT_ROWS: tuple[Rule, ...] = (
    # torch.hub's _legacy_zip_load (torch 1.x; still in 2.13's torch/hub.py, unreachable since the caller checks
    # for one member first): a zip-format (>= 1.6) checkpoint met a torch.hub that took every zip for its legacy
    # single-file zip (pitfalls B7)
    Rule("zip-format-on-old-torch", r"Only one file\(not dir\) is allowed in the zipfile",
         fixed("torch.hub of torch < 1.6 took a zip-format checkpoint (torch >= 1.6) for its legacy single-file "
               "zip."), ("RuntimeError",)),
    # torch 0.2-0.3 load_state_dict (torch/nn/modules/module.py): KeyError('unexpected key "{}" in state_dict')
    Rule("compile-prefix", r"unexpected key \"_orig_mod\.[\w.]*\" in state_dict",
         fixed("The state dict was saved from a torch.compile'd model: its keys start with '_orig_mod.'."), ()),
    Rule("module-prefix", r"unexpected key \"module\.[\w.]*\" in state_dict",
         fixed("The state dict was saved from a DataParallel/DDP model: its keys start with 'module.'."), ()),
    # torch 0.3 ("While copying the parameter named conv1.weight, whose dimensions in the model are ...") and
    # 0.4 (the name quoted, inside "Error(s) in loading state_dict for Net:")
    Rule("shape-mismatch", rf"While copying the parameter named \"?(?P<key>[\w.]+)\"?, whose dimensions in the "
                           rf"model are (?P<b>{_OLD_SIZE}) and whose dimensions in the checkpoint are "
                           rf"(?P<a>{_OLD_SIZE})",
         lambda m: (f"The checkpoint's {m['key']} has shape {m['a']} but the model's has {m['b']}: a different "
                    "architecture or configuration."), ()),
)

_COLLATE_ROWS: tuple[Rule, ...] = (
    # torch 0.4-1.4: default_collate's torch.stack went through TH's cat, "invalid argument 0: Sizes of tensors
    # must match except in dimension 0. Got 342 and 281 in dimension 3 at .../TH/generic/THTensorMoreMath.cpp".
    # Any torch.cat says the same, so only a paste whose frames show default_collate is explained.
    Rule("variable-size-samples", r"Sizes of tensors must match except in dimension 0\. Got (?P<a>\d+) and "
                                  r"(?P<b>\d+) in dimension (?P<dim>\d+)",
         lambda m: (f"default_collate cannot stack samples of different shapes ({m['a']} and {m['b']} in dimension "
                    f"{m['dim']} of a sample)."), ("RuntimeError",), context=r"in default_collate\b"),
)

HISTORICAL_RULES: tuple[Rule, ...] = (*_LABEL_ROWS, *_INPUT_ROWS, *_LAYER_ROWS, *_CUDA_ROWS, *_AUTOGRAD_ROWS,
                                      *_CHECKPOINT_ROWS, *_COLLATE_ROWS)
