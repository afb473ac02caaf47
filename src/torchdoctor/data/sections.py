"""Group a data report's findings into check groups for the human renderer, each with a one-line headline."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from torchdoctor.codes import section_ids, section_of
from torchdoctor.report import Finding, Section

# The ids under each group come from the registry (codes.py: each spec's section for "data"); an error of the
# training step that explain's rules name (a cuda-out-of-memory, say) shows under Training step.
TITLES = (("loader", "Loader"), ("batches", "Batches"), ("labels", "Labels"), ("inputs", "Inputs"),
          ("step", "Training step"))
GROUPS = tuple((name, title, section_ids("data", name)) for name, title in TITLES)


def data_sections(result: Mapping[str, Any], findings: Sequence[Finding]) -> tuple[Section, ...]:
    """Loader, Batches, Labels, Inputs, Training step: each finding under its registry section."""
    headlines = {"loader": _loader(result), "batches": _batches(result), "labels": _labels(result),
                 "inputs": _inputs(result), "step": _step(result)}
    sections = []
    for name, title, ids in GROUPS:
        members = tuple(f for f in findings if f.id in ids)
        if name == "step":
            members += tuple(_confirmed_here(f) for f in findings if "confirmed_by_step" in f.details)
        sections.append(Section(name, title, headlines[name], members))
    return tuple(sections)


def _confirmed_here(finding: Finding) -> Finding:
    """A pointer under Training step to a finding the step's own error confirmed (shown once in each group)."""
    group = dict(TITLES)[section_of(finding.id, "data")]
    return dataclasses.replace(finding, message=f"The training step met it too: {finding.details['confirmed_by_step']} "
                                                f"(see {group}).", fix=None)


def _loader(result: Mapping[str, Any]) -> str:
    loader = result["loader"]
    size = f" ({loader['dataset_len']:,} samples)" if loader["dataset_len"] is not None else ""
    wrapped = " (wrapped by torchdoctor)" if loader["wrapped"] else ""
    shuffle = {True: "on", False: "off", None: f"by {loader['sampler']}"}[loader["shuffle"]]
    return (f"DataLoader{wrapped} over {loader['dataset_class']}{size}: batch_size {loader['batch_size']}, "
            f"shuffle {shuffle}, {loader['num_workers']} worker(s), drop_last {'on' if loader['drop_last'] else 'off'}")


def _batches(result: Mapping[str, Any]) -> str:
    reading, speed = result["reading"], result["throughput"]
    if reading["read"] == 0:
        return "no batch could be read"
    if reading.get("exhausted"):  # not "8 of 20": the loader has only 8
        text = (f"read all {reading['read']} batch(es) the loader has ({speed['samples']:,} samples; "
                f"{reading['requested']} were asked for)")
    else:
        text = f"read {reading['read']} of {reading['requested']} batches ({speed['samples']:,} samples)"
    text += f"; first {speed['first_batch_ms']:.1f} ms"
    if speed["per_batch_ms"] is not None:
        text += f", then {speed['per_batch_ms']:.1f} ms per batch"
    if speed["samples_per_s"]:
        text += f" ({speed['samples_per_s']:,.0f} samples/s)"
    return text + ("; then it failed" if reading["failure"] else "")


def _labels(result: Mapping[str, Any]) -> str:
    reading, task = result["reading"], result["task"]
    target = reading["target"]
    if reading["read"] == 0:  # nothing to say about labels no batch delivered
        return "not checked: no batch was read"
    if target is None:
        return "no target in the batches"
    text = f"{reading['target_field']} {target['dtype']} {target['shape']}"
    if target.get("histogram"):
        counts = ", ".join(f"{k}: {v}" for k, v in list(target["histogram"].items())[:10])
        text += f", classes in the batches {{{counts}}}"
    scan = result.get("dataset_labels")
    if scan and scan.get("integral"):
        text += f"; whole data set {scan['min']}..{scan['max']} ({scan['source']}, {scan['seconds'] * 1000:.0f} ms)"
    if task["name"]:
        classes = f", {task['num_classes']} classes" if task["num_classes"] else ""
        text += f"; loss {task['loss'] or task['name']}{classes}"
    return text


def _inputs(result: Mapping[str, Any]) -> str:
    reading = result["reading"]
    name = reading["input"]
    if reading["read"] == 0:
        return "not checked: no batch was read"
    if name is None:
        return "inputs: " + (", ".join(reading["fields"]) or "no tensors")
    field = reading["fields"][name]
    if field["min"] is None:
        return f"{name} {field['dtype']} {field['shape']}"
    return (f"{name} {field['dtype']} {field['shape']} in [{field['min']:.3g}, {field['max']:.3g}], "
            f"mean {field['mean']:.3g}, std {field['std']:.3g}")


def _step(result: Mapping[str, Any]) -> str:
    step = result.get("step") or {}
    if "skipped" in step:
        return f"skipped: {step['skipped']}"
    failure = step.get("failure")
    if failure:
        headline = next((line.strip() for line in failure["message"].splitlines() if line.strip()), "")
        return f"failed in {failure['phase']}: {failure['exc_type']}: {headline}"
    losses = " → ".join(f"{loss:.4g}" for loss in step["losses"] if isinstance(loss, (int, float)))
    grad = f", grad norm {step['grad_norm']:.3g}" if isinstance(step.get("grad_norm"), float) else ""
    speed = result["throughput"]
    per_batch = f" vs {speed['per_batch_ms']:.1f} ms to load a batch" if speed["per_batch_ms"] is not None else ""
    timing = "first step, an upper bound" if step["timing"] == "first step" else step["timing"]
    return (f"{step['loss_name']} loss {losses}{grad}; forward+backward {speed['step_ms']:.1f} ms ({timing}) "
            f"on {step['device']}{per_batch}")
