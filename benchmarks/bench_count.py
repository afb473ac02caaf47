"""`torchdoctor count`: speed against a bare FlopCounterMode script, a 7B config on meta, torchvision accuracy.

1. ResNet-50 at 1x3x224x224 (the torchvision-free copy in ``fixtures/count_models.py``, so it runs under
   the CI torch): ``torchdoctor count`` as a process against a bare ``FlopCounterMode`` script doing the
   same forward (both import torch and build the model), and ``torchdoctor.count()`` against a bare
   ``FlopCounterMode`` block in one process. Medians of paired ratios over ``--runs`` rounds. Goal <= 1.5x.
2. A LLaMA-7B-like decoder (6.74 B parameters) with ``--meta``, 1x2048 tokens: wall time and peak RSS of
   the process. Goals <= 10 s and <= 1 GiB.
3. When torchvision is importable, every classification model
   built with ``weights=None`` on the meta device, counted at its weights' crop size: MACs against the
   published ``meta["_ops"]`` (GMACs, 3 decimals) and parameters against ``meta["num_params"]``. Goal: within
   0.5% (or within the published rounding) and parameters exact. ``--bare`` adds a bare eval-mode
   FlopCounterMode column for the transformers (real CPU run: the fused attention fast path).

Run: ``python benchmarks/bench_count.py [--runs 5] [--skip-7b] [--skip-torchvision] [--bare]``.
torchvision is not a dependency; for part 3 use a separate venv:
``python -m venv /tmp/tv && /tmp/tv/bin/pip install torch==2.14.1 torchvision==0.29.1 typer rich``,
``/tmp/tv/bin/pip install -e . --no-deps``, then ``/tmp/tv/bin/python benchmarks/bench_count.py``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "fixtures" / "count_models.py"
GOALS = {"resnet_ratio": 1.5, "seven_b_seconds": 10.0, "seven_b_rss_mib": 1024, "macs_error": 0.005}
BARE_SCRIPT = f"""import sys, torch
sys.path.insert(0, {str(ROOT)!r})
from torch.utils.flop_counter import FlopCounterMode
from fixtures.count_models import ResNet50
model = ResNet50().eval()
x = torch.randn(1, 3, 224, 224)
with torch.no_grad(), FlopCounterMode(display=False) as counter:
    model(x)
print(counter.get_total_flops())
"""
COUNT_CLI = [sys.executable, "-m", "torchdoctor", "count", f"{MODELS}:ResNet50", "--input-shape", "1,3,224,224",
             "--json"]
SEVEN_B_CLI = [sys.executable, "-m", "torchdoctor", "count", f"{MODELS}:llama_7b", "--meta", "--input-shape",
               "1,2048", "--json"]


def run_child(command: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB, ``wait4`` rusage of that child alone) of one process.

    A forked child's ``ru_maxrss`` starts at the parent's RSS: measure RSS before this process imports torch.
    """
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) not in (0, 1):
        sys.exit(f"{' '.join(command[:5])} failed: {child.stderr.read().decode()[-2000:]}")
    return seconds, usage.ru_maxrss / 1024


def bench_resnet(runs: int) -> None:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    sys.path.insert(0, str(ROOT))
    from fixtures.count_models import ResNet50

    from torchdoctor.count import count

    ratios, walls = [], []
    for _ in range(runs):
        bare, _ = run_child([sys.executable, "-c", BARE_SCRIPT])
        ours, _ = run_child(COUNT_CLI)
        ratios.append(ours / bare)
        walls.append((bare, ours))
    bare_s, ours_s = (statistics.median(w[i] for w in walls) for i in (0, 1))
    process_ratio = statistics.median(ratios)
    verdict(f"resnet50 process: torchdoctor count {ours_s:.2f} s vs bare FlopCounterMode script {bare_s:.2f} s "
            f"= {process_ratio:.2f}x (goal <= {GOALS['resnet_ratio']}x)", process_ratio <= GOALS["resnet_ratio"])

    model, x = ResNet50().eval(), torch.randn(1, 3, 224, 224)

    def bare_block() -> None:
        with torch.no_grad(), FlopCounterMode(display=False):
            model(x)

    def ours_block() -> None:
        count(model, x)

    bare_block(), ours_block()  # warm-up: lazy imports, allocator
    in_process = []
    for _ in range(runs):
        in_process.append(_timed(ours_block) / _timed(bare_block))
    ratio = statistics.median(in_process)
    verdict(f"resnet50 in-process: torchdoctor.count() / bare FlopCounterMode block = {ratio:.2f}x "
            f"(goal <= {GOALS['resnet_ratio']}x)", ratio <= GOALS["resnet_ratio"])


def _timed(block) -> float:
    start = time.perf_counter()
    block()
    return time.perf_counter() - start


