"""Judge the gathered facts (pure): loader settings, how reading failed, throughput, the training step.

``check_data`` runs every check in report order; a training-step error explained as a finding that a data
check already raised confirms that finding (its details get the real error) instead of repeating it.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable, Mapping
from typing import Any

from torchdoctor.codes import make_finding
from torchdoctor.data import input_checks, label_checks
from torchdoctor.report import Finding

Facts = Mapping[str, Any]
MIN_BOTTLENECK_MS = 5.0  # below this per batch, timing noise dominates and loading is not worth tuning
COLD_STEP_FACTOR = 3.0  # a first CPU step's passes slower than this many loads: no bottleneck, warm or not
MAX_SAMPLE_FINDINGS = 3
MAX_LISTED = 6


def check_data(facts: Facts) -> list[Finding]:
    findings: list[Finding] = []
    for check in CHECKS:
        findings.extend(check(facts))
    return _merge_step_confirmations(findings)


def check_too_many_workers(facts: Facts) -> list[Finding]:
    workers, usable = facts["loader"]["num_workers"], facts["usable_cpus"]
    if workers <= usable:
        return []
    return [make_finding("too-many-workers", f"num_workers={workers} but this process can use {usable} CPU(s).",
                         fix=f"DataLoader(..., num_workers={usable})  (or fewer; the training loop needs a core too)",
                         details={"num_workers": workers, "usable_cpus": usable})]


def check_pin_memory(facts: Facts) -> list[Finding]:
    if not facts["loader"]["pin_memory"] or facts["cuda_available"]:
        return []
    return [make_finding("pin-memory-without-gpu", "pin_memory=True but no CUDA device is available, so pinning "
                         "buys nothing.")]


def check_batchnorm_single_sample(facts: Facts) -> list[Finding]:
    loader, model = facts["loader"], facts.get("model")
    if not model or not model["batchnorm"] or loader["wrapped"]:
        return []
    layers = ", ".join(model["batchnorm"][:3])
    if loader["batch_size"] == 1:
        what = "batch_size=1: every batch holds one sample"
    elif loader["last_batch_size"] == 1 and not loader["drop_last"]:
        samples = loader["dataset_len"]
        what = (f"the last batch holds one sample ({samples} samples % batch_size {loader['batch_size']} == 1, "
                "drop_last=False)")
    else:
        return []
    return [make_finding("batchnorm-single-sample-batch", f"{what[0].upper()}{what[1:]}, and the model has BatchNorm "
                         f"({layers}), which raises on a single sample in training mode.",
                         details={"batch_size": loader["batch_size"], "dataset_len": loader["dataset_len"],
                                  "batchnorm": model["batchnorm"]})]


def check_unshuffled_classes(facts: Facts) -> list[Finding]:
    loader, target = facts["loader"], facts["reading"]["target"]
    if loader["shuffle"] is not False or loader["wrapped"] or not target or not target.get("classes_per_batch"):
        return []
    per_batch = target["classes_per_batch"]
    lead = next((i for i, count in enumerate(per_batch) if count != 1), len(per_batch))
    scan = facts.get("dataset_labels") or {}
    classes = scan.get("classes") or len(target.get("histogram") or {})
    if lead < 2 or classes < 2:
        return []
    return [make_finding("unshuffled-classes", f"shuffle is off and the first {lead} batches each hold a single "
                         f"class (batch 0: only class {target['first_batch_classes'][0]}) of {classes}: the data "
                         "set is sorted by label.", details={"single_class_batches": lead, "classes": classes})]


def check_read_failure(facts: Facts) -> list[Finding]:
    """getitem-failed, collate-failed, worker-failed, loader-hang, variable-size-samples...: why reading failed."""
    failure = facts["reading"]["failure"]
    if failure is None:
        return []
    if failure.get("timed_out"):
        return [_hang_finding(failure, facts.get("located") or {}, facts["loader"])]
    if failure.get("worker"):
        return [_worker_finding(failure, facts["loader"])]
    located = facts.get("located") or {}
    if located.get("failures"):
        return [_sample_failure(f, located["order"]) for f in located["failures"][:MAX_SAMPLE_FINDINGS]]
    explained = failure["explained"]
    if failure.get("stage") == "collate" and (explained is None or explained["id"] == "collate-failed"):
        return [_collate_finding(failure, facts, explained)]
    if explained and explained["id"] in _LOCATED:
        finding = _LOCATED[explained["id"]](failure, located.get("samples") or {}, explained)
        if located.get("order") == "seeded" and "index" in finding.message:
            finding = dataclasses.replace(finding, message=finding.message.rstrip(".") + _SEEDED + ".")
        return [finding]
    where = _where(failure["user_frame"])
    if explained:
        return [make_finding(explained["id"], f"{explained['sentence']} Reading batch {failure['batch']} failed"
                             f"{where}: {explained['quote']}", location=_location(failure["user_frame"]),
                             details=_failure_details(failure))]
    exc_type, headline = _raised(failure)
    return [make_finding("getitem-failed", f"Reading batch {failure['batch']} raised {exc_type}{where}: {headline}",
                         location=_location(failure["user_frame"]), details=_failure_details(failure))]


def _collate_finding(failure: Mapping[str, Any], facts: Facts, explained: Mapping[str, Any] | None) -> Finding:
    loader, (exc_type, headline) = facts["loader"], _raised(failure)
    collate = "torch's default_collate" if loader["default_collate"] else f"collate_fn {loader['collate_fn']}"
    where = _where(failure["user_frame"])
    message = (f"Collating batch {failure['batch']} failed in {collate}{where}: {explained['sentence']}" if explained
               else f"Collating batch {failure['batch']} failed: {collate} raised {exc_type}{where}: {headline}")
    return make_finding("collate-failed", message, location=_location(failure["user_frame"]),
                        details={**_failure_details(failure), "collate_fn": loader["collate_fn"],
                                 "samples": (facts.get("located") or {}).get("samples")})


def _raised(failure: Mapping[str, Any]) -> tuple[str, str]:
    """The error's type and first line; from a worker, the original's (not torch's 'Caught X in DataLoader
    worker process N.' wrapper)."""
    from torchdoctor.explain.rules import unwrap_worker_error

    original_type, message = unwrap_worker_error(failure["message"])
    return original_type or failure["exc_type"], _headline(message)


def compute_ms(timings: Mapping[str, float]) -> float:
    """Forward + loss + backward of a step: the optimizer's first step pays one-time costs (importing
    torch._dynamo takes about a second), and the update itself is small next to the passes."""
    return sum(timings.get(phase, 0.0) for phase in ("forward", "loss", "backward"))


def needs_warm_step(load_ms: float | None, first_step: Mapping[str, float], device: str) -> bool:
    """Whether the comparison with loading needs a second, warm step's time.

    A first step is an upper bound of a warm one: slower than loading says nothing, faster proves the
    bottleneck. On the CPU a first step's passes are rarely more than 3x a warm one's, so a first step
    beyond that is no bottleneck either; accelerators pay much more at first (cuBLAS/cuDNN set-up), and
    their second step is cheap, so there it always runs.
    """
    if load_ms is None or load_ms < MIN_BOTTLENECK_MS:
        return False
    first = compute_ms(first_step)
    return first >= load_ms and (device != "cpu" or first <= COLD_STEP_FACTOR * load_ms)


def check_bottleneck(facts: Facts) -> list[Finding]:
    step, reading = facts.get("step") or {}, facts["reading"]
    steady = reading["batch_ms"][1:]  # batch 0 includes starting the workers
    if not step.get("ok") or len(steady) < 2:
        return []
    load, compute = statistics.median(steady), compute_ms(step["timings_ms"])
    if load <= compute or load < MIN_BOTTLENECK_MS:
        return []
    rate = 1000.0 * reading["batch_sizes"][0] / load
    return [make_finding("dataloader-bottleneck", f"Loading a batch takes {load:.1f} ms but a training step on it "
                         f"{compute:.1f} ms ({step['device']}, {step['timing']}): the model would wait "
                         f"{load / compute:.1f}× as long as it computes ({rate:,.0f} samples/s from the loader).",
                         details={"load_ms": load, "step_ms": compute, "samples_per_s": rate,
                                  "num_workers": facts["loader"]["num_workers"]})]


def check_training_step(facts: Facts) -> list[Finding]:
    step = facts.get("step") or {}
    findings = [make_finding(w["id"], f"{w['sentence']} (warned during the training step: {w['quote']})",
                             details={"from_step": True, "warning": w["quote"]})
                for w in step.get("warnings_explained", ())]
    failure = step.get("failure")
    if not failure:
        return findings
    where = _where(failure["user_frame"])
    explained = step.get("explained")
    if explained:
        findings.append(make_finding(explained["id"], f"{explained['sentence']} The training step failed in "
                                     f"{failure['phase']}{where}: {explained['quote']}",
                                     location=_location(failure["user_frame"]), details={"from_step": True, **failure}))
    else:
        findings.append(make_finding("training-step-failed", f"A training step on the first batch failed in "
                                     f"{failure['phase']}{where}: {failure['exc_type']}: "
                                     f"{_headline(failure['message'])}", location=_location(failure["user_frame"]),
                                     details=failure))
    return findings


# --- reading failures ----------------------------------------------------------------------------------


_WORKER_CAUSES = {
    "pickling": ("The DataLoader could not start its worker processes: the dataset (or its collate_fn) cannot be "
                 "pickled, which the '{method}' start method needs",
                 "Define the dataset, its transforms and collate_fn at module level (no lambdas or local "
                 "functions), or use multiprocessing_context='fork' on Linux."),
    "bus-error": ("A DataLoader worker died of a bus error (SIGBUS), which in workers almost always means /dev/shm "
                  "ran out", "docker run --shm-size=8g ... (or --ipc=host); or lower num_workers or the batch size."),
    "shm-exhausted": ("DataLoader workers ran out of shared memory (/dev/shm)",
                      "docker run --shm-size=8g ... (or --ipc=host); or lower num_workers or the batch size."),
    "worker-killed": ("A DataLoader worker was killed by a signal{signals} (SIGKILL usually means the "
                      "out-of-memory killer)", "Check `dmesg` for the OOM killer; lower num_workers or batch size."),
    "cuda-fork-init": ("CUDA was initialised before the DataLoader forked its workers, and a forked worker cannot "
                       "use CUDA",
                       "Keep CUDA out of the Dataset, or DataLoader(..., multiprocessing_context='spawn')."),
    "other": ("A DataLoader worker process failed", "Rerun with num_workers=0 to see the underlying error."),
}


def _worker_finding(failure: Mapping[str, Any], loader: Mapping[str, Any]) -> Finding:
    worker = failure["worker"]
    cause = worker["cause"] if worker["cause"] in _WORKER_CAUSES else "other"
    sentence, fix = _WORKER_CAUSES[cause]
    signals = f" ({', '.join(worker['signals'])})" if worker["signals"] else ""
    sentence = sentence.format(method=loader["multiprocessing_context"] or "default", signals=signals)
    return make_finding("worker-failed", f"{sentence}: {failure['exc_type']}: {_headline(failure['message'])}",
                        fix=fix, details={**worker, "num_workers": loader["num_workers"], "error": failure["message"]})


def _hang_finding(failure: Mapping[str, Any], located: Mapping[str, Any], loader: Mapping[str, Any]) -> Finding:
    late = "iter(loader) did not return" if failure["at_start"] else f"Batch {failure['batch']} did not arrive"
    limit = f"{failure['timed_out']:g} s"
    if failure.get("timed_out_by") not in (None, "torchdoctor"):
        limit += f" (the loader's own {failure['timed_out_by']})"
    details = {**_failure_details(failure), "timed_out_s": failure["timed_out"],
               "timed_out_by": failure.get("timed_out_by"), "num_workers": loader["num_workers"],
               "located": dict(located)}
    if located.get("hang") == "main":
        index = f"dataset[{located['index']}]" if located.get("index") is not None else "the loader"
        return make_finding("loader-hang", f"{late} within {limit}: {index} was still blocked"
                            f"{_where(located.get('user_frame'))}.", location=_location(located.get("user_frame")),
                            details=details)
    workers = f"{loader['num_workers']} worker process{'es' if loader['num_workers'] != 1 else ''}"
    if located.get("reproduced"):
        how = _SEEDED if located.get("order") == "seeded" else ""
        return make_finding("loader-hang", f"{late} from {workers} within {limit}; read here one by "
                            f"one{how}, dataset[{located['index']}] blocks too{_where(located.get('user_frame'))}.",
                            location=_location(located.get("user_frame")), details=details)
    if located.get("reproduced") is False:
        return make_finding("loader-hang", f"{late} from {workers} within {limit}, yet "
                            f"{located['read']} of its samples read in this process in {located['read_ms']:.0f} ms: "
                            "the workers deadlock, typically on a lock, thread pool or handle created before the "
                            "fork (OpenCV/OpenMP threads, tokenizers, an open HDF5/LMDB/database handle).",
                            details=details)
    return make_finding("loader-hang", f"{late} from {workers} within {limit}; which samples it "
                        "holds is not known (an iterable data set, or a hang while starting the workers).",
                        details=details)


_SEEDED = " (the loader shuffles, so these are indices torchdoctor drew with seed 0 and read one by one)"


def _sample_failure(failure: Mapping[str, Any], order: str) -> Finding:
    frame, explained = failure["user_frame"], failure["explained"]
    how = _SEEDED if order == "seeded" else ""
    details = {"index": failure["index"], "exc_type": failure["exc_type"], "message": failure["message"],
               "user_frame": frame, "order": order}
    if explained:
        return make_finding(explained["id"], f"{explained['sentence']} dataset[{failure['index']}] raised it"
                            f"{_where(frame)}{how}: {explained['quote']}", location=_location(frame), details=details)
    return make_finding("getitem-failed", f"dataset[{failure['index']}] raised {failure['exc_type']}{_where(frame)}"
                        f"{how}: {_headline(failure['message'])}", location=_location(frame), details=details)


def _variable_size(failure: Mapping[str, Any], samples: Mapping[int, Any], explained: Mapping[str, Any]) -> Finding:
    shapes = _leaf_groups(samples, lambda leaf: tuple(leaf["shape"]) if leaf["shape"] is not None else None)
    varied = {name: groups for name, groups in shapes.items() if len(groups) > 1}
    if not varied:
        return make_finding("variable-size-samples", f"{explained['sentence']} ({explained['quote']})",
                            details=_failure_details(failure))
    name, groups = next(iter(varied.items()))
    listed = "; ".join(f"{list(shape)} at index {_indices(indices)}" for shape, indices in list(groups.items())[:4])
    return make_finding("variable-size-samples", f"Samples of batch {failure['batch']} differ in shape, so "
                        f"default_collate cannot stack them: {name} is {listed}.",
                        details={**_failure_details(failure), "field": name,
                                 "shapes": {str(list(s)): i for s, i in groups.items()}})


def _negative_strides(failure: Mapping[str, Any], samples: Mapping[int, Any], explained: Mapping[str, Any]) -> Finding:
    found = [(index, leaf) for index, leaves in samples.items() for leaf in leaves if leaf["negative_strides"]]
    if not found:
        return make_finding("negative-strides", f"{explained['sentence']} Batch {failure['batch']}: "
                            f"{explained['quote']}", details=_failure_details(failure))
    name, strides = found[0][1]["name"], found[0][1].get("strides")
    return make_finding("negative-strides", f"__getitem__ returns numpy arrays with negative strides ({name}, "
                        f"strides {strides}) at data-set index {_indices([i for i, _ in found])}: a [::-1] flip; "
                        "default_collate cannot turn them into tensors.",
                        details={**_failure_details(failure), "field": name, "indices": [i for i, _ in found][:20]})


_LOCATED: dict[str, Callable[..., Finding]] = {"variable-size-samples": _variable_size,
                                              "negative-strides": _negative_strides}


def _leaf_groups(samples: Mapping[int, Any], key: Callable[[Mapping[str, Any]], Any]) -> dict[str, dict[Any, list]]:
    groups: dict[str, dict[Any, list]] = {}
    for index, leaves in samples.items():
        for leaf in leaves:
            groups.setdefault(leaf["name"], {}).setdefault(key(leaf), []).append(index)
    return groups


def _indices(indices: list[int]) -> str:
    more = f" … ({len(indices)} in all)" if len(indices) > MAX_LISTED else ""
    return ", ".join(str(i) for i in indices[:MAX_LISTED]) + more


def _failure_details(failure: Mapping[str, Any]) -> dict[str, Any]:
    return {key: failure.get(key) for key in ("batch", "exc_type", "message", "user_frame", "indices", "index")}


def _where(frame: Mapping[str, Any] | None) -> str:
    if not frame:
        return ""
    return f" at {frame['file']}:{frame['line']} (in {frame['function']})"


def _location(frame: Mapping[str, Any] | None) -> str | None:
    return f"{frame['file']}:{frame['line']}" if frame else None


def _headline(message: str) -> str:
    return next((line.strip() for line in message.splitlines() if line.strip()), "")


def _merge_step_confirmations(findings: list[Finding]) -> list[Finding]:
    """A step error explained as an id the data checks already found confirms that finding."""
    merged: list[Finding] = []
    for finding in findings:
        earlier = next((i for i, f in enumerate(merged) if f.id == finding.id), None)
        if finding.details.get("from_step") and earlier is not None:
            confirmed = {**merged[earlier].details, "confirmed_by_step": finding.details.get("warning")
                         or f"{finding.details.get('exc_type')}: {_headline(finding.details.get('message', ''))}"}
            merged[earlier] = dataclasses.replace(merged[earlier], details=confirmed)
        else:
            merged.append(finding)
    return merged


CHECKS: tuple[Callable[[Facts], list[Finding]], ...] = (
    check_too_many_workers, check_pin_memory, check_read_failure,
    label_checks.check_label_range, label_checks.check_label_dtype, label_checks.check_target_shape,
    input_checks.check_nonfinite, input_checks.check_input_dtype, input_checks.check_uint8_input,
    input_checks.check_channels_last, input_checks.check_unnormalized,
    check_batchnorm_single_sample, check_unshuffled_classes, check_bottleneck, check_training_step,
)
