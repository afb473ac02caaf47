"""Turn a detected non-finite value into a located event: replay, read the loss window, name the param."""

from __future__ import annotations

import cmath
from collections.abc import Callable
from typing import Any

from torchdoctor.nan.containers import module_paths
from torchdoctor.nan.counting import HAND_UPDATE
from torchdoctor.nan.frames import describe_site, user_source
from torchdoctor.nan.locate import ModuleTracker, storage_of
from torchdoctor.nan.records import NonFinite, Producer, RootCall
from torchdoctor.nan.replay import nearest_param, replay_backward, replay_forward
from torchdoctor.nan.tensors import INF, NAN, bad_rows, checkable, dtype_name, has_kind, leaves, worst_kind


class Locator:
    """Localisation for one ``Watcher`` (its roots, calls, loss window and batch log); each method returns an event."""

    def __init__(self, watcher: Any) -> None:
        self.watcher = watcher

    def guarded(self, locate: Callable[..., NonFinite | None], *args: Any) -> NonFinite | None:
        """``locate(*args)``; if localisation itself breaks, still report where it was detected."""
        try:
            return locate(*args)
        except Exception as exc:
            phase = locate.__name__  # forward, loss or backward: the method names are the phases
            kind = args[1] if phase != "backward" else NAN
            note = f"localisation failed: {type(exc).__name__}: {exc}"
            return NonFinite(kind, phase, self.watcher.steps, model=self._model_name(), note=note)

    # --- forward -----------------------------------------------------------------------------

    def forward(self, call: RootCall, kind: str) -> NonFinite | None:
        """Input (the batch held it), the first producing op (replay), or None for a deliberate -inf."""
        inputs = [t for t in leaves((call.args, call.kwargs)) if checkable(t)]
        in_inputs = any(has_kind(t, kind) for t in inputs)
        if in_inputs and kind == NAN:
            return self._input_event(call, inputs, kind)
        watch = self._replay(call, lambda tracker: replay_forward(call, self.watcher.kinds, tracker))
        extra = {"model": self._model_name(call.module), "no_grad": not call.grad_enabled or call.inference}
        if watch.producers:
            tainted = any(worst_kind([t], self.watcher.kinds) for t in inputs)
            note = "the batch itself held inf, which this op turned into NaN" if tainted else None
            return NonFinite.from_producer(watch.producers[0][0], "forward", call.step, note=note, **extra)
        outside = self._outside_inflow(call, watch.inflows, inputs)
        if outside is not None:
            return outside
        if in_inputs:
            return self._input_event(call, inputs, kind)
        missed = watch.output_kinds is not None and kind not in watch.output_kinds
        if kind == INF and not missed:
            return None  # every inf came from an explicit -inf/inf argument (a mask): on purpose
        # Keep what the cheap watch saw (which module's output, in which model, called where); say the replay missed.
        seen = self._seen_module(call)
        what = "NaN" if kind == NAN else "inf"
        model = _short_name(extra["model"])
        where = model if seen is None else f"module '{seen[0]}' ({type(seen[1]).__name__}, in {model})"
        note = (f"the output of {where} held {what} when it ran, but the exact replay did not reproduce it (a fault "
                "that fires once, a non-deterministic forward, or inputs changed in place), so the op is not known")
        return NonFinite(kind, "forward", call.step, module=seen[0] if seen else None, source=describe_site(call.site),
                         note=note, replay="missed" if missed else None, **extra)

    def _seen_module(self, call: RootCall) -> tuple[str, Any] | None:
        """The first submodule (so the deepest) whose output the watch saw go non-finite during ``call``."""
        paths = module_paths(self.watcher.container_of(call.module))
        inf_counts = INF in self.watcher.kinds
        for total, module in call.seen_outputs:
            value = complex(total.item())
            if (cmath.isnan(value) or (inf_counts and cmath.isinf(value))) and paths.get(id(module)):
                return paths[id(module)], module
        return None

    def _outside_inflow(self, call: RootCall, inflows: list, inputs: list[Any]) -> NonFinite | None:
        """A NaN/inf no op made: a parameter, buffer or constant already held it; named where first read."""
        batch = {storage_of(t) for t in inputs}
        container = self.watcher.container_of(call.module)
        owners = {storage_of(t): name for name, t in (*container.named_parameters(), *container.named_buffers())}
        for record, tensor in inflows:
            storage = storage_of(tensor)
            if storage in batch:
                continue
            param = owners.get(storage)
            note = (f"'{param}' already held {record.kind} before this forward" if param
                    else "a non-finite constant entered here")
            return NonFinite.from_producer(record, "forward", call.step, param=param, note=note,
                                           model=self._model_name(call.module),
                                           no_grad=not call.grad_enabled or call.inference)
        return None

    def _input_event(self, call: RootCall, inputs: list[Any], kind: str) -> NonFinite:
        tensor = next(t for t in inputs if has_kind(t, kind))
        samples, note = self._samples(tensor, kind)
        return NonFinite(
            kind, "input", call.step, source=describe_site(call.site), dtype=dtype_name(tensor),
            model=self._model_name(call.module), no_grad=not call.grad_enabled or call.inference,
            sample_index=samples[0] if samples else None, sample_indices=tuple(samples), note=note,
        )

    def _samples(self, tensor: Any, kind: str) -> tuple[list[int], str | None]:
        """Data-set indices of the bad rows, or a note naming the rows of the batch when unknown."""
        rows = bad_rows(tensor, kind)
        samples = self.watcher.batches.sample_indices(rows, tensor.shape[0]) if tensor.dim() else []
        return samples, None if samples or not rows else f"rows {rows} of the batch"

    # --- loss ----------------------------------------------------------------------------------

    def loss(self, loss: Any, kind: str) -> NonFinite:
        """An inf the model output held after all, else the loss window's producer or a non-finite target."""
        watcher = self.watcher
        for call in list(watcher.suspects):
            event = self.forward(call, INF)
            if event is not None:
                return event
        producer = watcher.window.producer_for(loss)
        if producer is not None:
            return NonFinite.from_producer(producer, "loss", watcher.steps, model=self._model_name())
        storages = frozenset().union(*(call.output_storages for call in watcher.calls))
        inflow = watcher.window.inflow(kind, storages)
        if inflow is not None:
            return self._target_event(kind, *inflow)
        note = "no op between the model's output and backward produced it (a loss computed without a model call?)"
        return NonFinite(kind, "loss", watcher.steps, source=user_source(), model=self._model_name(), note=note)

    def _target_event(self, kind: str, record: Producer, tensor: Any) -> NonFinite:
        """A non-finite tensor entered the loss from outside the model: the targets, as a rule."""
        samples, rows = self._samples(tensor, kind)
        note = f"a non-finite tensor (not the model's output) entered the loss at {record.op}: check the targets"
        return NonFinite(
            kind, "input", self.watcher.steps, op=record.op, source=record.source, dtype=record.dtype,
            model=self._model_name(), sample_index=samples[0] if samples else None,
            sample_indices=tuple(samples), note=note + (f"; {rows}" if rows else ""),
        )

    # --- backward / optimizer -----------------------------------------------------------------

    def backward(self, optimizer: Any, bad: list[Any]) -> NonFinite:
        """Replay this step's training forwards and backwards; the first node that made the grads non-finite."""
        watcher = self.watcher
        names = self.param_names()
        bad_ids = {id(p) for p in bad}
        if watcher.window.backward_first is not None:  # the loss's own backward ran first and made it
            producer, node = watcher.window.backward_first
            param = nearest_param(node, bad_ids, names) or self._param_name(bad[0], optimizer, names)
            return NonFinite.from_producer(producer, "backward", watcher.steps, param=param, model=self._model_name())
        for call in list(watcher.calls):
            found = self._replay(call, lambda tracker, c=call: replay_backward(c, watcher.kinds, tracker, names))
            if found is not None:
                producer, param = found
                return NonFinite.from_producer(
                    producer, "backward", watcher.steps, param=param or self._param_name(bad[0], optimizer, names),
                    model=self._model_name(call.module),
                )
        kind = worst_kind([p.grad for p in bad], watcher.kinds) or NAN
        name = self._param_name(bad[0], optimizer, names)
        seen = "NaN" if kind == NAN else "inf"
        note = (f"the gradient of '{name}' held {seen}, but the replay did not reproduce it (a fault that fires "
                "once, no recorded model call, or grads from outside the model)")
        return NonFinite(kind, "backward", watcher.steps, module=_owner(name), param=name,
                         dtype=dtype_name(bad[0].grad), model=self._model_name(), note=note,
                         replay="missed" if watcher.calls else None)

    def optimizer(self, optimizer: Any, bad: list[Any], step: int) -> NonFinite:
        """A weight turned non-finite in ``optimizer.step()``, or (``optimizer`` None) in a hand-written update."""
        kind = worst_kind(bad, self.watcher.kinds) or NAN
        name = self._param_name(bad[0], optimizer, self.param_names())
        if optimizer is None:  # found before the next model call: the update's own line is not on the stack
            op, source = HAND_UPDATE, None
        else:
            op, source = f"{type(optimizer).__name__}.step", user_source()
        return NonFinite(kind, "optimizer", step, module=_owner(name), op=op,
                         source=source, dtype=dtype_name(bad[0]), param=name, model=self._model_name())

    # --- helpers -------------------------------------------------------------------------------

    def _replay(self, call: RootCall, run: Callable[[ModuleTracker], Any]) -> Any:
        """Run ``run`` with the global hooks naming modules for it (and doing nothing else)."""
        watcher = self.watcher
        tracker = ModuleTracker(module_paths(watcher.container_of(call.module)))
        watcher.tracker = tracker
        try:
            return run(tracker)
        finally:
            watcher.tracker = None

    def _roots(self) -> list[Any]:
        model = self.watcher.model
        return ([model] if model is not None else []) + list(self.watcher.roots.values())

    def param_names(self) -> dict[int, str]:
        """id(parameter) -> its name in the first model holding it (every model a root call was found in)."""
        names: dict[int, str] = {}
        for root in self.watcher.containers():
            for name, param in root.named_parameters():
                names.setdefault(id(param), name)
        return names

    def _param_name(self, param: Any, optimizer: Any, names: dict[int, str]) -> str:
        if id(param) in names:
            return names[id(param)]
        for g, group in enumerate(optimizer.param_groups if optimizer is not None else ()):  # of no model seen
            for i, candidate in enumerate(group["params"]):
                if candidate is param:
                    return f"param_groups[{g}].params[{i}]"
        return "?"

    def _model_name(self, module: Any = None) -> str | None:
        roots = self._roots()
        module = module if module is not None else (roots[0] if roots else None)
        return None if module is None else f"{type(module).__module__}.{type(module).__qualname__}"


def _short_name(qualified: str | None) -> str:
    """``model.GPT`` -> ``GPT``: the class a user recognises."""
    return (qualified or "the model").rpartition(".")[2]


def _owner(param_name: str) -> str | None:
    """``fc`` for ``fc.weight``: the module holding a parameter."""
    return param_name.rpartition(".")[0] or None

