"""Rows for the common errors and warnings of a training script that the pitfalls catalogs list (view after
permute, backward of a non-scalar, a leaf changed in place, float indices, devices, optimizer resumes,
DataLoader options, extension ABI, a few warnings...).

Each row's pattern is torch 2.13's wording, produced by ``tests/explain/test_catalog_errors.py``; what only a
GPU raises is matched on the catalog's text (device-mismatch) or on the text libtorch holds (bce-autocast).
Messages that alone are any Python error's (pickling, a missing attribute) need their traceback's frames
(``context=``). The rows sit after the table's own rows and before its catch-all row (``getitem-failed``), so
an error raised inside a Dataset names its cause. No torch import.
"""

from __future__ import annotations

from torchdoctor.explain.rule import Match, Rule, dtype_name, fixed
from torchdoctor.report import Severity

__all__ = ["CATALOG_RULES"]


def _index_dtype(match: Match) -> str:
    where = f"{match['op']}()" if match["op"] else "Indexing (x[idx])"
    return f"{where} got indices of a floating-point dtype: indices must be integers (idx.long())."


def _too_many_indices(match: Match) -> str:
    dims = match["dim"] or match["adim"]
    extra = f" with {match['n']} indices" if match["n"] else " with more indices than that"
    return (f"A {dims}-D tensor was indexed{extra}: its shape is not the one the code assumes (print x.shape "
            "before that line).")


def _devices(match: Match) -> str:
    found = f" ({match['a']} and {match['b']})" if match["a"] else ""
    return f"One op got tensors on different devices{found}: the model, the batch or the labels were not all moved."


def _device_of(tensor_type: str) -> str:
    """``torch.cuda.FloatTensor`` → ``cuda``; ``torch.FloatTensor`` → ``cpu``."""
    parts = tensor_type.strip().split(".")
    return parts[1] if len(parts) == 3 else "cpu"


def _only_device_differs(match: Match) -> bool:
    # a dtype difference is input-dtype-mismatch's (tried first); this row is for the same dtype on two devices
    return dtype_name(match["a"]) == dtype_name(match["b"]) and _device_of(match["a"]) != _device_of(match["b"])


def _input_weight_devices(match: Match) -> str:
    return (f"The input is on {_device_of(match['a'])} but the layer's weights are on {_device_of(match['b'])}: "
            "move the batch with x = x.to(device) (Tensor.to returns a copy) and the model with model.to(device).")


def _loader_conflict(match: Match) -> str:
    if match["iterable"]:
        return (f"A DataLoader over an IterableDataset got {match['iterable']}=...: an IterableDataset yields its "
                "own order, so shuffle and samplers do not apply.")
    return f"The DataLoader got {match['opt']} together with an option it excludes ({match['others']})."


