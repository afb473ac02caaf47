"""CUDA's device-side assert: the bare paste (no kernel line) ranks the likely causes; a kernel line names one.

GPU only, so the texts are recorded, not produced. The hint lines come from c10/cuda/CUDAMiscFunctions.cpp
(``get_cuda_check_suffix``: "CUDA kernel errors might be asynchronously reported ...", "For debugging consider
passing CUDA_LAUNCH_BLOCKING=1") and c10/cuda/CUDAException.cpp ("Compile with `TORCH_USE_CUDA_DSA` ..."),
each wording as users pasted it into public issue threads (torch 1.10, 2.0-2.7, and 2.8+ which raises
torch.AcceleratorError and adds NVIDIA's "Search for `cudaErrorAssert'" line).
"""

from __future__ import annotations

import pytest

from torchdoctor.explain.parse import explain_text
from torchdoctor.explain.rules import explain_exception

HINTS_2X = ("CUDA kernel errors might be asynchronously reported at some other API call, so the stacktrace below "
            "might be incorrect.\nFor debugging consider passing CUDA_LAUNCH_BLOCKING=1\n"
            "Compile with `TORCH_USE_CUDA_DSA` to enable device-side assertions.\n")
TRACEBACK = ('Traceback (most recent call last):\n  File "train.py", line 41, in <module>\n'
             '    loss.item()\n')

BARE_PASTES = [
    # torch 2.0-2.7
    TRACEBACK + "RuntimeError: CUDA error: device-side assert triggered\n" + HINTS_2X,
    # torch 1.10-1.13: no space after the comma, a full stop after =1, no DSA line
    TRACEBACK + "RuntimeError: CUDA error: device-side assert triggered\nCUDA kernel errors might be asynchronously "
    "reported at some other API call,so the stacktrace below might be incorrect.\nFor debugging consider passing "
    "CUDA_LAUNCH_BLOCKING=1.\n",
    # torch >= 2.8
    TRACEBACK + "torch.AcceleratorError: CUDA error: device-side assert triggered\nSearch for `cudaErrorAssert' in "
    "https://docs.nvidia.com/cuda/cuda-runtime-api/group__CUDART__TYPES.html for more information.\n" + HINTS_2X,
    # torch <= 1.0 (THC): THCudaCheck's line, then the exception (aten/src/THC/THCGeneral.cpp: "THCudaCheck FAIL
    # file=%s line=%i error=%i : %s"; THC's THError "cuda runtime error (%d) : %s at %s:%d")
    "THCudaCheck FAIL file=/pytorch/aten/src/THC/THCCachingHostAllocator.cpp line=265 error=59 : device-side "
    "assert triggered\n" + TRACEBACK + "RuntimeError: cuda runtime error (59) : device-side assert triggered at "
    "/pytorch/aten/src/THC/generic/THCStorage.cpp:36\n",
]


@pytest.mark.parametrize("paste", BARE_PASTES)
def test_the_bare_paste_is_explained_with_the_likely_causes_ranked(paste):
    report = explain_text(paste, "stdin")
    assert report.result["matched"] == ["cuda-device-assert"]
    finding = report.findings[0]
    message = finding.message
    assert message.index("class label") < message.index("index out of bounds")  # ranked: labels first
    assert "CUDA_LAUNCH_BLOCKING=1" in finding.fix and "on the CPU" in finding.fix
    assert "torchdoctor data LOADER --num-classes" in finding.fix


@pytest.mark.parametrize(("kernel_line", "finding_id", "says"), [
    # aten/src/ATen/native/cuda/Loss.cu (torch 2.x)
    ("/pytorch/aten/src/ATen/native/cuda/Loss.cu:250: nll_loss_forward_reduce_cuda_kernel_2d: block: [0,0,0], "
     "thread: [3,0,0] Assertion `t >= 0 && t < n_classes` failed.", "label-out-of-range", "label"),
    # ATen's NLLLoss2d.cu and THCUNN's SpatialClassNLLCriterion.cu (segmentation, torch 1.x)
    ("/pytorch/aten/src/ATen/native/cuda/NLLLoss2d.cu:93: nll_loss2d_forward_kernel: block: [0,0,0], thread: "
     "[12,0,0] Assertion `cur_target >= 0 && cur_target < n_classes` failed.", "label-out-of-range", "label"),
    # aten/src/ATen/native/cuda/IndexKernel.cu (x[idx]; "-sizes[i] <= index" since 1.13, before it the other order)
    ("../aten/src/ATen/native/cuda/IndexKernel.cu:92: operator(): block: [0,0,0], thread: [0,0,0] Assertion "
     "`-sizes[i] <= index && index < sizes[i] && \"index out of bounds\"` failed.", "cuda-device-assert",
     "x[idx]"),
    ("/pytorch/aten/src/ATen/native/cuda/IndexKernel.cu:60: lambda [](int)->auto::operator()(int)->auto: block: "
     "[0,0,0], thread: [0,0,0] Assertion `index >= -sizes[i] && index < sizes[i] && \"index out of bounds\"` "
     "failed.", "cuda-device-assert", "x[idx]"),
    # aten/src/ATen/native/cuda/Indexing.cu (index_select, so nn.Embedding), THC's THCTensorIndex.cu before
    ("/pytorch/aten/src/ATen/native/cuda/Indexing.cu:1146: indexSelectLargeIndex: block: [0,0,0], thread: "
     "[0,0,0] Assertion `srcIndex < srcSelectDimSize` failed.", "cuda-device-assert", "num_embeddings"),
    # aten/src/ATen/native/cuda/ScatterGatherKernel.cu
    ("../aten/src/ATen/native/cuda/ScatterGatherKernel.cu:144: operator(): block: [0,0,0], thread: [1,0,0] "
     "Assertion `idx_dim >= 0 && idx_dim < index_size && \"index out of bounds\"` failed.", "cuda-device-assert",
     "gather"),
])
def test_a_kernel_line_names_the_cause_and_replaces_the_ranking(kernel_line, finding_id, says):
    paste = kernel_line + "\n" + BARE_PASTES[0]
    report = explain_text(paste, "stdin")
    assert report.result["matched"] == [finding_id]
    assert says in report.findings[0].message and "Likely causes" not in report.findings[0].message
    assert report.findings[0].location == "stdin:1"


@pytest.mark.parametrize("near_miss", [
    # the same hint lines under other CUDA errors: not an assert
    TRACEBACK + "RuntimeError: CUDA error: an illegal memory access was encountered\n" + HINTS_2X,
    TRACEBACK + "RuntimeError: CUDA error: misaligned address\n" + HINTS_2X,
    "RuntimeError: CUDA error: operation not supported\n" + HINTS_2X,
])
def test_other_cuda_errors_with_the_same_hints_stay_unknown(near_miss):
    report = explain_text(near_miss, "stdin")
    assert report.findings == () and report.result["matched"] == []
    exception_line = next(line for line in near_miss.splitlines() if line.startswith("RuntimeError"))
    assert explain_exception(exception_line) is None
