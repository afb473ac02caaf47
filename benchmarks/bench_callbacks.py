"""TorchdoctorCallback's overhead: the same 20-step tiny GPT-2 ``transformers.Trainer`` run with and without it.

Whole process, as a user pays it: each round runs ``python bench_callbacks.py --child {plain|callback|...}``
for each variant, interleaved (so load drifts hit both alike), and the ratio is the median of the paired
ratios. The child builds a 2-layer GPT-2 from ``GPT2Config`` (no download), trains ``--steps`` steps on
CPU with ``report_to=[]``, and exits. Variants: ``callback`` (the defaults: watch and nan-hunt on),
``nan-hunt`` (``watch=False``). Goal: callback ≤ 1.15× plain.

Run: ``python benchmarks/bench_callbacks.py [--runs 5] [--steps 20]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

GOAL = 1.15
VARIANTS = ("plain", "callback", "nan-hunt")


def child(variant: str, steps: int) -> None:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=16, bos_token_id=1,
                        eos_token_id=1)
    data = [{"input_ids": ids, "labels": ids} for ids in torch.randint(1, 64, (64, 16))]
    callbacks = []
    if variant != "plain":
        from torchdoctor.integrations.transformers import TorchdoctorCallback

        callbacks.append(TorchdoctorCallback(watch=variant == "callback", report=None))
    with tempfile.TemporaryDirectory() as output_dir:
        args = TrainingArguments(output_dir=output_dir, max_steps=steps, per_device_train_batch_size=4,
                                 report_to=[], save_strategy="no", logging_strategy="no", use_cpu=True,
                                 disable_tqdm=True)
        trainer = Trainer(model=GPT2LMHeadModel(config), args=args, train_dataset=data, callbacks=callbacks)
        start = time.perf_counter()
        trainer.train()
        print(time.perf_counter() - start)  # the training loop alone, for the second ratio


def timed(variant: str, steps: int) -> tuple[float, float]:
    """Whole-process seconds, and the child's own ``trainer.train()`` seconds (one intra-op thread: on a shared
    2-core machine torch's thread pool otherwise makes the spread larger than the effect)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--child", variant, "--steps", str(steps)], check=True,
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return time.perf_counter() - start, float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--child", choices=VARIANTS)
    options = parser.parse_args()
    if options.child:
        child(options.child, options.steps)
        return
    timed("plain", options.steps)  # warm the page cache: the first process pays for reading the libraries
    times: dict[str, list[tuple[float, float]]] = {variant: [] for variant in VARIANTS}
    for round_ in range(options.runs):
        for variant in VARIANTS[round_ % 3:] + VARIANTS[:round_ % 3]:  # rotate the order: no variant always first
            times[variant].append(timed(variant, options.steps))
    for variant in VARIANTS[1:]:
        for index, what in ((0, "whole process"), (1, "trainer.train() alone")):
            ours, plain = [t[index] for t in times[variant]], [t[index] for t in times["plain"]]
            ratio = statistics.median(o / p for o, p in zip(ours, plain, strict=True))
            verdict = "ok" if ratio <= GOAL else "over the goal"
            print(f"{variant:>9}, {what}: {statistics.median(ours):.2f} s vs plain {statistics.median(plain):.2f} s "
                  f"({options.steps} steps): {ratio:.3f}x, goal <= {GOAL}x: {verdict}")


if __name__ == "__main__":
    main()
