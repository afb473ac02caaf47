"""The safe reader against real torch.load: keys, shapes, dtypes, storages, globals, streamed data, fuzzing."""

from __future__ import annotations

import io
import math
import subprocess
import sys
import tempfile
import textwrap
import tracemalloc
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures.ckpt_builders import MARKER_NAME, BuiltCheckpoints, dcp_state, safetensors_tensors
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torchdoctor.ckpt.formats import Format, detect_format
from torchdoctor.ckpt.reader import CheckpointCorrupt, read_checkpoint
from torchdoctor.ckpt.tensor_data import (
    as_numbers,
    count_nonfinite,
    iter_record_bytes,
    iter_storage_bytes,
    iter_tensor_chunks,
    iter_tensor_values,
    tensor_max_abs_diff,
    zip_record_span,
)
from torchdoctor.errors import InputError

WEIGHTS_ONLY = ("plain_state_dict", "dataparallel_state_dict", "compiled_state_dict", "legacy_file",
                "lightning_style", "training_state", "tied_weights", "views_state_dict", "dtypes_state_dict",
                "nan_weights")
MALICIOUS = {"malicious_zip": "posix.system", "malicious_legacy": "builtins.exec",
             "malicious_pickle": "builtins.exec", "malicious_getattr_chain": "builtins.getattr"}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return BuiltCheckpoints(tmp_path_factory.mktemp("ckpt_reader"))


def torch_tensors(obj, prefix=()) -> dict[str, torch.Tensor]:
    """What torch.load returned, keyed the way the reader keys it."""
    if isinstance(obj, torch.Tensor):
        return {".".join(prefix): obj}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list | tuple) else ()
    return {k: v for key, child in items for k, v in torch_tensors(child, (*prefix, str(key))).items()}


def assert_matches_torch(reading, expected: dict[str, torch.Tensor], *, device: str | None = None) -> None:
    assert list(reading.tensors) == list(expected)
    for key, tensor in expected.items():
        record = reading.tensors[key]
        assert record.shape == tuple(tensor.shape), key
        assert record.dtype == str(tensor.dtype).removeprefix("torch."), key
        assert record.device == (device or str(tensor.device)), key
        assert record.is_parameter == isinstance(tensor, torch.nn.Parameter), key
        assert record.requires_grad == tensor.requires_grad, key
        if tensor.device.type != "meta":
            assert record.stride == tensor.stride() and record.storage_offset == tensor.storage_offset(), key


def values(reading, key) -> np.ndarray:
    dtype = reading.tensors[key].dtype
    return np.concatenate([as_numbers(chunk, dtype) for chunk in iter_tensor_values(reading, key, 7)] or [[]])


def torch_values(tensor: torch.Tensor) -> np.ndarray:
    wide = torch.complex128 if tensor.is_complex() else torch.float64
    return tensor.detach().to(wide).flatten().numpy()


@pytest.mark.parametrize("builder", WEIGHTS_ONLY)
def test_matches_torch_load_weights_only(built, builder):
    path = built(builder)
    reading = read_checkpoint(path)
    loaded = torch.load(path, weights_only=True)
    assert_matches_torch(reading, torch_tensors(loaded))
    assert reading.global_names("unsafe") == [] and reading.global_names("module") == []
    for key, tensor in torch_tensors(loaded).items():
        if tensor.device.type != "meta":
            np.testing.assert_array_equal(values(reading, key), torch_values(tensor), err_msg=key)


def test_storages_are_shared_like_torchs(built):
    path = built("tied_weights")
    reading = read_checkpoint(path)
    loaded = torch_tensors(torch.load(path, weights_only=True))
    groups = {}
    for key, tensor in loaded.items():
        groups.setdefault(tensor.untyped_storage().data_ptr(), set()).add(reading.tensors[key].storage_key)
    assert all(len(keys) == 1 for keys in groups.values())
    assert len(reading.storages) == len(groups) == 2
    assert reading.tensors["0.weight"] == reading.tensors["1.weight"]  # state_dict() detaches: 2 objects
    assert reading.tensors["second_half"].storage_offset == 6


def test_full_module_pickle_names_its_classes_without_importing_them(built):
    path = built("full_module_pickle")
    reading = read_checkpoint(path)
    assert "fixtures.models.TinyConvNet" in reading.global_names("module")
    assert "torch.nn.modules.conv.Conv2d" in reading.global_names("module")
    assert reading.global_names("unsafe") == []
    model = torch.load(path, weights_only=False)  # our own fixture: safe to load for real
    assert_matches_torch(reading, dict(model.state_dict(keep_vars=True)))


def test_torchscript_reads_data_and_constants(built):
    path = built("torchscript_file")
    reading = read_checkpoint(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        module = torch.jit.load(path)
    expected = dict(module.state_dict())
    assert {k: r.shape for k, r in reading.tensors.items()} == {k: tuple(t.shape) for k, t in expected.items()}
    assert all(row["kind"] == "safe" for row in reading.globals)
    assert "__torch__.fixtures.models.TinyConvNet" in reading.global_names("safe")
    np.testing.assert_array_equal(values(reading, "fc.weight"), torch_values(expected["fc.weight"]))


def test_legacy_tar_matches_torch_load(built):
    path = built("legacy_tar_file")
    reading = read_checkpoint(path)
    loaded = torch_tensors(torch.load(path, weights_only=False))  # torch refuses weights_only for tar files
    assert_matches_torch(reading, loaded)
    for key, tensor in loaded.items():
        np.testing.assert_array_equal(values(reading, key), torch_values(tensor))


def test_safetensors_and_shards_match_what_was_written(built):
    written = safetensors_tensors()
    for builder in ("safetensors_file", "hf_sharded_dir"):
        reading = read_checkpoint(built(builder))
        assert_matches_torch(reading, written)
        for key, tensor in written.items():
            np.testing.assert_array_equal(values(reading, key), torch_values(tensor), err_msg=key)
    sharded = read_checkpoint(built("hf_sharded_dir"))
    assert sharded.shards["embed.weight"] == "model-00001-of-00002.safetensors"
    assert sharded.metadata["total_size"] > 0


def test_hf_sharded_torch_save_shards(built):
    reading = read_checkpoint(built("hf_sharded_bin_dir"))
    loaded = {}
    for shard in sorted(built("hf_sharded_bin_dir").glob("*.bin")):
        loaded.update(torch.load(shard, weights_only=True))
    assert {k: r.shape for k, r in reading.tensors.items()} == {k: tuple(t.shape) for k, t in loaded.items()}


def test_dcp_metadata_gives_records_without_data(built):
    reading = read_checkpoint(built("dcp_dir"))
    state = dcp_state()
    expected = {"model.w": state["model"]["w"], "model.b": state["model"]["b"], "step": state["step"]}
    assert {k: (r.shape, r.dtype) for k, r in reading.tensors.items()} == \
        {k: (tuple(t.shape), str(t.dtype).removeprefix("torch.")) for k, t in expected.items()}
    assert all(row["kind"] == "safe" for row in reading.globals)
    with pytest.raises(InputError, match="no data"):
        next(iter_tensor_chunks(reading, "model.w"))


def test_metadata_and_version_hints(built):
    lightning = read_checkpoint(built("lightning_style"))
    assert lightning.metadata == {"epoch": 3, "global_step": 100, "pytorch-lightning_version": "2.1.0"}
    assert "pytorch-lightning 2.1.0" in lightning.torch_version_hint
    assert "state_dict.model.fc.weight" in lightning.tensors
    assert "optimizer_states.0.state.0.momentum_buffer" in lightning.tensors
    assert read_checkpoint(built("training_state")).metadata == {"epoch": 7}
    assert read_checkpoint(built("legacy_file")).byteorder == "little"


def test_cuda_saved_locations(built):
    path = built("cuda_saved")
    reading = read_checkpoint(path)
    assert {r.device for r in reading.tensors.values()} == {"cuda:0"}
    assert_matches_torch(reading, torch.load(path, weights_only=True, map_location="cpu"), device="cuda:0")


@pytest.mark.parametrize("builder", sorted(MALICIOUS))
def test_malicious_pickles_are_reported_and_never_run(built, builder):
    path = built(builder)
    reading = read_checkpoint(path)
    assert MALICIOUS[builder] in reading.global_names("unsafe")
    assert not (path.parent / MARKER_NAME).exists()


def test_named_modules_are_never_imported(built, monkeypatch):
    path = built("import_side_effect_pickle")
    monkeypatch.syspath_prepend(str(path.parent))
    reading = read_checkpoint(path)
    assert reading.global_names("unsafe") == ["td_side_effect.thing"]
    assert "td_side_effect" not in sys.modules and not (path.parent / MARKER_NAME).exists()


@pytest.mark.parametrize("builder", ["lfs_pointer", "html_page", "empty_file", "random_bytes"])
def test_non_checkpoints_are_input_errors(built, builder):
    with pytest.raises(InputError, match="is not a checkpoint"):
        read_checkpoint(built(builder))


def test_truncated_zip_is_corrupt(built):
    with pytest.raises(CheckpointCorrupt, match="central directory missing"):
        read_checkpoint(built("truncated_zip"))


def test_nonfinite_counts_match_torch(built):
    path = built("nan_weights")
    reading = read_checkpoint(path)
    for key, tensor in torch_tensors(torch.load(path, weights_only=True)).items():
        wide = tensor if tensor.is_complex() or not tensor.is_floating_point() else tensor.double()
        expected = (int(torch.isnan(wide).sum()), int(torch.isinf(wide).sum()))
        assert count_nonfinite(reading, key, chunk_bytes=16) == expected, key


def test_max_abs_diff_matches_torch(built, tmp_path):
    path = built("nan_weights")
    loaded = torch.load(path, weights_only=True)
    torch.manual_seed(1)
    changed = {k: (v + torch.randn(v.shape).to(v.dtype) if v.is_floating_point() else v * 3) for k, v in
               loaded.items() if not k.startswith(("float8", "complex"))}
    other = tmp_path / "changed.pt"
    torch.save(changed, other)
    a, b = read_checkpoint(path), read_checkpoint(other)
    for key in changed:
        x, y = loaded[key].double(), changed[key].double()
        same = (x == y) | (x.isnan() & y.isnan())  # NaN facing NaN is no difference
        expected = torch.where(same, torch.zeros_like(x), (x - y).abs()).max().item()
        got = tensor_max_abs_diff(a, key, b, key, chunk_bytes=64)
        assert got == expected or (math.isnan(got) and math.isnan(expected)), key


def test_max_abs_diff_of_non_contiguous_views(built, tmp_path):
    path = built("views_state_dict")
    loaded = torch.load(path, weights_only=True)
    copies = tmp_path / "copies.pt"
    torch.save({k: v.contiguous() * 2 for k, v in loaded.items()}, copies)
    a, b = read_checkpoint(path), read_checkpoint(copies)
    for key, tensor in loaded.items():
        assert tensor_max_abs_diff(a, key, b, key, chunk_bytes=32) == tensor.double().abs().max().item(), key
    assert tensor_max_abs_diff(a, "transposed", a, "transposed") == 0.0
    with pytest.raises(ValueError, match="shapes differ"):
        tensor_max_abs_diff(a, "transposed", a, "offset")


def test_chunks_stay_bounded_for_a_64_mib_tensor(built):
    reading = read_checkpoint(built("big_tensor"))
    record = reading.tensors["big"]
    assert record.nbytes == 64 << 20
    tracemalloc.start()
    try:
        seen = 0
        for chunk in iter_tensor_chunks(reading, "big", chunk_bytes=1 << 20):
            assert chunk.nbytes <= 1 << 20
            assert chunk[0] == seen
            seen += chunk.size
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert seen == record.numel
    assert peak < 4 << 20


def test_raw_record_and_storage_bytes(built):
    path = built("plain_state_dict")
    reading = read_checkpoint(path)
    info = reading.storages[reading.tensors["fc.weight"].storage_key]
    with zipfile.ZipFile(path) as archive:
        expected = archive.read(info.record)
    assert b"".join(iter_record_bytes(path, info.record, 5)) == expected
    offset, size = zip_record_span(path, info.record)
    assert path.read_bytes()[offset:offset + size] == expected
    legacy = read_checkpoint(built("legacy_file"))
    key = legacy.tensors["bf16"].storage_key
    raw = torch.load(built("legacy_file"), weights_only=True)["bf16"].view(torch.uint8).numpy().tobytes()
    assert b"".join(iter_storage_bytes(legacy, key, 3)) == raw


def test_compressed_zip_records_are_streamed_too(built, tmp_path):
    path = built("plain_state_dict")
    deflated = tmp_path / "deflated.pt"
    with zipfile.ZipFile(path) as old, zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as new:
        for info in old.infolist():
            new.writestr(info.filename, old.read(info))
    reading = read_checkpoint(deflated)
    assert zip_record_span(deflated, reading.storages["0"].record) is None
    for key, tensor in torch.load(path, weights_only=True).items():
        np.testing.assert_array_equal(values(reading, key), torch_values(tensor), err_msg=key)


def _run_isolated(code: str) -> str:
    """Pickle bombs run in a child: a failed guard crashes or hangs the child, not the test session."""
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_pickle_bombs_are_refused_quickly():
    result = _run_isolated("""
        import struct, tempfile, time, pathlib
        from torchdoctor.ckpt.reader import read_checkpoint, CheckpointCorrupt
        bombs = {
            "deep key": b"\\x80\\x02}(" + b"K\\x01" + b"\\x85" * 200000 + b"K\\x02u.",
            "shared key": b"\\x80\\x02}(K\\x01\\x85" + b"2\\x86" * 80 + b"K\\x02u.",
            "huge bytearray": b"\\x80\\x05\\x96" + struct.pack("<Q", 1 << 40) + b".",
            "huge memo index": b"\\x80\\x02K\\x01r\\xff\\xff\\xff\\x7f0h\\x00.",
            # one 5000-tuple passed to a stub 20000 times: 800 MB of argument copies from 110 KB
            "copied arguments": b"\\x80\\x02(" + b"K\\x01" * 5000 + b"tq\\x00cevil\\nStub\\nq\\x01("
                                + b"h\\x01h\\x00R" * 20000 + b"l.",
            # a key of 32767 shared tuples, hashed (uncached) by 100000 SETITEMs
            "reused big key": b"\\x80\\x02K\\x01\\x85" + b"2\\x86" * 14 + b"q\\x000}" + b"h\\x00K\\x01s" * 100000
                              + b".",
        }
        for name, data in bombs.items():
            path = pathlib.Path(tempfile.mkdtemp()) / "bomb.pkl"
            path.write_bytes(data)
            start = time.perf_counter()
            try:
                read_checkpoint(path)
                outcome = "read"
            except CheckpointCorrupt:
                outcome = "corrupt"
            assert time.perf_counter() - start < 5, name
            print(name, outcome)
    """)
    assert result.splitlines() == ["deep key corrupt", "shared key corrupt", "huge bytearray corrupt",
                                   "huge memo index corrupt", "copied arguments corrupt", "reused big key corrupt"]


# --- fuzzing: damaged files either read or raise CheckpointCorrupt / InputError, never anything else ------------

FUZZ_BUILDERS = ("plain_state_dict", "legacy_file", "safetensors_file")
FUZZ = settings(max_examples=60, deadline=2000, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])




