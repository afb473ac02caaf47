"""The package's import structure, read from the source with ``ast`` (nothing is imported).

Rules (CONTRIBUTING.md, "Import structure"):
- no cycles between files. Every ``import`` statement naming a torchdoctor module is an edge, wherever it
  stands: at module level, inside a function (a lazy import) or under ``if TYPE_CHECKING:``. A lazy import
  hides a cycle from the interpreter, not from the design, so it counts too.
- no file imports a ``_private`` name (or a ``_private`` module) of another package: ``torchdoctor.X...``
  may use ``torchdoctor.Y._z`` only when X == Y. What several packages share lives in a public module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def module_names(src: Path, package: str) -> dict[str, Path]:
    """``torchdoctor.ckpt.reader`` → its file, for every module and package under ``src/package``."""
    found = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imported(module: str, path: Path, package: str) -> list[tuple[str, str]]:
    """``(target module, imported name)`` for each torchdoctor import in ``path``; name is '' for ``import x``."""
    base = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, "") for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                anchor = base.split(".")[: len(base.split(".")) - node.level + 1]
                target = ".".join(anchor + ([node.module] if node.module else []))
            found += [(target, alias.name) for alias in node.names]
    return [(target, name) for target, name in found if target == package or target.startswith(package + ".")]


def import_graph(src: Path, package: str) -> dict[str, set[str]]:
    """Module → the modules it imports (``from pkg import mod`` names the module ``pkg.mod`` when it is one)."""
    modules = module_names(src, package)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for module, path in modules.items():
        for target, name in imported(module, path, package):
            full = f"{target}.{name}" if name else target
            while full not in modules:  # a name inside a module: the edge goes to the module
                full = full.rpartition(".")[0]
            if full != module:
                graph[module].add(full)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def private_imports(src: Path, package: str) -> list[str]:
    """``importer: target.name`` for each private name or module taken from another top-level package."""
    found = []
    for module, path in module_names(src, package).items():
        for target, name in imported(module, path, package):
            dotted = f"{target}.{name}" if name else target
            private = [part for part in dotted.split(".")[1:] if part.startswith("_") and not part.startswith("__")]
            if private and module.split(".")[:2] != dotted.split(".")[:2]:
                found.append(f"{module}: {dotted}")
    return found


def test_no_import_cycles_between_files():
    found = cycles(import_graph(SRC, "torchdoctor"))
    assert not found, f"import cycles (lazy imports count): {found}"


def test_no_module_imports_another_packages_private_names():
    found = private_imports(SRC, "torchdoctor")
    assert not found, f"private names imported across packages (make them public in one module): {found}"


# --- the checks themselves catch what they should ----------------------------------------------------------------


def write_package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


@pytest.mark.parametrize("b_imports_a", [
    "from pkg.a import thing\n",
    "def later():\n    from pkg import a\n",  # a lazy import still closes the cycle
    "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import thing\n",
])
def test_cycle_check_sees_every_kind_of_import(tmp_path, b_imports_a):
    src = write_package(tmp_path, {"__init__.py": "", "a.py": "import pkg.b\nthing = 1\n", "b.py": b_imports_a})
    assert cycles(import_graph(src, "pkg")) == [["pkg.a", "pkg.b"]]


def test_cycle_check_passes_a_chain(tmp_path):
    src = write_package(tmp_path, {"__init__.py": "", "a.py": "import pkg.b\n", "b.py": "from pkg import c\n",
                                   "c.py": "import os\n"})
    assert cycles(import_graph(src, "pkg")) == []


def test_private_check_allows_own_package_and_refuses_others(tmp_path):
    src = write_package(tmp_path, {
        "__init__.py": "", "x/__init__.py": "", "y/__init__.py": "",
        "x/_helpers.py": "def _h(): pass\ndef h(): pass\n",
        "x/user.py": "from pkg.x._helpers import _h\n",  # same package: fine
        "y/public.py": "from pkg.x._helpers import h\n",  # a private module of another package
        "y/grab.py": "def f():\n    from pkg.x.user import _h\n",
    })
    assert sorted(private_imports(src, "pkg")) == ["pkg.y.grab: pkg.x.user._h", "pkg.y.public: pkg.x._helpers.h"]
