"""Replay one recorded model call exactly (inputs, RNG, grad mode, autocast) and localise inside it."""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Iterator
from typing import Any

from torchdoctor.nan.frames import Site, describe_site, user_site
from torchdoctor.nan.locate import FACTORY_OPS, Found, ModuleTracker, ProducerWatch, dispatch_mode, op_name
from torchdoctor.nan.records import Producer, RootCall
from torchdoctor.nan.tensors import bad_kinds, dtype_name, leaves, shallow_tensors


def rng_state() -> dict[str, Any]:
    """CPU and (when initialised) CUDA generator states; cheap enough to take before every model call."""
    import torch

    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import torch

    torch.set_rng_state(state["cpu"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def replaying(call: RootCall) -> Iterator[None]:
    """Run a replay under the call's RNG, grad mode and autocast; leave RNG and buffers as they were."""
    current = rng_state()
    originals = _swap_buffers(call.module)
    set_rng_state(call.rng)
    try:
        with _call_modes(call):
            yield
    finally:
        _restore_buffers(originals)
        set_rng_state(current)


@contextlib.contextmanager
def _call_modes(call: RootCall) -> Iterator[None]:
    import torch

    with contextlib.ExitStack() as stack:
        if call.inference:
            stack.enter_context(torch.inference_mode())
        stack.enter_context(torch.set_grad_enabled(call.grad_enabled))
        for device, enabled, dtype in call.autocast:
            stack.enter_context(torch.autocast(device, dtype=dtype, enabled=enabled))
        yield


def _swap_buffers(module: Any) -> list[tuple[Any, str, Any]]:
    """Give the replay copies of every buffer (BatchNorm's running stats update in place).

    Copying back afterwards would not do: an in-place write bumps the buffer's version counter, and
    the user's pending backward (which saved running_mean/var) would then refuse to run.
    """
    originals = []
    for owner in module.modules():
        for name, buffer in owner._buffers.items():
            if buffer is not None:
                originals.append((owner, name, buffer))
                owner._buffers[name] = buffer.clone()
    return originals


def _restore_buffers(originals: list[tuple[Any, str, Any]]) -> None:
    for owner, name, buffer in originals:
        owner._buffers[name] = buffer


def replay_target(module: Any) -> Any:
    """The module to rerun: wrappers that spread or compile the work replay the model inside them.

    DistributedDataParallel would run collectives on one rank only (a hang) and arm its reducer for
    a backward that never comes; DataParallel runs replicas on threads the dispatch mode does not
    see; a torch.compile'd module would recompile under the mode.
    """
    from torch.nn import Module
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    if isinstance(module, (DataParallel, DistributedDataParallel)):
        return module.module
    inner = getattr(module, "_orig_mod", None)  # torch.compile's OptimizedModule
    return inner if isinstance(inner, Module) else module


def replay_forward(call: RootCall, kinds: tuple[str, ...], tracker: ModuleTracker) -> ProducerWatch:
    """Replay the call's forward watching every op; stops at the first producer of NaN/inf.

    Any watched kind counts, not only the one at the output: a float16 sum overflowing to inf,
    then inf - inf = NaN in the next layer, is the sum's fault.
    """
    watch = ProducerWatch(kinds, tracker, stop=True)
    with replaying(call), dispatch_mode(watch):
        try:
            output = replay_target(call.module)(*call.args, **call.kwargs)
        except Found:
            pass
        else:
            watch.output_kinds = bad_kinds(leaves(output), kinds)
    return watch


class OpTagger:
    """Dispatch handler: which op, module and line made each autograd node of a replayed forward.

    Autograd attaches ``grad_fn`` after the op returns, so an output is "settled" (its node looked
    up) when the next op consumes it, or at the end; only unconsumed outputs are held meanwhile.
    """

    def __init__(self, tracker: ModuleTracker | None = None) -> None:
        self.tracker = tracker
        self.pending: dict[int, tuple[Any, tuple[str, str | None, Site | None]]] = {}
        self.nodes: dict[Any, tuple[str, str | None, Site | None]] = {}

    def __call__(self, func: Any, args: tuple, kwargs: dict) -> Any:
        self.before(list(shallow_tensors(args, kwargs)))
        out = func(*args, **kwargs)
        if func.overloadpacket.__name__ not in FACTORY_OPS:
            self.after(func, out)
        return out

    def before(self, inputs: list[Any]) -> None:
        for tensor in inputs:
            self._settle(tensor)

    def after(self, func: Any, out: Any) -> None:
        module = self.tracker.current if self.tracker is not None else None
        info = (op_name(func), module, user_site())
        for tensor in shallow_tensors((out,)):
            self.pending[id(tensor)] = (tensor, info)

    def _settle(self, tensor: Any) -> None:
        entry = self.pending.pop(id(tensor), None)
        if entry is not None and entry[0].grad_fn is not None:
            self.nodes.setdefault(entry[0].grad_fn, entry[1])

    def finish(self) -> None:
        for tensor, _ in list(self.pending.values()):
            self._settle(tensor)


class NodeWatch:
    """Post-hooks on every autograd node: the first whose outgoing grads turn non-finite from finite ones."""

    def __init__(self, kinds: tuple[str, ...]) -> None:
        self.kinds = kinds
        self.first: tuple[Any, str, str] | None = None  # (node, kind, dtype of the bad grad)

    def attach(self, nodes: list[Any]) -> list[Any]:
        return [node.register_hook(functools.partial(self._after, node)) for node in nodes]

    def _after(self, node: Any, grad_inputs: tuple, grad_outputs: tuple) -> None:
        if self.first is not None:
            return
        outgoing = [g for g in grad_inputs if g is not None]
        produced = bad_kinds(outgoing, self.kinds)  # incoming grads are looked at only when this fails
        if produced and not bad_kinds([g for g in grad_outputs if g is not None], self.kinds):
            kind = "nan" if "nan" in produced else "inf"
            bad = next(g for g in outgoing if bad_kinds([g], (kind,)))
            self.first = (node, kind, dtype_name(bad))


def graph_nodes(roots: list[Any]) -> list[Any]:
    """Every node reachable from ``roots`` through ``next_functions``."""
    seen: dict[int, Any] = {}
    todo = [r for r in roots if r is not None]
    while todo:
        node = todo.pop()
        if id(node) in seen:
            continue
        seen[id(node)] = node
        todo.extend(n for n, _ in node.next_functions if n is not None)
    return list(seen.values())


def replay_backward(
    call: RootCall, kinds: tuple[str, ...], tracker: ModuleTracker, param_names: dict[int, str]
) -> tuple[Producer, str | None] | None:
    """Rerun forward and backward of ``call`` (grads go nowhere near ``.grad``); the producing node and param."""
    import torch

    tagger = OpTagger(tracker)
    target = replay_target(call.module)
    with replaying(call), dispatch_mode(tagger):
        outputs = target(*call.args, **call.kwargs)
    tagger.finish()
    replayed = zip(leaves(outputs), call.out_grads, strict=False)
    pairs = [(o, g) for o, g in replayed if g is not None and o.grad_fn is not None]
    params = [p for p in target.parameters() if p.requires_grad]
    if not pairs or not params:
        return None
    watch = NodeWatch(kinds)
    handles = watch.attach(graph_nodes([o.grad_fn for o, _ in pairs]))
    try:
        grads = torch.autograd.grad([o for o, _ in pairs], params, [g for _, g in pairs], allow_unused=True)
    finally:
        for handle in handles:
            handle.remove()
    if watch.first is None:
        return None
    node, kind, dtype = watch.first
    op, module, site = tagger.nodes.get(node) or (op_from_node(node), None, None)
    bad = {id(p) for p, g in zip(params, grads, strict=True) if g is not None and bad_kinds([g], kinds)}
    producer = Producer(kind, op, module, describe_site(site), dtype)
    return producer, nearest_param(node, bad, param_names)


def nearest_param(node: Any, bad: set[int], names: dict[int, str]) -> str | None:
    """The parameter with a non-finite grad closest behind ``node``: the first the bad grad reached."""
    todo, seen = [node], set()
    while todo:
        current = todo.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        variable = getattr(current, "variable", None)  # AccumulateGrad nodes carry their parameter
        if variable is not None and id(variable) in bad:
            return names.get(id(variable))
        todo.extend(n for n, _ in current.next_functions)
    return None


def op_from_node(node: Any) -> str:
    """``aten.sqrt`` from ``SqrtBackward0`` when no tag was recorded (a node made outside the replay)."""
    stem = re.sub(r"Backward\d*$", "", node.name())
    return "aten." + re.sub(r"(?<!^)(?=[A-Z])", "_", stem).lower()
