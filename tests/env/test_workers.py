"""Tests for the DataLoader worker probe: real runs, real failures (full shm, dead workers, hangs)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import torchdoctor
from torchdoctor.env.workers import (
    check_worker_probe,
    classify_worker_failure,
    run_worker_probe,
    start_worker_probe,
)
from torchdoctor.report import Severity
from torchdoctor.units import MIB

SRC = str(Path(torchdoctor.__file__).resolve().parents[1])
# the probe child must import torchdoctor even when the tests run from a checkout without install
CHILD_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")]))}


def _fake_python(tmp_path: Path, body: str, name: str = "python") -> str:
    """An executable standing in for the interpreter, so the parent side meets real processes."""
    script = tmp_path / name
    script.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    script.chmod(0o755)
    return str(script)


def _live_group_members(pgid: int, wait_s: float = 2.0) -> list[int]:
    """Processes left in group ``pgid`` once SIGKILL has had ``wait_s`` to land (zombies do not count)."""
    deadline = time.monotonic() + wait_s
    while (live := _group_members(pgid)) and time.monotonic() < deadline:
        time.sleep(0.02)
    return live


def _group_members(pgid: int) -> list[int]:
    live = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state != "Z":
            live.append(int(stat.parent.name))
    return live


# --- classifier, on messages torch 2.13.0 printed on Linux (recorded while writing these tests) ---------

REAL_SHM_FULL = (
    "RuntimeError: unable to allocate shared memory(shm) for file </torch_4552_4242733542_0>: "
    "No space left on device (28)"
)
# a worker that gets SIGBUS: torch's worker signal handler writes the first line to stderr, the main
# process raises the second (or, when its SIGCHLD handler wins the race, the third)
REAL_WORKER_BUS_STDERR = (
    "ERROR: Unexpected bus error encountered in worker. This might be caused by insufficient shared "
    "memory (shm)."
)
REAL_WORKER_DIED = "RuntimeError: DataLoader worker (pid(s) 4954) exited unexpectedly"
REAL_WORKER_BUS_SIGNAL = (
    "RuntimeError: DataLoader worker (pid 4954) is killed by signal: Bus error. It is possible that "
    "dataloader's workers are out of shared memory. Please try to raise your shared memory limit."
)
REAL_WORKER_KILLED = "RuntimeError: DataLoader worker (pid 4958) is killed by signal: Killed. "
REAL_PICKLING = "AttributeError: Can't pickle local object 'Unpicklable.__init__.<locals>.<lambda>'"
# Not reproducible without a GPU: the text of the RuntimeError raised by _lazy_init() in PyTorch's
# torch/cuda/__init__.py (v2.13.0) when a forked child touches CUDA that the parent initialized.
RECORDED_CUDA_FORK = (
    "RuntimeError: Cannot re-initialize CUDA in forked subprocess. To use CUDA with multiprocessing, "
    "you must use the 'spawn' start method"
)


@pytest.mark.parametrize(
    ("text", "cause"),
    [
        (REAL_SHM_FULL, "shm-exhausted"),
        (f"{REAL_WORKER_DIED}\n{REAL_WORKER_BUS_STDERR}", "bus-error"),
        (REAL_WORKER_BUS_SIGNAL, "bus-error"),
        (REAL_WORKER_DIED, "worker-killed"),
        (REAL_WORKER_KILLED, "worker-killed"),
        (REAL_PICKLING, "pickling"),
        (RECORDED_CUDA_FORK, "cuda-fork-init"),
        ("ValueError: batch 1 came back corrupted: 12 of 8388608 values differ", "other"),
        ("", "other"),
    ],
)
def test_classify_real_messages(text, cause):
    assert classify_worker_failure(text, timed_out=False) == cause


def test_classify_timeout_wins():
    assert classify_worker_failure(REAL_SHM_FULL, timed_out=True) == "timeout"


def test_classify_worker_traceback_paths_do_not_read_as_pickling():
    # re-raised worker tracebacks pass through multiprocessing's ForkingPickler frames
    text = 'File "/usr/lib/python3.11/multiprocessing/reduction.py", line 51, in dumps\n' \
           "    cls(buf, protocol).dump(obj)  # ForkingPickler\n" + REAL_SHM_FULL
    assert classify_worker_failure(text, timed_out=False) == "shm-exhausted"


# --- parent side against stand-in interpreters (no torch needed) ------------------------------------------


def test_real_timeout_kills_the_whole_group(tmp_path):
    # the stand-in hangs and has a child of its own, like a DataLoader with a hung worker
    python = _fake_python(tmp_path, "sleep 30 &\nsleep 30\n")
    started = time.monotonic()
    probe = start_worker_probe(python=python, timeout_s=0.5)
    facts = probe.collect()
    assert time.monotonic() - started < 5
    assert facts["ok"] is False and facts["timed_out"] is True
    assert facts["cause"] == "timeout"
    assert facts["signal"] == "SIGKILL"
    assert "no result after 0.5 s" in facts["error"]
    assert _live_group_members(probe.pid) == []
    [finding] = check_worker_probe(facts)
    assert "hung" in finding.message and "__getitem__" in finding.fix


# A probe process killed by SIGKILL is the DataLoader's main process dying like its workers do -
# almost always the out-of-memory killer - so it is classified "worker-killed", not "other".
def test_real_sigkill_of_the_probe(tmp_path):
    facts = run_worker_probe(python=_fake_python(tmp_path, "kill -KILL $$\n"), timeout_s=10)
    assert facts["ok"] is False and facts["timed_out"] is False
    assert facts["exit_code"] == -9 and facts["signal"] == "SIGKILL"
    assert facts["cause"] == "worker-killed"
    assert facts["error"] == "probe process killed by signal: Killed (SIGKILL)"


def test_real_sigbus_of_the_probe(tmp_path):
    facts = run_worker_probe(python=_fake_python(tmp_path, "kill -BUS $$\n"), timeout_s=10)
    assert facts["signal"] == "SIGBUS" and facts["cause"] == "bus-error"


def test_child_json_error_is_parsed_and_classified(tmp_path):
    line = json.dumps({"ok": False, "exc_type": "AttributeError", "error": "Can't pickle local object 'f'"})
    (tmp_path / "result.json").write_text(line + "\n")
    python = _fake_python(tmp_path, f"echo 'some warning' >&2\ncat '{tmp_path}/result.json'\nexit 1\n")
    facts = run_worker_probe(python=python, timeout_s=10)
    assert facts["exit_code"] == 1 and facts["signal"] is None
    assert facts["cause"] == "pickling"
    assert facts["error"] == "AttributeError: Can't pickle local object 'f'"


def test_exit_zero_without_result_is_a_failure(tmp_path):
    facts = run_worker_probe(python=_fake_python(tmp_path, "exit 0\n"), timeout_s=10)
    assert facts["ok"] is False and facts["cause"] == "other"
    assert facts["error"] == "probe exited with code 0"


def test_interpreter_that_cannot_start(tmp_path):
    facts = run_worker_probe(python=str(tmp_path / "no-python"), timeout_s=10)
    assert facts["ok"] is False and facts["cause"] == "other" and facts["exit_code"] is None
    assert facts["error"].startswith("could not start")


def test_error_is_short(tmp_path):
    python = _fake_python(tmp_path, "head -c 1000 /dev/zero | tr '\\0' y >&2\nexit 3\n")
    facts = run_worker_probe(python=python, timeout_s=10)
    assert facts["exit_code"] == 3 and len(facts["error"]) <= 300


# --- judgement ---------------------------------------------------------------------------------------------


def _failed(cause, error="RuntimeError: boom", signal=None):
    return {"ok": False, "num_workers": 2, "batch_bytes": 8 * MIB, "batches": 4, "seconds": None,
            "mib_per_s": None, "start_method": "fork", "exit_code": 1, "signal": signal,
            "timed_out": cause == "timeout", "cause": cause, "error": error}


def test_ok_probe_has_no_finding():
    assert check_worker_probe({"ok": True, "cause": None}) == []


@pytest.mark.parametrize(
    ("cause", "in_message", "in_fix"),
    [
        ("shm-exhausted", "out of shared memory", "--shm-size=8g"),
        ("bus-error", "almost always means shared memory ran out", "--ipc=host"),
        ("worker-killed", "killed by a signal", "dmesg"),
        ("cuda-fork-init", "forked worker cannot use CUDA", "multiprocessing_context='spawn'"),
        ("timeout", "a worker hung", "deadlocks in the dataset's __getitem__"),
        ("pickling", "could not be pickled", "module level"),
        ("other", "failed", "--debug"),
    ],
)
def test_finding_per_cause(cause, in_message, in_fix):
    [finding] = check_worker_probe(_failed(cause, error="RuntimeError: the real line"))
    assert finding.id == "dataloader-workers-failed" and finding.severity is Severity.ERROR
    assert in_message in finding.message and in_fix in finding.fix
    assert finding.message.endswith("RuntimeError: the real line")
    assert {"cause", "exit_code", "signal", "error"} <= set(finding.details)
    assert finding.details["cause"] == cause


def test_shm_finding_names_free_space_and_picks_the_fix():
    shm = {"path": "/dev/shm", "free_bytes": 64 * MIB, "total_bytes": 64 * MIB, "in_container": True}
    [finding] = check_worker_probe(_failed("shm-exhausted", REAL_SHM_FULL), shm)
    assert "(/dev/shm has 64.0 MiB free of 64.0 MiB)" in finding.message
    assert "docker run --shm-size=8g" in finding.fix
    [bare] = check_worker_probe(_failed("bus-error"), {**shm, "in_container": False})
    assert "mount -o remount,size=8G /dev/shm" in bare.fix


def test_signal_named_in_worker_killed():
    [finding] = check_worker_probe(_failed("worker-killed", signal="SIGKILL"))
    assert "(SIGKILL)" in finding.message and finding.details["signal"] == "SIGKILL"


# --- real DataLoader runs --------------------------------------------------------------------------------


@pytest.mark.slow
def test_real_probe_succeeds_here():
    started = time.monotonic()
    probe = start_worker_probe(env=CHILD_ENV, timeout_s=60)
    # starting returns at once: the caller runs other checks while the child imports torch
    assert time.monotonic() - started < 1
    facts = probe.collect()
    assert facts["ok"] is True, facts
    assert facts["cause"] is None and facts["error"] is None
    assert facts["num_workers"] == 2 and facts["batches"] == 4
    assert facts["batch_bytes"] >= 8 * MIB
    assert facts["mib_per_s"] > 0 and facts["seconds"] > 0
    assert facts["start_method"] in ("fork", "spawn", "forkserver")
    assert facts["exit_code"] == 0 and facts["signal"] is None and facts["timed_out"] is False
    assert _live_group_members(probe.pid) == []  # no worker outlives the probe
    assert check_worker_probe(facts) == []


# Runs the real child with its dataset sabotaged from a wrapper, so each worker failure goes
# through torch's real messages and the parent's real parsing.
_SABOTAGE = """
import os, signal, sys
import torchdoctor.env._worker_child as child

