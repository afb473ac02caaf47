"""Names of the user's modules and parameters: paths in the outermost models holding the modules the run calls."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from torchdoctor.nan.containers import unwrap


class Names:
    """Module -> (container, dotted path), parameter -> (layer module, parameter name); refreshed when a root appears.

    A *root* is a module the training loop calls; its *container* is the outermost module holding it that
    ``place`` finds (the LightningModule whose ``training_step`` calls ``self.body``), so names are the ones
    ``model.named_modules()`` gives for the object the user holds.

    A *layer* is a module that owns parameters directly (``recurse=False``): ``encoder.layers.0.linear1``.
    """

    def __init__(self, roots: Callable[[], Iterable[Any]],
                 place: Callable[[Any], tuple[Any, str]] = lambda root: (root, "")) -> None:
        self._roots = roots
        self._place = place  # a root called -> (the outermost module holding it, its path there)
        self.root_list: list[Any] = []  # the roots called, less those inside another one called before
        self.containers: list[Any] = []  # what names start from: body.3, not 3, when training_step calls self.body
        self.modules: dict[Any, tuple[Any, str]] = {}  # module -> (its container, its path there)
        self._under_roots: set[Any] = set()  # every module inside a root called
        self.params: dict[int, tuple[Any, str]] = {}  # id(param) -> (layer module, "weight")
        self.param_objects: list[Any] = []  # keeps every id in ``params`` alive and unique
        self.order: dict[Any, int] = {}  # layer -> first time it finished a forward (input -> output)
        self._registration: dict[Any, int] = {}

    def refresh(self) -> bool:
        """Walk roots not seen yet; True when any was new."""
        # a module inside another root (model.encoder called on its own after model) is no new root;
        # wrapped roots (DDP, DataParallel, torch.compile, Lightning's strategy wrapper) are named as the model
        roots = [unwrap(root) for root in self._roots()]
        new = [root for root in dict.fromkeys(roots) if root not in self.root_list and root not in self._under_roots]
        for root in new:
            self.root_list.append(root)
            self._under_roots.update(root.modules())
            container, path = self._place(root)
            if container not in self.containers:
                self._walk(container)
            self.modules.setdefault(root, (container, path))  # a DDP root: named as the model it wraps
        return bool(new)

    def _walk(self, container: Any) -> None:
        """Name every module in ``container``; containers found before inside it are renamed from it."""
        inside = set(container.modules())
        renamed = {c for c in self.containers if c in inside}
        self.containers = [c for c in self.containers if c not in renamed] + [container]
        for name, module in container.named_modules(remove_duplicate=False):
            if module not in self.modules or self.modules[module][0] in renamed:
                self.modules[module] = (container, name)
            self._registration.setdefault(module, len(self._registration))
            for pname, param in module.named_parameters(recurse=False):
                if id(param) not in self.params:
                    self.params[id(param)] = (module, pname)
                    self.param_objects.append(param)

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
        roots = [r for r in self.containers if any(True for _ in r.parameters())]
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

