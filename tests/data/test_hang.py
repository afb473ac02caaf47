"""A loader that never delivers a batch: ``loader-hang`` within the time limit, with the sample and line named."""

from __future__ import annotations

import inspect
import signal
import time

import pytest
from fixtures import loaders
from torch.utils.data import DataLoader

from torchdoctor.data.api import probe_loader
from torchdoctor.data.deadline import TimedOut, TimeLimit
from torchdoctor.errors import UsageError

LIMIT = 1.0


def hang_line(dataset_class: type) -> int:
    """The line of ``threading.Event().wait()`` in the fixture's __getitem__."""
    lines, first = inspect.getsourcelines(dataset_class.__getitem__)
    return first + next(i for i, line in enumerate(lines) if ".wait()" in line)


def only_hang(report):
    hangs = [f for f in report.findings if f.id == "loader-hang"]
    assert len(hangs) == 1 and report.exit_code() == 1, [(f.id, f.message) for f in report.findings]
    return hangs[0]


def test_a_sample_that_blocks_in_the_main_process_is_named_with_its_line():
    start = time.perf_counter()
    finding = only_hang(probe_loader(loaders.hanging_sample_loader(), timeout=LIMIT))
    assert time.perf_counter() - start < 15
    line = hang_line(loaders.HangingSampleDataset)
    assert f"Batch 2 did not arrive within 1 s: dataset[{loaders.HANGING_INDEX}] was still blocked" in finding.message
    assert finding.location.endswith(f"loaders.py:{line}") and finding.details["located"]["hang"] == "main"
    assert finding.details["index"] == loaders.HANGING_INDEX and finding.details["timed_out_s"] == LIMIT


def test_a_sample_that_blocks_in_a_worker_is_read_again_here_and_named():
    start = time.perf_counter()
    finding = only_hang(probe_loader(loaders.hanging_sample_in_workers_loader(), timeout=LIMIT))
    assert time.perf_counter() - start < 20  # hung workers are terminated, not waited for 5 s each
    located = finding.details["located"]
    assert located == {"hang": "workers", "order": "sampler", "reproduced": True, "index": loaders.HANGING_INDEX,
                       "user_frame": located["user_frame"]}
    assert located["user_frame"]["line"] == hang_line(loaders.HangingSampleDataset)
    assert f"dataset[{loaders.HANGING_INDEX}] blocks too" in finding.message


def test_a_hang_only_workers_meet_is_called_a_deadlock():
    finding = only_hang(probe_loader(loaders.worker_deadlock_loader(), timeout=LIMIT))
    located = finding.details["located"]
    assert located["hang"] == "workers" and located["reproduced"] is False and located["read"] == 8
    assert "Batch 0 did not arrive from" in finding.message and "the workers deadlock" in finding.message


def test_the_loaders_own_timeout_is_a_hang_too_not_a_data_error():
    loader = DataLoader(loaders.WorkerDeadlockDataset(loaders.csv_text()), batch_size=8,
                        num_workers=loaders.healthy_workers(), timeout=1)
    finding = only_hang(probe_loader(loader, timeout=30))  # torch's own 1 s comes first
    assert finding.details["timed_out_s"] == 1.0 and "(the loader's own DataLoader(timeout=1))" in finding.message
    assert finding.details["located"]["reproduced"] is False


def test_shuffled_workers_hang_is_searched_with_seeded_draws():
    loader = DataLoader(loaders.HangingSampleDataset(loaders.csv_text()), batch_size=8, shuffle=True,
                        num_workers=loaders.healthy_workers())
    finding = only_hang(probe_loader(loader, batches=12, timeout=LIMIT))  # 12 x 8: every sample
    located = finding.details["located"]
    assert located["order"] == "seeded" and located["reproduced"] and located["index"] == loaders.HANGING_INDEX
    assert "seed 0" in finding.message


def test_a_healthy_slow_loader_within_the_limit_is_not_a_hang():
    report = probe_loader(loaders.slow_loader(), batches=3, timeout=5.0)
    assert "loader-hang" not in [f.id for f in report.findings] and report.result["timeout_s"] == 5.0


def test_off_the_main_thread_no_limit_applies_and_the_report_says_so():
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        report = pool.submit(probe_loader, loaders.healthy_tensor_loader(), batches=2, timeout=5.0).result()
    assert report.result["timeout_s"] is None and report.result["reading"]["failure"] is None


def test_the_limit_leaves_the_signal_handler_and_timer_as_they_were():
    before = signal.getsignal(signal.SIGALRM)
    with TimeLimit(0.05) as limit:
        with pytest.raises(TimedOut):
            limit.call(time.sleep, 5)
        assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)  # disarmed between calls
        assert limit.call(sum, [1, 2]) == 3
    assert signal.getsignal(signal.SIGALRM) is before and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    with TimeLimit(None) as limit:  # no limit: nothing installed
        assert signal.getsignal(signal.SIGALRM) is before and limit.call(sum, [1]) == 1


def test_except_exception_in_user_code_cannot_swallow_the_limit():
    def retrying_read():
        while True:
            try:
                time.sleep(5)
            except Exception:  # a dataset's retry loop
                continue

    with pytest.raises(TimedOut), TimeLimit(0.05) as limit:
        limit.call(retrying_read)


@pytest.mark.parametrize("bad", [-1, "10", True])
def test_a_bad_timeout_is_a_usage_error(bad):
    with pytest.raises(UsageError, match="timeout"):
        probe_loader(loaders.healthy_tensor_loader(), timeout=bad)


def test_a_loader_that_uses_sigalrm_itself_is_left_alone():
    seen = []

    def users_handler(signum, frame):
        seen.append(signum)

    previous = signal.signal(signal.SIGALRM, users_handler)
    try:
        report = probe_loader(loaders.healthy_tensor_loader(), batches=2, timeout=5.0)
        assert report.result["timeout_s"] is None  # no limit, rather than replacing the user's handler
        assert signal.getsignal(signal.SIGALRM) is users_handler and seen == []
    finally:
        signal.signal(signal.SIGALRM, previous)


def test_without_a_limit_of_its_own_the_probe_does_not_reread_a_blocking_sample():
    from concurrent.futures import ThreadPoolExecutor

    loader = DataLoader(loaders.HangingSampleDataset(loaders.csv_text()), batch_size=8,
                        num_workers=loaders.healthy_workers(), timeout=1)
    pool = ThreadPoolExecutor(1)  # off the main thread: no SIGALRM, only torch's own timeout
    report = pool.submit(probe_loader, loader, batches=4).result(timeout=60)  # reading index 21 here would hang
    pool.shutdown()
    finding = only_hang(report)
    assert finding.details["located"] == {"hang": "workers", "reproduced": None}
    assert report.result["timeout_s"] is None and finding.details["timed_out_by"] == "DataLoader(timeout=1)"