how = os.environ["TD_TEST_SABOTAGE"]
if how == "pickling":
    import torch.multiprocessing as mp

    mp.set_start_method("spawn")  # spawn pickles the dataset, and a lambda cannot be pickled
    child.PatternDataset.__len__ = lambda self: 16
    _init = child.PatternDataset.__init__
    def __init__(self, *args):
        _init(self, *args)
        self.transform = lambda x: x
    child.PatternDataset.__init__ = __init__
else:
    def __getitem__(self, index):
        os.kill(os.getpid(), getattr(signal, how))
    child.PatternDataset.__getitem__ = __getitem__
sys.exit(child.main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_real_worker_failures_are_classified(tmp_path):
    (tmp_path / "sabotage.py").write_text(_SABOTAGE)
    # the stand-in drops "-m torchdoctor.env._worker_child" and runs the wrapper with the rest
    python = _fake_python(tmp_path, f'shift 2\nexec "{sys.executable}" "{tmp_path}/sabotage.py" "$@"\n')
    cases = {"SIGBUS": "bus-error", "SIGKILL": "worker-killed", "pickling": "pickling"}
    # started together, collected later: the way `torchdoctor env` overlaps the probe with other checks
    probes = {how: start_worker_probe(python=python, timeout_s=60, env={**CHILD_ENV, "TD_TEST_SABOTAGE": how})
              for how in cases}
    results = {how: probe.collect() for how, probe in probes.items()}
    for how, cause in cases.items():
        facts = results[how]
        assert facts["ok"] is False and facts["exit_code"] == 1, (how, facts)
        assert facts["cause"] == cause, (how, facts)
        assert len(facts["error"]) <= 300
        assert _live_group_members(probes[how].pid) == []
    # the main process only says a worker died; the error keeps the line that says how
    assert "bus error" in results["SIGBUS"]["error"].lower()
    assert "killed by signal: Killed" in results["SIGKILL"]["error"]
    assert "pickle" in results["pickling"]["error"]


@pytest.mark.slow
def test_real_full_shm_fails_the_probe(tmp_path):
    if sys.platform != "linux" or os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root on Linux with unshare(1) to mount a 4 MiB /dev/shm")
    if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("unshare -m is not permitted here")
    script = textwrap.dedent("""
        import json
        from torchdoctor.env.shm import check_shm, collect_shm
        from torchdoctor.env.workers import check_worker_probe, run_worker_probe
        shm = collect_shm()
        probe = run_worker_probe(timeout_s=60)
        findings = check_shm(shm) + check_worker_probe(probe, shm)
        print(json.dumps({"shm": shm, "probe": probe, "findings": [f.to_dict() for f in findings]}))
    """)
    # exit 77 = the mount failed, which is an environment limit, not a test failure
    command = f'mount -t tmpfs -o size=4m tmpfs /dev/shm || exit 77; exec "{sys.executable}" -c "$0"'
    done = subprocess.run(["unshare", "-m", "sh", "-c", command, script], capture_output=True, text=True,
                          env=CHILD_ENV, timeout=120)
    if done.returncode == 77:
        pytest.skip(f"cannot mount a tmpfs on /dev/shm: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["shm"]["total_bytes"] == 4 * MIB
    probe = out["probe"]
    assert probe["ok"] is False and probe["timed_out"] is False
    assert probe["cause"] in ("shm-exhausted", "bus-error"), probe
    severities = {f["id"]: f["severity"] for f in out["findings"]}
    assert severities == {"shm-too-small": "error", "dataloader-workers-failed": "error"}
    [workers] = [f for f in out["findings"] if f["id"] == "dataloader-workers-failed"]
    assert "/dev/shm has 4.0 MiB free of 4.0 MiB" in workers["message"]


def test_parent_side_never_imports_torch(tmp_path):
    python = _fake_python(tmp_path, "exit 1\n")
    code = (
        "import sys\n"
        "from torchdoctor.env import _worker_child, shm, workers\n"
        f"facts = workers.run_worker_probe(python={python!r})\n"
        "shm_facts = shm.collect_shm()\n"
        "workers.check_worker_probe(facts, shm_facts) + shm.check_shm(shm_facts)\n"
        "print('torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=CHILD_ENV)
    assert done.stdout.strip() == "False", done.stderr
