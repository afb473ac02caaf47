"""resolve_target: real files under fixtures/targets/ (and tmp_path copies), no mocks."""

from __future__ import annotations

import collections
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from torchdoctor.errors import TargetError, TorchdoctorError, UserCodeError
from torchdoctor.targets import resolve_target, split_target_spec

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "targets"
MODULE = (torch.nn.Module,)


def _spec(file: str, name: str) -> str:
    return f"{FIXTURES / file}:{name}"


def _line_of(path: Path, marker: str) -> int:
    """Line numbers are looked up, not hard-coded, so editing a fixture cannot silently break a test."""
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if marker in line:
            return number
    raise AssertionError(f"{marker!r} not in {path}")


def _user_error(spec: str, **kwargs: object) -> UserCodeError:
    with pytest.raises(UserCodeError) as info:
        resolve_target(spec, **kwargs)
    assert "\n" not in info.value.message
    return info.value


# --- split_target_spec ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("model.py:Net", ("model.py", "Net")),
        ("pkg.mod:Outer.attr", ("pkg.mod", "Outer.attr")),
        ("C:\\x\\m.py:Net", ("C:\\x\\m.py", "Net")),
        ("/abs/dir/m.py:make", ("/abs/dir/m.py", "make")),
    ],
)
def test_split_target_spec(spec: str, expected: tuple[str, str]) -> None:
    assert split_target_spec(spec) == expected


@pytest.mark.parametrize("spec", ["model.py", ":Net", "model.py:", "C:\\x\\m.py", "m.py:1abc", "m.py:a..b"])
def test_split_target_spec_rejects_malformed(spec: str) -> None:
    with pytest.raises(TargetError) as info:
        split_target_spec(spec)
    assert info.value.message == (
        f"invalid target spec {spec!r}: expected 'file.py:name' or 'package.module:name'"
    )


def test_resolve_rejects_spec_without_colon() -> None:
    with pytest.raises(TargetError, match="invalid target spec 'x'"):
        resolve_target("x")


# --- file targets: success ------------------------------------------------------------------------------


def test_class_is_instantiated() -> None:
    net = resolve_target(_spec("models.py", "Net"), expect=MODULE)
    assert type(net).__name__ == "Net"
    assert net(torch.zeros(1, 4)).shape == (1, 2)


def test_factory_is_called() -> None:
    net = resolve_target(_spec("models.py", "make_net"), expect=MODULE)
    assert type(net).__name__ == "Net"


def test_instance_is_returned_as_is() -> None:
    first = resolve_target(_spec("models.py", "net"), expect=MODULE)
    assert resolve_target(_spec("models.py", "net"), expect=MODULE) is first
    # Without expect a module instance is callable but not a factory: it must not be called.
    assert resolve_target(_spec("models.py", "net")) is first


def test_dotted_name() -> None:
    inner = resolve_target(_spec("models.py", "Outer.Inner"), expect=MODULE)
    assert type(inner).__qualname__ == "Outer.Inner"


def test_without_expect_plain_objects_and_factories() -> None:
    assert resolve_target(_spec("models.py", "answer")) == 42
    assert resolve_target(_spec("models.py", "make_int")) == 3


def test_one_file_is_one_module() -> None:
    # A model and its optimizer resolved from one file must share its classes.
    a = resolve_target(_spec("models.py", "Net"))
    b = resolve_target(_spec("models.py", "make_net"))
    assert type(a) is type(b)
    assert sys.modules[type(a).__module__].__file__ == str(FIXTURES / "models.py")


def test_relative_path_from_cwd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(FIXTURES.parent)
    net = resolve_target("targets/models.py:Net", expect=MODULE)
    assert type(net).__name__ == "Net"


def test_sibling_import_and_sys_path_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("uses_sibling.py", "helper_mod.py"):
        shutil.copy(FIXTURES / name, tmp_path / name)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "helper_mod", raising=False)
    spec = f"{tmp_path / 'uses_sibling.py'}:make_layer"
    layer = resolve_target(spec, expect=MODULE)
    resolve_target(spec, expect=MODULE)
    assert layer.in_features == 8
    assert sys.path[0] == str(tmp_path.resolve())
    assert sys.path.count(str(tmp_path.resolve())) == 1


