"""Turn command-line model specs and shapes into objects (torch imported only when a spec is given)."""

from __future__ import annotations

from typing import Any

import typer


def load_model(spec: str | None) -> Any:
    """``file.py:Name`` / ``pkg.mod:factory`` → an ``nn.Module``; None stays None."""
    if spec is None:
        return None
    import torch

    from torchdoctor.targets import resolve_target

    return resolve_target(spec, expect=(torch.nn.Module,))


def parse_shapes(values: list[str] | None) -> list[tuple[int, ...]] | None:
    """``["1,3,224,224", "1,16"]`` → shapes; a malformed one is a usage error (exit 2)."""
    if not values:
        return None
    shapes = []
    for value in values:
        try:
            shape = tuple(int(part) for part in value.replace("x", ",").split(",") if part.strip())
        except ValueError:
            raise typer.BadParameter(f"{value!r} is not a shape like 1,3,224,224", param_hint="--input-shape") from None
        if not shape or any(dim <= 0 for dim in shape):
            raise typer.BadParameter(f"{value!r} is not a shape like 1,3,224,224", param_hint="--input-shape")
        shapes.append(shape)
    return shapes
