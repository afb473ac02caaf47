"""Inputs that do not fit, and models that cannot be counted: findings, not tracebacks."""

import pytest
import torch
from fixtures import count_models as models
from torch import nn

from torchdoctor.count import count
from torchdoctor.errors import UsageError, UserCodeError


def test_wrong_input_shape_names_the_layer_its_weight_and_the_input():
    report = count(models.LinearStack(), torch.randn(2, 30))
    (finding,) = report.findings
    assert finding.id == "layer-shape-mismatch" and report.exit_code() == 1
    assert finding.details["layer"] == "fc1" and finding.details["weight_shape"] == [32, 16]
    assert finding.details["input_shapes"] == [[2, 30]]
    assert report.result["macs"] is None and report.result["params"]["total"] == 808


def test_channels_last_image_names_the_convolution():
    report = count(models.ConvNet(), torch.randn(1, 16, 16, 3))
    (finding,) = report.findings
    assert finding.id == "layer-shape-mismatch" and finding.location == "conv"


def test_wrong_shape_during_a_training_step_is_also_a_layer_mismatch():
    (finding,) = count(models.LinearStack(), torch.randn(2, 30), train_step=True).findings
    assert finding.id == "layer-shape-mismatch" and finding.location == "fc1"


def test_no_inferable_input_shape_is_a_usage_error_with_a_hint():
    with pytest.raises(UsageError) as caught:
        count(models.FunctionalMatmul())
    assert "--input-shape" in caught.value.hint


def test_a_forward_that_fails_for_another_reason_cannot_be_counted():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            raise KeyError("no such feature")

    with pytest.raises(UserCodeError) as caught:
        count(Broken(), torch.randn(1, 4))
    assert "KeyError" in caught.value.message


def test_not_a_module_is_a_usage_error():
    with pytest.raises(UsageError):
        count("resnet50", torch.randn(1, 3))


def test_the_fix_names_the_layer_it_means():
    (finding,) = count(models.LinearStack(), torch.randn(2, 30)).findings
    assert "layer 'fc1' (Linear)" in finding.fix and "named layer" not in finding.fix


def test_a_guessed_input_that_does_not_fit_blames_the_guess_not_the_model():
    model = models.SmallImageNet()  # healthy on 64x64 images; the guess from its first conv is 32x32
    with pytest.raises(UsageError) as caught:
        count(model)
    assert "guessed" in str(caught.value) and "[1, 3, 32, 32]" in str(caught.value)
    assert "--input-shape" in caught.value.hint
    report = count(model, input_shapes=[(1, 3, 64, 64)])  # the real shape: counted, nothing to blame
    assert report.exit_code() == 0 and report.result["input_guessed"] is False and report.result["macs"] > 0


def test_a_model_that_takes_keyword_inputs_is_pointed_at_input():
    model = models.KeywordSeq2Seq()  # like T5: the decoder's inputs come by keyword
    with pytest.raises(UsageError) as caught:
        count(model)
    assert "decoder_ids" in str(caught.value) and "--input file.py:make_inputs" in caught.value.hint
    inputs = {"input_ids": torch.randint(0, 50, (2, 6)), "decoder_ids": torch.randint(0, 50, (2, 3))}
    assert count(model, inputs).result["macs"] == 2 * 3 * 8 * 50