def test_main_guard_does_not_run() -> None:
    # The fixture raises SystemExit("ran main") under its guard; that would surface as UserCodeError.
    model = resolve_target(_spec("main_guard.py", "model"), expect=MODULE)
    assert isinstance(model, torch.nn.Linear)
    path = str(FIXTURES / "main_guard.py")
    names = [n for n, m in sys.modules.items() if getattr(m, "__file__", None) == path]
    assert len(names) == 1
    assert names[0] != "__main__"


# --- file targets: errors in the spec -------------------------------------------------------------------


def test_expect_rejects_factory_result() -> None:
    spec = _spec("models.py", "make_int")
    with pytest.raises(TargetError) as info:
        resolve_target(spec, expect=MODULE)
    assert info.value.message == f"{spec} returned int, expected a torch.nn.Module"
    assert not isinstance(info.value, UserCodeError)


def test_expect_rejects_plain_object_and_none() -> None:
    with pytest.raises(TargetError, match=r"models.py:answer is int, expected a torch.nn.Module$"):
        resolve_target(_spec("models.py", "answer"), expect=MODULE)
    with pytest.raises(TargetError, match=r"make_none returned None, expected a torch.nn.Module$"):
        resolve_target(_spec("models.py", "make_none"), expect=MODULE)


def test_expect_lists_every_accepted_type() -> None:
    with pytest.raises(TargetError, match="expected a torch.nn.Module or a torch.optim.Optimizer$"):
        resolve_target(_spec("models.py", "answer"), expect=(torch.nn.Module, torch.optim.Optimizer))


def test_factory_needing_arguments() -> None:
    spec = _spec("models.py", "make_sized")
    with pytest.raises(TargetError) as info:
        resolve_target(spec, expect=MODULE)
    assert info.value.message.startswith(f"{spec} needs arguments (size)")
    assert not isinstance(info.value, UserCodeError)
    assert info.value.hint


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.py"
    with pytest.raises(TargetError) as info:
        resolve_target(f"{missing}:Net")
    assert info.value.message == f"no such file: '{missing}'"


def test_missing_name_suggests_close_ones() -> None:
    where = str(FIXTURES / "models.py")
    with pytest.raises(TargetError) as info:
        resolve_target(f"{where}:Nett")
    assert info.value.message == f"'{where}' has no attribute 'Nett'"
    assert "'Net'" in info.value.hint


def test_missing_nested_name() -> None:
    where = str(FIXTURES / "models.py")
    with pytest.raises(TargetError) as info:
        resolve_target(f"{where}:Outer.Innr")
    assert info.value.message == f"'{where}:Outer' has no attribute 'Innr'"
    assert "'Inner'" in info.value.hint


def test_non_py_file_is_treated_as_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.txt").write_text("x = 1\n")
    with pytest.raises(TargetError) as info:
        resolve_target("model.txt:x")
    assert info.value.message == "cannot import module 'model.txt': No module named 'model'"
    assert "not a .py file" in info.value.hint


# --- file targets: errors in the user's code ------------------------------------------------------------


def test_exception_at_import_time() -> None:
    path = FIXTURES / "broken_import.py"
    error = _user_error(f"{path}:model")
    line = _line_of(path, "marker: broken_import")
    assert error.message.endswith(f"broken_import.py:{line}: ValueError: boom")
    assert isinstance(error.__cause__, ValueError)
    assert not [m for m in sys.modules.values() if getattr(m, "__file__", None) == str(path)]


def test_syntax_error_uses_its_location(tmp_path: Path) -> None:
    path = tmp_path / "syntax_error.py"
    path.write_text('"""Not valid Python."""\n\ndef broken(:\n    pass\n')
    error = _user_error(f"{path}:broken")
    assert "syntax_error.py:3: SyntaxError: " in error.message
    assert isinstance(error.__cause__, SyntaxError)


def test_missing_sibling_import_points_at_the_import_line() -> None:
    path = FIXTURES / "broken_sibling_import.py"
    error = _user_error(f"{path}:model")
    line = _line_of(path, "marker: broken_sibling_import")
    assert error.message.endswith(
        f"broken_sibling_import.py:{line}: ModuleNotFoundError: No module named 'no_such_sibling_module'"
    )


