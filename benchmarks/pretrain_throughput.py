"""SimCLR pretraining throughput: the real data pipeline vs random tensors already on the device.

Usage::

    python benchmarks/pretrain_throughput.py [--data DIR] [--encoders smallcnn,resnet18,vgg16,densenet121]
        [--image-size 96] [--batch 64] [--steps N] [--device cpu|cuda] [--input segmented]
        [--patients 20] [--workers 0] [--threads N]

For every encoder it times SimCLR training steps two ways, on one module and optimiser:

* ``pipeline``: next batch from the DataLoader over the in-memory slice store
  (:class:`cardioclr.ssl.data.SliceDataset`) on CPU, or from the GPU-resident slices
  (:class:`cardioclr.accel.DeviceBatches`, as pretraining on one GPU) on CUDA, transfer to the
  device (CPU), batched augmentation into
  two views (:func:`cardioclr.data.augment.two_views`, incl. masking in segmented mode),
  forward of both views, NT-Xent, backward, Adam step;
* ``synthetic``: the same forward/backward/step on two random (B, 1, S, S) tensors already on
  the device (the upper bound a data pipeline can reach).

Pipeline and synthetic steps alternate (blocks of 1 step on CPU, 10 on CUDA, synchronised at
block ends) so that load from other processes hits both alike; the median step time of each
is used, after one untimed warm-up step of each (5 on CUDA). **images/s** counts each image
once per step (B per step) although the encoder sees two views of it (views/s = 2 x images/s).
``pipeline_efficiency`` = pipeline / synthetic images/s of ``smallcnn`` when it is benchmarked
(its step is the cheapest, so the pipeline's share of the time is the largest: the hardest
case, and it gets the most timed steps), else the minimum over encoders;
``pipeline_efficiency_min`` is always the minimum (noisier: 1-3 steps per heavy encoder on CPU).
Target: >= 0.9.

Data: ``--data`` is a prepared work directory, a pack (``cardioclr pack``; all its patients),
or a raw ACDC-layout folder of which ``--patients`` evenly spaced patients are prepared into a
temporary directory (default: the ACDC training set at ``<repo>/../shared/data/acdc``); when
absent, a synthetic cohort (:mod:`cardioclr.data.synthetic`) is generated.
All stored patients are used (labels unused).

The LAST output line is one JSON object: ``pipeline_efficiency``, ``pipeline_efficiency_min``,
``images_per_second`` {encoder: {pipeline, synthetic, ratio, steps, gflop_per_step,
achieved_tflops[, peak_fraction]}}, ``device``, ``peak_tflops``, ``image_size``, ``batch``,
``input``, ``data``, ``n_slices``, ``load_seconds``, ``threads``, ``load_avg_1min``.
``achieved_tflops`` = counted FLOPs of one step / median pipeline step time; ``peak_fraction``
divides it by ``--peak-tflops`` (default: the GPU's data-sheet dense bf16 peak), e.g. for the
issue's "fraction of peak bf16 FLOP/s that VGG16 reaches at 224 px"::

    python benchmarks/pretrain_throughput.py --device cuda --encoders vgg16 --image-size 224 --batch 128
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / ".." / "shared" / "data" / "acdc"
ALL_ENCODERS = "smallcnn,resnet18,vgg16,densenet121"
# Timed steps per variant on CPU: the heavy encoders take 5-30 s per step at 96 px x 64 images
# on two cores, and their data share is tiny, so one step tells enough; smallcnn decides the
# efficiency and gets more.
CPU_STEPS = {"smallcnn": 8, "resnet18": 3}
CPU_STEPS_DEFAULT = 1
CUDA_STEPS = 50


def log(msg: str) -> None:
    """Progress to stderr; stdout's last line is the JSON result."""
    print(msg, file=sys.stderr, flush=True)


