"""Run each configured item through its command's Python API (nan-hunt and watch in a subprocess), judge budgets."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torchdoctor.check.config import CheckConfig, Item
from torchdoctor.codes import make_finding
from torchdoctor.errors import TorchdoctorError, UserCodeError
from torchdoctor.report import Finding, Report, Section, Severity

SubprocessRunner = Callable[..., subprocess.CompletedProcess]
# A pre-flight nan-hunt runs a few steps; one still running after 15 minutes would only hold the CI job until
# the CI's own limit kills it without a report. Per item: timeout = seconds (0: no limit). Watch items alike.
NAN_HUNT_TIMEOUT_S = 900.0
SCRIPT_KINDS = ("nan-hunt", "watch")  # items that run the user's training script under a torchdoctor command


@dataclass(frozen=True)
class ItemOutcome:
    """What one item produced: its report, or why it could not run (``error``, ``hint``)."""

    item: Item
    report: Report | None
    error: str | None = None
    hint: str | None = None
    budgets: tuple[Mapping[str, Any], ...] = field(default_factory=tuple)


def run_item(item: Item, config: CheckConfig, *, run_subprocess: SubprocessRunner = subprocess.run) -> ItemOutcome:
    """Run one item; a tool error or a crash inside it becomes the item's error, never an exception."""
    try:
        if item.kind in SCRIPT_KINDS:
            return ItemOutcome(item, run_script_item(item, config, run_subprocess))
        if item.kind == "count":
            report = run_count(item)
            return ItemOutcome(item, report, budgets=tuple(report.result.get("budgets", ())))
        return ItemOutcome(item, _RUNNERS[item.kind](item))
    except TorchdoctorError as error:
        return ItemOutcome(item, None, error.message, error.hint)
    except Exception as error:  # the item's own code or a torchdoctor bug: the other items still run
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return ItemOutcome(item, None, f"{type(error).__name__}: {first}".rstrip(": "),
                           "run the item's own command with --debug for the traceback")


def run_env(item: Item) -> Report:
    from torchdoctor.env.api import run_env as run

    checks = item.options.get("checks")
    return run(list(checks) if checks else None)


def run_ckpt(item: Item) -> Report:
    from torchdoctor.ckpt.inspect import inspect_checkpoint

    options = item.options
    # No scan-values key: the default of `ckpt inspect` (headers only above 4 GiB of tensor data; a full scan of
    # a 10 GiB checkpoint reads every byte, minutes from a CI runner's cold disk). true forces it, false skips it.
    return inspect_checkpoint(options["path"], model=_model(options.get("model")),
                              input_shapes=options.get("input_shape"), scan_values=options.get("scan_values"))


def run_data(item: Item) -> Report:
    from torch.utils.data import DataLoader, Dataset

    from torchdoctor.data.api import probe_loader
    from torchdoctor.data.deadline import DEFAULT_TIMEOUT_S
    from torchdoctor.targets import resolve_target

    options = item.options
    loader = resolve_target(options["loader"], expect=(DataLoader, Dataset))
    return probe_loader(loader, _model(options.get("model")), num_classes=options.get("num_classes"),
                        loss=options.get("loss"), batches=options.get("batches", 20),
                        input_key=options.get("input_key"), target_key=options.get("target_key"),
                        timeout=options.get("timeout", DEFAULT_TIMEOUT_S))


def run_count(item: Item) -> Report:
    from torchdoctor.count.api import count_spec

    options = item.options
    report = count_spec(options["model"], input_shapes=options.get("input_shape"))
    return judge_budgets(report, options, item.name)


def run_script_item(item: Item, config: CheckConfig, run_subprocess: SubprocessRunner) -> Report:
    """``python -m torchdoctor KIND SCRIPT --json -- ARGS`` (KIND: nan-hunt or watch) in the config's folder: the
    user's script runs in its own process, so its imports, globals and crashes cannot leak into the other items."""
    options = item.options
    command = [sys.executable, "-m", "torchdoctor", item.kind, item.file or options["script"], "--json"]
    if options.get("steps"):
        command += ["--steps", str(options["steps"])]
    command += ["--", *options.get("args", ())]
    limit = options.get("timeout", NAN_HUNT_TIMEOUT_S) or None
    try:
        done = run_subprocess(command, cwd=str(config.root), capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:  # subprocess.run has killed it
        script = item.file or options["script"]
        raise UserCodeError(f"{item.kind} of {script} did not finish within {limit:g} s and was stopped",
                            hint="raise the item's timeout (0: no limit), or run fewer steps (steps = N)") from None
    try:
        data = json.loads(done.stdout) if done.returncode in (0, 1) else None
    except json.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        lines = [line for line in (done.stderr or "").splitlines() if line.strip()]
        message = next((line for line in lines if line.startswith("torchdoctor:")), lines[-1] if lines else "")
        raise UserCodeError(f"{item.kind} exited {done.returncode}: {message or 'no report'}".rstrip())
    return report_from_dict(data)


def report_from_dict(data: Mapping[str, Any]) -> Report:
    """A ``Report`` back from its ``--json`` object (sections are not part of the JSON contract)."""
    findings = tuple(Finding(id=f["id"], code=f["code"], severity=Severity(f["severity"]), message=f["message"],
                             fix=f.get("fix"), location=f.get("location"), details=f.get("details") or {})
                     for f in data.get("findings", ()))
    return Report(str(data.get("command", "")), findings, dict(data.get("result", {})))


def judge_budgets(report: Report, options: Mapping[str, Any], name: str) -> Report:
    """``max-params`` / ``max-macs``: each exceeded one is a ``budget-exceeded`` error finding."""
    actual = {"max-params": (report.result.get("params") or {}).get("total"), "max-macs": report.result.get("macs")}
    budgets, over = [], []
    for key, unit in (("max-params", "parameters"), ("max-macs", "MACs")):
        limit = options.get(key.replace("-", "_"))
        if limit is None:
            continue
        value = actual[key]
        exceeded = value is not None and value > limit
        budgets.append({"budget": key, "limit": limit, "actual": value, "exceeded": exceeded})
        if exceeded:
            over.append(make_finding(
                "budget-exceeded", f"{name} has {value:,} {unit}, over the budget {key} = {limit:,}.",
                location=name, details={"budget": key, "limit": limit, "actual": value}))
    if not budgets:
        return report
    headline = f"{len(over)} of {len(budgets)} exceeded" if over else f"within {len(budgets)} budget(s)"
    section = Section("budgets", "Budgets", headline, tuple(over))
    return Report(report.command, (*report.findings, *over), {**report.result, "budgets": budgets},
                  (*report.sections, section))


def _model(spec: str | None) -> Any:
    if spec is None:
        return None
    import torch

    from torchdoctor.targets import resolve_target

    return resolve_target(spec, expect=(torch.nn.Module,))


_RUNNERS: dict[str, Callable[[Item], Report]] = {"env": run_env, "ckpt": run_ckpt, "data": run_data}
