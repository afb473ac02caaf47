"""Judgements on count facts (pure): uncounted ops, and a forward that failed because an input did not fit."""

from __future__ import annotations

import re
from collections.abc import Sequence

from torchdoctor.codes import make_finding
from torchdoctor.count.flops import ForwardFailure, OpTally
from torchdoctor.count.ops import OpKind
from torchdoctor.report import Finding, Severity

MAX_LISTED = 8

# Messages torch (and user code unpacking ``x.shape``) raises when a tensor's shape does not fit a layer.
SHAPE_ERROR = re.compile("|".join((
    r"shapes cannot be multiplied",
    r"size mismatch",
    r"to have \d+ channels, but got \d+ channels",
    r"Given groups=\d+, (?:expected )?weight of size",
    r"must match the size of tensor",
    r"Sizes of tensors must match",
    r"is invalid for input of size",
    r"normalized_shape",
    r"Kernel size can't be greater than actual input size",
    r"Output size is too small",
    r"Expected \d+D .*input",
    r"but got input of size",
    r"running_mean should contain",
    r"was expected to be embed_dim",
    r"expected .* to have shape",
    r"[Ss]hape mismatch",
    r"[Dd]imension out of range",
    r"not enough values to unpack",
    r"too many values to unpack",
    r"The expanded size of the tensor",
    r"Padding size should be less than",
    r"Input and output sizes should be greater than 0",
    r"inconsistent tensor size",
    r"Expected size for first two dimensions of batch2 tensor",
    r"input\.size\(-1\) must be equal to input_size",
    r"[Ww]rong (?:image |input )?(?:height|width|size|shape)",  # models asserting their input size
)))


def check_uncounted(ops: Sequence[OpTally]) -> list[Finding]:
    """A warning naming the ops of unknown cost; an info line for the elementwise ones (never a silent zero)."""
    findings = []
    unknown = [tally for tally in ops if tally.kind is OpKind.UNKNOWN]
    if unknown:
        findings.append(make_finding(
            "uncounted-ops",
            f"{len(unknown)} op(s) ran without a FLOP formula, so their cost is not in the totals: "
            f"{_listing(unknown)}.",
            details={"ops": {tally.op: tally.calls for tally in unknown}, "kind": OpKind.UNKNOWN.value},
        ))
    elementwise = [tally for tally in ops if tally.kind is OpKind.ELEMENTWISE]
    if elementwise:
        calls = sum(tally.calls for tally in elementwise)
        findings.append(make_finding(
            "uncounted-ops",
            f"{calls} call(s) of {len(elementwise)} elementwise/normalisation/pooling op(s) are O(elements) and "
            f"outside the MAC convention: {_listing(elementwise)}.",
            severity=Severity.INFO,
            fix=None,
            details={"ops": {tally.op: tally.calls for tally in elementwise}, "kind": OpKind.ELEMENTWISE.value},
        ))
    return findings


def _listing(ops: Sequence[OpTally]) -> str:
    ranked = sorted(ops, key=lambda tally: (-tally.calls, tally.op))
    shown = ", ".join(f"{tally.op} x{tally.calls}" for tally in ranked[:MAX_LISTED])
    return shown + (f" and {len(ranked) - MAX_LISTED} more" if len(ranked) > MAX_LISTED else "")


def is_shape_error(failure: ForwardFailure) -> bool:
    return bool(SHAPE_ERROR.search(failure.message))


def check_failure(failure: ForwardFailure, model_name: str, *, training_step: bool) -> list[Finding]:
    """The finding for a failed count: ``layer-shape-mismatch`` when an input did not fit a layer, the explain
    table's finding when it knows the error, ``training-step-failed`` for any other failure of a training step.

    An empty list means no finding explains a failed plain forward: the caller cannot count (exit 2).
    """
    if failure.phase == "forward" and is_shape_error(failure):
        return [_shape_mismatch(failure, model_name)]
    explained = _explain(failure)
    if explained is not None:
        return [explained]
    if not training_step:
        return []
    return [make_finding(
        "training-step-failed",
        f"The counted training step failed in {failure.phase}{where_failed(failure)}: "
        f"{failure.exc_type}: {failure.headline}",
        location=failure.layer.name if failure.layer else None,
        details={"phase": failure.phase, "exception": failure.exc_type, "error": failure.message},
    )]


def where_failed(failure: ForwardFailure) -> str:
    return f" in layer '{failure.layer.name}' ({failure.layer.type})" if failure.layer else ""


def _shape_mismatch(failure: ForwardFailure, model_name: str) -> Finding:
    layer = failure.layer
    if layer is None:
        message = f"The input does not fit {model_name}: {failure.exc_type}: {failure.headline}"
        return make_finding("layer-shape-mismatch", message, details={"error": failure.message})
    weight = f", weight {layer.weight_shape}" if layer.weight_shape is not None else ""
    got = " and ".join(str(shape) for shape in layer.input_shapes) or "no tensor"
    message = (f"Layer '{layer.name}' ({layer.type}{weight}) got input of shape {got}, which does not fit: "
               f"{failure.headline}")
    fix = (f"Make layer '{layer.name}' ({layer.type}) take what reaches it (its in_features / in_channels, or "
           "nn.LazyLinear / AdaptiveAvgPool2d before it), or feed the input shape the model was built for.")
    return make_finding("layer-shape-mismatch", message, fix=fix, location=layer.name,
                        details={**layer.to_dict(), "exception": failure.exc_type, "error": failure.message})


def _explain(failure: ForwardFailure) -> Finding | None:
    """The explain table's finding for the error, when that table exists and knows it."""
    try:
        from torchdoctor.explain.rules import explain_exception
    except ImportError:  # built by another part of torchdoctor; counting works without it
        return None
    return explain_exception(failure.exception if failure.exception is not None else failure.message)
