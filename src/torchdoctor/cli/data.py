"""``torchdoctor data LOADER_SPEC``: read the first batches of a DataLoader, judge them, train a step with --model."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from torchdoctor.cli._errors import exit_on_tool_errors
from torchdoctor.cli._options import DebugOpt, JsonOpt, StrictOpt
from torchdoctor.cli._output import emit
from torchdoctor.cli._progress import progress_bar
from torchdoctor.cli._targets import load_model
from torchdoctor.data.deadline import DEFAULT_TIMEOUT_S

LoaderArg = Annotated[str, typer.Argument(
    metavar="LOADER_SPEC",
    help="file.py:name or package.module:name: a DataLoader, a Dataset (read in batches of 32) or a factory.")]
ModelOpt = Annotated[
    Optional[str],  # noqa: UP045 - typer evaluates the annotation at runtime
    typer.Option("--model", "-m", help="A model to train one real step on a copy of: file.py:Name or pkg.mod:factory."),
]
KeyOpt = Optional[str]  # noqa: UP045


def data_command(
    loader: LoaderArg,
    model: ModelOpt = None,
    num_classes: Annotated[Optional[int], typer.Option("--num-classes", min=1, help="Number of classes (default: the model's output width).")] = None,  # noqa: UP045,E501
    loss: Annotated[Optional[str], typer.Option("--loss", help="ce, bce, mse, or file.py:name of a loss (default: inferred from the targets).")] = None,  # noqa: UP045,E501
    batches: Annotated[int, typer.Option("--batches", "-n", min=1, help="How many batches to read.")] = 20,
    input_key: Annotated[KeyOpt, typer.Option("--input-key", help="Key (dict batches) or position (tuples) of the input.")] = None,  # noqa: E501
    target_key: Annotated[KeyOpt, typer.Option("--target-key", help="Key (dict batches) or position (tuples) of the target.")] = None,  # noqa: E501
    timeout: Annotated[float, typer.Option("--timeout", min=0, help=f"Seconds a batch may take before the loader counts as hung (default {DEFAULT_TIMEOUT_S:g}; 0: no limit).")] = DEFAULT_TIMEOUT_S,  # noqa: E501
    json: JsonOpt = False,
    strict: StrictOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Probe a DataLoader: batches, labels, inputs and speed; with --model, a real training step on its batches."""
    from torchdoctor.data.api import probe_loader

    with exit_on_tool_errors(debug), progress_bar("reading batches", enabled=not json) as on_progress:
        report = probe_loader(_load_loader(loader), load_model(model), num_classes=num_classes, loss=loss,
                              batches=batches, input_key=_key(input_key), target_key=_key(target_key),
                              on_progress=on_progress, timeout=timeout)
    emit(report, as_json=json, strict=strict)


def _load_loader(spec: str):
    from torch.utils.data import DataLoader, Dataset

    from torchdoctor.data.loader import datamodule_loader
    from torchdoctor.targets import resolve_target

    return resolve_target(spec, expect=(DataLoader, Dataset), unwrap=datamodule_loader)


def _key(value: str | None) -> str | int | None:
    """``"0"`` names a tuple position; anything else a dict key (the probe tells a bad one apart)."""
    return int(value) if value is not None and value.lstrip("-").isdigit() else value
