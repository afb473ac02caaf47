"""`import torchdoctor`, `--help` and `--version` must never import torch (it costs seconds)."""

import subprocess
import sys

import pytest

from tests.conftest import run_torchdoctor


def test_import_torchdoctor_does_not_import_torch():
    code = ("import sys, torchdoctor, torchdoctor.cli, torchdoctor.env.api, torchdoctor.targets, "
            "torchdoctor.step; print('torch' in sys.modules, 'numpy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_import_torchdoctor_imports_no_trainer_library():
    code = ("import sys, torchdoctor, torchdoctor.integrations, torchdoctor.testing; "
            "libraries = ('transformers', 'accelerate', 'lightning', 'pytorch_lightning'); "
            "print(sorted(m for m in libraries if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["[]"]


@pytest.mark.parametrize("args", [("--help",), ("--version",), ("env", "--help"), ("env", "--list-checks")])
def test_cli_help_and_version_do_not_import_torch(args):
    completed = subprocess.run([sys.executable, "-X", "importtime", "-m", "torchdoctor", *args],
                               capture_output=True, text=True)
    assert completed.returncode == 0
    imported = {line.rsplit("|", 1)[-1].strip() for line in completed.stderr.splitlines() if "|" in line}
    assert "torch" not in imported and "numpy" not in imported


def test_version_prints_the_package_version():
    from torchdoctor import __version__

    assert run_torchdoctor("--version").stdout.strip() == f"torchdoctor {__version__}"
