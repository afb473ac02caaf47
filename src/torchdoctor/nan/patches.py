"""Install global hooks and attribute patches, and undo every one of them, in reverse, exactly once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_MISSING = object()


class Patches:
    """An undo list: each install records how to take itself back."""

    def __init__(self) -> None:
        self._undo: list[Callable[[], None]] = []

    def attribute(self, owner: Any, name: str, make: Callable[[Any], Any]) -> None:
        """Replace ``owner.name`` with ``make(original)``; restore the exact original object later."""
        original = owner.__dict__.get(name, _MISSING) if isinstance(owner, type) else getattr(owner, name)
        current = getattr(owner, name)
        setattr(owner, name, make(current))
        self._undo.append(lambda: _restore(owner, name, original))

    def handle(self, handle: Any, *also: dict) -> None:
        """A ``RemovableHandle``; ``also`` are dicts torch forgets to clean up with it."""

        def remove() -> None:
            handle.remove()
            for extra in also:
                extra.pop(handle.id, None)

        self._undo.append(remove)

    def undo(self) -> list[BaseException]:
        """Undo everything, newest first; keep going past failures and return them."""
        errors = []
        while self._undo:
            try:
                self._undo.pop()()
            except Exception as exc:  # one broken undo must not leave the rest installed
                errors.append(exc)
        return errors


def _restore(owner: Any, name: str, original: Any) -> None:
    if original is _MISSING:
        delattr(owner, name)
    else:
        setattr(owner, name, original)
