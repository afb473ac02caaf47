"""``torchdoctor count``: parameters, MACs and FLOPs of a model under one stated convention."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from torchdoctor.cli._errors import exit_on_tool_errors
from torchdoctor.cli._options import DebugOpt, JsonOpt, StrictOpt
from torchdoctor.cli._output import emit
from torchdoctor.cli._targets import parse_shapes

SpecArg = Annotated[str, typer.Argument(
    metavar="MODEL_SPEC", help="The model: torchvision.models:resnet50, model.py:Net or a factory.")]
ShapeOpt = Annotated[
    Optional[list[str]],  # noqa: UP045 - typer evaluates the annotation at runtime
    typer.Option("--input-shape", help="Shape of an example input, e.g. 1,3,224,224 (repeat for each input)."),
]
InputOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--input", help="file.py:make_inputs: a callable returning example inputs (tensor, tuple or dict)."),
]
DtypeOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--dtype", help="Count with weights and inputs in this dtype (float32, bfloat16, float16, ...)."),
]
DepthOpt = Annotated[int, typer.Option("--depth", help="Show modules down to this depth in the layer table.")]
TrainOpt = Annotated[bool, typer.Option(
    "--train-step", help="Measure a real training step (forward, backward, optimizer), not just the forward.")]
MetaOpt = Annotated[bool, typer.Option(
    "--meta", help="Build and count on the meta device: no weights allocated (large models in seconds).")]
DeviceOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--device", help="Count (and --train-step) on this device, e.g. cuda:0; default: the model's."),
]
CompareOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--compare", help="Peer tools to show beside ours, e.g. thop,torchinfo (when installed)."),
]


def count_command(
    spec: SpecArg,
    input_shape: ShapeOpt = None,
    input_spec: InputOpt = None,
    dtype: DtypeOpt = None,
    depth: DepthOpt = 2,
    train_step: TrainOpt = False,
    meta: MetaOpt = False,
    device: DeviceOpt = None,
    compare: CompareOpt = None,
    json: JsonOpt = False,
    strict: StrictOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Parameters, MACs and FLOPs per layer, attention included, uncounted ops named (convention stated)."""
    from torchdoctor.count.api import count_spec

    with exit_on_tool_errors(debug):
        report = count_spec(spec, input_shapes=parse_shapes(input_shape), input_spec=input_spec, dtype=dtype,
                            depth=depth, train_step=train_step, meta=meta, compare=compare, device=device)
    emit(report, as_json=json, strict=strict)
