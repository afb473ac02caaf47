"""relu/sigmoid/tanh called as functions in a forward (``F.relu``, ``torch.tanh``, ``x.sigmoid()``): each spelling
counts like an activation module, named by module and line; what is not a hidden activation stays out."""

from __future__ import annotations

import functools
import inspect
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import torchdoctor

SPELLINGS = [f"{owner}.{name}" for name in ("relu", "sigmoid", "tanh") for owner in ("F", "torch", "Tensor")]
IN_PLACE = ["F.relu_", "torch.relu_", "torch.sigmoid_", "torch.tanh_",
            "Tensor.relu_", "Tensor.sigmoid_", "Tensor.tanh_"]
FINDING = {"relu": "dead-relu", "sigmoid": "saturated-activation", "tanh": "saturated-activation"}


class Spelled(nn.Module):
    """A hidden layer whose bias pins its activation (relu: dead; sigmoid/tanh: at a bound), called as ``spelling``.

    The function is looked up at call time, as ``torch.relu(h)`` in a forward is: watch wraps it on enter."""

    def __init__(self, spelling: str, bias: float = -30.0) -> None:
        super().__init__()
        self.owner, self.name = spelling.split(".")
        self.hidden = nn.Linear(4, 16)
        self.out = nn.Linear(16, 2)
        with torch.no_grad():
            self.hidden.bias.fill_(bias)

    def forward(self, x):
        h = self.hidden(x)
        namespace = {"F": F, "torch": torch}.get(self.owner)  # None: a Tensor method, h.relu()
        function = getattr(h, self.name) if namespace is None else functools.partial(getattr(namespace, self.name), h)
        return self.out(function())  # the call site

    @classmethod
    def call_line(cls) -> int:
        lines, first = inspect.getsourcelines(cls.forward)
        return first + next(i for i, line in enumerate(lines) if "# the call site" in line)


def train(model: nn.Module, steps: int = 3, loss=None) -> None:
    torch.manual_seed(0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    for _ in range(steps):
        optimizer.zero_grad()
        (loss or F.cross_entropy)(model(x), y).backward()
        optimizer.step()


def watched(model: nn.Module, **kwargs) -> torchdoctor.learning.api.Watch:
    with torchdoctor.watch(every=1) as w:
        train(model, **kwargs)
    return w


@pytest.mark.parametrize("spelling", SPELLINGS + IN_PLACE)
def test_every_spelling_is_judged_and_named_by_module_and_line(spelling):
    w = watched(Spelled(spelling))
    name = f"Spelled ({spelling}, line {Spelled.call_line()})"
    finding_id = FINDING[spelling.split(".")[1].rstrip("_")]
    assert [(f.id, f.location) for f in w.report.findings if f.id in FINDING.values()] == [(finding_id, name)]
    series = w.report.result["series"]
    fractions = series["dead_fraction" if finding_id == "dead-relu" else "saturated_fraction"]
    assert fractions == {name: 1.0}


@pytest.mark.parametrize("spelling", ["torch.relu", "Tensor.sigmoid", "F.tanh"])
def test_a_healthy_layer_called_the_same_way_stays_quiet(spelling):
    w = watched(Spelled(spelling, bias=0.0))
    assert [f.id for f in w.report.findings if f.id in FINDING.values()] == []
    series = w.report.result["series"]
    assert len(series["dead_fraction"]) + len(series["saturated_fraction"]) == 1  # it was seen, and is healthy


def test_the_wrappers_are_gone_after_the_watch():
    originals = {(owner, name): getattr(owner, name) for owner in (F, torch, torch.Tensor)
                 for name in ("relu", "sigmoid", "tanh", "relu_", "sigmoid_", "tanh_") if hasattr(owner, name)}
    with torchdoctor.watch():
        assert torch.relu is not originals[torch, "relu"] and "sigmoid" in torch.Tensor.__dict__
    assert {key: getattr(*key) for key in originals} == originals
    assert "sigmoid" not in torch.Tensor.__dict__  # inherited from TensorBase again, not a copy left behind
    assert "tanh_" not in torch.Tensor.__dict__


class SigmoidHead(nn.Module):
    """A binary classifier that returns probabilities: sure of its answers, so pinned near 0 or 1."""

    def __init__(self, as_tuple: bool = False) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 8)
        self.as_tuple = as_tuple
        with torch.no_grad():
            self.fc.bias.fill_(30.0)

    def forward(self, x):
        probabilities = torch.sigmoid(self.fc(x))
        return (probabilities, x.mean()) if self.as_tuple else probabilities


