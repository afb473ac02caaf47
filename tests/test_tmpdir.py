"""The suite leaves nothing in the system temp dir: subprocesses' temp folders land under pytest's tree."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

# what multiprocessing does when a DataLoader starts workers, and what torch.distributed.run does for its
# log folder (torchelastic_*): both ask tempfile, which reads TMPDIR
_CHILD = """
import multiprocessing.util, tempfile
print(multiprocessing.util.get_temp_dir())
print(tempfile.mkdtemp(prefix="torchelastic_"))
"""


def test_subprocess_temp_folders_land_under_the_session_tmpdir(private_tmpdir):
    done = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, check=True, timeout=60)
    folders = [Path(line) for line in done.stdout.split()]
    assert [folder.name.split("-")[0].split("_")[0] for folder in folders] == ["pymp", "torchelastic"]
    for folder in folders:  # (multiprocessing removes its pymp-* at a clean exit; a killed child does not)
        assert folder.is_relative_to(private_tmpdir), folder
    assert folders[1].is_dir()


def test_this_process_uses_it_too(private_tmpdir):
    assert Path(tempfile.gettempdir()) == private_tmpdir
