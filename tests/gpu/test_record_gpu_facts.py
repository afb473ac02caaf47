"""benchmarks/record_gpu_facts.py: its CPU-side logic on a transcribed card, and its clean refusal without CUDA."""

import json
import subprocess
import sys
from datetime import date

import pytest
from benchmarks import record_gpu_facts as recorder
from tests.conftest import REPO_ROOT


def transcribed(name: str) -> dict:
    return json.loads((REPO_ROOT / "fixtures" / "gpu_facts" / f"{name}.json").read_text())


def test_card_names_become_file_names():
    assert recorder.card_slug("NVIDIA H100 80GB HBM3") == "h100"
    assert recorder.card_slug("Tesla T4") == "t4"
    assert recorder.card_slug("NVIDIA GeForce RTX 4090") == "rtx"
    assert recorder.card_slug("AMD Instinct MI300X") == "mi300x"


def test_writes_one_fixture_per_card_model_in_the_transcribed_shape(tmp_path):
    facts = transcribed("a100")
    second = {**facts["devices"][0], "index": 1}
    facts = {k: v for k, v in facts.items() if k != "provenance"} | {"devices": [*facts["devices"], second]}
    (path,) = recorder.record(tmp_path, lambda: facts, "2.13.0")
    written = json.loads(path.read_text())
    assert path.name == "a100.json"
    assert written["provenance"] == recorder.provenance_line("2.13.0", date.today())
    assert set(written) == set(transcribed("a100"))  # the judgement tests read either kind alike
    assert written["devices"] == [transcribed("a100")["devices"][0]]


@pytest.mark.parametrize("card", ["no_driver", "driver_too_old"])
def test_a_machine_without_a_usable_card_writes_nothing(tmp_path, card):
    with pytest.raises(recorder.NoGpu, match="."):
        recorder.record(tmp_path / "out", lambda: transcribed(card), "2.13.0")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_refuses_cleanly_on_this_machine_without_cuda(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: tests/gpu/test_gpu_paths.py records for real")
    done = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "record_gpu_facts.py"),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("record_gpu_facts: nothing recorded: ") and done.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()
