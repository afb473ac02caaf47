"""Rank report dicts from real in-process watch runs, for tests of what rank 0 merges (no torchrun launch)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

import torchdoctor

SCRIPTS = Path(__file__).resolve().parents[2] / "fixtures" / "watch_scripts"


def watched(labels_follow_inputs: bool, model: nn.Module | None = None, *, under_ddp: bool = True) -> dict:
    """One rank's report dict: a real watch of a small loop, its labels learnable or drawn apart from the inputs."""
    torch.manual_seed(0)
    model = model or nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    with torchdoctor.watch(every=5) as w:
        for _ in range(30):
            x = torch.randn(64, 8)
            y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long() if labels_follow_inputs else torch.randint(0, 3, (64,))
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    report = w.report.to_dict()
    if under_ddp:  # what run_watch_script(distributed=True) adds: the DDP models this rank trained
        report["result"]["ddp"] = {"models": ["torch.nn.modules.container.Sequential"]}
    return report


def script_watched(role: str) -> dict:
    """A real watch of ``crash_and_lost_peer.py ROLE``: ``crash`` (a shape error) or ``lost-peer`` (gloo's error)."""
    from torchdoctor.learning.runner import run_watch_script

    return run_watch_script(SCRIPTS / "crash_and_lost_peer.py", [role], every=1).to_dict()
