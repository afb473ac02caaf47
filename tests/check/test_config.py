"""Config loading: defaults, the items and their options, and errors that name the key and its line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from torchdoctor.check.config import ConfigError, load_config


def write(folder: Path, text: str, name: str = "pyproject.toml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def error_of(folder: Path, text: str, name: str = "pyproject.toml") -> str:
    write(folder, text, name)
    with pytest.raises(ConfigError) as caught:
        load_config(Path(name) if name != "pyproject.toml" else None, folder)
    return caught.value.message


def test_no_config_runs_every_env_check(tmp_path):
    config = load_config(cwd=tmp_path)
    assert config.path is None
    assert [(item.kind, item.options["checks"]) for item in config.items] == [("env", None)]


def test_pyproject_without_the_table_is_no_config(tmp_path):
    write(tmp_path, '[project]\nname = "x"\n')
    assert load_config(cwd=tmp_path).path is None


def test_items_and_options_are_read(tmp_path):
    (tmp_path / "w.pth").write_bytes(b"")
    (tmp_path / "models.py").write_text("")
    write(tmp_path, """
        [tool.torchdoctor]
        fail-on = "warning"
        ignore = ["unnormalized-input", { id = "module-prefix", reason = "we load with strict=False" }]
        [[tool.torchdoctor.ckpt]]
        path = "w.pth"
        model = "models.py:Net"
        [[tool.torchdoctor.count]]
        model = "models.py:Net"
        input-shape = [1, 3, 32, 32]
        max-params = 5_000_000
    """)
    config = load_config(cwd=tmp_path)
    assert config.strict and config.fail_on == "warning"
    assert [(rule.id, rule.reason) for rule in config.ignore] == [
        ("unnormalized-input", None), ("module-prefix", "we load with strict=False")]
    ckpt, count = config.items
    assert (ckpt.kind, ckpt.name, ckpt.file, ckpt.line) == ("ckpt", "w.pth", "w.pth", 4)
    where, _, name = ckpt.options["model"].rpartition(":")
    assert (Path(where).resolve(), name) == ((tmp_path / "models.py").resolve(), "Net")  # relative to the config
    assert count.options["input_shape"] == ((1, 3, 32, 32),)
    assert count.options["max_params"] == 5_000_000
    assert count.file == "models.py"


def test_watch_items_are_read_like_nan_hunt_items(tmp_path):
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "train.py").write_text("")
    write(tmp_path, """
        [tool.torchdoctor]
        [[tool.torchdoctor.watch]]
        script = "jobs/train.py"
        args = ["--epochs", "1"]
        steps = 50
        timeout = 120
    """)
    (watch,) = load_config(cwd=tmp_path).items
    assert (watch.kind, watch.name, watch.file, watch.line) == ("watch", "jobs/train.py", "jobs/train.py", 2)
    assert watch.options["args"] == ("--epochs", "1")
    assert (watch.options["steps"], watch.options["timeout"]) == (50, 120)


def test_standalone_file_has_no_prefix(tmp_path):
    write(tmp_path, """
        fail-on = "warning"
        [env]
        checks = ["threads"]
    """, "torchdoctor.toml")
    config = load_config(Path("torchdoctor.toml"), tmp_path)
    assert config.fail_on == "warning"
    assert config.items[0].options["checks"] == ("threads",)


@pytest.mark.parametrize(("text", "expected"), [
    ("""
        [tool.torchdoctor]
        fail-on = "error"
        colour = "red"
    """, "line 3: unknown key 'colour'"),
    ("""
        [tool.torchdoctor]
        fail-on = "sometimes"
    """, "line 2: 'fail-on' must be one of"),
    ("""
        [tool.torchdoctor]

        [tool.torchdoctor.env]
        checks = ["threads", "telepathy"]
    """, "line 4: unknown env check 'telepathy'"),
    ("""
        [tool.torchdoctor]
        [[tool.torchdoctor.nan-hunt]]
        script = "missing.py"
    """, "line 3: 'nan-hunt.script': no such file 'missing.py'"),
    ("""
        [tool.torchdoctor]
        [[tool.torchdoctor.count]]
        model = "x:Net"
        [[tool.torchdoctor.count]]
        model = "y:Net"
        max-macs = "lots"
    """, "line 6: 'count.max-macs' must be int, not str"),
    ("""
        [tool.torchdoctor]
        [[tool.torchdoctor.data]]
        batches = 3
    """, "line 2: 'data' needs 'loader'"),
    ("""
        [tool.torchdoctor]
        ignore = [
          "module-prefix",
          "not-a-real-id",
        ]
    """, "line 4: unknown finding id 'not-a-real-id'"),
    ("""
        [tool.torchdoctor]
        [tool.torchdoctor.widgets]
        size = 3
    """, "line 2: unknown key 'widgets'"),
    ("""
        [tool.torchdoctor]
        [[tool.torchdoctor.watch]]
        script = "missing.py"
    """, "line 3: 'watch.script': no such file 'missing.py'"),
    ("""
        [tool.torchdoctor]
        [[tool.torchdoctor.watch]]
        steps = 0
        script = "x.py"
    """, "line 3: 'watch.steps' must be at least 1"),
    ("""
        [tool.torchdoctor]
        [[tool.torchdoctor.watch]]
        script = "x.py"
        html = "out.html"
    """, "line 4: unknown key 'html' in watch"),
    ("""
        [tool.torchdoctor]
        [[tool.torchdoctor.data]]
        timeout = -5
        loader = "loaders.py:slow_loader"
    """, "line 3: 'data.timeout' must be a number of seconds >= 0"),
])
def test_config_errors_name_the_key_and_line(tmp_path, text, expected):
    message = error_of(tmp_path, text)
    assert message.startswith("pyproject.toml, line ")
    assert expected in message


def test_invalid_toml_is_a_config_error(tmp_path):
    assert "invalid TOML" in error_of(tmp_path, "fail-on = \n", "torchdoctor.toml")


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(Path("nope.toml"), tmp_path)


BROKEN = """
    fail-on = "sometimes"
    colour = "blue"

    [[ckpt]]
    path = "missing.pth"
    scan-values = "yes"

    [[count]]
    model = "models.py:Net"
    max-macs = "lots"
    """


def test_every_problem_is_reported_at_once_with_the_path_given(tmp_path):
    (tmp_path / "ci").mkdir()
    write(tmp_path / "ci", BROKEN, "checks.toml")
    with pytest.raises(ConfigError) as caught:
        load_config(Path("ci/checks.toml"), tmp_path)
    lines = caught.value.message.splitlines()
    assert [line.split(":", 1)[0] for line in lines] == [
        "ci/checks.toml, line 1", "ci/checks.toml, line 2", "ci/checks.toml, line 5", "ci/checks.toml, line 6",
        "ci/checks.toml, line 9", "ci/checks.toml, line 10"]
    assert "'fail-on' must be one of" in lines[0] and "unknown key 'colour'" in lines[1]
    assert "no such file 'missing.pth' (relative to ci/checks.toml)" in lines[2]
    assert "'ckpt.scan-values' must be bool" in lines[3] and "'count.max-macs' must be int" in lines[5]
    assert "no such file 'models.py'" in lines[4]
    assert "torchdoctor.toml" not in caught.value.message and caught.value.hint.startswith("6 problems")


def test_the_cli_prints_each_problem_on_its_own_line_and_exits_2(tmp_path, monkeypatch, cli):
    write(tmp_path, BROKEN, "checks.toml")
    monkeypatch.chdir(tmp_path)
    result = cli("check", "--config", "checks.toml")
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("torchdoctor: error: ")]
    assert len(errors) == 6 and all(line.startswith("torchdoctor: error: checks.toml, line ") for line in errors)
    assert "Traceback" not in result.stderr
