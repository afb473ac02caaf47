"""The pitfalls catalogs' common errors (``explain/catalog.py``), each produced for real with torch and explained
from the exception, from its traceback and from a copy-paste-mangled traceback; near misses stay unknown."""

from __future__ import annotations

import importlib
import mmap
import os
import pathlib
import pickle
import shutil
import subprocess
import sys
import tempfile
import traceback
import zipfile

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, SequentialSampler, random_split

from torchdoctor.codes import REGISTRY
from torchdoctor.explain.parse import explain_text
from torchdoctor.explain.rules import explain_exception

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning",
                                        "ignore::torch.jit.TracerWarning")


class _NoForward(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 2)

    def foward(self, x):  # the catalog's typo (B61): nn.Module's placeholder forward runs instead
        return self.fc(x)


class _AssignsBeforeInit(nn.Module):
    def __init__(self) -> None:  # no super().__init__() (B61)
        self.fc = nn.Linear(2, 2)


class _NoGetitem(Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem(self, index):  # the catalog's typo (A31)  # noqa: PLW0238 - never called, on purpose
        return index


class _Stream(IterableDataset):
    def __iter__(self):
        return iter([1, 2])


def _manual_sgd_step():
    w = torch.ones(2, requires_grad=True)
    (w * 3).sum().backward()
    w -= 0.1 * w.grad  # outside torch.no_grad() (B56)


def _leaf_item_assigned():
    w = torch.ones(3, requires_grad=True)
    w[0] = 0.0


def _resume_with_other_groups(groups: bool):
    model = nn.Linear(2, 2)
    saved = torch.optim.SGD(model.parameters(), lr=0.1).state_dict()
    params = [{"params": [model.weight]}, {"params": [model.bias]}] if groups else [model.weight]
    torch.optim.SGD(params, lr=0.1).load_state_dict(saved)


def _unscale_twice():
    model = nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu")
    scaler.scale(model(torch.randn(1, 2)).sum()).backward()
    scaler.unscale_(optimizer)
    scaler.unscale_(optimizer)  # e.g. once per micro-batch of gradient accumulation (B10)


def _load_gpu_checkpoint_without_cuda():
    # a checkpoint as a GPU machine writes it: the same file, its storages' location tag "cuda:0" instead of
    # "cpu" (the pickle's BINUNICODE string); torch.load then runs its own device check
    handle, path = tempfile.mkstemp(suffix=".pt")
    os.close(handle)
    try:
        torch.save({"weight": torch.ones(2)}, path)
        with zipfile.ZipFile(path) as archive:
            members = {name: archive.read(name) for name in archive.namelist()}
        for name in members:
            if name.endswith("/data.pkl"):
                assert b"X\x03\x00\x00\x00cpu" in members[name]
                members[name] = members[name].replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
        with zipfile.ZipFile(path, "w") as archive:
            for name, data in members.items():
                archive.writestr(name, data)
        torch.load(path)
    finally:
        os.unlink(path)


def _import_autocast_as_a_module():
    import torch.cuda.amp.autocast as autocast  # the catalog's line (B8): autocast is a class

    return autocast


def _import_apex():
    import apex  # not installed here, as on most machines today

    return apex


def _nan_in_backward_under_anomaly_mode():
    with torch.autograd.detect_anomaly():
        x = torch.zeros(1, requires_grad=True)
        torch.log(x).mul(0).sum().backward()  # LogBackward0: 0 / 0


class _TakesTurns(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x):  # a Python-side decision that differs between calls
        self.calls += 1
        return x * 2 if self.calls % 2 else x + 1


REAL_ERRORS = {
    "view-non-contiguous": [lambda: torch.zeros(2, 3).t().view(6),
                            lambda: torch.zeros(2, 3, 4, 4).permute(0, 2, 3, 1).view(2, -1)],
    "backward-non-scalar": [lambda: (torch.ones(2, requires_grad=True) * 2).backward(),
                            lambda: nn.functional.mse_loss(torch.ones(2, requires_grad=True), torch.zeros(2),
                                                           reduction="none").backward()],
    "leaf-inplace": [_manual_sgd_step, _leaf_item_assigned],
    "overlapping-inplace-write": [lambda: torch.zeros(1, 3).expand(4, 3).add_(1)],
    "index-dtype": [lambda: torch.zeros(3).scatter_(0, torch.tensor([0.0]), 1.0),
                    lambda: torch.zeros(3, 2).gather(1, torch.zeros(3, 1)),
                    lambda: torch.zeros(3)[torch.tensor([1.0])]],
    "too-many-indices": [lambda: torch.zeros(3)[0, 1], lambda: np.zeros(3)[0, 1]],
    "cuda-saved-tensors": [_load_gpu_checkpoint_without_cuda],
    "optimizer-state-mismatch": [lambda: _resume_with_other_groups(False), lambda: _resume_with_other_groups(True)],
    "scaler-unscale-twice": [_unscale_twice],
    "module-init-missing": [_AssignsBeforeInit],
    "module-forward-missing": [lambda: _NoForward()(torch.ones(2))],
    "dataset-getitem-missing": [lambda: _NoGetitem()[0], lambda: next(iter(DataLoader(_NoGetitem())))],
    "loader-option-conflict": [lambda: DataLoader(range(4), shuffle=True, sampler=SequentialSampler(range(4))),
                               lambda: DataLoader(range(4), batch_sampler=[[0, 1]], batch_size=2),
                               lambda: DataLoader(_Stream(), shuffle=True)],
    "random-split-lengths": [lambda: random_split(range(10), [int(0.7 * 10), int(0.2 * 10)])],
    "loader-iter-next": [lambda: iter(DataLoader([1, 2])).next(), lambda: DataLoader([1, 2]).next()],
    "dataparallel-attribute": [lambda: nn.DataParallel(nn.Linear(2, 2)).in_features],
    "numpy-on-device": [lambda: torch.ones(2, device="meta").numpy()],
    "inplace-broadcast": [lambda: torch.zeros(1, 28, 28).sub_(torch.zeros(3, 1, 1)),  # Normalize's sub_ (B40)
                          lambda: torch.zeros(4, 1).add_(torch.zeros(4, 3))],
    "amp-import-path": [_import_autocast_as_a_module, _import_apex],
    "nonfinite-backward": [_nan_in_backward_under_anomaly_mode],
    "trace-nondeterministic": [lambda: torch.jit.trace(_TakesTurns(), torch.randn(2))],
    "conv-groups": [lambda: nn.Conv2d(3, 4, 3, groups=2), lambda: nn.Conv2d(4, 6, 3, groups=4)],
    "grad-none": [lambda: nn.Linear(2, 2).weight.grad.zero_()],  # before any backward (B56)
    "scheduler-resume-initial-lr": [lambda: torch.optim.lr_scheduler.StepLR(
        torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1), step_size=2, last_epoch=3)],
}
CASES = [(finding_id, index) for finding_id, makers in REAL_ERRORS.items() for index in range(len(makers))]


