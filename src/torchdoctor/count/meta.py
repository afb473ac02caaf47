"""Build a model without allocating its weights: under ``torch.device("meta")``, or, when the constructor
needs real numbers, with parameters and buffers sent to the meta device as they are registered."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


def build_on_meta(build: Callable[[], T]) -> T:
    """``build()`` under ``torch.device("meta")``; if that raises, ``build()`` again under ``empty_weights``.

    The device context makes every tensor the constructor creates a meta tensor, so constructors that compute
    with tensors (torchvision's RegNet rounds its widths with ``.tolist()``) fail under it. The second try
    keeps those computations real and sends only parameters and buffers to the meta device.
    """
    import torch

    try:
        with torch.device("meta"):
            return build()
    except Exception as first:
        try:
            with empty_weights():
                return build()
        except Exception:
            raise first from None


@contextlib.contextmanager
def empty_weights() -> Iterator[None]:
    """Every parameter and buffer registered inside goes to the meta device as it is registered, so the
    initialisation after it (``reset_parameters``) touches nothing. Patches ``nn.Module.register_parameter``
    and ``register_buffer`` (as accelerate's ``init_empty_weights`` does) and restores them on exit."""
    import torch

    module = torch.nn.Module
    register_parameter, register_buffer = module.register_parameter, module.register_buffer

    def register_meta_parameter(self: Any, name: str, param: Any) -> None:
        register_parameter(self, name, param)
        if param is not None and not param.is_meta:
            real = self._parameters[name]
            self._parameters[name] = type(real)(real.to("meta"), requires_grad=real.requires_grad)

    def register_meta_buffer(self: Any, name: str, tensor: Any, persistent: bool = True) -> None:
        register_buffer(self, name, tensor, persistent)
        if tensor is not None and not tensor.is_meta:
            self._buffers[name] = self._buffers[name].to("meta")

    module.register_parameter, module.register_buffer = register_meta_parameter, register_meta_buffer
    try:
        yield
    finally:
        module.register_parameter, module.register_buffer = register_parameter, register_buffer
