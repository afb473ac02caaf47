"""The wordings PyTorch used over time, each explained (``explain/history.py``), and near misses left unknown.

Where torch 2.13 still raises an error, the test raises it for real. Older texts are quoted exactly: from the
source file of that version (named in each comment) or as users pasted them from that version into public
threads; the leading ``RuntimeError:`` is what Python printed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import default_collate

from torchdoctor.explain.parse import explain_text
from torchdoctor.explain.rules import explain_exception


def raised(fn) -> BaseException:
    try:
        fn()
    except Exception as error:  # noqa: BLE001
        return error
    pytest.fail("raised nothing")


def explained(error: BaseException | str) -> str | None:
    """The id the table gives, checked to agree between the exception (or its text) and a pasted log."""
    finding = explain_exception(error)
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    matched = explain_text(text, "stdin").result["matched"]
    assert matched == ([finding.id] if finding else []), (finding, matched)
    return finding.id if finding else None


# --- produced by torch 2.13 ---------------------------------------------------------------------------

PRODUCED = {
    "segmentation mask with a channel dim": (
        lambda: F.cross_entropy(torch.randn(2, 3, 4, 4), torch.zeros(2, 1, 4, 4, dtype=torch.long)), "target-shape"),
    "BCE with int64 targets (backward's check)": (
        lambda: F.binary_cross_entropy(torch.tensor([0.5]), torch.tensor([1])), "label-dtype"),
    "float64 into an LSTM": (lambda: nn.LSTM(3, 2)(torch.zeros(1, 1, 3, dtype=torch.float64)), "input-dtype-mismatch"),
    "flattened image into a conv": (lambda: nn.Conv2d(3, 4, 3)(torch.randn(16, 784)), "layer-shape-mismatch"),
    # the numpy dtypes default_collate relays ("found object", "found <U5")
    "numpy object arrays to default_collate": (
        lambda: default_collate([np.array([np.zeros(2), np.zeros(3)], dtype=object)] * 2), "collate-failed"),
    "numpy string arrays to default_collate": (
        lambda: default_collate([np.array(["cat", "dog"])] * 2), "collate-failed"),
}


@pytest.mark.parametrize("case", PRODUCED, ids=str)
def test_real_errors_of_torch_2_13(case):
    fn, finding_id = PRODUCED[case]
    assert explained(raised(fn)) == finding_id


def test_the_linear_mismatch_names_the_layer_by_its_features():
    finding = explain_exception(raised(lambda: nn.Linear(16, 32)(torch.randn(2, 30))))
    assert finding.id == "layer-shape-mismatch"
    assert "in_features=16, out_features=32 got 30 features per row" in finding.message
    assert "named layer" not in finding.fix


def test_numpy_dtypes_relayed_by_default_collate_get_their_own_fix():
    objects = explain_exception(raised(lambda: default_collate([np.array([1, "a"], dtype=object)] * 2)))
    strings = explain_exception(raised(lambda: default_collate([np.array(["cat", "dog"])] * 2)))
    assert "dtype object" in objects.message and ".astype(np.float32)" in objects.message
    assert "string arrays (dtype <U3)" in strings.message


def test_bce_integer_targets_are_not_called_an_input_dtype_mismatch():
    finding = explain_exception(raised(lambda: F.binary_cross_entropy(torch.tensor([0.5]), torch.tensor([1]))))
    assert "targets.float()" in finding.message and "int64" in finding.message


# --- older versions, quoted exactly ------------------------------------------------------------------

HISTORICAL = [
    # torch/hub.py _legacy_zip_load (torch 1.x), quoted by pitfalls B7's seed
    ("RuntimeError: Only one file(not dir) is allowed in the zipfile", "zip-format-on-old-torch"),
    # THNN ClassNLLCriterion.c, torch <= 1.2 on the CPU (THAssert: "Assertion `%s' failed. " + " at %s:%d")
    ("RuntimeError: Assertion `cur_target >= 0 && cur_target < n_classes' failed.  at "
     "../aten/src/THNN/generic/ClassNLLCriterion.c:94", "label-out-of-range"),
    ("RuntimeError: Assertion `cur_target >= 0 && cur_target < n_classes' failed.  at "
     "/pytorch/aten/src/THNN/generic/SpatialClassNLLCriterion.c:111", "label-out-of-range"),
    # THCUNN ClassNLLCriterion.cu (0.3-1.2), the kernel's assert line
    ("/pytorch/aten/src/THCUNN/ClassNLLCriterion.cu:106: void cunn_ClassNLLCriterion_updateOutput_kernel(Dtype *, "
     "Dtype *, Dtype *, long *, Dtype *, int, int, int, int, long) [with Dtype = float, Acctype = float]: block: "
     "[0,0,0], thread: [1,0,0] Assertion `t >= 0 && t < n_classes` failed.", "label-out-of-range"),
    # ATen 0.4 checked_tensor_unwrap, nll_loss2d with float targets
    ("RuntimeError: Expected object of type torch.LongTensor but found type torch.FloatTensor for argument #2 "
     "'target'", "label-dtype"),
    ("RuntimeError: Expected object of type torch.cuda.LongTensor but found type torch.cuda.FloatTensor for "
     "argument #2 'target'", "label-dtype"),
    # 0.4 and 1.0-1.5: a float loss given integer targets
    ("RuntimeError: Expected object of type torch.FloatTensor but found type torch.LongTensor for argument #2 "
     "'target'", "label-dtype"),
    ("RuntimeError: Expected object of scalar type Float but got scalar type Long for argument #2 'target' in call "
     "to _thnn_binary_cross_entropy_forward", "label-dtype"),
    # torch 0.3's THNN binding (torch/csrc/nn/THNN.cwrap)
    ("TypeError: FloatClassNLLCriterion_updateOutput received an invalid combination of arguments - got (int, "
     "torch.FloatTensor, !torch.FloatTensor!, torch.FloatTensor, bool, NoneType, torch.FloatTensor, int), but "
     "expected (int state, torch.FloatTensor input, torch.LongTensor target, torch.FloatTensor output, bool "
     "sizeAverage, [torch.FloatTensor weights or None], torch.FloatTensor total_weight, int ignore_index)",
     "label-dtype"),
    # THNN / THCUNN ClassNLLCriterion: [B, 1] targets
    ("RuntimeError: multi-target not supported at /pytorch/aten/src/THNN/generic/ClassNLLCriterion.c:21",
     "target-shape"),
    ("RuntimeError: multi-target not supported at /pytorch/aten/src/THCUNN/generic/ClassNLLCriterion.cu:16",
     "target-shape"),
    # ATen 1.x check_inputs_nll_loss2d and THCUNN SpatialClassNLLCriterion
    ("RuntimeError: only batches of spatial targets supported (3D tensors) but got targets of size: : "
     "[16, 1, 256, 256]", "target-shape"),
    ("RuntimeError: only batches of spatial targets supported (3D tensors) but got targets of dimension: 4 at "
     "/pytorch/aten/src/THCUNN/generic/SpatialClassNLLCriterion.cu:14", "target-shape"),
    # 0.4 / 1.0-1.4 uint8 input
    ("RuntimeError: Expected object of scalar type Byte but got scalar type Float for argument #2 'weight'",
     "uint8-input"),
    ("RuntimeError: Expected object of type torch.ByteTensor but found type torch.FloatTensor for argument #2 "
     "'weight'", "uint8-input"),
    # 0.4 float64 data against float32 weights
    ("RuntimeError: Expected object of type torch.DoubleTensor but found type torch.FloatTensor for argument #2 "
     "'mat2'", "input-dtype-mismatch"),
    ("RuntimeError: Expected object of type torch.cuda.FloatTensor but found type torch.cuda.DoubleTensor for "
     "argument #2 'weight'", "input-dtype-mismatch"),
    # torch/csrc/utils/tensor_numpy.cpp, 0.4-1.x
    ("ValueError: some of the strides of a given numpy array are negative. This is currently not supported, but "
     "will be added in future releases.", "negative-strides"),
    # torch/nn/functional.py batch_norm, 0.3-0.4 (a list)
    ("ValueError: Expected more than 1 value per channel when training, got input size [1, 512]",
     "batchnorm-single-sample-batch"),
    # default_collate before 1.5
    ("TypeError: batch must contain tensors, numbers, dicts or lists; found <class 'PIL.Image.Image'>",
     "collate-failed"),
    # ... and numpy object arrays (the discuss.pytorch.org thread's title, torch 0.3)
    ("TypeError: batch must contain tensors, numbers, dicts or lists; found object", "collate-failed"),
    # convolutions: 0.4 (weight[...], so expected), 1.0-1.3 (weight of size 64 3 7 7), 1.x rank check
    ("RuntimeError: Given groups=1, weight[64, 3, 7, 7], so expected input[1, 224, 224, 3] to have 3 channels, "
     "but got 224 channels instead", "channels-last-input"),
    ("RuntimeError: Given groups=1, weight of size 64 3 7 7, expected input[64, 1, 28, 28] to have 3 channels, but "
     "got 1 channels instead", "layer-shape-mismatch"),
    ("RuntimeError: Given transposed=1, weight[1024, 256, 2, 2], so expected input[64, 512, 4, 4] to have 1024 "
     "channels, but got 512 channels instead", "layer-shape-mismatch"),
    ("RuntimeError: Expected 4-dimensional input for 4-dimensional weight [10, 3, 3, 3], but got 3-dimensional "
     "input of size [3, 64, 64] instead", "layer-shape-mismatch"),
    ("RuntimeError: Expected 4-dimensional input for 4-dimensional weight 64 1 3 3, but got 3-dimensional input of "
     "size [1, 384, 384] instead", "layer-shape-mismatch"),
    # THC, torch <= 1.0
    ("RuntimeError: cuda runtime error (2) : out of memory at /pytorch/aten/src/THC/generic/THCStorage.cu:58",
     "cuda-out-of-memory"),
    ("RuntimeError: cuda runtime error (35) : CUDA driver version is insufficient for CUDA runtime version at "
     "torch/csrc/cuda/Module.cpp:51", "cuda-driver-too-old"),
    ("RuntimeError: CUDA error: CUDA driver version is insufficient for CUDA runtime version",
     "cuda-driver-too-old"),
    ("RuntimeError: cuda runtime error (3) : initialization error at /pytorch/aten/src/THC/THCGeneral.cpp:70",
     "cuda-fork-init"),
    # torch <= 0.3 Variables
    ("ValueError: can't optimize a non-leaf Variable", "non-leaf-optimized"),
    ("RuntimeError: Only Variables created explicitly by the user (graph leaves) support the deepcopy protocol at "
     "the moment", "deepcopy-non-leaf"),
    # torch 0.2-0.3 load_state_dict (torch/nn/modules/module.py), then 0.4's quoted name
    ("KeyError: 'unexpected key \"module.conv1.weight\" in state_dict'", "module-prefix"),
    ("RuntimeError: While copying the parameter named conv1.weight, whose dimensions in the model are "
     "torch.Size([64, 3, 7, 7]) and whose dimensions in the checkpoint are torch.Size([64, 1, 7, 7]).",
     "shape-mismatch"),
    ("RuntimeError: Error(s) in loading state_dict for ResNet:\n\tWhile copying the parameter named \"fc.weight\", "
     "whose dimensions in the model are torch.Size([10, 512]) and whose dimensions in the checkpoint are "
     "torch.Size([1000, 512]).", "shape-mismatch"),
    # torch/csrc/DataLoader.cpp (1.x-2.13)
    ("RuntimeError: DataLoader worker (pid 109) exited unexpectedly with exit code 1. Details are lost due to "
     "multiprocessing. Rerunning with num_workers=0 may give better error trace.", "worker-failed"),
]


@pytest.mark.parametrize(("text", "finding_id"), HISTORICAL, ids=[text[:60] for text, _ in HISTORICAL])
def test_older_wordings(text, finding_id):
    assert explained(text) == finding_id


def test_the_worker_exit_wording_is_the_one_torch_2_13_ships():
    import pathlib

    library = pathlib.Path(torch.__file__).parent / "lib" / "libtorch_python.so"
    if not library.exists():
        pytest.skip("no libtorch_python.so to read")
    assert b"DataLoader worker (pid {}) exited unexpectedly with exit code {}." in library.read_bytes()


# --- near misses: unknown, exit 0, never a wrong guess ---------------------------------------------------

NEAR_MISSES_PRODUCED = {
    # torch.cat in user code: not necessarily a DataLoader's samples
    "cat of different widths": lambda: torch.cat([torch.zeros(2, 3), torch.zeros(2, 4)]),
    # ragged or mixed numpy object arrays: several causes
    "numpy object array": lambda: torch.from_numpy(np.array([np.zeros(2), np.zeros(3)], dtype=object)),
    # InstanceNorm's cousin of the BatchNorm message
    "instance norm of one pixel": lambda: F.instance_norm(torch.randn(1, 3, 1, 1), use_input_stats=True),
    # BCE given logits: a different assert on the GPU, a value check on the CPU
    "BCE on logits": lambda: F.binary_cross_entropy(torch.tensor([1.5]), torch.tensor([1.0])),
}


@pytest.mark.parametrize("case", NEAR_MISSES_PRODUCED, ids=str)
def test_real_near_misses_stay_unknown(case):
    assert explained(raised(NEAR_MISSES_PRODUCED[case])) is None


@pytest.mark.parametrize("text", [
    # comparing two tensors of different types in user code (a 0.4 paste): not the loss's target
    "RuntimeError: Expected object of type torch.LongTensor but found type torch.FloatTensor for argument #2 'other'",
    # a device mismatch in the 0.4 wording, not a dtype one
    "RuntimeError: Expected object of type torch.cuda.FloatTensor but found type torch.FloatTensor for argument #2 "
    "'weight'",
    # ATen's BCE kernel assert (Loss.cu): probabilities outside [0, 1] (logits given to BCE), not a label index
    "../aten/src/ATen/native/cuda/Loss.cu:92: operator(): block: [79,0,0], thread: [118,0,0] Assertion "
    "`input_val >= zero && input_val <= one` failed.",
    # THC's error for an unrelated CUDA failure
    "RuntimeError: cuda runtime error (30) : unknown error at /pytorch/aten/src/THC/THCGeneral.cpp:74",
    # TH's stack/cat of different sizes (0.4-1.4): default_collate's stack, but as well any torch.cat in user code
    "RuntimeError: invalid argument 0: Sizes of tensors must match except in dimension 0. Got 3 and 4 in "
    "dimension 1 at /tmp/pip-req-build-58y_cjjl/aten/src/TH/generic/THTensor.cpp:689",
])
def test_near_miss_texts_stay_unknown(text):
    assert explained(text) is None


# --- an ambiguous old message, explained by the traceback around it --------------------------------------

COLLATE_FRAMES = (
    "Traceback (most recent call last):\n"
    '  File "train.py", line 31, in <module>\n'
    "    for images, labels in loader:\n"
    '  File "/usr/local/lib/python3.6/dist-packages/torch/utils/data/dataloader.py", line 264, in __next__\n'
    "    batch = self.collate_fn([self.dataset[i] for i in indices])\n"
    '  File "/usr/local/lib/python3.6/dist-packages/torch/utils/data/dataloader.py", line 209, in default_collate\n'
    "    return torch.stack(batch, 0, out=out)\n")
TH_SIZES = ("RuntimeError: invalid argument 0: Sizes of tensors must match except in dimension 0. Got 342 and 281 "
            "in dimension 3 at /pytorch/aten/src/TH/generic/THTensorMoreMath.cpp:1333\n")


def test_the_th_sizes_message_under_default_collate_is_variable_size_samples():
    # torch 0.4-1.4, as pasted into a public thread (the last frame and the message are verbatim)
    report = explain_text(COLLATE_FRAMES + TH_SIZES, "stdin")
    assert report.result["matched"] == ["variable-size-samples"]
    assert "342 and 281 in dimension 3" in report.findings[0].message


def test_the_same_message_from_the_users_own_cat_stays_unknown():
    own = ("Traceback (most recent call last):\n"
           '  File "model.py", line 40, in forward\n'
           "    x = torch.cat([skip, x], 0)\n")
    assert explain_text(own + TH_SIZES, "stdin").result["matched"] == []
    # an earlier, finished traceback's frames do not count for a later one
    earlier = COLLATE_FRAMES + "KeyError: 'label'\n\n"
    assert explain_text(earlier + own + TH_SIZES, "stdin").result["matched"] == []


# --- the GPU warnings, from torch's own warning code with the device queries faked ------------------------


def _warning_of(fn) -> str:
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    (warning,) = caught
    return f"{warning.filename}:{warning.lineno}: UserWarning: {warning.message}"


def test_torch_2_13_warnings_for_a_gpu_the_build_cannot_run(monkeypatch):
    import torch.cuda

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "NVIDIA GeForce RTX 5090")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (12, 0))
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: ["sm_50", "sm_80", "sm_90"])
    monkeypatch.setattr(torch.version, "cuda", "12.6")
    for produce in (lambda: torch.cuda._warn_unsupported_code(0, 120, [50, 80, 90]), torch.cuda._check_cubins):
        text = _warning_of(produce)
        report = explain_text(text, "stdin")  # as pasted: the warning's lines, not an exception
        assert report.result["matched"] == ["cuda-arch-unsupported"], text
        assert "12.0" in report.findings[0].message or "sm_120" in report.findings[0].message


def test_the_old_gpu_warning_of_torch_1_x():
    # torch/cuda/__init__.py old_gpu_warn, as printed by torch 1.x (indented, over three lines)
    log = ("/usr/lib/python3.8/site-packages/torch/cuda/__init__.py:123: UserWarning:\n"
           "    Found GPU0 Tesla K40m which is of cuda capability 3.5.\n"
           "    PyTorch no longer supports this GPU because it is too old.\n"
           "    The minimum cuda capability supported by this library is 3.7.\n")
    assert explain_text(log, "stdin").result["matched"] == ["cuda-arch-unsupported"]