def produced(finding_id: str, index: int) -> tuple[BaseException, str]:
    """The real exception and its formatted traceback."""
    try:
        REAL_ERRORS[finding_id][index]()
    except Exception as exc:  # noqa: BLE001 - any real error is what we want
        return exc, "".join(traceback.format_exception(exc))
    pytest.fail(f"{finding_id}[{index}] raised nothing")


def mangle(text: str) -> str:
    """Curly quotes, the message reflowed over two lines and a log prefix on every line."""
    lines = text.rstrip("\n").split("\n")
    words = lines[-1].split(" ")
    lines[-1] = " ".join(words[: len(words) // 2 + 1]) + "\n" + " ".join(words[len(words) // 2 + 1:])
    curly = "\n".join(lines).replace("'", "\u2019").replace('"', "\u201c")
    return "\n".join(f"[rank0]: {line}" for line in curly.split("\n"))


@pytest.mark.parametrize(("finding_id", "index"), CASES)
def test_the_real_error_is_explained_as_object_traceback_and_mangled_paste(finding_id, index):
    exc, text = produced(finding_id, index)
    finding = explain_exception(exc)
    assert finding is not None, f"{type(exc).__name__}: {exc}"
    assert finding.id == finding_id and finding.code == REGISTRY[finding_id].code and finding.fix
    assert finding.severity.value == "error"
    assert explain_text(text, "stdin").result["matched"] == [finding_id], text
    assert explain_text(mangle(text), "stdin").result["matched"] == [finding_id], mangle(text)


def test_the_sentences_name_what_the_message_says():
    def sentence(finding_id, index=0):
        return explain_exception(produced(finding_id, index)[0]).message

    assert "gather()" in sentence("index-dtype", 1) and "x[idx]" in sentence("index-dtype", 2)
    assert "1-D tensor was indexed with more indices" in sentence("too-many-indices")
    assert "1-D tensor was indexed with 2 indices" in sentence("too-many-indices", 1)  # numpy's wording
    assert sentence("module-forward-missing").startswith("_NoForward has no forward()")
    assert "(batch_size, shuffle, sampler, and drop_last)" in sentence("loader-option-conflict", 1)
    assert "IterableDataset got shuffle=" in sentence("loader-option-conflict", 2)
    assert "map_location='cpu'" in sentence("cuda-saved-tensors")
    assert "model.module.in_features" in sentence("dataparallel-attribute")
    assert "on meta" in sentence("numpy-on-device")
    assert "grayscale" in sentence("inplace-broadcast") and "grayscale" not in sentence("inplace-broadcast", 1)
    assert "torch.cuda.amp.autocast is not" in sentence("amp-import-path")
    assert "LogBackward0" in sentence("nonfinite-backward")
    assert "got graphs differed across invocations" in sentence("trace-nondeterministic")
    assert "in_channels is not" in sentence("conv-groups") and "out_channels is not" in sentence("conv-groups", 1)


# --- an extension built against another torch (B45), as the dynamic loader reports it -----------------------


def _extension_needing(symbol: str, tmp_path) -> str:
    """A Python extension module (a shared library) that calls ``symbol``, which nothing loaded provides."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None or sys.platform != "linux":
        pytest.skip("needs a C compiler and the Linux loader")
    source = tmp_path / "ext.c"
    source.write_text(f"extern void {symbol}(int);\nvoid call(void) {{ {symbol}(0); }}\n")
    name = f"torchdoctor_fake_ext_{abs(hash(symbol))}"
    subprocess.run([compiler, "-shared", "-fPIC", "-o", str(tmp_path / f"{name}.so"), str(source)], check=True)
    return name


def _import_from(tmp_path, name: str) -> tuple[BaseException, str]:
    sys.path.insert(0, str(tmp_path))
    try:
        return _traceback_of(lambda: importlib.import_module(name))
    finally:
        sys.path.remove(str(tmp_path))


def test_an_extension_built_against_another_torch(tmp_path):
    # the symbol torch_scatter asked for in the catalog (at::detail::DynamicCUDAInterface::set_device)
    name = _extension_needing("_ZN2at6detail20DynamicCUDAInterface10set_deviceE", tmp_path)
    exc, text = _import_from(tmp_path, name)
    finding = explain_exception(exc)
    assert finding.id == "extension-abi-mismatch" and f"{name}.so was built against another torch" in finding.message
    logged = "".join(f"[rank0]: {line}\n" for line in text.splitlines())
    reflowed = mangle(text)  # "...so: undefined" / "symbol: _ZN...": the wrap leaves "symbol: " opening a line
    assert "\n[rank0]: symbol: _ZN2at6detail" in reflowed
    for pasted in (text, logged, reflowed):
        assert explain_text(pasted, "stdin").result["matched"] == ["extension-abi-mismatch"], pasted


def test_an_undefined_symbol_outside_torch_stays_unknown(tmp_path):
    name = _extension_needing("torchdoctor_missing_c_function", tmp_path)
    exc, text = _import_from(tmp_path, name)
    assert "undefined symbol" in str(exc) and explain_exception(exc) is None
    assert explain_text(text, "stdin").result["matched"] == []


# --- warnings: the run goes on; explained from the lines Python prints for them ----------------------------


def _reentrant_checkpoint_of_data():
    from torch.utils.checkpoint import checkpoint

    checkpoint(nn.Linear(2, 2), torch.randn(1, 2), use_reentrant=True)


def _nonleaf_grad():
    return (torch.ones(2, requires_grad=True) * 2).grad


def _scheduler_first():
    optimizer = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    torch.optim.lr_scheduler.StepLR(optimizer, 1).step()


REAL_WARNINGS = {
    "checkpoint-no-grad-inputs": _reentrant_checkpoint_of_data,
    "softmax-implicit-dim": lambda: torch.nn.functional.softmax(torch.randn(2, 3)),
    "kl-div-mean": lambda: torch.nn.functional.kl_div(torch.randn(2, 3).log_softmax(-1), torch.rand(2, 3)),
    "nonleaf-grad-access": _nonleaf_grad,
    "scheduler-before-optimizer": _scheduler_first,
    "tensor-copy-construct": lambda: torch.tensor(torch.ones(2)),
    "loss-legacy-reduction": lambda: nn.MSELoss(reduce=False),
    "pin-memory-no-accelerator": lambda: list(DataLoader([1, 2], pin_memory=True)),
}


@pytest.mark.parametrize("finding_id", REAL_WARNINGS)
def test_real_warnings_are_explained_from_the_printed_lines(finding_id):
    import warnings

    if finding_id == "pin-memory-no-accelerator" and torch.accelerator.is_available():
        pytest.skip("torch warns about pin_memory only without an accelerator")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        REAL_WARNINGS[finding_id]()
    printed = [warnings.formatwarning(w.message, w.category, w.filename, w.lineno) for w in caught]
    log = "epoch 1\n" + "".join(printed) + "epoch 2\n"  # as they appear in a training log (stderr)
    for pasted in (log, mangle(log)):
        report = explain_text(pasted, "stdin")
        assert report.result["matched"] == [finding_id], pasted
        assert report.findings[0].severity.value == REGISTRY[finding_id].severity.value and report.findings[0].fix


# --- errors whose message alone is ambiguous: explained from the frames of the traceback around them ------


def _spawned_worker_with_a_lambda():
    loader = DataLoader(range(4), num_workers=1, multiprocessing_context="spawn", collate_fn=lambda batch: batch)
    next(iter(loader))  # the worker process is pickled in this process: it fails before starting


_GONE = "torchdoctor_test_gone_model"


def _load_a_whole_model_whose_class_is_gone(load):
    module = type(sys)(_GONE)
    exec("import torch\nclass Net(torch.nn.Module):\n    pass\n", module.__dict__)  # a model file, then renamed
    sys.modules[_GONE] = module
    handle, path = tempfile.mkstemp(suffix=".pt")
    os.close(handle)
    try:
        torch.save(module.Net(), path)
        del module.Net
        load(path)
    finally:
        os.unlink(path)
        del sys.modules[_GONE]


def _plain_unpickle(path):
    with zipfile.ZipFile(path) as archive:
        name = next(name for name in archive.namelist() if name.endswith("/data.pkl"))
        pickle.loads(archive.read(name))  # our own file, written just above


def _traceback_of(make) -> tuple[BaseException, str]:
    try:
        make()
    except Exception as exc:  # noqa: BLE001 - the real error is what we want
        return exc, "".join(traceback.format_exception(exc))
    pytest.fail("raised nothing")


@pytest.mark.parametrize(("make", "finding_id", "words"), [
    (_spawned_worker_with_a_lambda, "loader-unpicklable", "<lambda>"),
    (lambda: _NoForward().device, "module-device-attribute", "_NoForward is an nn.Module"),
    (lambda: _load_a_whole_model_whose_class_is_gone(lambda path: torch.load(path, weights_only=False)),
     "full-module-pickle", f"{_GONE}.Net"),
], ids=["lambda collate_fn", "module.device", "whole model"])
def test_ambiguous_messages_are_explained_by_their_frames(make, finding_id, words):
    exc, text = _traceback_of(make)
    for pasted in (text, mangle(text)):
        report = explain_text(pasted, "stdin")
        assert report.result["matched"] == [finding_id], pasted
        assert words in report.findings[0].message and report.findings[0].severity.value == "error"
    assert explain_exception(exc) is None  # the message alone: any pickling failure


@pytest.mark.parametrize("make", [
    lambda: pickle.dumps(lambda batch: batch),  # user code pickling a lambda, no DataLoader
    lambda: _load_a_whole_model_whose_class_is_gone(_plain_unpickle),  # plain pickle, not torch.load
    lambda: [torch.ones(1)].device,  # a batch that is a list, not a Module
], ids=["pickle.dumps", "pickle.loads", "list.device"])
def test_the_same_messages_without_those_frames_stay_unknown(make):
    _, text = _traceback_of(make)
    assert "AttributeError" in text and explain_text(text, "stdin").result["matched"] == []


@pytest.mark.parametrize(("text", "sentence"), [
    # CUDA only (a CPU build has one device): the catalog's 2.x text (pitfalls A27, B44) and torch 1.x's
    ("RuntimeError: Expected all tensors to be on the same device, but found at least two devices, cuda:0 and cpu!",
     "(cuda:0 and cpu)"),
    ("RuntimeError: Expected all tensors to be on the same device, but got mat1 is on cpu, different from other "
     "tensors on cuda:0 (when checking argument in method wrapper_CUDA_addmm)", "different devices:"),
    ("RuntimeError: Expected object of device type cuda but got device type cpu for argument #1 'self' in call to "
     "_th_mm", "(cuda and cpu)"),
    # pitfalls A14, torch 2.x on a GPU machine: a CPU model given a CUDA batch (cuDNN's input/weight check)
    ("RuntimeError: Input type (torch.cuda.FloatTensor) and weight type (torch.FloatTensor) should be the same or "
     "input should be a MKLDNN tensor and weight is a dense tensor", "input is on cuda but the layer's weights are "
                                                                     "on cpu"),
])
def test_device_mismatch_from_recorded_text(text, sentence):
    finding = explain_exception(text)
    assert finding.id == "device-mismatch" and sentence in finding.message
    assert explain_text(text, "stdin").result["matched"] == ["device-mismatch"]


def _overlapping_out(x: torch.Tensor) -> None:
    torch.add(x[:2], 1, out=x[1:3])


def test_numpy_of_a_cuda_tensor_from_recorded_text():
    # pitfalls B17 on a GPU machine; the same code path raises the meta device's message above
    text = ("TypeError: can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy the tensor to "
            "host memory first.")
    finding = explain_exception(text)
    assert finding.id == "numpy-on-device" and "on cuda:0" in finding.message
    assert explain_text(text, "stdin").result["matched"] == ["numpy-on-device"]


def test_bce_under_gpu_autocast_from_torchs_own_text():
    # raised by GPU autocast only (a CPU autocast runs BCE): the message as libtorch_cpu.so holds it
    library = pathlib.Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"
    if not library.exists():
        pytest.skip("no libtorch_cpu.so to read")
    with library.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:  # ~0.5 GB
        start = data.find(b"torch.nn.functional.binary_cross_entropy and torch.nn.BCELoss are unsafe")
        assert start >= 0
        message = data[start:data.find(b"\0", start)].decode()
    text = f"Traceback (most recent call last):\n  File \"train.py\", line 9, in <module>\n    loss = bce(p, y)\n" \
           f"RuntimeError: {message}\n"
    assert explain_text(text, "stdin").result["matched"] == ["bce-autocast"]
    assert explain_exception(f"RuntimeError: {message}").id == "bce-autocast"


def test_an_old_torchvision_with_pillow_7(tmp_path):
    # torchvision < 0.5's transforms/functional.py: `from PIL import Image, ImageOps, ImageEnhance, PILLOW_VERSION`.
    # Run in a child: with Pillow >= 7 installed that line fails by itself; without Pillow, a PIL package that
    # lacks the name (as Pillow 7 does) stands in, so this process's modules stay untouched.
    stand_in = tmp_path / "PIL"
    stand_in.mkdir()
    (stand_in / "__init__.py").write_text("__version__ = '7.0.0'\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    code = "from PIL import PILLOW_VERSION\n"
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    assert child.returncode == 1 and "ImportError: cannot import name 'PILLOW_VERSION' from 'PIL'" in child.stderr
    assert explain_text(child.stderr, "stdin").result["matched"] == ["torchvision-pillow"]
    assert explain_text(mangle(child.stderr), "stdin").result["matched"] == ["torchvision-pillow"]


NEAR_MISSES = {
    # view with the wrong number of elements: a shape bug, not a memory-layout one
    "view to a wrong size": lambda: torch.zeros(6).view(7),
    # backward of a tensor outside the graph: a different mistake from a non-scalar loss
    "backward without grad_fn": lambda: torch.ones(1).sum().backward(),
    # out= overlapping its input: not an expand()ed view
    "out= overlapping the input": lambda: _overlapping_out(torch.zeros(4)),
    # gather's index of the wrong rank: its dtype is right
    "gather index rank": lambda: torch.zeros(3, 3).gather(1, torch.zeros(3, dtype=torch.long)),
    # an index past the end: the count of indices is right
    "index out of bounds": lambda: torch.zeros(3)[5],
    # assigning a plain tensor to a Parameter's slot: __init__ ran
    "plain tensor as parameter": lambda: setattr(nn.Linear(2, 2), "weight", torch.zeros(2, 2)),
    # batch_size=None with drop_last: another exclusive pair, not a sampler's
    "batch_size=None with drop_last": lambda: DataLoader([1, 2], batch_size=None, drop_last=True),
    # an attribute missing from a plain module: not read through a wrapper
    "attribute of a plain module": lambda: nn.Linear(2, 2).in_channels,
    # an out-of-place op of shapes that do not broadcast: not an in-place one
    "shapes that do not broadcast": lambda: torch.zeros(2) + torch.zeros(3),
    # a name missing from another package: not Pillow's
    "another missing name": lambda: exec("from os import PILLOW_VERSION"),
    # a missing module that is not AMP's
    "another missing module": lambda: __import__("torchdoctor_no_such_module"),
    # weights on the CPU, an input on the meta device: not the device mismatch of a GPU and the CPU
    "meta input": lambda: nn.Linear(2, 2)(torch.ones(1, 2, device="meta")),
}


@pytest.mark.parametrize("case", NEAR_MISSES, ids=str)
def test_real_near_misses_stay_unknown(case):
    try:
        NEAR_MISSES[case]()
    except Exception as exc:  # noqa: BLE001 - the real error is what we want
        assert explain_exception(exc) is None, f"{type(exc).__name__}: {exc}"
        assert explain_text("".join(traceback.format_exception(exc)), "stdin").result["matched"] == []
        return
    pytest.fail(f"{case} raised nothing")


def test_explain_cli_on_a_real_view_traceback(cli, tmp_path, validate_report):
    import json

    log = tmp_path / "train.log"
    log.write_text(produced("view-non-contiguous", 1)[1])
    result = cli("explain", str(log), "--json")
    assert result.exit_code == 1, result.output
    report = validate_report(json.loads(result.stdout))
    assert report["result"]["matched"] == ["view-non-contiguous"]
    assert ".reshape" in report["findings"][0]["fix"]