CATALOG_RULES: tuple[Rule, ...] = (
    # pitfalls A24 / B31; torch 1.x ended "Call .contiguous() before .view()", TH began "invalid argument 2: "
    Rule("view-non-contiguous", r"view size is not compatible with input tensor's size and stride",
         fixed("view() was called on a non-contiguous tensor (after transpose, permute or .t()): use .reshape(...) "
               "or .contiguous().view(...)."), ("RuntimeError",)),
    # B64; complex outputs say "only for real scalar outputs"
    Rule("backward-non-scalar", r"grad can be implicitly created only for (?:real )?scalar outputs",
         fixed("backward() was called on a tensor of more than one element: reduce the loss first "
               "(loss.mean()), or pass a gradient."), ("RuntimeError",)),
    # B56: 2.x says "is being used", 1.x "has been used"
    Rule("leaf-inplace", r"a leaf Variable that requires grad (?:is being|has been) used in an in-place operation",
         fixed("An in-place op changed a parameter (or another tensor made with requires_grad=True) while autograd "
               "was recording: do manual updates and initialisation under torch.no_grad()."), ("RuntimeError",)),
    # B13: expand() is a stride-0 view
    Rule("overlapping-inplace-write", r"more than one element of the written-to tensor refers to a single memory "
                                      r"location",
         fixed("An in-place op wrote into an expand()ed (stride-0) view whose elements share memory: clone() it "
               "first."), ("RuntimeError",)),
    # A11 / B34: "scatter(): Expected dtype int32/int64 for index", "index_select(): Expected dtype int32 or
    # int64 for index", and x[idx]'s IndexError
    Rule("index-dtype", r"(?:(?P<op>\w+)\(\): Expected dtype int(?:32/int| or int)?64 for index|tensors used as "
                        r"indices must be long, int, byte or bool tensors)", _index_dtype,
         ("RuntimeError", "IndexError")),
    # B34, and numpy's wording of the same mistake
    Rule("too-many-indices", r"too many indices for (?:tensor of dimension (?P<dim>\d+)|array: array is "
                             r"(?P<adim>\d+)-dimensional, but (?P<n>\d+) were indexed)", _too_many_indices,
         ("IndexError",)),
    # A27 / B44 / B28, CUDA only (a CPU build has one device); the catalog's 2.x text ("... found at least two
    # devices, cuda:0 and cpu!") and torch 1.x's "Expected object of device type cuda but got device type cpu"
    Rule("device-mismatch", r"Expected all tensors to be on the same device(?:, but found at least two devices, "
                            r"(?P<a>[\w:]+) and (?P<b>[\w:]+)!?)?", _devices, ("RuntimeError",)),
    # A14: a convolution's input and weight types (cuDNN / mkldnn check), same dtype on two devices
    Rule("device-mismatch", r"Input type \((?P<a>[^)]+)\) and (?:weight|bias) type \((?P<b>[^)]+)\) should be the "
                            r"same", _input_weight_devices, ("RuntimeError", "TypeError"), _only_device_differs),
    Rule("device-mismatch", r"Expected object of device type (?P<a>\w+) but got device type (?P<b>\w+)", _devices,
         ("RuntimeError",)),
    # B65: a GPU-saved checkpoint on a machine without CUDA (torch/serialization.py validate_cuda_device)
    Rule("cuda-saved-tensors", r"Attempting to deserialize object on a CUDA device but torch\.cuda\.is_available\(\) "
                               r"is False",
         fixed("The checkpoint's tensors were saved on a GPU and this machine has no CUDA: load with "
               "map_location='cpu'."), ("RuntimeError",), severity=Severity.ERROR),
    # B6: torch/optim/optimizer.py load_state_dict
    Rule("optimizer-state-mismatch", r"loaded state dict (?:contains a parameter group that doesn't match the size "
                                     r"of optimizer's group|has a different number of parameter groups)",
         fixed("optimizer.load_state_dict got a state saved for other parameters or groups than this optimizer "
               "holds: build the model and optimizer as when saving."), ("ValueError",)),
    # B10: torch/amp/grad_scaler.py
    Rule("scaler-unscale-twice", r"unscale_\(\) has already been called on this optimizer since the last "
                                 r"update\(\)",
         fixed("GradScaler.unscale_ ran twice for one step (every micro-batch, or once by hand and again): call "
               "it once per optimizer step, before clipping."), ("RuntimeError",)),
    # B61: torch/nn/modules/module.py __setattr__ and _forward_unimplemented
    Rule("module-init-missing", r"cannot assign (?:module|parameters) before Module\.__init__\(\) call",
         fixed("A Module subclass set a layer or parameter before super().__init__() ran."), ("AttributeError",)),
    Rule("module-forward-missing", r"Module \[(?P<cls>\w+)\] is missing the required \"forward\" function",
         lambda m: f"{m['cls']} has no forward() method (misspelt, or nested inside __init__).",
         ("NotImplementedError",)),
    # A31: torch/utils/data/dataset.py
    Rule("dataset-getitem-missing", r"Subclasses of Dataset should implement __getitem__",
         fixed("The Dataset subclass has no __getitem__ (misspelt, or outside the class)."),
         ("NotImplementedError",)),
    # A33 / B41: torch/utils/data/dataloader.py __init__
    Rule("loader-option-conflict", r"(?P<opt>sampler|batch_sampler) option is mutually exclusive with "
                                   r"(?P<others>[\w, ]+?)$|DataLoader with IterableDataset: expected unspecified "
                                   r"(?P<iterable>shuffle|sampler|batch_sampler) option", _loader_conflict,
         ("ValueError",)),
    # B59: torch/utils/data/dataset.py random_split
    Rule("random-split-lengths", r"Sum of input lengths does not equal the length of the input dataset",
         fixed("random_split's lengths do not add up to len(dataset): compute the last one as the rest."),
         ("ValueError",)),
    # B21: nn.Module.__getattr__ of the wrapper
    Rule("dataparallel-attribute", r"'(?P<wrapper>DataParallel|DistributedDataParallel)' object has no attribute "
                                   r"'(?P<name>\w+)'",
         lambda m: (f"{m['name']} was read from the {m['wrapper']} wrapper, which holds the model under .module: "
                    f"use model.module.{m['name']}."), ("AttributeError",)),
    # B17: torch/csrc/utils/tensor_numpy.cpp; a CUDA tensor says "cuda:0", the meta device "meta"
    Rule("numpy-on-device", r"can't convert (?P<device>[\w:]+) device type tensor to numpy",
         lambda m: f"numpy() was called on a tensor on {m['device']}: copy it to the CPU first (t.detach().cpu()).",
         ("TypeError",)),
    # A34: a worker started with spawn gets collate_fn, worker_init_fn and the dataset pickled. The message
    # alone is any pickling failure, so only a paste whose frames show the DataLoader starting is explained.
    Rule("loader-unpicklable", r"Can't pickle (?P<what>local object '[^']+'|<function [^>]+>)",
         lambda m: (f"A DataLoader worker could not be started: {m['what']} cannot be pickled (a lambda or local "
                    "function as collate_fn / worker_init_fn, or held by the dataset)."),
         ("AttributeError", "PicklingError"), context=r"data[\\/]dataloader\.py\W+line \d+"),
    # B40: the in-place op keeps its tensor's shape (transforms.Normalize subtracts in place)
    Rule("inplace-broadcast", r"output with shape \[(?P<out>[\d, ]*)\] doesn't match the broadcast shape "
                              r"\[(?P<shape>[\d, ]*)\]",
         lambda m: (f"An in-place op would grow its tensor from [{m['out']}] to [{m['shape']}]"
                    + (": 3-channel Normalize mean/std on 1-channel (grayscale) images?" if m["out"].startswith("1,")
                       and m["shape"].startswith("3,") else ": use the out-of-place op.")), ("RuntimeError",)),
    # B8: `import torch.cuda.amp.autocast as autocast` (a class, not a module), and apex
    Rule("amp-import-path", r"No module named '(?P<name>torch\.(?:cuda\.)?amp\.\w+|apex)'",
         lambda m: (f"{m['name']} is not an importable module: use torch.amp (from torch.amp import autocast, "
                    "GradScaler)."), ("ModuleNotFoundError", "ImportError")),
    # B33: anomaly mode names the backward function that produced NaN (torch/csrc/autograd/engine.cpp)
    Rule("nonfinite-backward", r"Function '(?P<fn>\w+)' returned nan values in its (?P<index>\d+)(?:st|nd|rd|th) "
                               r"output",
         lambda m: (f"Anomaly mode caught {m['fn']} producing NaN in backward: its forward op has an infinite or "
                    "undefined derivative at those inputs (log or sqrt at 0, division by 0)."), ("RuntimeError",)),
    # B29: unpickling a whole-model file where its class is not importable (torch.load(weights_only=False));
    # multiprocessing's unpickling says the same, so only torch.load's frames count
    Rule("full-module-pickle", r"Can't get attribute '(?P<name>\w+)' on <module '(?P<module>[\w.]+)'",
         lambda m: (f"The file pickles a whole object whose class {m['module']}.{m['name']} is not importable here: "
                    "a whole-model torch.save(model), not a state dict."), ("AttributeError",),
         severity=Severity.ERROR, context=r"torch[\\/]serialization\.py\W+line \d+"),
    # B23: torch/optim/lr_scheduler.py, a scheduler built with last_epoch >= 0 over a fresh optimizer
    Rule("scheduler-resume-initial-lr", r"param 'initial_lr' is not specified in param_groups\[(?P<group>\d+)\] when "
                                        r"resuming",
         fixed("A scheduler was created with last_epoch >= 0 over an optimizer without 'initial_lr': build it with "
               "last_epoch=-1 and load its state_dict instead."), ("KeyError",)),
    # warnings (the run goes on): torch/utils/checkpoint.py (B24), torch/nn/functional.py (A35/B43, B46),
    # torch/_tensor.py (A39), torch/optim/lr_scheduler.py (B23)
    Rule("checkpoint-no-grad-inputs", r"None of the inputs have requires_grad=True\. Gradients will be None",
         fixed("A reentrant activation checkpoint got no input requiring grad: the block's parameters get no "
               "gradients."), (), severity=Severity.WARNING),
    Rule("softmax-implicit-dim", r"Implicit dimension choice for (?P<op>\w+) has been deprecated",
         lambda m: f"{m['op']} was called without dim=: give the class dimension explicitly (dim=-1).", (),
         severity=Severity.WARNING),
    Rule("kl-div-mean", r"reduction: 'mean' divides the total loss by both the batch size and the support size",
         fixed("kl_div with reduction='mean' is not the KL divergence: use reduction='batchmean'."), (),
         severity=Severity.WARNING),
    Rule("nonleaf-grad-access", r"The \.grad attribute of a Tensor that is not a leaf Tensor is being accessed",
         fixed("The .grad of a non-leaf tensor was read: it stays None (retain_grad() before backward)."), (),
         severity=Severity.WARNING),
    Rule("scheduler-before-optimizer", r"Detected call of `?lr_scheduler\.step\(\)`? before `?optimizer\.step\(\)`?",
         fixed("lr_scheduler.step() ran before optimizer.step(): step the optimizer first."), (),
         severity=Severity.WARNING),
    # B45: the dynamic loader's error for an extension built against another torch; the symbol is a mangled C++
    # name in one of torch's namespaces (at::, c10::, torch::, caffe2::)
    Rule("extension-abi-mismatch", r"(?:(?P<lib>[^\s/\\:]+\.(?:so|pyd|dylib))[^\s:]*: )?undefined symbol: "
                                   r"(?P<sym>_Z\w*?(?:2at|3c10|5torch|6caffe2)\w*)",
         lambda m: (f"{m['lib'] or 'A compiled extension'} was built against another torch: it needs the C++ symbol "
                    f"{m['sym']}, which this torch lacks."), ("ImportError", "OSError")),
    # A19: torch/jit/_trace.py's check_trace (torch.jit.trace, SummaryWriter.add_graph); the next line, "ERROR:
    # Graphs differed across invocations!", loses its "ERROR:" to the log-prefix stripping of a paste
    Rule("trace-nondeterministic", r"Tracing failed sanity checks!?(?: (?:ERROR: )?(?P<what>[^!.]+)[!.])?",
         lambda m: ("torch.jit.trace ran the model again and got " + (m["what"].lower() if m["what"] else
                    "something else") + ": its forward is not the same on every run (Python-side decisions, or "
                    "dropout in training mode)."), ("TracingCheckError",)),
    # B19: aten/src/ATen/autocast_mode.cpp binary_cross_entropy_banned, registered for GPU autocast only
    Rule("bce-autocast", r"binary_cross_entropy and torch\.nn\.BCELoss are unsafe to autocast",
         fixed("BCELoss / F.binary_cross_entropy was called under GPU autocast: use BCEWithLogitsLoss on the logits "
               "instead of sigmoid + BCE."), ("RuntimeError",)),
    # A1: torchvision < 0.5's `from PIL import PILLOW_VERSION` (Python < 3.7 leaves out "from 'PIL'")
    Rule("torchvision-pillow", r"cannot import name '?PILLOW_VERSION'?(?: from '?PIL'?(?: |$)|$)",
         fixed("An old torchvision (< 0.5) imports PIL.PILLOW_VERSION, which Pillow >= 7 no longer has."),
         ("ImportError",)),
    # B26: torch/nn/modules/conv.py _ConvNd.__init__
    Rule("conv-groups", r"(?P<which>in_channels|out_channels) must be divisible by groups",
         lambda m: f"A convolution's {m['which']} is not divisible by its groups.", ("ValueError",)),
    # B5 / B56: a grad that does not exist yet (or was set to None by zero_grad) being zeroed by hand
    Rule("grad-none", r"'NoneType' object has no attribute 'zero_'",
         fixed("p.grad.zero_() met a .grad that is None (no backward yet, a parameter the loss does not use, or "
               "zero_grad's set_to_none)."), ("AttributeError",)),
    # B44: nn.Module.__getattr__ (torch/nn/modules/module.py); the message alone is any object's, so only a
    # paste whose frames show that __getattr__ is explained
    Rule("module-device-attribute", r"'(?P<cls>\w+)' object has no attribute 'device'",
         lambda m: (f"{m['cls']} is an nn.Module, which has no .device: use next(model.parameters()).device."),
         ("AttributeError",), context=r"nn[\\/]modules[\\/]module\.py\W+line \d+, in __getattr__"),
    # more warnings: torch/csrc/utils/tensor_new.cpp (B58), torch/nn/_reduction.py (B63), dataloader.py (B15)
    Rule("tensor-copy-construct", r"To copy construct from a tensor, it is recommended to use sourceTensor\.",
         fixed("torch.tensor() copied a tensor (detached): use t.detach().clone(), or torch.stack for a list."),
         (), severity=Severity.WARNING),
    Rule("loss-legacy-reduction", r"size_average and reduce args will be deprecated, please use "
                                  r"reduction='(?P<reduction>\w+)' instead",
         lambda m: f"A loss uses the legacy size_average/reduce arguments: write reduction='{m['reduction']}'.", (),
         severity=Severity.WARNING),
    Rule("pin-memory-no-accelerator", r"'pin_memory' argument is set as true but no accelerator is found",
         fixed("pin_memory=True on a machine without an accelerator pins nothing (harmless)."), (),
         severity=Severity.INFO),
    # B17: the Python 2 style dataiter.next() (or loader.next())
    Rule("loader-iter-next", r"'(?:DataLoader|_(?:SingleProcess|MultiProcessing)DataLoaderIter)' object has no "
                             r"attribute 'next'",
         fixed("The DataLoader's iterator has no .next() method: use next(iter(loader))."), ("AttributeError",)),
)
