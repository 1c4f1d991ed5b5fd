"""Segmentation quality benchmark: prepare -> train -> predict -> evaluate on ACDC.

    python benchmarks/segmentation_quality.py [--data DATA] [--preset cpu|gpu] [--work DIR]

DATA defaults to ``../shared/data/acdc`` relative to the repository root. Progress goes to
stderr/stdout as it happens; the LAST line printed is one JSON object with ``mean_dice``,
per-structure/phase Dice and HD95, ``train_seconds``, ``preset``, ``n_train``, ``n_test``.
When the data is absent it prints ``{"skipped": "..."}`` and exits 0.
"""

from __future__ import annotations

import os

# Before torch is imported: OpenMP threads that spin while waiting thrash on a shared CPU.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit code."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="ACDC-layout folder (default ../shared/data/acdc "
                    "relative to the repository root)")
    ap.add_argument("--preset", default="cpu", choices=("cpu", "gpu"))
    ap.add_argument("--work", default=None, help="work directory (default /tmp/cardioclr_bench_seg_PRESET)")
    ap.add_argument("--max-epochs", type=int, default=None)
    ap.add_argument("--overwrite", action="store_true", help="retrain even if a finished model exists")
    args = ap.parse_args(argv)
    data = Path(args.data) if args.data else REPO / ".." / "shared" / "data" / "acdc"
    if not data.is_absolute() and args.data:
        data = (Path.cwd() / data)
    data = data.resolve()
    if not data.is_dir() or not any(data.iterdir()):
        print(json.dumps({"skipped": f"data not found at {data}"}))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    from cardioclr.data.prepare import PrepareConfig, default_workers, prepare
    from cardioclr.segment.evaluate import evaluate, format_summary
    from cardioclr.segment.predict import PredictConfig, predict
    from cardioclr.segment.train import preset_config, train

    work = Path(args.work or f"/tmp/cardioclr_bench_seg_{args.preset}")
    t0 = time.perf_counter()
    if not (work / "dataset.json").is_file():
        print(f"preparing {data} -> {work}", flush=True)
        prepare(PrepareConfig(data=str(data), out=str(work), workers=default_workers()))
    prep_s = time.perf_counter() - t0
    print(f"training ({args.preset} preset)", flush=True)
    cfg = preset_config(work, args.preset, max_epochs=args.max_epochs,
                        progress_bar=sys.stderr.isatty())
    info = train(cfg, overwrite=args.overwrite)
    print("predicting", flush=True)
    t1 = time.perf_counter()
    summary = predict(PredictConfig(work=str(work)))
    predict_s = time.perf_counter() - t1
    metrics = evaluate(work)
    print(format_summary(metrics), flush=True)
    result = {
        "preset": args.preset,
        "mean_dice": metrics["mean_dice"],
        "dice": metrics["dice"],
        "dice_per_structure": metrics["dice_per_structure"],
        "mean_hd95": metrics["mean_hd95"],
        "hd95": metrics["hd95"],
        "indices_agreement": {k: {m: v[m] for m in ("pearson_r", "bias", "sd", "n")}
                              for k, v in metrics["indices_agreement"].items()},
        "train_seconds": info["train_seconds"],
        "epochs": info["epochs"],
        "stopped_by": info["stopped_by"],
        "best_val_dice": info["best_val_dice"],
        "predict_seconds": round(predict_s, 1),
        "prepare_seconds": round(prep_s, 1),
        "n_train": len(info["train_patients"]),
        "n_val": len(info["val_patients"]),
        "n_test": metrics["n_test"],
        "predict_failed": len(summary["failed"]),
        "qc_flagged_patients": summary["flagged_patients"],
        "work": str(work),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
