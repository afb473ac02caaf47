"""``count``: parameters, MACs and FLOPs of a model under one stated convention, as a ``Report``.

collect (params, a counted forward or training step, peer tools) -> check (uncounted ops, failures)
-> result dict and sections.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torchdoctor.batch import as_call
from torchdoctor.count.checks import check_failure, check_uncounted, where_failed
from torchdoctor.count.compare import collect_comparisons, parse_tools
from torchdoctor.count.compiled import eager_compiled, is_compiled
from torchdoctor.count.flops import ComputeFacts, collect_forward, collect_training_step, substitute_tensors
from torchdoctor.count.inputs import GUESSED_HINT, build_inputs, describe_inputs, parse_dtype, prepare_inputs
from torchdoctor.count.layers import layer_rows
from torchdoctor.count.ops import CONVENTION, OpKind
from torchdoctor.count.params import collect_params
from torchdoctor.count.sections import count_sections
from torchdoctor.errors import UsageError, UserCodeError
from torchdoctor.report import Finding, Report

DEFAULT_DEPTH = 2


@dataclass(frozen=True)
class MemoryOptions:
    """``--memory`` asked for: the step to simulate, and ``--fit``'s size in bytes."""

    plan: Any  # count.memory.MemoryPlan (imported lazily)
    device_bytes: int | None


def count(model: Any, inputs: Any = None, *, input_shapes: Sequence[Sequence[int]] | None = None,
          dtype: Any = None, depth: int = DEFAULT_DEPTH, train_step: bool = False, meta: bool = False,
          compare: str | Sequence[str] | None = None, device: str | None = None, memory: bool = False,
          optimizer: str | None = None, amp: str | None = None, fit: str | None = None) -> Report:
    """Count ``model`` on ``inputs`` (a tensor, a tuple of positional inputs or a dict of keyword inputs).

    Without ``inputs``, tensors of ``input_shapes`` are made, or one input is guessed from the first layer.
    ``meta`` counts on the meta device (no weights allocated; the caller's model is not touched),
    ``train_step`` measures a real training step on a copy, ``compare`` names peer tools (thop, torchinfo).
    Everything runs on the model's device, or on ``device`` (a copy of the model is moved there); the
    result's ``device`` and ``training_step.device`` say where.
    ``memory`` adds ``result.memory``: the bytes a training step with ``optimizer`` (sgd, momentum, adam, adamw)
    and ``amp`` (bf16, fp16) needs, from a fake-tensor step; ``fit`` (``"24GiB"``, ``"80GB"``, ``"cuda"``) judges
    whether it fits and which fixes make it fit.
    """
    return _count(model, inputs, input_shapes=input_shapes, dtype=dtype, depth=depth, train_step=train_step,
                  meta=meta, compare=compare, owned=False, device=device,
                  memory=_memory_options(memory, optimizer, amp, fit))


def count_spec(spec: str, *, input_shapes: Sequence[Sequence[int]] | None = None, input_spec: str | None = None,
               dtype: Any = None, depth: int = DEFAULT_DEPTH, train_step: bool = False, meta: bool = False,
               compare: str | Sequence[str] | None = None, device: str | None = None, memory: bool = False,
               optimizer: str | None = None, amp: str | None = None, fit: str | None = None) -> Report:
    """``count`` for a target spec (``torchvision.models:resnet50``, ``model.py:Net``); with ``meta`` the model
    is built under ``torch.device("meta")`` (see ``build_on_meta``), so a 7B-parameter config allocates nothing."""
    import torch

    from torchdoctor.count.meta import build_on_meta
    from torchdoctor.targets import resolve_target

    def build() -> Any:
        return resolve_target(spec, expect=(torch.nn.Module,))

    memory_options = _memory_options(memory, optimizer, amp, fit)  # bad options fail before the model is built
    model = build_on_meta(build) if meta else build()
    inputs = None
    if input_spec is not None:
        inputs = resolve_target(input_spec, expect=(torch.Tensor, tuple, list, dict))
    return _count(model, inputs, input_shapes=input_shapes, dtype=dtype, depth=depth, train_step=train_step,
                  meta=meta, compare=compare, owned=True, spec=spec, device=device, memory=memory_options)


