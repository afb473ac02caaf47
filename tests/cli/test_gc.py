"""The cyclic collector is paused while a checkpoint command runs, and restored after it."""

import gc

import pytest
from fixtures import ckpt_builders as build

from torchdoctor.cli._gc import collector_paused


@pytest.mark.parametrize("enabled", [True, False])
def test_the_collector_comes_back_as_it_was(enabled):
    was = gc.isenabled()
    (gc.enable if enabled else gc.disable)()
    try:
        with pytest.raises(RuntimeError), collector_paused():
            assert not gc.isenabled()
            raise RuntimeError("a command failing must not leave the collector off")
        assert gc.isenabled() is enabled
    finally:
        (gc.enable if was else gc.disable)()


def test_a_ckpt_command_runs_with_the_collector_paused(cli, tmp_path, monkeypatch):
    from torchdoctor.ckpt import inspect

    seen = []
    real = inspect.inspect_checkpoint
    monkeypatch.setattr(inspect, "inspect_checkpoint", lambda *a, **k: seen.append(gc.isenabled()) or real(*a, **k))
    assert gc.isenabled()
    result = cli("ckpt", "inspect", str(build.dataparallel_state_dict(tmp_path)))
    assert result.exit_code == 0 and seen == [False] and gc.isenabled()
