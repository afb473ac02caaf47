"""A small project folder for ``torchdoctor check``: config, a ``module.``-prefixed checkpoint, a train.py."""

from __future__ import annotations

import textwrap
from pathlib import Path

TRAIN_PY = textwrap.dedent('''
    """A loader whose labels run 1..C (an off-by-one), and the model it feeds."""
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    CLASSES = 4
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(64, 8, generator=generator)
    labels = torch.randint(1, CLASSES + 1, (64,), generator=generator)
    labels[0] = CLASSES  # make sure the out-of-range label is present
    loader = DataLoader(TensorDataset(features, labels), batch_size=16, shuffle=True)
    model = nn.Linear(8, CLASSES)
''')

HEALTHY_SCRIPT = textwrap.dedent('''
    import argparse
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3)
    steps = parser.parse_args().steps
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        loss = model(torch.randn(8, 4)).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print("done")
''')

MODELS_PY = textwrap.dedent('''
    from torch import nn


    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 4)

        def forward(self, x):
            return self.fc(x)
''')

CONFIG = textwrap.dedent('''
    [project]
    name = "demo"

    [tool.torchdoctor]
    fail-on = "error"
    ignore = {ignore}

    [tool.torchdoctor.env]
    checks = ["build", "threads"]

    [[tool.torchdoctor.ckpt]]
    path = "weights/model.pth"

    [[tool.torchdoctor.data]]
    loader = "train.py:loader"
    model = "train.py:model"
    batches = 4
''')


def build_project(folder: Path, *, ignore: str = "[]", extra: str = "") -> Path:
    """Write the project into ``folder``; ``extra`` is appended to the config."""
    import torch
    from fixtures.models import TinyConvNet
    from torch import nn

    (folder / "weights").mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(nn.DataParallel(TinyConvNet()).state_dict(), folder / "weights" / "model.pth")
    (folder / "train.py").write_text(TRAIN_PY)
    (folder / "healthy.py").write_text(HEALTHY_SCRIPT)
    (folder / "models.py").write_text(MODELS_PY)
    (folder / "pyproject.toml").write_text(CONFIG.format(ignore=ignore) + extra)
    return folder
