"""``ckpt inspect --model``: match keys to the model, load the weights into a copy, run one real training step."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from torchdoctor.ckpt.reader import CheckpointReading
from torchdoctor.codes import make_finding
from torchdoctor.examples import example_inputs, surrogate_loss
from torchdoctor.explain.rules import match_exception
from torchdoctor.report import Finding


def check_against_model(reading: CheckpointReading, model: Any,
                        input_shapes: Sequence[Sequence[int]] | None) -> tuple[list[Finding], dict[str, Any]]:
    """Key-match findings, then (when the weights can be materialised) a real load and training step."""
    from torchdoctor.ckpt.keys import apply_renames, check_match, match_to_model
    from torchdoctor.ckpt.structure import locate_weights

    weights = locate_weights(reading.tree)
    state_dict = dict(weights.state_dict) if weights else {}
    match = match_to_model(state_dict, model.state_dict())
    findings = check_match(match)
    facts: dict[str, Any] = {"class": type(model).__name__, "match": match.to_dict()}
    blocked = _why_not_loadable(reading, state_dict)
    if blocked:
        facts["training_step"] = {"skipped": blocked}
        return findings, facts
    drop = [m["checkpoint_key"] for m in match.shape_mismatches]
    tensors = apply_renames(materialize(reading, state_dict), match.renames, drop=drop)
    trial = copy.deepcopy(model)
    loaded = trial.load_state_dict(tensors, strict=False)
    facts["loaded"] = {"missing": list(loaded.missing_keys), "unexpected": list(loaded.unexpected_keys)}
    step_findings, facts["training_step"] = _training_step(trial, input_shapes)
    return findings + step_findings, facts


def _why_not_loadable(reading: CheckpointReading, state_dict: Mapping[str, Any]) -> str | None:
    if any(row["kind"] == "unsafe" for row in reading.globals):
        return "the pickle references unsafe globals; torchdoctor does not load its tensors"
    if not state_dict:
        return "no state dict found in the checkpoint"
    if any(getattr(r, "storage_key", None) not in reading.storages for r in state_dict.values() if hasattr(r, "shape")):
        return f"the {reading.format.value} file holds no tensor data for some keys (load it with its own API)"
    return None


def materialize(reading: CheckpointReading, state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Real CPU tensors for a state dict of TensorRecords, read through the streaming reader (no unpickling)."""
    import numpy as np
    import torch

    from torchdoctor.ckpt.tensor_data import iter_tensor_values

    full_keys = {id(record): key for key, record in reading.tensors.items()}
    tensors = {}
    for key, record in state_dict.items():
        if not hasattr(record, "shape"):
            continue
        values = list(iter_tensor_values(reading, full_keys[id(record)]))
        flat = np.concatenate(values) if values else np.zeros(0, dtype=np.uint8)
        tensor = torch.from_numpy(flat.astype(flat.dtype.newbyteorder("="), copy=True))
        if record.dtype == "bfloat16":  # numpy has no bfloat16: the reader yields its bits as uint16
            tensor = tensor.view(torch.bfloat16)
        tensors[key] = tensor.reshape(record.shape)
    return tensors


def _training_step(model: Any, input_shapes: Sequence[Sequence[int]] | None) -> tuple[list[Finding], dict[str, Any]]:
    from torchdoctor.step import run_training_step

    inputs = example_inputs(model, input_shapes)
    if inputs is None:
        return [], {"skipped": "cannot guess the input shape from the first layer: pass --input-shape"}
    outcome = run_training_step(model, (inputs, None), loss_fn=surrogate_loss)
    facts = {"input_shapes": [list(x.shape) for x in inputs], **outcome.to_dict()}
    if outcome.ok:
        return [], facts
    failure = outcome.failure
    where = f" at {failure.user_frame['file']}:{failure.user_frame['line']}" if failure.user_frame else ""
    explained = match_exception(failure.exception or f"{failure.exc_type}: {failure.message}", model_errors=True)
    extra = {"explained_by": explained.id} if explained else {}
    return [make_finding(
        "training-step-failed",
        f"With the checkpoint's weights, a training step failed in {failure.phase}{where}: "
        f"{failure.exc_type}: {failure.headline}" + (f". {explained.sentence}" if explained else ""),
        details={**failure.to_dict(), **extra},
    )], facts