def read_everything(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzzed.pt"
        path.write_bytes(data)
        try:
            reading = read_checkpoint(path, detect_format(path))
            for key in reading.tensors:
                count_nonfinite(reading, key)
        except (CheckpointCorrupt, InputError):
            pass


@pytest.mark.parametrize("builder", FUZZ_BUILDERS)
@FUZZ
@given(fraction=st.floats(0, 1))
def test_fuzz_truncations(built, builder, fraction):
    data = built(builder).read_bytes()
    read_everything(data[:int(len(data) * fraction)])


@pytest.mark.parametrize("builder", FUZZ_BUILDERS)
@FUZZ
@given(flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), min_size=1, max_size=6))
def test_fuzz_byte_flips(built, builder, flips):
    data = bytearray(built(builder).read_bytes())
    for where, mask in flips:
        data[int(where * len(data))] ^= mask
    read_everything(bytes(data))


@FUZZ
@given(flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), min_size=1, max_size=4))
def test_fuzz_data_pkl_inside_a_valid_zip(built, flips):
    """Flips in data.pkl with the zip rebuilt around it: the damage reaches the unpickler, not the CRC check."""
    with zipfile.ZipFile(built("plain_state_dict")) as archive:
        records = {info.filename: archive.read(info) for info in archive.infolist()}
    name = next(n for n in records if n.endswith("data.pkl"))
    pickled = bytearray(records[name])
    for where, mask in flips:
        pickled[int(where * len(pickled))] ^= mask
    records[name] = bytes(pickled)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for record, data in records.items():
            archive.writestr(record, data)
    read_everything(buffer.getvalue())


def test_fuzzed_files_start_out_valid(built):
    assert {detect_format_of(built(name).read_bytes()) for name in FUZZ_BUILDERS} == {
        Format.ZIP, Format.LEGACY, Format.SAFETENSORS}


def detect_format_of(data: bytes) -> Format:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "x"
        path.write_bytes(data)
        return detect_format(path).format
