"""Names of the user's modules and parameters, found from the models the run calls (its root modules)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any


class Names:
    """Module -> (root, dotted name), parameter -> (layer module, parameter name); refreshed when a root appears.

    A *layer* is a module that owns parameters directly (``recurse=False``): ``encoder.layers.0.linear1``.
    """

    def __init__(self, roots: Callable[[], Iterable[Any]]) -> None:
        self._roots = roots
        self.root_list: list[Any] = []
        self.modules: dict[Any, tuple[Any, str]] = {}
        self.params: dict[int, tuple[Any, str]] = {}  # id(param) -> (layer module, "weight")
        self.param_objects: list[Any] = []  # keeps every id in ``params`` alive and unique
        self.order: dict[Any, int] = {}  # layer -> first time it finished a forward (input -> output)
        self._registration: dict[Any, int] = {}

    def refresh(self) -> bool:
        """Walk roots not seen yet; True when any was new."""
        # a module already named under another root (model.encoder called on its own) is no new root
        roots = [unwrapped(root) for root in self._roots()]
        new = [root for root in dict.fromkeys(roots) if root not in self.root_list and root not in self.modules]
        for root in new:
            self.root_list.append(root)
            for name, module in root.named_modules(remove_duplicate=False):
                self.modules.setdefault(module, (root, name))
                self._registration.setdefault(module, len(self._registration))
                for pname, param in module.named_parameters(recurse=False):
                    if id(param) not in self.params:
                        self.params[id(param)] = (module, pname)
                        self.param_objects.append(param)
        return bool(new)

    def module(self, module: Any) -> tuple[Any, str] | None:
        found = self.modules.get(module)
        if found is None and self.refresh():
            found = self.modules.get(module)
        return found

    def layer_of(self, param: Any) -> tuple[Any, str] | None:
        found = self.params.get(id(param))
        if found is None and self.refresh():
            found = self.params.get(id(param))
        return found

    def is_root(self, module: Any) -> bool:
        return module in self.root_list or (self.refresh() and module in self.root_list)

    def saw_forward(self, module: Any) -> None:
        if module not in self.order:
            self.order[module] = len(self.order)

    def display(self, module: Any) -> str:
        """The dotted name; prefixed with the model's class when the run has several models (a GAN)."""
        root, name = self.modules[module]
        roots = [r for r in self.root_list if any(True for _ in r.parameters())]
        if len(roots) > 1:
            prefix = type(root).__name__
            if sum(type(r) is type(root) for r in roots) > 1:
                prefix += f"#{roots.index(root) + 1}"
            return f"{prefix}.{name}" if name else prefix
        return name or type(root).__name__

    def param_display(self, param: Any) -> str | None:
        found = self.layer_of(param)
        if found is None:
            return None
        layer, pname = found
        return f"{self.display(layer)}.{pname}"

    def sort_layers(self, layers: Iterable[Any]) -> list[Any]:
        """Model order, input -> output: when each finished its first forward; a layer whose forward never
        ran as a module (MultiheadAttention's out_proj) sits just after its nearest ancestor that did."""
        return sorted(layers, key=lambda m: (self._forward_rank(m), self._registration.get(m, 0)))

    def _forward_rank(self, module: Any) -> float:
        if module in self.order:
            return self.order[module]
        root, name = self.modules.get(module, (None, ""))
        while name:
            name = name.rpartition(".")[0]
            parent = root.get_submodule(name) if name else root
            if parent in self.order:
                return self.order[parent] - 0.5  # ancestors finish after their children
        return float(len(self.order))


def unwrapped(root: Any) -> Any:
    """The user's model inside DistributedDataParallel / DataParallel: its layers are named as the user named
    them (``0.weight``), not with the wrapper's ``module.`` prefix, and the wrapper's own forward is no layer."""
    from torch.nn import DataParallel
    from torch.nn.parallel import DistributedDataParallel

    while isinstance(root, (DistributedDataParallel, DataParallel)):
        root = root.module
    return root
