"""--train-step measures a real step; --meta counts a 7B-parameter config without allocating it."""

import json
import subprocess
import sys

import pytest
import torch
from fixtures import count_models as models

from torchdoctor.count import count


def test_train_step_is_measured_and_matches_the_hand_derived_backward():
    batch = 4
    report = count(models.LinearStack(), torch.randn(batch, 16), train_step=True)
    phases = report.result["phases"]
    forward = batch * (16 * 32 + 32 * 8)
    # Backward: weight grads of both layers (1x forward) + the input grad of fc2 only (fc1's input is data,
    # which needs no grad): 2x forward minus fc1's share.
    backward = 2 * forward - batch * 16 * 32
    assert phases["forward"]["macs"] == forward
    assert phases["backward"]["macs"] == backward
    assert phases["optimizer"] == {"macs": 0, "flops": 0}  # SGD updates are elementwise
    assert report.result["macs"] == forward + backward
    assert 2 <= report.result["macs"] / forward <= 3
    assert report.result["mode"] == "train-step" and report.result["training_step"]["ok"] is True
    optimizer_ops = {row["op"] for row in report.result["uncounted_ops"]}
    assert any(op.startswith("aten._foreach_") or op.startswith("aten.add_") for op in optimizer_ops)


def test_train_step_of_a_deep_linear_stack_is_close_to_three_forwards():
    model = torch.nn.Sequential(*(torch.nn.Linear(64, 64) for _ in range(16)))
    report = count(model, torch.randn(8, 64), train_step=True)
    forward = 16 * 8 * 64 * 64
    assert report.result["phases"]["forward"]["macs"] == forward
    assert report.result["phases"]["backward"]["macs"] == 2 * forward - 8 * 64 * 64
    assert report.result["macs"] / forward == pytest.approx(3, rel=0.05)


def test_train_step_layers_include_backward():
    report = count(models.LinearStack(), torch.randn(4, 16), train_step=True)
    rows = {row["name"]: row for row in report.result["layers"]}
    assert rows["fc1"]["macs"] == 2 * 4 * 16 * 32  # forward + weight grad
    assert rows["fc2"]["macs"] == 3 * 4 * 32 * 8  # forward + weight grad + input grad


def test_train_step_and_meta_together_is_a_usage_error():
    from torchdoctor.errors import UsageError

    with pytest.raises(UsageError):
        count(models.LinearStack(), torch.randn(4, 16), train_step=True, meta=True)


def test_meta_count_of_a_tiny_decoder_equals_the_real_count():
    model = models.tiny_decoder()
    real = count(model, torch.randint(0, 64, (1, 12)))
    meta = count(model, torch.randint(0, 64, (1, 12)), meta=True)
    assert meta.result["device"] == "meta" and meta.result["macs"] == real.result["macs"]
    assert meta.result["params"] == real.result["params"]
    assert not next(model.parameters()).is_meta


# Peak RSS from VmHWM: ru_maxrss of a child would start at pytest's own RSS (kept across fork and exec).
SEVEN_B = """
import json, re, sys
from torchdoctor.count import count_spec
report = count_spec(sys.argv[1], input_shapes=[(1, 128)], meta=True)
peak_kib = int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
print(json.dumps({"params": report.result["params"]["total"],
                  "macs": report.result["macs"], "device": report.result["device"], "rss_mib": peak_kib / 1024}))
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_meta_counts_a_7b_config_without_allocating(repo_root):
    spec = f"{repo_root / 'fixtures' / 'count_models.py'}:llama_7b"
    done = subprocess.run([sys.executable, "-c", SEVEN_B, spec], capture_output=True, text=True, timeout=120,
                          check=True)
    facts = json.loads(done.stdout)
    assert facts["params"] == 6_738_415_616 and facts["device"] == "meta"
    d_model, ffn, tokens = 4096, 11008, 128
    per_block = tokens * (4 * d_model * d_model + 3 * d_model * ffn) + 2 * tokens * tokens * d_model
    assert facts["macs"] == 32 * per_block + tokens * d_model * 32000
    assert facts["rss_mib"] < 1024  # 27 GB of float32 weights were never allocated
    # its speed goal lives in benchmarks/bench_count.py (a timed unit test only measures the machine's load)


def test_train_step_runs_where_the_model_is_and_says_so():
    report = count(models.LinearStack(), torch.randn(4, 16), train_step=True)
    assert report.result["device"] == "cpu" and report.result["training_step"]["device"] == "cpu"


def test_device_option_is_checked_against_this_machine():
    from torchdoctor.errors import UsageError

    assert count(models.LinearStack(), device="cpu").result["device"] == "cpu"
    with pytest.raises(UsageError, match="--device and --meta"):
        count(models.LinearStack(), device="cpu", meta=True)
    with pytest.raises(UsageError, match="--device warp9 cannot be used"):
        count(models.LinearStack(), device="warp9")
    if not torch.cuda.is_available():  # tests/gpu runs the CUDA side
        with pytest.raises(UsageError, match="--device cuda:0 cannot be used"):
            count(models.LinearStack(), device="cuda:0", train_step=True)