def prepare_data(data: Path, n_patients: int, tmp: Path) -> tuple[Path, str]:
    """A prepared work directory for ``data``: itself, a prepared subset, or a synthetic cohort."""
    from cardioclr.data.prepare import PrepareConfig, prepare

    if (data / "dataset.json").is_file():
        return data, str(data)
    from cardioclr.data.pack import install, is_pack

    if is_pack(data):  # a packed store (cardioclr pack): installed in place, all its patients
        work = tmp / "work"
        info = install(data, work)
        return work, f"{data} (pack, {info['patients']} patients)"
    if data.exists():
        root = data / "training" if (data / "training").is_dir() else data
        patients = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("patient"))
        if n_patients and len(patients) > n_patients:
            # Evenly spaced: ACDC is ordered by group, the split needs >= 2 patients per class.
            step = len(patients) / n_patients
            patients = [patients[int(i * step)] for i in range(n_patients)]
        subset = tmp / "raw" / "training"
        subset.mkdir(parents=True)
        for p in patients:
            (subset / p.name).symlink_to(p.resolve(), target_is_directory=True)
        source = f"{data} ({len(patients)} patients)"
        raw = tmp / "raw"
    else:
        from cardioclr.data.synthetic import write_synthetic_cohort

        raw = tmp / "synthetic"
        log(f"no data at {data}: generating a synthetic cohort of {n_patients or 20} patients")
        write_synthetic_cohort(raw, n_patients=n_patients or 20, seed=0)
        source = f"synthetic ({n_patients or 20} patients)"
    work = tmp / "work"
    prepare(PrepareConfig(data=str(raw), out=str(work), workers=2))
    return work, source


def make_loader(work: Path, mode: str, image_size: int, batch: int, workers: int, pin: bool
                ) -> tuple[Iterable[dict[str, torch.Tensor]], int]:
    """The pretraining batches over every stored patient's slices (as ``cardioclr pretrain``):
    a DataLoader on CPU, GPU-resident :class:`cardioclr.accel.DeviceBatches` when ``pin``
    (CUDA)."""
    from cardioclr.data.store import SliceStore
    from cardioclr.ssl.data import MAIN, PatientRef, SliceDataset, Source, collate_slices, load_arrays

    store = SliceStore(work)
    refs = [PatientRef(MAIN, p) for p in store.patient_ids]
    arrays = load_arrays([Source(MAIN, work, "expert")], refs, mode, image_size)
    ds = SliceDataset(arrays.images, arrays.hearts)
    if len(ds) < batch:
        raise SystemExit(f"only {len(ds)} slices for a batch of {batch}; use more --patients")
    if pin:
        # CUDA: the whole dataset resident on the GPU, as `cardioclr pretrain` does there.
        from cardioclr.accel import DeviceBatches

        tensors = {"image": torch.from_numpy(arrays.images).cuda()}
        if arrays.hearts is not None:
            tensors["heart"] = torch.from_numpy(arrays.hearts).cuda()
        return DeviceBatches(tensors, batch, shuffle=True, drop_last=True), len(ds)
    loader = DataLoader(ds, batch_size=batch, shuffle=True, drop_last=True, num_workers=workers,
                        pin_memory=pin, collate_fn=collate_slices, persistent_workers=workers > 0)
    return loader, len(ds)


def endless(loader: Iterable[dict[str, torch.Tensor]]) -> Iterator[dict[str, torch.Tensor]]:
    """Batches forever (a new epoch when one ends, as training does)."""
    while True:
        yield from loader


