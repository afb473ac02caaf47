"""What `data` says about a short loader and about labels that start at 1 when no class count is given."""

from __future__ import annotations

from fixtures import loaders
from torch.utils.data import DataLoader

from torchdoctor.data.api import probe_loader
from torchdoctor.report import Severity


def headline(report, section: str) -> str:
    return next(s.headline for s in report.sections if s.name == section)


def test_a_loader_with_fewer_batches_than_asked_is_said_to_be_read_whole_and_labels_from_1_get_a_hint():
    report = probe_loader(loaders.labels_one_to_c_loader(), batches=20)  # 96 rows in batches of 16: 6 batches
    batches = headline(report, "batches")
    assert report.result["reading"]["exhausted"] is True and report.result["reading"]["read"] == 6
    assert batches.startswith("read all 6 batch(es) the loader has") and "6 of 20" not in batches
    (finding,) = [f for f in report.findings if f.id == "label-out-of-range"]
    assert finding.severity is Severity.WARNING and report.exit_code() == 0
    assert "Class 0 never appears" in finding.message and "1..4" in finding.message
    assert finding.details["off_by_one"] is True and finding.details["num_classes"] is None
    assert "label - 1" in finding.fix


def test_labels_from_0_or_a_loader_read_in_part_say_neither():
    loader = DataLoader(loaders.CsvDataset(loaders.csv_text(first_label=0)), batch_size=16)
    report = probe_loader(loader, batches=3)
    assert headline(report, "batches").startswith("read 3 of 3 batches")
    assert report.result["reading"]["exhausted"] is False
    assert "label-out-of-range" not in [f.id for f in report.findings]


def test_a_few_samples_of_many_classes_are_no_pattern():
    loader = DataLoader(loaders.CsvDataset(loaders.csv_text(rows=12, first_label=1)), batch_size=4)
    assert "label-out-of-range" not in [f.id for f in probe_loader(loader).findings]
