"""assert_learns in-process: healthy small models written as unit tests write them pass; a blind one fails."""

import pytest
import torch
from torch import nn

from torchdoctor.testing import assert_learns


def _random_batch(*shape: int, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    return torch.randn(*shape), torch.randint(0, classes, (shape[0],))


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_healthy_models_on_random_labels_learn_with_the_defaults(name):
    # with the defaults of the first version (Adam 3e-3, loss halved) these healthy models failed
    torch.manual_seed(0)
    if name == "mlp":
        model, batch = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)), _random_batch(32, 8, classes=3)
    else:
        # global pooling of pure-noise images leaves little to memorise: with 8 channels the loss only falls to
        # ~0.8x in 50 steps (such a test needs more steps or its own optimizer); 32 channels reach ~0.55-0.66x
        model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                              nn.Flatten(), nn.Linear(32, 5))
        batch = _random_batch(16, 3, 16, 16, classes=5)
    assert_learns(model, batch, loss_fn=nn.functional.cross_entropy)


class Blind(nn.Module):
    """A bug that ignores the input: the output is a learned constant (the input is multiplied by zero)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x * 0)


def test_a_model_blind_to_its_input_does_not_learn():
    torch.manual_seed(0)
    with pytest.raises(AssertionError, match="loss-not-decreasing"):
        assert_learns(Blind(), _random_batch(32, 8, classes=3), loss_fn=nn.functional.cross_entropy)