def bench_encoder(name: str, loader: Iterable[dict[str, torch.Tensor]], mode: str, image_size: int,
                  batch: int, device: torch.device, steps: int, block: int) -> dict[str, float]:
    """Median-based images/s of pipeline and synthetic SimCLR steps for one encoder."""
    from cardioclr.ssl.simclr import SimCLRModule

    torch.manual_seed(0)
    from cardioclr.accel import channels_last, configure_backends

    configure_backends(device)
    module = SimCLRModule(name, input_mode=mode, image_size=image_size).to(device).train()
    channels_last(module.encoder, device)  # as SimCLRModule.on_fit_start does in training
    opt = torch.optim.Adam(module.parameters(), lr=1e-4)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else torch.autocast("cpu", enabled=False))
    batches = endless(loader)
    gen = torch.Generator(device=device).manual_seed(0)
    fixed = (torch.rand(batch, 1, image_size, image_size, device=device),
             torch.rand(batch, 1, image_size, image_size, device=device))

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def train_step(x0: torch.Tensor, x1: torch.Tensor) -> None:
        with autocast:
            loss = module.contrastive_loss(x0, x1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def pipeline_step() -> None:
        b = next(batches)
        b = {k: v.to(device, non_blocking=True) for k, v in b.items()}
        x0, x1 = module.make_views(b, gen)
        train_step(x0, x1)

    def synthetic_step() -> None:
        train_step(*fixed)

    def timed(fn: Callable[[], None], n: int) -> float:
        sync()
        t = time.perf_counter()
        for _ in range(n):
            fn()
        sync()
        return (time.perf_counter() - t) / n

    # Warm-up, untimed: kernels/primitives, allocator, optimiser state (DenseNet's first CPU
    # step is ~40% slower than the next), once per variant (their shapes are identical).
    timed(synthetic_step, 1 if device.type == "cpu" else 5)
    timed(pipeline_step, 1 if device.type == "cpu" else 5)
    pipe: list[float] = []
    synth: list[float] = []
    rounds = max(1, steps // block)
    for _ in range(rounds):
        pipe.append(timed(pipeline_step, block))
        synth.append(timed(synthetic_step, block))
    p, s = statistics.median(pipe), statistics.median(synth)
    flops = step_flops(synthetic_step)
    return {"pipeline": round(batch / p, 2), "synthetic": round(batch / s, 2),
            "ratio": round(s / p, 3), "steps": rounds * block,
            "gflop_per_step": round(flops / 1e9, 2),
            "achieved_tflops": round(flops / p / 1e12, 4)}


def step_flops(step: Callable[[], None]) -> float:
    """FLOPs of one training step (forward of both views, NT-Xent, backward), counted by
    ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matrix products, 2 FLOPs
    per multiply-add; element-wise work and the optimiser are not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return float(counter.get_total_flops())


#: Dense bf16 tensor-core peaks (TFLOP/s, vendor data sheets, without sparsity).
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


def peak_tflops(device_name: str) -> float | None:
    """The data-sheet bf16 peak of a GPU named ``device_name``, or None when unknown (and CPU)."""
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in device_name:
            return value
    return None


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA),
                        help="prepared WORK or raw ACDC-layout folder (default: shared ACDC; "
                        "synthetic cohort when absent)")
    parser.add_argument("--encoders", default=ALL_ENCODERS)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--batch", type=int, default=64, help="images per step (2 views each)")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"timed steps per variant (default CPU: smallcnn {CPU_STEPS['smallcnn']}, "
                        f"resnet18 {CPU_STEPS['resnet18']}, others {CPU_STEPS_DEFAULT}; CUDA "
                        f"{CUDA_STEPS})")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available()
                        else "cpu")
    parser.add_argument("--input", default="segmented", choices=("full", "segmented", "roi"))
    parser.add_argument("--patients", type=int, default=20,
                        help="raw data: prepare this many evenly spaced patients (0: all)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers (0, as pretrain)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's peak (dense bf16 on CUDA) TFLOP/s, for "
                        "peak_fraction; default: looked up from the GPU name (H100/H200 989, "
                        "A100 312, L40S 362), none on CPU")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"skipped": "--device cuda but no CUDA device"}))
        return 0
    encoders = [e.strip() for e in args.encoders.split(",") if e.strip()]
    load_avg = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    tmp = Path(tempfile.mkdtemp(prefix="pretrain_throughput_"))
    try:
        start = time.perf_counter()
        work, source = prepare_data(Path(args.data).resolve(), args.patients, tmp)
        loader, n_slices = make_loader(work, args.input, args.image_size, args.batch, args.workers,
                                       pin=device.type == "cuda")
        load_seconds = time.perf_counter() - start
        log(f"{n_slices} slices from {source} ready in {load_seconds:.1f} s")
        results: dict[str, dict[str, float]] = {}
        block = 1 if device.type == "cpu" else 10
        for name in encoders:
            steps = args.steps or (CPU_STEPS.get(name, CPU_STEPS_DEFAULT) if device.type == "cpu"
                                   else CUDA_STEPS)
            t = time.perf_counter()
            results[name] = bench_encoder(name, loader, args.input, args.image_size, args.batch, device,
                                          steps, block)
            log(f"{name}: {results[name]} ({time.perf_counter() - t:.0f} s)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = args.peak_tflops or peak_tflops(device_name)
    if peak:
        for r in results.values():
            r["peak_fraction"] = round(r["achieved_tflops"] / peak, 4)
    ratios = {k: v["ratio"] for k, v in results.items()}
    efficiency = ratios["smallcnn"] if "smallcnn" in ratios else min(ratios.values())
    print(json.dumps({
        "pipeline_efficiency": efficiency,
        "pipeline_efficiency_min": min(ratios.values()),
        "images_per_second": results,
        "device": device_name,
        "peak_tflops": peak,
        "image_size": args.image_size,
        "batch": args.batch,
        "input": args.input,
        "data": source,
        "n_slices": n_slices,
        "load_seconds": round(load_seconds, 2),
        "threads": torch.get_num_threads(),
        "load_avg_1min": load_avg,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