def bench_seven_b() -> None:
    seconds, rss = run_child(SEVEN_B_CLI)
    floor_s, floor_rss = run_child([sys.executable, "-c", "import torch"])
    verdict(f"7B decoder --meta (1x2048 tokens): {seconds:.2f} s wall, peak RSS {rss:.0f} MiB (bare `import torch`: "
            f"{floor_s:.2f} s, {floor_rss:.0f} MiB) (goals <= {GOALS['seven_b_seconds']} s, "
            f"<= {GOALS['seven_b_rss_mib']} MiB)",
            seconds <= GOALS["seven_b_seconds"] and rss <= GOALS["seven_b_rss_mib"])


# --- torchvision accuracy -----------------------------------------------------------------------------

SPECIAL_KWARGS = {"googlenet": {"aux_logits": False, "init_weights": False},
                  "inception_v3": {"init_weights": False}}


def builder_kwargs(name: str, size: int) -> dict:
    """What the weights' builder would pass: no aux heads, and the SWAG ViTs' larger image size."""
    kwargs = dict(SPECIAL_KWARGS.get(name, {}))
    if name.startswith("vit_") and size != 224:
        kwargs["image_size"] = size
    return kwargs


def bench_torchvision(bare: bool, only: list[str] | None) -> None:
    import torch
    import torchvision
    from torchvision.models import get_model, get_model_weights, list_models

    from torchdoctor.count import count
    from torchdoctor.count.meta import build_on_meta

    print(f"\ntorch {torch.__version__}, torchvision {torchvision.__version__}: every classification model, "
          "meta device, weights=None, at its weights' crop size")
    header = f"{'model':<20} {'size':>4} {'published':>10} {'ours':>11} {'error':>8} {'params':>7}"
    print(header + ("  ours (eval, CPU)  bare FlopCounterMode (eval, CPU)" if bare else ""))
    worst, all_params_exact, misses = 0.0, True, []
    for name in list_models(module=torchvision.models):
        if only and name not in only:
            continue
        weights = next(iter(get_model_weights(name)))
        published, num_params = weights.meta["_ops"], weights.meta["num_params"]
        size = weights.transforms().crop_size[0]
        kwargs = builder_kwargs(name, size)
        model = build_on_meta(lambda: get_model(name, weights=None, **kwargs))  # noqa: B023
        report = count(model, input_shapes=[(1, 3, size, size)], meta=True)
        ours = report.result["macs"] / 1e9
        error = (ours - published) / published
        rounding = abs(error) > GOALS["macs_error"] and abs(round(ours, 3) - published) <= 0.0005 + 1e-9
        within = abs(error) <= GOALS["macs_error"] or rounding
        exact = report.result["params"]["total"] == num_params
        worst = worst if rounding else max(worst, abs(error))
        all_params_exact = all_params_exact and exact
        if not (within and exact):
            misses.append(name)
        note = "  (within the published 3-decimal rounding)" if rounding else "" if within else "  <-- beyond 0.5%"
        line = f"{name:<20} {size:>4} {published:>10.3f} {ours:>11.4f} {error:>+8.2%} {'exact' if exact else 'DIFF':>7}"
        if bare and any(key in name for key in ("vit", "swin", "maxvit")) and size <= 256:
            real, x = get_model(name, weights=None, **kwargs), torch.randn(1, 3, size, size)
            line += f"  {count(real, x).result['macs'] / 1e9:16.3f}  {_bare_eval_gmacs(real, x):.3f}"
        print(line + note, flush=True)
    verdict(f"torchvision: worst MACs error {worst:.2%} (beyond the published rounding), "
            f"parameters exact for every model: {all_params_exact}"
            f"{'; misses: ' + ', '.join(misses) if misses else ''}", not misses)


def _bare_eval_gmacs(model, x) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(x)
    return counter.get_total_flops() / 2e9


def verdict(text: str, met: bool) -> None:
    print(f"{'meets ' if met else 'MISSES'}  {text}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="rounds for the ResNet-50 ratios; medians reported")
    parser.add_argument("--skip-7b", action="store_true", help="skip the 7B --meta run")
    parser.add_argument("--skip-torchvision", action="store_true", help="skip the torchvision accuracy table")
    parser.add_argument("--bare", action="store_true", help="add bare FlopCounterMode numbers for transformers")
    parser.add_argument("--models", nargs="*", help="only these torchvision models (default: all)")
    args = parser.parse_args()
    from importlib.metadata import version

    print(f"torch {version('torch')}, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {sys.executable}")
    # The 7B run first: a forked child's ru_maxrss starts at this process's RSS, so torch is not imported yet.
    if not args.skip_7b and not args.models:
        bench_seven_b()
    if not args.models:
        bench_resnet(args.runs)
    if args.skip_torchvision:
        return
    try:
        import torchvision  # noqa: F401
    except ImportError:
        print("torchvision is not installed here: accuracy table skipped (see this script's docstring for a venv)")
        return
    bench_torchvision(args.bare, args.models)


if __name__ == "__main__":
    main()
