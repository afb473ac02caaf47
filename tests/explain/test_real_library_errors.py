"""Errors met on real artifacts (Hugging Face models, tokenizers and Trainer; meta-device weights), each
produced for real here and explained from the exception and from its traceback text."""

from __future__ import annotations

import traceback

import pytest
import torch
from torch import nn

from torchdoctor.explain.parse import explain_text
from torchdoctor.explain.rules import explain_exception


def _explained(make) -> tuple[str, list[str]]:
    try:
        make()
    except Exception as exc:  # noqa: BLE001 - the real error is what we want
        finding = explain_exception(exc)
        text = "".join(traceback.format_exception(exc))
        return (finding.id if finding else None), explain_text(text, "stdin").result["matched"]
    pytest.fail("raised nothing")


@pytest.mark.parametrize("make", [
    lambda: nn.Linear(2, 2, device="meta")(torch.randn(1, 2)),  # a weight the checkpoint never filled
    lambda: nn.Linear(2, 2, device="meta").to("cpu"),
], ids=["forward", "to"])
def test_weights_left_on_the_meta_device(make):
    assert _explained(make) == ("meta-tensor-weights", ["meta-tensor-weights"])


@pytest.fixture(scope="module")
def transformers():
    return pytest.importorskip("transformers")


def _word_tokenizer(transformers, **special):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, "[PAD]": 1, "a": 2, "b": 3}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", **special)


def test_padding_with_a_tokenizer_without_pad_token(transformers):
    tokenizer = _word_tokenizer(transformers)  # as GPT-2's and LLaMA's tokenizers ship
    assert _explained(lambda: tokenizer(["a b", "a"], padding=True)) == (
        "tokenizer-no-pad-token", ["tokenizer-no-pad-token"])
    assert _word_tokenizer(transformers, pad_token="[PAD]")(["a b", "a"], padding=True)["input_ids"][1][1] == 1


def test_trainer_batches_without_labels(transformers, tmp_path):
    config = transformers.GPT2Config(n_layer=1, n_embd=8, n_head=1, vocab_size=10, n_positions=8)
    model = transformers.GPT2LMHeadModel(config)
    args = transformers.TrainingArguments(str(tmp_path), report_to=[], use_cpu=True)
    trainer = transformers.Trainer(model=model, args=args)
    batch = {"input_ids": torch.randint(0, 10, (2, 4))}
    assert _explained(lambda: trainer.compute_loss(model, batch)) == ("trainer-no-loss", ["trainer-no-loss"])
    assert trainer.compute_loss(model, {**batch, "labels": batch["input_ids"]}).ndim == 0