def _count(model: Any, inputs: Any, **options: Any) -> Report:
    model = _original_module(model)
    with eager_compiled(model):
        return _count_model(model, inputs, **options)


def _count_model(model: Any, inputs: Any, *, input_shapes, dtype, depth: int, train_step: bool, meta: bool,
                 compare, owned: bool, spec: str | None = None, device: str | None = None,
                 memory: MemoryOptions | None = None) -> Report:
    dtype, tools = parse_dtype(dtype), parse_tools(compare)
    meta = _check_options(model, depth, train_step, meta, device)
    if not meta and device is not None and _usable_device(device) != _device_of(model):
        model, owned = (model if owned else copy.deepcopy(model)).to(device), True
    device = "meta" if meta else _device_of(model)
    guessed = inputs is None and not input_shapes
    if inputs is None:
        inputs = build_inputs(model, input_shapes, dtype=dtype, device=device)
    else:
        inputs = prepare_inputs(inputs, dtype=dtype, device=device)
    args, kwargs = as_call(inputs)
    params = collect_params(model, dtype)
    step = None
    if train_step:  # on a copy (the CLI's own model needs none): a training step changes the weights
        model = model if owned else copy.deepcopy(model)
        facts, step = collect_training_step(model.to(dtype) if dtype is not None else model, inputs, device)
    else:
        facts = collect_forward(model, args, kwargs, substitute_tensors(model, dtype=dtype, meta=meta))
    if guessed and facts.failure is not None:
        raise _guess_failed(facts.failure, model, describe_inputs(args, kwargs))
    findings = _judge(facts, model, train_step)
    result = {
        "model": type(model).__name__, "spec": spec, "device": device,
        "dtype": str(dtype).removeprefix("torch.") if dtype is not None else None,
        "mode": "train-step" if train_step else "forward",
        "inputs": describe_inputs(args, kwargs),
        "input_guessed": guessed,
        "convention": CONVENTION,
        "params": params.to_dict(),
        **_compute_result(facts, model, depth),
    }
    if step is not None:
        result["training_step"] = step.to_dict()
    if tools and facts.failure is None:
        result["compare"] = [row.to_dict(facts.macs) for row in
                             collect_comparisons(tools, model, args, kwargs, meta=meta)]
    if memory is None or facts.failure is not None:
        return Report("count", tuple(findings), result, count_sections(result, findings))
    return _with_memory(result, findings, memory, model, args, kwargs, dtype=dtype, depth=depth)


def _memory_options(memory: bool, optimizer: str | None, amp: str | None, fit: str | None) -> MemoryOptions | None:
    """The plan and the device size for ``--memory``; its options without it are usage errors."""
    from torchdoctor.count.memory import parse_plan
    from torchdoctor.count.memory_fit import parse_size

    if not memory:
        given = [name for name, value in (("--optimizer", optimizer), ("--amp", amp), ("--fit", fit)) if value]
        if given:
            raise UsageError(f"{', '.join(given)} needs --memory", hint="add --memory")
        return None
    return MemoryOptions(parse_plan(optimizer, amp), parse_size(fit) if fit is not None else None)


def _with_memory(result: dict[str, Any], findings: list[Finding], options: MemoryOptions, model: Any,
                 args: tuple[Any, ...], kwargs: Any, *, dtype: Any, depth: int) -> Report:
    from torchdoctor.count.memory_judge import collect_memory_result
    from torchdoctor.count.memory_sections import MEMORY_IDS, memory_section

    result["memory"], memory_findings = collect_memory_result(
        model, args, kwargs, plan=options.plan, dtype=dtype, device_bytes=options.device_bytes, depth=depth)
    findings = findings + memory_findings
    sections = count_sections(result, [finding for finding in findings if finding.id not in MEMORY_IDS])
    section = memory_section(result["memory"], findings, result.get("compare", ()))
    return Report("count", tuple(findings), result, (*sections, section))


def _guess_failed(failure: Any, model: Any, inputs: list[dict[str, Any]]) -> UsageError:
    """The model failed on an input torchdoctor guessed: the guess is wrong, not the model (exit 2)."""
    shapes = ", ".join(str(row["shape"]) for row in inputs)
    return UsageError(
        f"{type(model).__name__} did not accept the input torchdoctor guessed from its first layer ({shapes}): "
        f"{failure.exc_type}: {failure.headline}; nothing was counted",
        hint=GUESSED_HINT,
    )


def _original_module(model: Any) -> Any:
    """A ``torch.compile``d module is counted through the module it wraps (``_orig_mod``)."""
    if is_compiled(model):
        return model._orig_mod
    return model


def _is_on_meta(model: Any) -> bool:
    tensors = [*model.parameters(), *model.buffers()]
    return bool(tensors) and all(tensor.is_meta for tensor in tensors)


def _device_of(model: Any) -> str:
    first = next(iter([*model.parameters(), *model.buffers()]), None)
    return str(first.device) if first is not None else "cpu"


def _usable_device(device: str) -> str:
    """``device`` as torch names it (``cuda`` → ``cuda:0``); ``UsageError`` when it is malformed or absent here."""
    import torch

    try:
        where = torch.device(device)
        torch.empty(0, device=where)  # the cheapest way to ask the device itself whether it is usable
    except (RuntimeError, ValueError, AssertionError) as exc:
        raise UsageError(f"--device {device} cannot be used: {' '.join(str(exc).split())[:200]}",
                         hint="pass a device this machine has, e.g. --device cpu or --device cuda:0") from None
    if where.type != "cpu" and where.index is None:
        where = torch.device(where.type, getattr(torch, where.type).current_device())
    return str(where)


def _check_options(model: Any, depth: int, train_step: bool, meta: bool, device: str | None = None) -> bool:
    """Usage errors for impossible requests; returns whether to count on the meta device (a model already
    there is counted there)."""
    import torch

    if not isinstance(model, torch.nn.Module):
        raise UsageError(f"count needs a torch.nn.Module, got {type(model).__name__}")
    if depth < 0:
        raise UsageError(f"--depth must be 0 or more, got {depth}")
    meta = meta or _is_on_meta(model)
    if train_step and meta:
        raise UsageError("--train-step runs a real training step and cannot run on the meta device",
                         hint="drop --meta (or --train-step)")
    if meta and device is not None:
        raise UsageError("--device and --meta exclude each other: --meta counts on the meta device",
                         hint="drop --meta (or --device)")
    return meta


def _judge(facts: ComputeFacts, model: Any, train_step: bool) -> list[Finding]:
    findings = check_uncounted(facts.ops)
    if facts.failure is None:
        return findings
    failed = check_failure(facts.failure, type(model).__name__, training_step=train_step)
    if not failed:
        failure = facts.failure
        raise UserCodeError(
            f"{type(model).__name__}'s forward raised{where_failed(failure)}: {failure.exc_type}: {failure.headline}",
            hint="nothing was counted; rerun with --debug for the traceback",
        ) from failure.exception
    return failed + findings


def _compute_result(facts: ComputeFacts, model: Any, depth: int) -> dict[str, Any]:
    """The counted numbers; ``macs``/``flops`` are None (and the tables empty) when the model failed."""
    uncounted = [{"op": tally.op, "calls": tally.calls, "kind": tally.kind.value}
                 for tally in facts.of_kind(OpKind.UNKNOWN, OpKind.ELEMENTWISE)]
    free = {tally.op: tally.calls for tally in facts.of_kind(OpKind.FREE)}
    if facts.failure is not None:
        return {"macs": None, "flops": None, "phases": {}, "by_op": [], "depth": depth, "layers": [],
                "uncounted_ops": uncounted, "free_ops": free}
    by_op = [{"op": tally.op, "calls": tally.calls, "macs": tally.macs, "flops": tally.flops}
             for tally in facts.of_kind(OpKind.COUNTED)]
    return {
        "macs": facts.macs,
        "flops": facts.flops,
        "phases": facts.phases,
        "by_op": by_op,
        "depth": depth,
        "layers": layer_rows(model, facts.output_shapes, facts.module_counts, facts.macs, depth),
        "uncounted_ops": uncounted,
        "free_ops": free,
    }
