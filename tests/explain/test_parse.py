"""Finding the errors in pasted tracebacks and logs, with tracebacks captured from real errors."""

from __future__ import annotations

import traceback

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from torchdoctor.explain.parse import explain_text, parse_errors

NOISE_BEFORE = ("2024-05-01 12:00:00,001 INFO starting run\n"
                "Epoch 1:  45%|████▌     | 45/100 [00:01<00:01, 30.00it/s, loss=0.693]\r"
                "Epoch 1:  46%|████▋     | 46/100 [00:01<00:01, 30.00it/s, loss=0.690]\n")
NOISE_AFTER = "wandb: Waiting for W&B process to finish... (failed 1).\n"


def formatted(fn) -> str:
    """``traceback.format_exc()`` of the real error ``fn`` raises."""
    try:
        fn()
    except Exception:  # noqa: BLE001
        return traceback.format_exc()
    pytest.fail("raised nothing")


def out_of_range():
    F.cross_entropy(torch.randn(4, 3), torch.tensor([0, 1, 2, 5]))


def backward_twice():
    x = torch.ones(2, requires_grad=True)
    y = (x * x).sum()
    y.backward()
    y.backward()


class _Flipped(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, index):
        return torch.from_numpy(np.zeros((2, 2))[::-1])


def worker_error():
    next(iter(DataLoader(_Flipped(), batch_size=2, num_workers=1)))


def test_worker_wrapped_traceback_reports_the_original_error():
    text = formatted(worker_error)
    assert "Caught ValueError in DataLoader worker process 0" in text and "Original Traceback" in text
    errors = parse_errors(text)
    assert [e.type for e in errors] == ["ValueError"] and "negative" in errors[0].message
    assert explain_text(text, "stdin").result["matched"] == ["negative-strides"]


def test_log_noise_and_several_tracebacks_each_match_reported_once():
    first, second = formatted(out_of_range), formatted(backward_twice)
    log = NOISE_BEFORE + first + NOISE_AFTER + NOISE_BEFORE + second + first + NOISE_AFTER
    report = explain_text(log, "train.log")
    assert report.result["matched"] == ["label-out-of-range", "backward-twice"]
    assert [f.id for f in report.findings] == ["label-out-of-range", "backward-twice"]
    assert report.findings[0].location.startswith("train.log:")
    assert len(report.result["errors_found"]) == 2  # the repeated traceback is one error
    line = report.result["errors_found"][0]["line_in_input"]
    assert log.replace("\r", "\n").split("\n")[line - 1].startswith("IndexError: Target 5")


def test_chained_exceptions_report_the_root_cause_first():
    def chained():
        try:
            out_of_range()
        except IndexError as error:
            raise RuntimeError("training step 3 failed") from error

    def during_handling():
        try:
            out_of_range()
        except IndexError:
            backward_twice()

    text = formatted(chained)
    assert "direct cause of the following exception" in text
    report = explain_text(text, "stdin")
    assert [e["type"] for e in report.result["errors_found"]] == ["IndexError", "RuntimeError"]
    assert report.result["matched"] == ["label-out-of-range"]
    text = formatted(during_handling)
    assert "During handling of the above exception" in text
    assert explain_text(text, "stdin").result["matched"] == ["label-out-of-range", "backward-twice"]


def test_reflowed_message_curly_quotes_and_rank_prefixes():
    text = formatted(lambda: torch.ones(2, requires_grad=True).numpy())
    text = text.replace("Can't call numpy() on Tensor", "Can\u2019t call numpy()\non Tensor")
    text = "\n".join(f"[rank0]: {line}" for line in text.split("\n"))
    assert explain_text(text, "stdin").result["matched"] == ["numpy-requires-grad"]


def test_a_reflow_that_opens_a_line_with_word_colon_keeps_the_message(tmp_path):
    # torch's own message has "word: " pairs ("WeightsUnpickler error: Unsupported global: GLOBAL numpy...")
    path = tmp_path / "arrays.pt"
    torch.save({"a": np.zeros(3)}, path)
    text = formatted(lambda: torch.load(path, weights_only=True))
    for word in ("error: Unsupported", "global: GLOBAL"):
        assert word in text
        reflowed = text.replace(f" {word}", f"\n{word}", 1)  # the line now opens with "error: " / "global: "
        report = explain_text(reflowed, "stdin")
        assert report.result["matched"] == ["weights-only-numpy"], reflowed
        assert "GLOBAL numpy" in report.result["errors_found"][0]["message"]


def test_a_tool_line_still_ends_a_message_that_has_no_full_stop():
    text = formatted(lambda: torch.nn.Linear(3, 2)(torch.zeros(1, 3, dtype=torch.uint8)))
    assert not text.rstrip().endswith((".", ")"))  # "...but got Byte and Float": a tool line could continue it
    log = text + "wandb: Waiting for W&B process to finish... (failed 1).\nwandb: Find logs at: wandb/run-1/logs\n"
    report = explain_text(log, "train.log")
    assert report.result["matched"] == ["uint8-input"]
    assert "wandb" not in report.result["errors_found"][0]["message"]


def test_cuda_assert_line_outside_the_traceback_is_found():
    # Recorded (CUDA only): the kernel's assert goes to stderr before the Python traceback
    # (aten/src/ATen/native/cuda/Loss.cu); the exception itself only says "device-side assert triggered".
    log = ("/pytorch/aten/src/ATen/native/cuda/Loss.cu:245: nll_loss_forward_reduce_cuda_kernel_2d: block: [0,0,0], "
           "thread: [5,0,0] Assertion `t >= 0 && t < n_classes` failed.\n"
           "Traceback (most recent call last):\n  File \"train.py\", line 9, in <module>\n    loss.backward()\n"
           "RuntimeError: CUDA error: device-side assert triggered\n"
           "CUDA kernel errors might be asynchronously reported at some other API call, so the stacktrace below "
           "might be incorrect.\nFor debugging consider passing CUDA_LAUNCH_BLOCKING=1\n")
    report = explain_text(log, "stdin")
    assert report.result["matched"] == ["label-out-of-range"]
    assert [e["type"] for e in report.result["errors_found"]] == [None, "RuntimeError"]


def test_bare_message_without_a_type_and_unknown_errors():
    assert explain_text("Target 7 is out of bounds.", "stdin").result["matched"] == ["label-out-of-range"]
    report = explain_text(formatted(lambda: {}["missing"]), "stdin")
    assert report.findings == () and report.result["matched"] == []
    assert report.result["errors_found"][0]["type"] == "KeyError"
    assert explain_text("", "stdin").result == {"source": "stdin", "errors_found": [], "matched": []}


def test_frame_source_lines_are_not_errors():
    text = ('Traceback (most recent call last):\n  File "a.py", line 1, in <module>\n'
            '    ValueError: not an error, a source line\nKeyError: \'x\'\n')
    assert [e.type for e in parse_errors(text)] == ["KeyError"]


def test_an_exception_right_under_a_frame_without_source_is_found():
    # python -c, exec'd config files (nanoGPT's configurator) and <stdin> frames print no source line
    try:
        exec(compile("import torch\ntorch.cat([torch.tensor(1.0), torch.tensor(2.0)])", "<string>", "exec"))
    except RuntimeError as exc:
        text = "".join(traceback.format_exception(exc))
    assert 'File "<string>", line 2, in <module>\nRuntimeError' in text
    [error] = parse_errors(text)
    assert error.type == "RuntimeError" and error.message.startswith("zero-dimensional tensor")
    assert explain_text(text, "stdin").result["matched"] == ["cat-zero-dim"]