def bce(output, y):
    probabilities = output[0] if isinstance(output, tuple) else output
    return F.binary_cross_entropy(probabilities, y.float()[:, None].expand(-1, 8))


@pytest.mark.parametrize("as_tuple", [False, True])
def test_the_models_own_output_activation_is_the_losss_business(as_tuple):
    w = watched(SigmoidHead(as_tuple), loss=bce)
    assert w.report.result["series"]["saturated_fraction"] == {}
    assert "saturated-activation" not in [f.id for f in w.report.findings]


class LogitsHead(SigmoidHead):
    def forward(self, x):
        return self.fc(x)

    def training_step(self, x, y):
        return F.binary_cross_entropy(torch.sigmoid(self(x)), y)


def test_a_sigmoid_of_the_models_output_in_a_training_step_is_not_a_hidden_layer():
    model = LogitsHead()
    x, y = torch.randn(16, 4), torch.ones(16, 8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with torchdoctor.watch(every=1) as w:
        for _ in range(3):
            optimizer.zero_grad()
            model.training_step(x, y).backward()  # LightningModule style: a method of the module, not forward
            optimizer.step()
    assert w.report.result["series"]["saturated_fraction"] == {}


class NewGELUActivation(nn.Module):
    """transformers' gelu_new: a tanh as a factor of x, which sits at +-1 whenever |x| > 3 (linear or 0)."""

    def forward(self, x):
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def test_a_tanh_inside_a_smooth_activation_is_not_a_saturated_layer():
    model = nn.Sequential(nn.Linear(4, 16), NewGELUActivation(), nn.Linear(16, 2))
    with torch.no_grad():
        model[0].bias.fill_(10.0)
    w = watched(model)
    assert w.report.result["series"]["saturated_fraction"] == {}


def test_an_activation_module_is_judged_once_by_its_name():
    """nn.Tanh's forward calls torch.tanh: the module hook names it, the call inside it is not a second site."""
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2))
    with torch.no_grad():
        model[0].bias.fill_(30.0)
    w = watched(model)
    assert w.report.result["series"]["saturated_fraction"] == {"1": 1.0}


class Scriptable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return torch.sigmoid(self.fc(x)).relu() + F.tanh(x) + F.relu(x) + torch.tanh(x).sigmoid()


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_a_model_scripted_during_the_watch_compiles_and_one_scripted_after_it_too():
    """TorchScript compiles torch.relu by looking it up in a table by id: our wrappers are entered as their ops."""
    from torch.jit import _builtins

    x = torch.randn(2, 4)
    with torchdoctor.watch():
        during = torch.jit.script(Scriptable())(x)
    after = torch.jit.script(Scriptable())(x)
    assert during.shape == after.shape == (2, 4)
    assert [_builtins._find_builtin(f) for f in (torch.relu, torch.sigmoid, torch.tanh)] == [
        "aten::relu", "aten::sigmoid", "aten::tanh"]


class SiLUGatedBlock(nn.Module):
    """Named like a smooth activation, but a block with layers of its own: its tanh is a hidden activation."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 16)
        with torch.no_grad():
            self.fc.bias.fill_(30.0)

    def forward(self, x):
        return torch.tanh(self.fc(x))


def test_a_block_named_like_a_smooth_activation_is_still_judged():
    w = watched(nn.Sequential(SiLUGatedBlock(), nn.Linear(16, 2)))
    line = inspect.getsourcelines(SiLUGatedBlock.forward)[1] + 1
    assert [f.location for f in w.report.findings if f.id == "saturated-activation"] == [f"0 (torch.tanh, line {line})"]
