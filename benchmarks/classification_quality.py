"""Disease classification quality on ACDC (70/30 patient split): the paper's Table-1 comparison.

Pipeline (every stage skips what a previous run of the same command already finished, so an
interrupted benchmark resumes; pass the same ``--work``)::

    prepare -> segmentation (train + predict; CPU preset) -> SimCLR pretraining on full and on
    segmented images (smallcnn) -> finetune (segmented input) from no pretraining, SimCLR-full
    and SimCLR-segmented -> clinical-feature baseline (random forest on indices)

Usage::

    python benchmarks/classification_quality.py [--data DIR] [--work DIR] [--image-size 64]
        [--seg-minutes 8] [--ssl-epochs 15] [--ft-epochs 20] [--folds 3] [--masks auto|expert]

When the segmentation stage cannot run, masks fall back to ``expert`` (an upper bound) and the
JSON says so (``mask_source``, ``mask_note``). Defaults are sized for 2 CPU cores (smallcnn at
64 px, one learning rate x batch size, the first ``--folds`` CV folds, one seed); the paper's
VGG16/DenseNet121 at larger sizes need a GPU.

The LAST output line is one JSON object: for each configuration (``no_pretraining``,
``simclr_full``, ``simclr_segmented``, ``clinical_baseline``) ``{"auc", "ci_low", "ci_high",
"accuracy"}`` (patient-level macro one-vs-rest AUC on the 30 test patients, stratified
bootstrap 95% CI), plus ``seconds``, ``mask_source`` and details. Without the data it prints
``{"skipped": "<why>"}`` and exits 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / ".." / "shared" / "data" / "acdc"
PAPER_BEST_AUC = 0.901  # Nakashima et al., ACDC, best configuration

log = logging.getLogger("classification_quality")


def _summary(m: dict[str, Any]) -> dict[str, Any]:
    """``{auc, ci_low, ci_high, accuracy}`` from a classification_metrics dict."""
    auc = m["macro_auc"]
    return {"auc": auc["value"], "ci_low": auc["ci_low"], "ci_high": auc["ci_high"],
            "accuracy": m["accuracy"]["value"]}


def segment(work: Path, minutes: float) -> tuple[str, str]:
    """Train + predict the segmentation; returns (mask source, note)."""
    try:
        from cardioclr.segment.predict import PredictConfig, predict
        from cardioclr.segment.train import PRESETS, preset_config, train
    except ImportError as err:
        return "expert", f"segmentation stage not importable ({err}); expert masks used (upper bound)"
    try:
        optim = dataclasses.replace(PRESETS["cpu"]["optim"], time_budget_s=minutes * 60)
        info = train(preset_config(work, "cpu", optim=optim, progress_bar=False))
        from cardioclr.data.masks import predicted_mask_path
        from cardioclr.data.store import SliceStore

        missing = [p for p in SliceStore(work).patient_ids if not predicted_mask_path(work, p).is_file()]
        if missing:
            predict(PredictConfig(work=str(work), qc_png=False))
        return "predicted", (f"predicted masks from the CPU-preset U-Net (best val Dice "
                             f"{info.get('best_val_dice')}, {info.get('train_seconds')} s)")
    except KeyboardInterrupt:
        raise
    except Exception as err:  # noqa: BLE001 - any failure of a stage under construction
        traceback.print_exc()
        return "expert", f"segmentation stage failed ({type(err).__name__}: {err}); expert masks used"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit code (0 also when the data is absent)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DEFAULT_DATA), help="ACDC folder (with training/)")
    p.add_argument("--work", default=None, help="work directory, kept for resuming (default "
                   "<repo>/runs/bench_classification)")
    p.add_argument("--image-size", type=int, default=64, help="network input side (px)")
    p.add_argument("--encoder", default="smallcnn")
    p.add_argument("--masks", choices=("auto", "expert"), default="auto",
                   help="auto: predicted masks when the segmentation stage works, else expert")
    p.add_argument("--seg-minutes", type=float, default=8.0, help="segmentation training budget")
    p.add_argument("--ssl-epochs", type=int, default=15, help="SimCLR epoch cap")
    p.add_argument("--ssl-lr", type=float, default=1e-3, help="SimCLR learning rate (short schedule)")
    p.add_argument("--ft-epochs", type=int, default=20, help="fine-tuning epoch cap per CV run")
    p.add_argument("--ft-patience", type=int, default=4)
    p.add_argument("--ft-lr", type=float, nargs="+", default=[1e-3])
    p.add_argument("--ft-batch", type=int, nargs="+", default=[32])
    p.add_argument("--folds", type=int, default=3, help="CV folds used (of splits.json's 5)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")

    data = Path(args.data).resolve()
    if not (data / "training").is_dir():
        print(json.dumps({"skipped": f"ACDC data not found at {data}"}))
        return 0
    from cardioclr.classify.finetune import FinetuneConfig, finetune
    from cardioclr.data.prepare import PrepareConfig, prepare

    work = Path(args.work) if args.work else REPO / "runs" / "bench_classification"
    start = time.perf_counter()
    stage: dict[str, float] = {}

    t = time.perf_counter()
    if not (work / "dataset.json").is_file():
        prepare(PrepareConfig(data=str(data), out=str(work), workers=min(2, os.cpu_count() or 1)))
    stage["prepare"] = time.perf_counter() - t

    t = time.perf_counter()
    if args.masks == "expert":
        masks, mask_note = "expert", "expert masks requested (--masks expert): an upper bound"
    else:
        masks, mask_note = segment(work, args.seg_minutes)
    stage["segmentation"] = time.perf_counter() - t
    log.info("mask source: %s (%s)", masks, mask_note)

    encoders: dict[str, str] = {}
    ssl_info: dict[str, Any] = {}
    for mode in ("full", "segmented"):
        t = time.perf_counter()
        from cardioclr.ssl.pretrain import PretrainConfig, pretrain

        out = work / "pretrain" / f"{args.encoder}-{mode}-{masks}"
        m = pretrain(PretrainConfig(work=str(work), encoder=args.encoder, input_mode=mode, masks=masks,
                                    out=str(out), image_size=args.image_size, lr=args.ssl_lr,
                                    max_epochs=args.ssl_epochs, patience=5, use_cine=False,
                                    progress_bar=False))
        encoders[mode] = str(out / "encoder.pt")
        ssl_info[mode] = {"best_val_loss": m.get("best_val_loss"), "best_epoch": m.get("best_epoch"),
                          "epochs": m.get("epochs")}
        stage[f"pretrain_{mode}"] = time.perf_counter() - t

    results: dict[str, Any] = {}
    details: dict[str, Any] = {}
    runs = {"no_pretraining": ("none", None), "simclr_full": ("simclr", encoders["full"]),
            "simclr_segmented": ("simclr", encoders["segmented"])}
    for name, (init, weights) in runs.items():
        t = time.perf_counter()
        cfg = FinetuneConfig(work=str(work), encoder=args.encoder, init=init, weights=weights,
                             input_mode="segmented", mask_source=masks,
                             out=str(work / "finetune" / f"{name}-{masks}"), image_size=args.image_size,
                             seeds=tuple(args.seeds), grid_lr=tuple(args.ft_lr),
                             grid_batch=tuple(args.ft_batch), max_epochs=args.ft_epochs,
                             patience=args.ft_patience, max_folds=args.folds)
        m = finetune(cfg)
        results[name] = _summary(m["test"])
        details[name] = {"pretraining": m["pretraining"], "selected": m["selected"],
                         "seed_spread": m["seed_spread"], "saliency_in_heart": m["saliency"] and
                         m["saliency"]["in_heart_share_mean"], "train_seconds": round(m["train_seconds"], 1)}
        stage[f"finetune_{name}"] = time.perf_counter() - t

    t = time.perf_counter()
    try:
        from cardioclr.evaluate.baseline import BaselineConfig, run_baseline

        b = run_baseline(BaselineConfig(work=str(work), out=str(work / "baseline" / f"clinical-{masks}"),
                                        masks=masks))
        results["clinical_baseline"] = _summary(b)
    except KeyboardInterrupt:
        raise
    except Exception as err:  # noqa: BLE001 - a stage under construction must not hide the rest
        traceback.print_exc()
        results["clinical_baseline"] = {"error": f"{type(err).__name__}: {err}"}
    stage["baseline"] = time.perf_counter() - t

    out = {
        **results,
        "seconds": round(time.perf_counter() - start, 1),
        "mask_source": masks,
        "mask_note": mask_note,
        "input": "segmented",
        "encoder": args.encoder,
        "image_size": args.image_size,
        "cv_folds_used": args.folds,
        "seeds": args.seeds,
        "details": details,
        "pretraining": ssl_info,
        "stage_seconds": {k: round(v, 1) for k, v in stage.items()},
        "paper_best_auc": PAPER_BEST_AUC,
        "cpu_count": os.cpu_count(),
        "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "work": str(work),
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
