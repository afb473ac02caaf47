"""Byte-level helpers of the zip record writer, on real files."""

import os

import pytest

from torchdoctor.ckpt import record_copy


def test_preallocate_allocates_the_holes_a_reserved_record_leaves(tmp_path):
    path = tmp_path / "reserved.bin"
    with open(path, "wb") as f:
        f.truncate(8 << 20)  # what torch's writer leaves for a reserved record: a hole
    fd = os.open(path, os.O_RDWR)
    try:
        before = os.fstat(fd).st_blocks * 512
        record_copy.preallocate(fd, 8 << 20)
        after = os.fstat(fd).st_blocks * 512
    finally:
        os.close(fd)
    if before >= 8 << 20:
        pytest.skip("this filesystem does not keep holes")
    if after == before:
        pytest.skip("this filesystem cannot allocate without writing (fallocate unsupported)")
    assert after >= 8 << 20 and os.path.getsize(path) == 8 << 20 and path.read_bytes() == bytes(8 << 20)


def test_copy_range_copies_in_the_kernel_and_reports_short_sources(tmp_path):
    source, target = tmp_path / "a", tmp_path / "b"
    source.write_bytes(bytes(range(256)) * 64)
    target.write_bytes(b"\xff" * 100)
    with open(source, "rb") as src, open(target, "r+b") as dst:
        assert record_copy.copy_range(src.fileno(), dst.fileno(), 10, 20, 1000) == 1000
        with pytest.raises(record_copy.CheckpointCorrupt, match="ends 5 bytes before"):
            record_copy.copy_range(src.fileno(), dst.fileno(), len(source.read_bytes()) - 5, 4000, 10)
    assert target.read_bytes()[20:1020] == source.read_bytes()[10:1010]
    assert target.read_bytes()[:20] == b"\xff" * 20


def test_without_copy_file_range_the_bytes_go_through_read_and_write(tmp_path, monkeypatch):
    import errno

    import torch

    from torchdoctor.ckpt.fix import fix_checkpoint

    source = tmp_path / "in.pt"
    torch.save({f"module.w{i}": torch.randn(64, 64) for i in range(3)}, source)
    calls = []

    def across_filesystems(*args):  # what an older kernel says for two filesystems
        calls.append(args)
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", across_filesystems)
    report = fix_checkpoint(source, output=tmp_path / "out.pt")
    assert calls and report.result["writer"]["copy"] == "read/write"
    verified = report.result["verified"]
    assert verified["storages_compared_while_copying"] == 3 and verified["bit_identical"]
    before, after = torch.load(source, weights_only=True), torch.load(tmp_path / "out.pt", weights_only=True)
    assert all(torch.equal(before[f"module.{key}"], value) for key, value in after.items())
