"""Watch report dicts in the shape of the watch contract, for renderer tests (no training run needed)."""

from __future__ import annotations

import math
from typing import Any

# a name from user code that must come out escaped everywhere it is shown
HOSTILE = 'head<script>alert("x")</script>&'


def watch_report_dict(layers: int = 4, steps: int = 30, *, hostile: bool = False) -> dict[str, Any]:
    """A learning-ish run whose gradients shrink with depth: loss decays, lr warms up, the first layer vanishes."""
    names = [f"blocks.{i}.linear" for i in range(layers - 1)] + [HOSTILE if hostile else "head"]
    sampled = list(range(1, steps * 2, 2))  # every second optimizer step, as after downsampling
    loss: list[float | None] = [2.3 * math.exp(-s / 20) + 0.1 for s in sampled]
    loss[len(loss) // 2] = None  # a step without a recorded loss draws as a gap
    grad = [[10.0 ** (-6 + 2 * depth) * (1 + 0.1 * (k % 3)) for k in range(len(sampled))] for depth in range(layers)]
    grad[1][len(sampled) // 3] = None
    ratio = [[1e-3 * (1 + depth) for _ in sampled] for depth in range(layers)]
    ratio[0] = [0.0] * len(sampled)  # a layer that never moves
    findings = [
        _finding("grad-vanishing", "TD811", "warning", "Gradient norms fall 1e+06× from head to blocks.0.linear.",
                 "blocks.0.linear.weight", [1, sampled[-1]], fix="Add normalisation or residual connections."),
        _finding("dead-relu", "TD813", "warning", "relu1: 100% of units inactive.", "relu1", [1, sampled[-1]]),
        _finding("params-not-updated", "TD805", "error", f"{names[-1]} receives gradients but no optimizer.",
                 names[-1], [1, sampled[-1]], fix="Build the optimizer after replacing the head."),
        _finding("loss-not-decreasing", "TD808", "warning", "The loss did not fall.", None, None),
    ]
    series = {"step": sampled, "loss": loss, "lr": [min(1.0, s / 10) * 1e-3 for s in sampled], "layers": names,
              "grad_norm": grad, "update_ratio": ratio, "dead_fraction": {"relu1": 1.0, "relu2": 0.12},
              "saturated_fraction": {"act.tanh": 0.4}}
    result = {"script": "train.py", "args": ["--epochs", "1"], "exit_code": 0, "script_failed": False,
              "steps_watched": sampled[-1], "step_counting": "optimizer", "first_nonfinite": None,
              "series": series}
    return {"schema_version": 1, "tool": "torchdoctor", "version": "0.0.test", "command": "watch",
            "status": "error", "findings": findings, "result": result}


def _finding(fid: str, code: str, severity: str, message: str, location: str | None, steps: list[int] | None,
             fix: str | None = None) -> dict[str, Any]:
    return {"id": fid, "code": code, "severity": severity, "message": message, "fix": fix, "location": location,
            "details": {"steps": steps} if steps else {}}
