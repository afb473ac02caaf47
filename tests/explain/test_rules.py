"""The exception → finding rule table, each rule fed the real error that torch (or the DataLoader) raises."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate

from torchdoctor.codes import REGISTRY
from torchdoctor.explain.rules import RULES, explain_exception, match_exception, normalize_message


def raised(fn) -> BaseException:
    """The exception ``fn`` raises (the test fails when it raises none)."""
    with pytest.raises(Exception) as info:
        fn()
    return info.value


def logits(classes: int = 3, batch: int = 4) -> torch.Tensor:
    return torch.randn(batch, classes, generator=torch.Generator().manual_seed(0))


class PilLikeImage:
    """Stands in for PIL.Image.Image (PIL is not a test dependency): torch names it by module and class."""


PilLikeImage.__module__, PilLikeImage.__name__, PilLikeImage.__qualname__ = "PIL.Image", "Image", "Image"


def loader_timeout() -> None:
    from fixtures.loaders import WorkerDeadlockDataset, csv_text

    next(iter(DataLoader(WorkerDeadlockDataset(csv_text()), batch_size=8, num_workers=1, timeout=1)))


REAL_ERRORS = {
    "label-out-of-range": [lambda: F.cross_entropy(logits(), torch.tensor([0, 1, 2, 5])),
                           lambda: F.cross_entropy(logits(), torch.tensor([0, 1, 2, -1]))],
    "label-dtype": [lambda: F.cross_entropy(logits(), torch.tensor([0.0, 1.0, 2.0, 1.0])),
                    lambda: F.cross_entropy(logits(), torch.tensor([0, 1, 2, 1], dtype=torch.int32)),
                    lambda: F.binary_cross_entropy_with_logits(logits(), F.one_hot(torch.tensor([0, 1, 2, 1]), 3))],
    "target-shape": [lambda: F.cross_entropy(logits(), torch.tensor([[0], [1], [2], [1]])),
                     lambda: F.cross_entropy(logits(), F.one_hot(torch.tensor([0, 1, 2, 1]), 3)),
                     lambda: F.binary_cross_entropy_with_logits(logits(), torch.tensor([0.0, 1.0, 2.0, 1.0])),
                     lambda: F.cross_entropy(logits(batch=4), torch.tensor([0, 1]))],
    "input-dtype-mismatch": [lambda: nn.Linear(8, 3)(torch.randn(4, 8, dtype=torch.float64)),
                             lambda: nn.Conv2d(3, 4, 3)(torch.randn(2, 3, 8, 8, dtype=torch.float64)),
                             lambda: nn.Embedding(10, 3)(torch.rand(4))],
    "uint8-input": [lambda: nn.Linear(8, 3)(torch.zeros(4, 8, dtype=torch.uint8)),
                    lambda: nn.Conv2d(3, 4, 3)(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))],
    "channels-last-input": [lambda: nn.Conv2d(3, 4, 3)(torch.randn(2, 32, 32, 3))],
    "variable-size-samples": [lambda: default_collate([torch.zeros(3, 30, 28), torch.zeros(3, 32, 32)]),
                              lambda: default_collate([[1, 2], [1, 2, 3]])],
    "batchnorm-single-sample-batch": [lambda: nn.BatchNorm1d(4).train()(torch.randn(1, 4))],
    "collate-failed": [lambda: default_collate([object(), object()]),
                       lambda: default_collate([PilLikeImage(), PilLikeImage()])],
    "loader-hang": [loader_timeout],
    "negative-strides": [lambda: torch.from_numpy(np.zeros((3, 4))[::-1]),
                         lambda: default_collate([np.zeros((2, 2))[:, ::-1], np.zeros((2, 2))])],
}


@pytest.mark.parametrize(("finding_id", "index"), [(k, i) for k, v in REAL_ERRORS.items() for i in range(len(v))])
def test_each_real_torch_error_maps_to_its_finding(finding_id, index):
    exc = raised(REAL_ERRORS[finding_id][index])
    finding = explain_exception(exc)
    assert finding is not None, f"{type(exc).__name__}: {exc}"
    assert finding.id == finding_id
    assert finding.code == REGISTRY[finding_id].code and finding.fix
    assert type(exc).__name__ in finding.message  # the real error is quoted as evidence
    # the same error as text (a log line, a pasted message) is explained the same way
    assert explain_exception(f"{type(exc).__name__}: {exc}").id == finding_id


def test_pil_images_reaching_default_collate_say_totensor_is_missing():
    finding = explain_exception(raised(lambda: default_collate([PilLikeImage()])))
    assert "PIL images" in finding.message and "transforms.ToTensor()" in finding.message
    plain = explain_exception(raised(lambda: default_collate([object()])))
    assert "cannot batch object objects" in plain.message


def test_a_device_mismatch_is_not_a_dtype_mismatch():
    # the same sentence torch uses for dtype mismatches, but the two types differ only in the device
    text = ("RuntimeError: Input type (torch.FloatTensor) and weight type (torch.cuda.FloatTensor) should be the "
            "same or input should be a MKLDNN tensor and weight is a dense tensor")
    device = explain_exception(text)  # explained as what it is (explain/catalog.py)
    assert device.id == "device-mismatch" and "input is on cpu but the layer's weights are on cuda" in device.message
    double = "RuntimeError: Input type (torch.DoubleTensor) and weight type (torch.cuda.FloatTensor) should be the same"
    assert explain_exception(double).id == "input-dtype-mismatch"


def test_channel_mismatch_that_is_not_channels_last_is_a_layer_shape_mismatch():
    exc = raised(lambda: nn.Conv2d(3, 4, 3)(torch.randn(2, 1, 32, 32)))  # grayscale into an RGB model
    assert explain_exception(exc).id == "layer-shape-mismatch"
    # the data probe leaves model-side errors to its own training-step-failed finding
    assert match_exception(exc) is None and match_exception(exc, model_errors=True).id == "layer-shape-mismatch"


def test_cuda_device_side_assert_from_a_recorded_message():
    # Recorded, not produced: CUDA only. Text as torch 2.x prints it for cross_entropy with label >= C on a GPU
    # (aten/src/ATen/native/cuda/Loss.cu:245, nll_loss_forward_reduce_cuda_kernel_2d), as quoted in public
    # bug reports; the assert line reaches stderr and the exception says "device-side assert triggered".
    text = ("torch.AcceleratorError: CUDA error: device-side assert triggered\n"
            "/pytorch/aten/src/ATen/native/cuda/Loss.cu:245: nll_loss_forward_reduce_cuda_kernel_2d: "
            "block: [0,0,0], thread: [0,0,0] Assertion `t >= 0 && t < n_classes` failed.")
    assert explain_exception(text).id == "label-out-of-range"


@pytest.mark.parametrize("text", [
    # Recorded, not produced: CUDA only. cross_entropy with float targets on a GPU, as public reports quote it
    # (RuntimeError before torch 2.1, NotImplementedError, a RuntimeError subclass, since).
    "RuntimeError: \"nll_loss_forward_reduce_cuda_kernel_2d_index\" not implemented for 'Float'",
    "NotImplementedError: \"nll_loss_backward_reduce_cuda_kernel_2d_index\" not implemented for 'Float'",
])
def test_cuda_float_target_messages_from_recorded_text(text):
    assert explain_exception(text).id == "label-dtype"


@pytest.mark.parametrize(("text", "finding_id"), [
    # Recorded, not produced: CUDA matmul wording (torch 1.13-2.x), and the shorter one of older builds.
    ("RuntimeError: expected m1 and m2 to have the same dtype, but got: double != float", "input-dtype-mismatch"),
    ("RuntimeError: expected m1 and m2 to have the same dtype, but got: float != c10::BFloat16",
     "input-dtype-mismatch"),
    ("RuntimeError: expected m1 and m2 to have the same dtype", "input-dtype-mismatch"),
    ("RuntimeError: expected m1 and m2 to have the same dtype, but got: unsigned char != float", "uint8-input"),
])
def test_cuda_matmul_dtype_messages_from_recorded_text(text, finding_id):
    assert explain_exception(text).id == finding_id


def test_backward_dtype_message_from_recorded_text():
    # Recorded, not produced: torch < 2 raised it at loss.backward() when MSELoss got float64 targets from numpy
    # through a float32 nn.Linear (public reports quote it); torch 2.13 promotes instead.
    finding = explain_exception("RuntimeError: Found dtype Double but expected Float")
    assert finding.id == "input-dtype-mismatch" and "float64" in finding.message


def test_worker_wrapped_exception_is_unwrapped(tmp_path):
    class Raises(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, index):
            return torch.from_numpy(np.zeros((2, 2))[::-1])

    exc = raised(lambda: next(iter(DataLoader(Raises(), batch_size=2, num_workers=1))))
    assert "Caught ValueError in DataLoader worker process 0" in str(exc)
    explanation = match_exception(exc)
    assert explanation.id == "negative-strides" and explanation.exc_type == "ValueError"


class _DiesInWorker(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, index):
        os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX signals")
def test_dead_worker_is_worker_failed():
    exc = raised(lambda: next(iter(DataLoader(_DiesInWorker(), batch_size=2, num_workers=1))))
    assert explain_exception(exc).id == "worker-failed"


def test_recorded_worker_messages():
    # Recorded from torch's own source (torch/utils/data/dataloader.py and _utils/signal_handling.py): the
    # signal handler's wording, and the message a CUDA call in a forked worker raises.
    # a bus error in a worker is /dev/shm running out (pitfalls A7), more precise than "a worker died"
    assert explain_exception("RuntimeError: DataLoader worker (pid 4242) is killed by signal: Bus error. ").id \
        == "shm-too-small"
    assert explain_exception("RuntimeError: DataLoader worker (pid 4242) is killed by signal: Killed. ").id \
        == "worker-failed"
    cuda = ("RuntimeError: Cannot re-initialize CUDA in forked subprocess. To use CUDA with multiprocessing, you "
            "must use the 'spawn' start method")
    assert explain_exception(cuda).id == "cuda-fork-init"


def test_normalisation_handles_curly_quotes_nfkc_and_wrapped_lines():
    assert normalize_message("Target\u00a05 is\n   out of bounds \u2019x\u2019") == "Target 5 is out of bounds 'x'"
    assert explain_exception("IndexError: Target\n 5 is out of bounds.").id == "label-out-of-range"


def test_unknown_errors_and_wrong_types_are_not_explained():
    assert explain_exception(ValueError("something else entirely")) is None
    # the right words in an exception type the rule does not cover
    assert explain_exception(KeyError("Target 5 is out of bounds")) is None


def test_every_rule_names_a_registered_id_and_compiles():
    import re

    for rule in RULES:
        assert rule.id in REGISTRY
        re.compile(rule.pattern)
