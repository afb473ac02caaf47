"""The rows added for ``torchdoctor explain``: each fed the real error torch raises, as an exception, as its
formatted traceback, and after copy-paste mangling; errors that need a GPU, DDP or an old torch are recorded."""

from __future__ import annotations

import copy
import os
import tempfile
import traceback

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchdoctor.codes import REGISTRY
from torchdoctor.explain.parse import explain_text
from torchdoctor.explain.rules import explain_exception


class Net(nn.Module):  # pickled whole by torch.save(model): the unpickler names this class as a GLOBAL
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 2)


def _backward_twice():
    x = torch.ones(2, requires_grad=True)
    y = (x * x).sum()
    y.backward()
    y.backward()


def _inplace():
    x = torch.ones(2, requires_grad=True)
    y = x.sigmoid()
    y.mul_(2)
    y.sum().backward()


def _saved(obj, save=torch.save) -> str:
    handle, path = tempfile.mkstemp(suffix=".pt")
    os.close(handle)
    save(obj, path)
    return path


def _load_full_module_weights_only():
    path = _saved(Net())
    try:
        torch.load(path, weights_only=True)
    finally:
        os.unlink(path)


def _load_torchscript():
    path = _saved(torch.jit.script(nn.Linear(2, 2)), save=torch.jit.save)
    try:
        torch.load(path)
    finally:
        os.unlink(path)


def _compiled_state_dict() -> dict:
    # what torch.compile(model).state_dict() holds: OptimizedModule registers the model as "_orig_mod"
    return {f"_orig_mod.{key}": value for key, value in nn.Linear(2, 2).state_dict().items()}


def _load_numpy_weights_only(value):
    path = _saved({"model": nn.Linear(2, 2).state_dict(), "best_val_loss": value})
    try:
        torch.load(path, weights_only=True)
    finally:
        os.unlink(path)


REAL_ERRORS = {
    "label-dtype": [lambda: F.cross_entropy(torch.randn(4, 3), torch.tensor([0.0, 1.0, 2.0, 1.0]))],
    "input-dtype-mismatch": [lambda: nn.Linear(8, 3)(torch.randn(4, 8).half())],
    "module-prefix": [lambda: nn.Linear(2, 2).load_state_dict(nn.DataParallel(nn.Linear(2, 2)).state_dict())],
    "compile-prefix": [lambda: nn.Linear(2, 2).load_state_dict(_compiled_state_dict())],
    "shape-mismatch": [lambda: nn.Linear(2, 2).load_state_dict(nn.Linear(3, 2).state_dict())],
    "full-module-pickle": [_load_full_module_weights_only],
    "zip-format-on-old-torch": [_load_torchscript],
    "numpy-requires-grad": [lambda: torch.ones(2, requires_grad=True).numpy()],
    "deepcopy-non-leaf": [lambda: copy.deepcopy(torch.ones(2, requires_grad=True) * 2)],
    "non-leaf-optimized": [lambda: torch.optim.SGD([torch.ones(2, requires_grad=True) * 2], lr=0.1)],
    "inplace-modification": [_inplace],
    "backward-twice": [_backward_twice],
    "cat-zero-dim": [lambda: torch.cat([torch.tensor(1.0), torch.tensor(2.0)])],
    "layer-shape-mismatch": [lambda: nn.Linear(8, 3)(torch.randn(4, 5)),
                             lambda: nn.Conv2d(3, 4, 3)(torch.randn(2, 1, 32, 32))],
    "label-out-of-range": [lambda: F.cross_entropy(torch.randn(4, 3), torch.tensor([0, 1, 2, 5]))],
    # found on real artifacts: a safetensors file of a tied model into plain load_state_dict, a nanoGPT-style
    # checkpoint with a numpy score, token ids beyond the vocabulary and positions beyond block_size
    "missing-keys": [lambda: nn.Linear(2, 2).load_state_dict({"weight": torch.zeros(2, 2)}),
                     lambda: nn.Linear(2, 2).load_state_dict({"weight": torch.zeros(2, 2), "extra": torch.zeros(1)})],
    "unexpected-keys": [lambda: nn.Linear(2, 2, bias=False).load_state_dict(nn.Linear(2, 2).state_dict())],
    "weights-only-numpy": [lambda: _load_numpy_weights_only(np.float64(1.5)),
                           lambda: _load_numpy_weights_only(np.arange(3))],
    "embedding-index-out-of-range": [lambda: nn.Embedding(10, 4)(torch.tensor([[1, 10]])),
                                     lambda: F.embedding(torch.tensor([-11]), torch.zeros(10, 4))],
}
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
CASES = [(finding_id, index) for finding_id, makers in REAL_ERRORS.items() for index in range(len(makers))]