def test_exit_at_import_time() -> None:
    error = _user_error(_spec("exits_on_import.py", "model"))
    assert "exits_on_import.py:5: SystemExit: usage: train.py --epochs N" in error.message
    assert "__main__" in error.hint


@pytest.mark.parametrize(
    ("name", "marker", "tail"),
    [
        ("BadInit", "marker: BadInit", "RuntimeError: bad init"),
        ("make_failing", "marker: make_failing", "KeyError: 'missing'"),
        ("make_type_error", "marker: make_type_error", "TypeError: object of type 'int' has no len()"),
    ],
)
def test_exception_inside_class_or_factory(name: str, marker: str, tail: str) -> None:
    error = _user_error(_spec("models.py", name), expect=MODULE)
    line = _line_of(FIXTURES / "models.py", marker)
    assert error.message.endswith(f"models.py:{line}: {tail}")
    assert error.__cause__ is not None


# --- package.module targets -----------------------------------------------------------------------------


def test_module_class_without_expect() -> None:
    result = resolve_target("collections:OrderedDict")
    assert isinstance(result, collections.OrderedDict)
    assert result == collections.OrderedDict()


def test_module_class_with_expect() -> None:
    assert isinstance(resolve_target("torch.nn:Identity", expect=MODULE), torch.nn.Identity)


def test_module_class_needing_arguments() -> None:
    with pytest.raises(TargetError) as info:
        resolve_target("torch.nn:Linear", expect=MODULE)
    assert info.value.message.startswith("torch.nn:Linear needs arguments (in_features, out_features)")


def test_module_not_importable() -> None:
    with pytest.raises(TargetError) as info:
        resolve_target("no_such_pkg_td.sub:thing")
    assert info.value.message == "cannot import module 'no_such_pkg_td.sub': No module named 'no_such_pkg_td'"
    assert not isinstance(info.value, UserCodeError)


def test_module_missing_name() -> None:
    with pytest.raises(TargetError) as info:
        resolve_target("collections:OrderdDict")
    assert info.value.message == "'collections' has no attribute 'OrderdDict'"
    assert "'OrderedDict'" in info.value.hint


def test_path_without_py_suffix_is_not_a_module() -> None:
    with pytest.raises(TargetError, match="cannot import module 'some/dir': not a module name"):
        resolve_target("some/dir:Net")


def test_module_with_broken_dependency(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "td_broken_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "mod.py").write_text('"""Needs a missing dependency."""\n\nimport td_missing_dependency\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    error = _user_error("td_broken_pkg.mod:thing")
    assert error.message.endswith("mod.py:3: ModuleNotFoundError: No module named 'td_missing_dependency'")
    assert "td_broken_pkg.mod" not in sys.modules


def test_package_in_cwd_is_importable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "td_cwd_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "models.py").write_text("import torch\n\n\ndef make():\n    return torch.nn.Identity()\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    assert isinstance(resolve_target("td_cwd_pkg.models:make", expect=MODULE), torch.nn.Identity)


# --- contract -------------------------------------------------------------------------------------------


def test_errors_exit_with_code_2() -> None:
    assert issubclass(UserCodeError, TargetError)
    assert TargetError("x").exit_code == TorchdoctorError.exit_code == 2


def test_importing_targets_does_not_import_torch() -> None:
    code = "import sys, torchdoctor.targets; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_a_scripts_main_is_named_as_no_model_factory_not_as_an_unguarded_module(monkeypatch, capsys) -> None:
    monkeypatch.setattr(sys, "argv", ["torchdoctor", "count", "guarded_train.py:main"])  # what main() will parse
    error = _user_error(_spec("guarded_train.py", "main"))
    assert "named a function that is not a model factory" in error.message and "code 2" in error.message
    assert "__main__" not in error.hint and "main()" in error.hint
    assert "the following arguments are required: --data" in capsys.readouterr().err  # argparse really ran
    with pytest.raises(TargetError) as caught:  # a function that runs and returns None: no factory either
        resolve_target(_spec("guarded_train.py", "evaluate"), expect=MODULE)
    assert "returned None" in caught.value.message and "main()" in caught.value.hint
