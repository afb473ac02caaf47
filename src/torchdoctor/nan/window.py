"""The loss window: from a training forward's end to its backward, every op is checked (the loss is a few ops)."""

from __future__ import annotations

from typing import Any

from torchdoctor.nan.frames import describe_site
from torchdoctor.nan.locate import MOVE_OPS, ProducerWatch, dispatch_mode, reaches, storage_of
from torchdoctor.nan.records import Producer
from torchdoctor.nan.replay import NodeWatch, OpTagger, op_from_node


class LossWindow:
    """A dispatch mode pushed after a training forward and popped at backward (or the next model call)."""

    def __init__(self, kinds: tuple[str, ...]) -> None:
        self.kinds = kinds
        self.watch: ProducerWatch | None = None
        self.tagger: OpTagger | None = None
        self.backward_first: tuple[Producer, Any] | None = None  # (producer, its autograd node)
        self._mode: Any = None
        self._node_watch: NodeWatch | None = None
        self._handles: list[Any] = []

    @property
    def on(self) -> bool:
        return self._mode is not None

    def open(self) -> None:
        """Start a fresh window (forgetting the last one's records)."""
        self.close()
        self.tagger = OpTagger()
        self.watch = ProducerWatch(self.kinds, tagger=self.tagger)
        self.backward_first = None
        self._push()

    def resume(self) -> None:
        """Re-enter the window a nested model call interrupted, keeping its records."""
        if self.watch is not None and self._mode is None:
            self._push()

    def close(self) -> None:
        """Leave the window; its records stay readable until the next ``open``."""
        if self._mode is not None:
            _remove_mode(self._mode)
            self._mode = None

    def forget(self) -> None:
        self.close()
        self.end_backward()
        self.watch = self.tagger = self.backward_first = None

    def watch_backward(self) -> None:
        """Hook the window's own autograd nodes: a loss op's backward (sqrt at 0) can make the first NaN."""
        if self.tagger is None:
            return
        self.tagger.finish()
        self._node_watch = NodeWatch(self.kinds)
        # The backward of a view or a move only moves grads: it cannot be where they turn non-finite.
        nodes = [node for node, (op, _, _) in self.tagger.nodes.items() if op[len("aten."):] not in MOVE_OPS]
        self._handles = self._node_watch.attach(nodes)

    def end_backward(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        watch, self._node_watch = self._node_watch, None
        if watch is not None and watch.first is not None and self.backward_first is None and self.tagger:
            node, kind, dtype = watch.first
            op, _, site = self.tagger.nodes.get(node) or (op_from_node(node), None, None)
            self.backward_first = Producer(kind, op, None, describe_site(site), dtype), node

    def _push(self) -> None:
        self._mode = dispatch_mode(self.watch)
        self._mode.__enter__()

    def producer_for(self, loss: Any) -> Producer | None:
        """The window's first producer whose value fed ``loss`` (a NaN computed for logging does not).

        Any kind counts, not only the loss's: ``log(0) = -inf`` then ``0 * -inf = NaN`` is the log's fault.
        """
        if self.watch is None or loss.grad_fn is None:
            return None
        for producer, output in self.watch.producers:
            if output.grad_fn is not None and reaches(loss.grad_fn, output.grad_fn):
                return producer
        return None

    def inflow(self, kind: str, model_storages: frozenset[int]) -> tuple[Producer, Any] | None:
        """The first op that read a non-finite tensor from outside the model (a target) into the loss."""
        if self.watch is None:
            return None
        for record, tensor in self.watch.inflows:
            if record.kind == kind and storage_of(tensor) not in model_storages:
                return record, tensor
        return None


def _remove_mode(mode: Any) -> None:
    """Pop ``mode`` off the dispatch-mode stack even when user code pushed another mode above it since."""
    from torch.utils._python_dispatch import (
        _get_current_dispatch_mode,
        _get_current_dispatch_mode_stack,
        _pop_mode,
        _push_mode,
    )

    if _get_current_dispatch_mode() is mode:
        mode.__exit__(None, None, None)
        return
    if not any(m is mode for m in _get_current_dispatch_mode_stack()):
        return
    above = []
    while (top := _pop_mode()) is not mode:
        above.append(top)
    for other in reversed(above):  # put the user's modes back in their order
        _push_mode(other)
