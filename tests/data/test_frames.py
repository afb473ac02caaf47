"""Where a data error is reported: the user's own ``__getitem__`` line, not the installed library's frame."""

from __future__ import annotations

from pathlib import Path

from fixtures import loaders
from torch.utils.data import DataLoader

from torchdoctor.data.api import probe_loader


def line_of(marker: str) -> int:
    text = Path(loaders.__file__).read_text().splitlines()
    (line,) = [n for n, code in enumerate(text, 1) if marker in code]
    return line


def test_getitem_failed_points_at_the_users_getitem_not_the_librarys_frame(tmp_path):
    decoder = loaders.installed_decoder(tmp_path)
    loader = DataLoader(loaders.EncodedImageDataset(decoder), batch_size=4)
    report = probe_loader(loader)
    (finding,) = [f for f in report.findings if f.id == "getitem-failed"]
    frame = finding.details["user_frame"]
    assert (Path(frame["file"]).name, frame["function"]) == ("loaders.py", "__getitem__")
    assert frame["line"] == line_of("# raises for the truncated file")
    assert finding.location.endswith(f"loaders.py:{frame['line']}")
    assert "image file is truncated" in finding.message and "ImageFile.py" not in finding.message
    raised_in = frame["raised_in"]  # the library's own frame is still there for whoever needs it
    assert Path(raised_in["file"]).name == "ImageFile.py" and "site-packages" in raised_in["file"]
    assert finding.details["index"] == loaders.EncodedImageDataset.BAD_INDEX
