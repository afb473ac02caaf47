"""Which data-set samples each DataLoader batch holds, so a corrupt batch names its sample indices."""

from __future__ import annotations

import weakref
from collections import deque
from collections.abc import Callable
from typing import Any


class BatchLog:
    """Fed by wrappers around ``_BaseDataLoaderIter._next_index`` (indices, fetched ahead) and ``__next__``.

    Worker loaders fetch indices several batches ahead, so each iterator keeps a queue; a batch's
    indices are those at the queue's head when ``__next__`` yields it.
    """

    def __init__(self) -> None:
        self._queues: weakref.WeakKeyDictionary[Any, deque[Any]] = weakref.WeakKeyDictionary()
        self.last: Any = None  # the indices of the batch yielded most recently, by any loader
        self.yielded = 0

    def wrap_next_index(self, original: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def _next_index(iterator: Any) -> Any:
            indices = original(iterator)
            self._queues.setdefault(iterator, deque()).append(indices)
            return indices

        return _next_index

    def wrap_next(self, original: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def __next__(iterator: Any) -> Any:
            batch = original(iterator)
            queue = self._queues.get(iterator)
            self.last = queue.popleft() if queue else None
            self.yielded += 1
            return batch

        return __next__

    def sample_indices(self, rows: list[int], batch_size: int) -> list[int]:
        """Data-set indices of batch ``rows`` when the last batch came from an indexable data set."""
        indices = self.last
        if not isinstance(indices, (list, tuple)) or len(indices) != batch_size:
            return []
        if not all(isinstance(i, int) for i in indices):  # iterable data sets hand out None
            return []
        return [indices[row] for row in rows]
