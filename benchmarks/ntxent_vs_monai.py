"""Benchmark: cardioclr's ``nt_xent`` against MONAI's ``ContrastiveLoss`` (same temperature).

Usage::

    python benchmarks/ntxent_vs_monai.py --batch 1024 --dim 128 --repeats 5 --device cpu

Both losses get the same random projections z0, z1 (B, D) with ``requires_grad`` and run
forward + backward. Reported per implementation:

* time: median wall-clock milliseconds of one forward + backward over ``--repeats`` runs,
  after ``--warmup`` (default 2) untimed full-size runs (``torch.cuda.synchronize`` around
  each run on GPU); the memory run below also precedes the timed runs;
* peak memory: the most memory in use during one forward + backward beyond what was in use
  before it (inputs and the interpreter excluded), in MiB.

How peak memory is measured
---------------------------
GPU: ``torch.cuda.reset_peak_memory_stats`` then ``max_memory_allocated() - memory_allocated()``
from before the run — exact for tensors in PyTorch's caching allocator.

CPU: PyTorch's CPU allocator keeps no peak statistics and ``tracemalloc`` does not see its
allocations, so we measure the process's resident memory with the kernel. Each
implementation runs in its **own fresh subprocess** (so one cannot inherit the other's freed
but still mapped memory), does a small warm-up (kernel/thread-pool initialisation), records
its current resident set size ``VmRSS``, resets the kernel's high-water mark by writing ``5`` to
``/proc/self/clear_refs`` (Linux >= 4.0), runs one forward + backward at full size, and reads
the high-water mark ``VmHWM``. Peak = VmHWM - VmRSS(before). This counts every page the run
touched, whatever allocated it; big tensors are fresh ``mmap`` regions, so the figure tracks
the largest simultaneous set of live tensors. Where ``clear_refs`` is not writable the
script falls back to ``ru_maxrss`` (an upper bound, as it includes start-up peaks) and says so.

Loss check: MONAI's ``ContrastiveLoss`` is the same SimCLR NT-Xent (cosine similarity,
denominator over all 2B - 1 other projections, mean over the 2B anchors), so the two values
must agree to float32 rounding.

The last line printed is one JSON object with ``memory_ratio`` (MONAI peak / ours),
``time_ratio`` (MONAI time / ours), ``ours_ms``, ``monai_ms``, ``ours_peak_mb``,
``monai_peak_mb``, ``batch``, ``dim``, ``device`` (plus ``loss_ours``, ``loss_monai``,
``loss_match``, ``memory_method``, ``threads``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

_MIB = 1024.0 * 1024.0


def _proc_status_kib(field: str) -> int:
    """A ``/proc/self/status`` field (``VmRSS``, ``VmHWM``) in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_rss_peak() -> bool:
    """Reset the kernel's resident-set high-water mark; False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _make_loss(impl: str, temperature: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if impl == "ours":
        from cardioclr.ssl.loss import nt_xent

        return lambda a, b: nt_xent(a, b, temperature=temperature)
    from monai.losses import ContrastiveLoss

    return ContrastiveLoss(temperature=temperature)


def _worker(args: argparse.Namespace) -> dict[str, object]:
    """Measure one implementation in this (fresh) process."""
    device = torch.device(args.device)
    loss_fn = _make_loss(args.impl, args.temperature)
    gen = torch.Generator().manual_seed(args.seed)
    z0 = torch.randn(args.batch, args.dim, generator=gen).to(device).requires_grad_()
    z1 = torch.randn(args.batch, args.dim, generator=gen).to(device).requires_grad_()

    def step(a: torch.Tensor, b: torch.Tensor) -> float:
        a.grad = None
        b.grad = None
        loss = loss_fn(a, b)
        loss.backward()
        return float(loss.detach())

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    # Small warm-up: initialises kernels and thread pools without leaving large freed buffers.
    small0 = z0[:8].detach().clone().requires_grad_()
    small1 = z1[:8].detach().clone().requires_grad_()
    step(small0, small1)
    sync()
    gc.collect()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        loss_value = step(z0, z1)
        sync()
        peak_mb = (torch.cuda.max_memory_allocated(device) - base) / _MIB
        method = "torch.cuda.max_memory_allocated"
    else:
        rss_before = _proc_status_kib("VmRSS")
        if _reset_rss_peak():
            loss_value = step(z0, z1)
            peak_mb = (_proc_status_kib("VmHWM") - rss_before) / 1024.0
            method = "VmHWM-VmRSS (clear_refs reset), fresh subprocess"
        else:
            loss_value = step(z0, z1)
            maxrss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            peak_mb = (maxrss_kib - rss_before) / 1024.0
            method = "ru_maxrss-VmRSS (upper bound; clear_refs unavailable), fresh subprocess"

    for _ in range(args.warmup):
        step(z0, z1)
    times = []
    for _ in range(args.repeats):
        sync()
        t0 = time.perf_counter()
        step(z0, z1)
        sync()
        times.append((time.perf_counter() - t0) * 1000.0)
    return {
        "impl": args.impl,
        "loss": loss_value,
        "ms": statistics.median(times),
        "peak_mb": peak_mb,
        "memory_method": method,
        "threads": torch.get_num_threads(),
    }


def _run_worker(impl: str, args: argparse.Namespace) -> dict[str, object]:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        impl,
        "--batch",
        str(args.batch),
        "--dim",
        str(args.dim),
        "--repeats",
        str(args.repeats),
        "--device",
        args.device,
        "--temperature",
        str(args.temperature),
        "--seed",
        str(args.seed),
        "--warmup",
        str(args.warmup),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"{impl} worker failed with exit status {done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    """Run both implementations in separate subprocesses and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=1024, help="images per view, B")
    parser.add_argument("--dim", type=int, default=128, help="projection width, D")
    parser.add_argument("--repeats", type=int, default=5, help="timed forward+backward runs")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--temperature", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warmup", type=int, default=2, help="untimed full-size runs first")
    parser.add_argument("--worker", choices=["ours", "monai"], default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker is not None:
        args.impl = args.worker
        print(json.dumps(_worker(args)))
        return 0

    ours = _run_worker("ours", args)
    monai = _run_worker("monai", args)
    ours_loss, monai_loss = float(ours["loss"]), float(monai["loss"])
    match = abs(ours_loss - monai_loss) <= 1e-4 * max(1.0, abs(ours_loss))
    print(f"NT-Xent forward+backward, B={args.batch}, D={args.dim}, t={args.temperature}, "
          f"device={args.device}, threads={ours['threads']}")  # fmt: skip
    print(f"  memory measured as: {ours['memory_method']}")
    for name, res in (("cardioclr nt_xent", ours), ("MONAI ContrastiveLoss", monai)):
        print(f"  {name:22s} {res['ms']:10.2f} ms   peak {res['peak_mb']:10.1f} MiB   "
              f"loss {float(res['loss']):.6f}")  # fmt: skip
    print(f"  loss values {'match' if match else 'DIFFER'} "
          f"(|diff| = {abs(ours_loss - monai_loss):.2e})")  # fmt: skip
    ours_peak = max(float(ours["peak_mb"]), 1e-3)  # guard the ratio against a 0 reading
    result = {
        "memory_ratio": round(float(monai["peak_mb"]) / ours_peak, 2),
        "time_ratio": round(float(monai["ms"]) / float(ours["ms"]), 2),
        "ours_ms": round(float(ours["ms"]), 3),
        "monai_ms": round(float(monai["ms"]), 3),
        "ours_peak_mb": round(float(ours["peak_mb"]), 2),
        "monai_peak_mb": round(float(monai["peak_mb"]), 2),
        "batch": args.batch,
        "dim": args.dim,
        "device": args.device,
        "loss_ours": ours_loss,
        "loss_monai": monai_loss,
        "loss_match": match,
        "memory_method": ours["memory_method"],
        "threads": ours["threads"],
    }
    print(json.dumps(result))
    return 0 if match else 1


if __name__ == "__main__":
    raise SystemExit(main())
