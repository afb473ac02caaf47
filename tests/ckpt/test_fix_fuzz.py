"""Damaged files through ``ckpt fix``: a report or a one-line tool error (exit 2), never a crash, never a temp
file left behind, never a change to the input."""

import tempfile

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.ckpt.test_inspect_fuzz import FUZZ, mutate, source

from torchdoctor.ckpt.fix import fix_checkpoint
from torchdoctor.errors import TorchdoctorError

FIXED = ["dataparallel_state_dict", "tied_dataparallel", "legacy_file", "safetensors_file", "lightning_style"]


@pytest.fixture(scope="module", autouse=True)
def _sources_built():
    for name in FIXED:  # before the examples: their deadline times the fix, not torch.save
        source(name)


@pytest.mark.parametrize("name", FIXED)
@FUZZ
@given(cut=st.floats(0.05, 1.0), flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)),
                                                max_size=4))
def test_fix_never_crashes_on_damaged_files(tmp_path, json_contract, name, cut, flips):
    folder = tempfile.mkdtemp(dir=tmp_path)
    path = tmp_path / folder / "damaged.pt"
    damaged = mutate(source(name), cut, flips)
    path.write_bytes(damaged)
    try:
        report = fix_checkpoint(path, output=path.with_name("fixed.pt"), strip_prefixes=("module.",))
    except TorchdoctorError as error:
        assert error.exit_code == 2 and "\n" not in error.message
        assert not path.with_name("fixed.pt").exists()
    else:
        json_contract(report)  # the JSON contract holds for whatever was found
    assert path.read_bytes() == damaged
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []
