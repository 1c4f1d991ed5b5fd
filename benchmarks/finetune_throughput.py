"""Fine-tuning throughput: training steps of the dual-phase (ED + ES) classifier per second.

Usage::

    python benchmarks/finetune_throughput.py [--encoders vgg16,densenet121] [--image-size 224]
        [--batch 64] [--steps N] [--device cpu|cuda] [--concurrent K] [--compile] [--threads N]

For every encoder it times the fine-tuning step of ``cardioclr finetune``
(:class:`cardioclr.classify.model.DualPhaseClassifier`: one encoder per phase, forward of the ED
and ES slices, cross-entropy, backward, Adam step) on random (B, 2, S, S) slice pairs already on
the device (the data path of fine-tuning is :class:`cardioclr.accel.DeviceBatches` on a GPU: an
index into resident tensors), in bf16 autocast and channels_last on CUDA as the stage runs.
``--concurrent K`` runs K such models at once on K CUDA streams (as K fine-tuning cells share
one GPU in a ``paper-fast`` study, there as processes) and reports the combined rate, so the
gain of running cells side by side is measured, not assumed. ``--compile`` wraps the model in
``torch.compile`` (compile time reported separately).

**pairs/s** counts ED+ES slice pairs (2 images each) per second; ``achieved_tflops`` =
counted FLOPs of one step (``torch.utils.flop_counter``) / median step time, ``peak_fraction``
divides it by ``--peak-tflops`` (default: the GPU's data-sheet dense bf16 peak).

The LAST output line is one JSON object: ``pairs_per_second`` {encoder: {single, concurrent,
concurrent_speedup, steps, gflop_per_step, achieved_tflops[, peak_fraction], compile_seconds}},
``device``, ``peak_tflops``, ``image_size``, ``batch``, ``concurrent``, ``compile``, ``threads``,
``load_avg_1min``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pretrain_throughput import peak_tflops, step_flops  # noqa: E402  (sibling benchmark)

N_CLASSES = 5


def make_step(encoder: str, batch: int, size: int, device: torch.device, compile_model: bool
              ) -> tuple[Callable[[], None], float]:
    """One fine-tuning training step as a closure, and the seconds spent compiling (0 eager)."""
    from cardioclr.accel import as_channels_last, channels_last, configure_backends
    from cardioclr.classify.model import DualPhaseClassifier

    configure_backends(device)
    torch.manual_seed(0)
    model = channels_last(DualPhaseClassifier(encoder, N_CLASSES).to(device).train(), device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    images = torch.rand(batch, 2, size, size, device=device)
    labels = torch.randint(0, N_CLASSES, (batch,), device=device)
    ed, es = as_channels_last(images[:, :1].contiguous()), as_channels_last(images[:, 1:].contiguous())
    net = torch.compile(model) if compile_model else model
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else torch.autocast("cpu", enabled=False))

    def step() -> None:
        with autocast:
            loss = F.cross_entropy(net(ed, es), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t = time.perf_counter()
    if compile_model:
        step()  # compiles forward and backward
        sync(device)
    return step, (time.perf_counter() - t) if compile_model else 0.0


def sync(device: torch.device) -> None:
    """Wait for the device (CUDA); nothing on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_blocks(steps: list[Callable[[], None]], n_blocks: int, block: int, device: torch.device,
                 streams: list[torch.cuda.Stream] | None) -> list[float]:
    """Seconds per round (every closure stepped once, each on its own stream when given)."""
    out = []
    for _ in range(n_blocks):
        sync(device)
        t = time.perf_counter()
        for _ in range(block):
            for i, fn in enumerate(steps):
                if streams is not None:
                    with torch.cuda.stream(streams[i]):
                        fn()
                else:
                    fn()
        sync(device)
        out.append((time.perf_counter() - t) / block)
    return out


def bench(encoder: str, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """Single-model and K-concurrent pairs/s of one encoder."""
    step, compile_s = make_step(encoder, args.batch, args.image_size, device, args.compile)
    block = 1 if device.type == "cpu" else 5
    n_blocks = max(1, args.steps // block)
    timed_blocks([step], 1, 1 if device.type == "cpu" else 3, device, None)  # warm-up
    single = statistics.median(timed_blocks([step], n_blocks, block, device, None))
    flops = step_flops(step)
    result = {"single": round(args.batch / single, 2), "steps": n_blocks * block,
              "gflop_per_step": round(flops / 1e9, 2),
              "achieved_tflops": round(flops / single / 1e12, 4),
              "compile_seconds": round(compile_s, 1)}
    if args.concurrent > 1:
        steps = [step] + [make_step(encoder, args.batch, args.image_size, device, args.compile)[0]
                          for _ in range(args.concurrent - 1)]
        streams = ([torch.cuda.Stream(device) for _ in steps] if device.type == "cuda" else None)
        timed_blocks(steps, 1, 1, device, streams)
        t = statistics.median(timed_blocks(steps, n_blocks, block, device, streams))
        result["concurrent"] = round(args.concurrent * args.batch / t, 2)
        result["concurrent_speedup"] = round(result["concurrent"] / result["single"], 3)
        result["concurrent_tflops"] = round(args.concurrent * flops / t / 1e12, 4)
    return result


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoders", default="vgg16,densenet121")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=64, help="ED+ES pairs per step")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (CPU 2, CUDA 30)")
    parser.add_argument("--device", choices=("cpu", "cuda"),
                        default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--concurrent", type=int, default=None,
                        help="models stepped side by side (default: CUDA 4, CPU 1)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--peak-tflops", type=float, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"skipped": "--device cuda but no CUDA device"}))
        return 0
    args.steps = args.steps or (2 if device.type == "cpu" else 30)
    args.concurrent = args.concurrent or (4 if device.type == "cuda" else 1)
    load_avg = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    results = {}
    for name in [e.strip() for e in args.encoders.split(",") if e.strip()]:
        t = time.perf_counter()
        results[name] = bench(name, args, device)
        print(f"{name}: {results[name]} ({time.perf_counter() - t:.0f} s)", file=sys.stderr, flush=True)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = args.peak_tflops or peak_tflops(device_name)
    if peak:
        for r in results.values():
            r["peak_fraction"] = round(r["achieved_tflops"] / peak, 4)
    print(json.dumps({"pairs_per_second": results, "device": device_name, "peak_tflops": peak,
                      "image_size": args.image_size, "batch": args.batch,
                      "concurrent": args.concurrent, "compile": args.compile,
                      "threads": torch.get_num_threads(), "load_avg_1min": load_avg}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