def produced(finding_id: str, index: int) -> tuple[BaseException, str]:
    """The real exception and ``traceback.format_exc()`` of it."""
    try:
        REAL_ERRORS[finding_id][index]()
    except Exception as exc:  # noqa: BLE001 - any real error is what we want
        return exc, traceback.format_exc()
    pytest.fail(f"{finding_id}[{index}] raised nothing")


def mangle(text: str) -> str:
    """What copy-paste and a logger do: curly quotes, the message reflowed mid-line, a prefix on every line."""
    lines = text.rstrip("\n").split("\n")
    last = max(i for i, line in enumerate(lines) if line and not line.startswith(" "))
    words = lines[last].split(" ")
    lines[last] = " ".join(words[: len(words) // 2 + 1]) + "\n" + " ".join(words[len(words) // 2 + 1:])
    curly = "\n".join(lines).replace("'", "\u2019").replace('"', "\u201c")
    return "\n".join(f"2024-05-01 12:00:00,123 ERROR {line}" for line in curly.split("\n"))


@pytest.mark.parametrize(("finding_id", "index"), CASES)
def test_real_error_object_is_explained(finding_id, index):
    exc, _ = produced(finding_id, index)
    finding = explain_exception(exc)
    assert finding is not None, f"{type(exc).__name__}: {exc}"
    assert finding.id == finding_id and finding.code == REGISTRY[finding_id].code and finding.fix


@pytest.mark.parametrize(("finding_id", "index"), CASES)
def test_real_traceback_text_is_explained(finding_id, index):
    _, text = produced(finding_id, index)
    assert explain_text(text, "stdin").result["matched"] == [finding_id]


@pytest.mark.parametrize(("finding_id", "index"), CASES)
def test_copy_paste_mangled_traceback_is_explained(finding_id, index):
    _, text = produced(finding_id, index)
    mangled = mangle(text)
    assert "\u2019" in mangled or "\u201c" in mangled or "'" not in text
    assert explain_text(mangled, "stdin").result["matched"] == [finding_id]


@pytest.mark.parametrize(("text", "finding_id"), [
    # torch 1.x wordings quoted in pitfalls-A (A13, A12, A19, A3; seed notes from torch 1.2-1.5)
    ("RuntimeError: Expected object of scalar type Long but got scalar type Float for argument #2 'target' in call "
     "to _thnn_nll_loss_forward", "label-dtype"),
    ("RuntimeError: Expected object of scalar type Float but got scalar type Double for argument #2 'target'",
     "input-dtype-mismatch"),
    ("RuntimeError: On entry to SGEMM parameter number 8 had an illegal value", "layer-shape-mismatch"),
    ("RuntimeError: size mismatch, m1: [4 x 5], m2: [8 x 3] at /pytorch/aten/src/TH/generic/THTensorMath.cpp:41",
     "layer-shape-mismatch"),
    ("RuntimeError: ./model.pth.tar is a zip archive (did you mean to use torch.jit.load()?)",
     "zip-format-on-old-torch"),
    ("RuntimeError: Can't call numpy() on Variable that requires grad. Use var.detach().numpy() instead.",
     "numpy-requires-grad"),
    # pitfalls-A A14: a CUDA input against CPU double weights is a dtype mismatch too
    ("RuntimeError: Input type (torch.cuda.FloatTensor) and weight type (torch.DoubleTensor) should be the same",
     "input-dtype-mismatch"),
    ("RuntimeError: Input type (torch.cuda.HalfTensor) and weight type (torch.cuda.FloatTensor) should be the same",
     "input-dtype-mismatch"),
    ("RuntimeError: Input type (torch.cuda.ByteTensor) and weight type (torch.cuda.FloatTensor) should be the same",
     "uint8-input"),
    # GPU only: c10/cuda/CUDACachingAllocator.cpp (torch.OutOfMemoryError since 2.1)
    ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
     "15.77 GiB of which 1.10 GiB is free.", "cuda-out-of-memory"),
    ("RuntimeError: CUDA error: out of memory", "cuda-out-of-memory"),
    # GPU only: c10/cuda/CUDAException.cpp, a build without the GPU's sm_XX
    ("RuntimeError: CUDA error: no kernel image is available for execution on the device", "cuda-arch-unsupported"),
    # GPU only: torch/cuda/__init__.py _check_driver / c10/cuda/CUDAFunctions.cpp
    ("RuntimeError: The NVIDIA driver on your system is too old (found version 10010). Please update your GPU "
     "driver", "cuda-driver-too-old"),
    # DDP across processes: torch/csrc/distributed/c10d/reducer.cpp
    ("RuntimeError: Expected to have finished reduction in the prior iteration before starting a new one. This "
     "error indicates that your module has parameters that were not used in producing loss.",
     "ddp-unused-parameters"),
    # GPU only, pitfalls-B B53: a forked worker touching CUDA (1.x wording, then 2.x)
    ("RuntimeError: CUDA error: initialization error", "cuda-fork-init"),
    ("RuntimeError: Caught RuntimeError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
     "last):\n  File \"x.py\", line 3, in f\n    y\nRuntimeError: Cannot re-initialize CUDA in forked subprocess. "
     "To use CUDA with multiprocessing, you must use the 'spawn' start method", "cuda-fork-init"),
    # torch/utils/data/_utils/signal_handling.py, and the shm allocator's error (torch/lib/libshm)
    ("ERROR: Unexpected bus error encountered in worker. This might be caused by insufficient shared memory (shm).",
     "shm-too-small"),
    ("RuntimeError: unable to allocate shared memory(shm) for file </torch_123_456_0>: Resource temporarily "
     "unavailable (11)", "shm-too-small"),
])
def test_recorded_messages(text, finding_id):
    assert explain_exception(text).id == finding_id
    assert explain_text(text, "stdin").result["matched"] == [finding_id]


def test_device_only_input_type_message_is_not_a_dtype_mismatch():
    text = "RuntimeError: Input type (torch.cuda.FloatTensor) and weight type (torch.FloatTensor) should be the same"
    finding = explain_exception(text)  # pitfalls A14: a device mismatch (explain/catalog.py)
    assert finding.id == "device-mismatch" and "input is on cuda but the layer's weights are on cpu" in finding.message


class _RaisesInGetitem(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor([1.0, 2.0])[index : index + 1] / [1, 2][index]  # IndexError from index 2 on


@pytest.mark.parametrize("workers", [0, 1])
def test_an_error_inside_a_datasets_getitem_is_named_from_the_traceback(workers):
    with pytest.raises(IndexError) as caught:
        list(torch.utils.data.DataLoader(_RaisesInGetitem(), batch_size=4, num_workers=workers))
    text = "".join(traceback.format_exception(caught.value))
    assert explain_text(text, "stdin").result["matched"] == ["getitem-failed"]
    assert explain_exception(caught.value) is None  # the message alone is any IndexError


def test_an_indexerror_from_a_modulelist_is_not_a_datasets():
    with pytest.raises(IndexError) as caught:
        nn.ModuleList([nn.Linear(1, 1)])[3]
    assert explain_text("".join(traceback.format_exception(caught.value)), "stdin").result["matched"] == []
