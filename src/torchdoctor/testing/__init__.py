"""torchdoctor's pytest plugin (entry point ``pytest11``): assertions that name the cause, and ``torchdoctor_env``.

    from torchdoctor.testing import assert_learns
    def test_model_learns(): assert_learns(Net(), (x, y))

Every assertion fails with the finding's id, code, message and fix. Importing this module does not
import torch; each assertion does when it runs.
"""

from __future__ import annotations

from typing import Any

import pytest

from torchdoctor.testing.asserts import assert_checkpoint_loads, assert_finite_step, assert_loader_ok
from torchdoctor.testing.env import DEFAULT_ENV_CHECKS, env_verdict
from torchdoctor.testing.learns import assert_learns

__all__ = ["assert_checkpoint_loads", "assert_finite_step", "assert_learns", "assert_loader_ok"]


def pytest_addoption(parser: Any) -> None:
    group = parser.getgroup("torchdoctor")
    group.addoption("--torchdoctor-env-fail", action="store_true", default=False,
                    help="tests using the torchdoctor_env fixture fail (instead of skip) when env judges the "
                         "machine broken")
    parser.addini("torchdoctor_env_checks", type="args", default=list(DEFAULT_ENV_CHECKS),
                  help="the `torchdoctor env` checks the torchdoctor_env fixture runs")
    parser.addini("torchdoctor_env_model", default="",
                  help="'file.py:factory' building the model env's training step runs (default: env's own net)")


@pytest.fixture(scope="session")
def torchdoctor_env(request: Any) -> Any:
    """The ``torchdoctor env`` report of this machine (run once per session); skips when it has errors.

    With ``--torchdoctor-env-fail`` a broken machine fails the test instead: for CI runners whose GPU
    must work.
    """
    config = request.config
    report, problem = env_verdict(config.getini("torchdoctor_env_checks"), config.getini("torchdoctor_env_model"),
                                  rootdir=str(config.rootpath))
    if problem is not None:
        if config.getoption("torchdoctor_env_fail"):
            pytest.fail(problem, pytrace=False)
        pytest.skip(problem)
    return report
