"""Pure judgements of distributed facts, from hand-built facts."""

from __future__ import annotations

from torchdoctor.dist.checks import check_distributed, headline_distributed
from torchdoctor.dist.collect import fold_events


def _facts(**overrides):
    facts = {"backend": "gloo", "world_size": 2, "availability": {"distributed": True, "backend": True},
             "environ": {}, "nccl_env": {}, "ranks": {}, "launcher": {"returncode": 0, "timed_out": False}}
    return {**facts, **overrides}


def test_nccl_missing_from_the_build_is_distributed_unavailable():
    facts = _facts(backend="nccl", availability={"distributed": True, "backend": False})
    findings = check_distributed(facts)
    assert [f.id for f in findings] == ["distributed-unavailable"]
    assert "nccl" in findings[0].message
    assert "not available" in headline_distributed(facts)


def test_no_torch_distributed_at_all():
    facts = _facts(availability={"distributed": False, "backend": False})
    assert "torch.distributed" in check_distributed(facts)[0].message


def test_launcher_dying_before_any_rank_started_is_an_init_failure():
    facts = _facts(ranks={"0": fold_events([]), "1": fold_events([])},
                   launcher={"returncode": 1, "timed_out": False, "stderr_tail": ["address already in use"]})
    (finding,) = check_distributed(facts)
    assert finding.id == "distributed-init-failed"
    assert "address already in use" in finding.message


def test_timed_out_launch_names_the_rank_that_never_arrived():
    waiting = fold_events([{"event": "start", "phase": "barrier", "t": 1}, {"event": "arrived", "phase": "barrier", "t": 1}])
    stuck = fold_events([{"event": "start", "phase": "barrier", "t": 1}])
    facts = _facts(ranks={"0": waiting, "1": stuck}, launcher={"returncode": -9, "timed_out": True})
    (finding,) = check_distributed(facts)
    assert finding.id == "distributed-hang"
    assert finding.message.startswith("Rank 1 stalled in barrier")
    assert finding.details["waiting_ranks"] == ["0"]


def test_wrong_all_reduce_sum_is_a_step_failure():
    done = {"event": "done", "phase": "all_reduce", "checksum": 2.0, "expected": 3.0, "checksum_ok": False, "t": 1}
    facts = _facts(ranks={"0": fold_events([done]), "1": fold_events([])})
    (finding,) = check_distributed(facts)
    assert finding.id == "distributed-step-failed"
    assert finding.location == "rank 0: all_reduce"
