"""``torchdoctor ckpt inspect|fix|diff``: checkpoints read safely, fixed surgically, compared."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from torchdoctor.cli._errors import exit_on_tool_errors
from torchdoctor.cli._gc import collector_paused
from torchdoctor.cli._help import ConventionalCommand, ConventionalGroup
from torchdoctor.cli._options import DebugOpt, JsonOpt, StrictOpt
from torchdoctor.cli._output import emit
from torchdoctor.cli._progress import progress_bar
from torchdoctor.cli._targets import load_model, parse_shapes

app = typer.Typer(cls=ConventionalGroup, no_args_is_help=True,
                  help="Inspect, fix and compare checkpoints without executing them.")

PathArg = Annotated[Path, typer.Argument(help="Checkpoint file or directory (format detected by content).")]
ModelOpt = Annotated[
    Optional[str],  # noqa: UP045 - typer evaluates the annotation at runtime
    typer.Option("--model", "-m", help="The model to check against: file.py:Name or package.module:factory."),
]
ShapeOpt = Annotated[
    Optional[list[str]],  # noqa: UP045
    typer.Option("--input-shape", help="Example input shape for the training step, e.g. 1,3,224,224 (repeatable)."),
]


class TargetFormat(str, enum.Enum):
    zip = "zip"
    legacy = "legacy"
    safetensors = "safetensors"


@app.command("inspect", cls=ConventionalCommand)
def inspect_command(
    path: PathArg,
    model: ModelOpt = None,
    input_shape: ShapeOpt = None,
    no_values: Annotated[bool, typer.Option("--no-values", help="Skip the NaN/inf scan of tensor values.")] = False,
    scan_values: Annotated[bool, typer.Option("--scan-values", help="Scan every value for NaN/inf even above 4 GiB (the default reads only the headers of larger checkpoints).")] = False,  # noqa: E501
    all_keys: Annotated[bool, typer.Option("--all", help="List every key (default: a few per top-level group).")] = False,  # noqa: E501
    json: JsonOpt = False,
    strict: StrictOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Keys, shapes, dtypes, wrappers, prefixes, pickle safety and NaN/inf, without running the file."""
    from torchdoctor.ckpt.inspect import inspect_checkpoint

    with collector_paused():  # until the report is rendered: importing rich would trigger full collections
        with exit_on_tool_errors(debug), progress_bar("scanning tensor values", enabled=not json) as on_progress:
            report = inspect_checkpoint(path, model=load_model(model), input_shapes=parse_shapes(input_shape),
                                        scan_values=_scan_choice(no_values, scan_values), on_progress=on_progress,
                                        all_keys=all_keys)
        emit(report, as_json=json, strict=strict)


def _scan_choice(no_values: bool, scan_values: bool) -> bool | None:
    if no_values and scan_values:  # called inside exit_on_tool_errors: a one-line error, exit 2
        from torchdoctor.errors import UsageError

        raise UsageError("--no-values and --scan-values contradict each other: pass one")
    return False if no_values else (True if scan_values else None)


@app.command("fix", cls=ConventionalCommand)
def fix_command(
    path: PathArg,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Where to write (default: <stem>.fixed<suffix>; for a DCP directory DIRNAME.pt beside it; for a sharded folder DIRNAME.fixed.safetensors|.pt beside it).")] = None,  # noqa: UP045,E501
    model: ModelOpt = None,
    to: Annotated[Optional[TargetFormat], typer.Option("--to", help="Convert to this format.")] = None,  # noqa: UP045
    strip_prefix: Annotated[Optional[list[str]], typer.Option("--strip-prefix", help="Strip this key prefix (repeatable).")] = None,  # noqa: UP045,E501
    drop_mismatched: Annotated[bool, typer.Option("--drop-mismatched", help="Drop keys whose shapes do not fit --model.")] = False,  # noqa: E501
    keep_wrapper: Annotated[bool, typer.Option("--keep-wrapper", help="Keep the wrapper dict; fix the weights inside.")] = False,  # noqa: E501
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan; write nothing.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing output file.")] = False,
    input_shape: ShapeOpt = None,
    json: JsonOpt = False,
    strict: StrictOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Strip prefixes, unwrap, rename to --model, drop mismatched keys, convert; verify, never touch the input."""
    from torchdoctor.ckpt.fix import fix_checkpoint

    with collector_paused():
        with exit_on_tool_errors(debug), progress_bar("copying and verifying", enabled=not json) as on_progress:
            report = fix_checkpoint(path, output=output, model=load_model(model), to=to.value if to else None,
                                    strip_prefixes=tuple(strip_prefix or ()), drop_mismatched=drop_mismatched,
                                    keep_wrapper=keep_wrapper, dry_run=dry_run, force=force,
                                    input_shapes=parse_shapes(input_shape), on_progress=on_progress)
        emit(report, as_json=json, strict=strict)


@app.command("diff", cls=ConventionalCommand)
def diff_command(
    a: Annotated[Path, typer.Argument(help="First checkpoint.")],
    b: Annotated[Path, typer.Argument(help="Second checkpoint.")],
    json: JsonOpt = False,
    strict: StrictOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Keys only in A / only in B, shape and dtype changes, max |a - b| per tensor, identical or not."""
    from torchdoctor.ckpt.diff import diff_checkpoints

    with collector_paused():
        with exit_on_tool_errors(debug), progress_bar("comparing tensors", enabled=not json) as on_progress:
            report = diff_checkpoints(a, b, on_progress=on_progress)
        emit(report, as_json=json, strict=strict)
