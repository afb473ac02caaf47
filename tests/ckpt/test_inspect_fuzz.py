"""Damaged files through the whole inspect (and diff) path: a report or a one-line input error, never a crash."""

import tempfile
from pathlib import Path

import pytest
from fixtures import ckpt_builders as build
from fixtures import old_ckpt_builders as old
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torchdoctor.ckpt.diff import diff_checkpoints
from torchdoctor.ckpt.inspect import inspect_checkpoint
from torchdoctor.errors import InputError

FUZZ = settings(max_examples=40, deadline=3000, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
SOURCES = {}


def source(name: str) -> bytes:
    if name not in SOURCES:
        folder = Path(tempfile.mkdtemp())
        SOURCES[name] = getattr(build, name, None) or getattr(old, name)
        SOURCES[name] = SOURCES[name](folder).read_bytes()
    return SOURCES[name]


INSPECTED = ["lightning_style", "legacy_file", "safetensors_file", "nan_weights",
             "torch_019_module_tar", "torch_010_early_tar", "torchscript_v1_archive"]


@pytest.fixture(scope="module", autouse=True)
def _sources_built():
    """Each source file is written before any example runs: torch.save takes seconds on a loaded machine, and
    the first example's deadline should time the reader, not the writer."""
    for name in INSPECTED:
        source(name)


def mutate(data: bytes, cut: float, flips: list[tuple[float, int]]) -> bytes:
    damaged = bytearray(data[: max(1, int(len(data) * cut))])
    for where, value in flips:
        damaged[int(where * len(damaged))] ^= value
    return bytes(damaged)


@pytest.mark.parametrize("name", INSPECTED)
@FUZZ
@given(cut=st.floats(0.05, 1.0), flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)),
                                                max_size=4))
def test_inspect_never_crashes_on_damaged_files(tmp_path, json_contract, name, cut, flips):
    path = tmp_path / "damaged.bin"
    path.write_bytes(mutate(source(name), cut, flips))
    try:
        report = inspect_checkpoint(path)
    except InputError:
        return
    json_contract(report)  # the JSON contract holds for whatever was found
    json_contract(diff_checkpoints(path, path))
