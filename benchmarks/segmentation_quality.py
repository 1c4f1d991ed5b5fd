"""Segmentation quality benchmark: prepare -> train -> predict -> evaluate on ACDC.

    python benchmarks/segmentation_quality.py [--data DATA] [--preset cpu|gpu] [--work DIR]
        [--train-minutes M] [--qc-png] [--cv K]

DATA defaults to ``../shared/data/acdc`` relative to the repository root. Progress goes to
stderr/stdout as it happens; the LAST line printed is one JSON object.

Default mode, the 70/30 split of ``splits.json``: the model trains on the 70 train patients
(the ``cpu`` preset on all of them, the last epoch kept; the ``gpu`` preset holds a tenth out
for validation), predicts all 100 patients (timed: ``predict_seconds``,
localise-then-segment with test-time mirroring, NIfTI written, QC pictures only with
``--qc-png``) and is scored on the 30 test patients: ``mean_dice``, ``dice`` {phase: {RV, MYO,
LV}}, ``mean_hd95``, ``hd95``, ``train_seconds``, ``predict_seconds``, ``n_test``, and
``quality_flag`` (test Dice of patients whose test-time disagreement flags them
``low_confidence`` vs the others, and its Spearman correlation with Dice).

``--cv K``: K-fold cross-validation over every patient (stratified by diagnosis, seed 0): K
trainings on the other folds, each scored on its held-out fold; the JSON has ``cv_mean_dice``
(mean ± SD over folds), per-fold results and the pooled per-phase Dice. Costs K trainings
(5 x 28 min for the cpu preset). Each fold's result is kept in its work directory
(:data:`FOLD_RESULT`), so a stopped run started again goes on from the first unfinished fold;
``--finished-only`` trains nothing and scores the folds whose training has finished
(``complete`` false and ``folds_missing`` listed while some have not). A complete CV also
gathers every patient's held-out mask into ``WORK_cvK/out_of_fold`` (``out_of_fold_work`` in
the JSON): a work directory with WORK's store and 70/30 split where each patient's mask comes
from the fold model that never saw it (``mask_sources.csv`` ``out_of_fold``, with its QC
flags and ``quality.csv`` row), so ``benchmarks/diagnosis_quality.py --seg-work`` can measure the
diagnosis on masks of the full preset's quality and ``benchmarks/qc_calibration.py
--crossfit-work`` can calibrate the quality flag on its train patients.

When the data is absent it prints ``{"skipped": "..."}`` and exits 0.
"""

from __future__ import annotations

import os

# Before torch is imported: OpenMP threads that spin while waiting thrash on a shared CPU.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
#: A CV fold's result (with the options it was measured with), in that fold's work directory.
FOLD_RESULT = "benchmark_fold_result.json"
#: The options a kept fold result must have been measured with to be reused.
RESULT_OPTIONS = ("preset", "max_epochs", "train_minutes", "context_slices", "phase_channel")


def _train_predict_evaluate(work: Path, args: argparse.Namespace,
                            patient_ids: list[str] | None = None) -> dict[str, Any]:
    """Train on ``work``'s train split, predict, evaluate its test split; the result dict."""
    from cardioclr.segment.evaluate import evaluate, format_summary
    from cardioclr.segment.predict import PredictConfig, predict
    from cardioclr.segment.train import preset_config, train

    print(f"training ({args.preset} preset) in {work}", flush=True)
    cfg = preset_config(work, args.preset, max_epochs=args.max_epochs,
                        progress_bar=sys.stderr.isatty())
    if args.train_minutes is not None:
        cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim,
                                                                 time_budget_s=args.train_minutes * 60))
    if args.context_slices is not None:
        cfg = dataclasses.replace(cfg, network=dataclasses.replace(cfg.network,
                                                                   context_slices=args.context_slices))
    if args.phase_channel is not None:
        cfg = dataclasses.replace(cfg, network=dataclasses.replace(cfg.network,
                                                                   phase_channel=args.phase_channel == "on"))
    info = train(cfg, overwrite=args.overwrite)
    print("predicting", flush=True)
    t1 = time.perf_counter()
    summary = predict(PredictConfig(work=str(work), qc_png=args.qc_png), patient_ids=patient_ids)
    predict_s = time.perf_counter() - t1
    metrics = evaluate(work)
    print(format_summary(metrics), flush=True)
    return {
        "mean_dice": metrics["mean_dice"],
        "dice": metrics["dice"],
        "dice_per_structure": metrics["dice_per_structure"],
        "mean_hd95": metrics["mean_hd95"],
        "hd95": metrics["hd95"],
        "quality_flag": metrics.get("quality_flag"),
        "indices_agreement": {k: {m: v[m] for m in ("pearson_r", "bias", "sd", "n")}
                              for k, v in metrics["indices_agreement"].items()},
        "train_seconds": info["train_seconds"],
        "epochs": info["epochs"],
        "stopped_by": info["stopped_by"],
        "best_val_dice": info["best_val_dice"],
        "context_slices": cfg.network.context_slices,
        "phase_channel": cfg.network.phase_channel,
        "train_precision": info.get("precision"),  # as resolved (older done.json files lack it)
        "predict_seconds": round(predict_s, 1),
        "predict_precision": summary.get("precision"),
        "predicted_patients": summary["patients"],
        "n_train": len(info["train_patients"]),
        "n_val": len(info["val_patients"]),
        "n_test": metrics["n_test"],
        "predict_failed": len(summary["failed"]),
        "qc_flagged_patients": summary["flagged_patients"],
        "low_confidence_patients": summary["low_confidence_patients"],
        "not_localised_patients": summary["not_localised_patients"],
    }


def _fold_work(base: Path, root: Path, train: list[str], test: list[str]) -> Path:
    """A work directory sharing ``base``'s store (symlink) with its own split (train, test)."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("dataset.json", "manifest.csv"):
        if not (root / name).is_file():
            shutil.copy(base / name, root / name)
    if not (root / "store").exists():
        (root / "store").symlink_to((base / "store").resolve(), target_is_directory=True)
    splits = {"train": sorted(train), "test": sorted(test), "folds": [], "unlabelled": [], "seed": 0,
              "method": "cv"}
    path = root / "splits.json"
    if path.is_file() and json.loads(path.read_text()) != splits:
        raise SystemExit(f"{path} holds another split; use a fresh --work")
    path.write_text(json.dumps(splits))
    return root


def _fold_result(work: Path, args: argparse.Namespace, test: list[str]) -> dict[str, Any] | None:
    """One CV fold's result: kept from an earlier run with the same options, else measured now
    (None with ``--finished-only`` when the fold's training has not finished)."""
    from cardioclr.atomic import read_json, write_json
    from cardioclr.segment.train import model_dir

    options = {name: getattr(args, name) for name in RESULT_OPTIONS}
    path = work / FOLD_RESULT
    if path.is_file() and not args.overwrite:
        kept = read_json(path)
        if kept.get("options") == options:
            return dict(kept["result"])
    if args.finished_only and not (model_dir(work) / "done.json").is_file():
        return None
    result = _train_predict_evaluate(work, args, patient_ids=test)
    write_json(path, {"options": options, "result": result})
    return result


def _gather_out_of_fold(base: Path, cv_root: Path, held_out: list[list[str]]) -> Path:
    """``cv_root/out_of_fold``: a work directory over ``base``'s store and split whose masks are
    each patient's held-out prediction (fold i's masks of ``held_out[i]``), with their QC flags
    and per-patient quality estimates (``quality.csv``, for ``qc_calibration.py``); built under
    a temporary name, then renamed."""
    import pandas as pd

    from cardioclr.layout import WorkLayout
    from cardioclr.segment.crossfit import MASK_SOURCES_FILE, mask_sources_table
    from cardioclr.segment.predict import QC_FLAGS_FILE
    from cardioclr.segment.qc import QUALITY_FILE

    final, tmp = cv_root / "out_of_fold", cv_root / "out_of_fold.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    out = WorkLayout(tmp)
    out.segmentation_masks.mkdir(parents=True)
    for name in ("dataset.json", "manifest.csv", "splits.json"):
        shutil.copy(base / name, tmp / name)
    (tmp / "store").symlink_to((base / "store").resolve(), target_is_directory=True)
    sources = []
    # Per-patient tables of segment predict (file name -> sort keys): each patient's rows come
    # from the fold that held it out.
    tables = {QC_FLAGS_FILE: ["patient_id", "phase"], QUALITY_FILE: ["patient_id"]}
    parts: dict[str, list[pd.DataFrame]] = {name: [] for name in tables}
    for i, ids in enumerate(held_out):
        fold = WorkLayout(cv_root / f"fold{i}")
        for pid in ids:
            shutil.copy(fold.segmentation_masks / f"{pid}.npz", out.segmentation_masks / f"{pid}.npz")
            sources.append({"patient_id": pid, "source": "out_of_fold", "models": f"cv_fold{i}"})
        for name in tables:
            if (fold.segmentation / name).is_file():
                t = pd.read_csv(fold.segmentation / name, dtype={"patient_id": str})
                parts[name].append(t[t["patient_id"].isin(ids)])
    mask_sources_table(sorted(sources, key=lambda r: r["patient_id"])).to_csv(
        out.segmentation / MASK_SOURCES_FILE, index=False)
    for name, keys in tables.items():
        if parts[name]:
            gathered = pd.concat(parts[name]).sort_values(keys, kind="stable")
            gathered.to_csv(out.segmentation / name, index=False)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


def _cross_validate(base: Path, k: int, args: argparse.Namespace) -> dict[str, Any]:
    """K-fold CV over every patient of the store at ``base``: per-fold and pooled results."""
    import numpy as np
    from sklearn.model_selection import StratifiedKFold

    from cardioclr.data.store import SliceStore

    store = SliceStore(base)
    m = store.manifest
    ids = [p for p in store.patient_ids if bool(m.at[p, "has_expert_mask"])]
    labels = [str(m.at[p, "label"]) for p in ids]
    folds, missing, held_out = [], [], []
    cv_root = base.parent / f"{base.name}_cv{k}"
    for i, (tr, te) in enumerate(StratifiedKFold(k, shuffle=True, random_state=0).split(ids, labels)):
        test = [ids[j] for j in te]
        held_out.append(test)
        work = _fold_work(base, cv_root / f"fold{i}", [ids[j] for j in tr], test)
        res = _fold_result(work, args, test)
        if res is None:
            missing.append(i)
            continue
        res["fold"] = i
        folds.append(res)
    if not folds:
        raise SystemExit(f"no fold of the {k}-fold CV under {cv_root} has "
                         "finished training; run without --finished-only")
    means = np.array([f["mean_dice"] for f in folds])
    n = np.array([f["n_test"] for f in folds])
    pooled = {ph: {s: float(np.average([f["dice"][ph][s] for f in folds], weights=n))
                   for s in ("RV", "MYO", "LV")} for ph in ("ED", "ES")}
    return {"cv_folds": k, "complete": not missing, "folds_missing": missing,
            "cv_mean_dice": float(np.average(means, weights=n)),
            "cv_mean_dice_sd_over_folds": float(means.std(ddof=1)) if len(folds) > 1 else None,
            "cv_dice": pooled,
            "cv_mean_hd95": float(np.average([f["mean_hd95"] for f in folds], weights=n)),
            "cv_train_seconds": round(sum(f["train_seconds"] for f in folds), 1),
            "n_patients": int(n.sum()),
            "out_of_fold_work": None if missing else str(_gather_out_of_fold(base, cv_root, held_out)),
            "folds": folds}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit code."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="ACDC-layout folder (default ../shared/data/acdc "
                    "relative to the repository root)")
    ap.add_argument("--preset", default="cpu", choices=("cpu", "gpu"))
    ap.add_argument("--work", default=None, help="work directory (default /tmp/cardioclr_bench_seg_PRESET)")
    ap.add_argument("--max-epochs", type=int, default=None)
    ap.add_argument("--context-slices", type=int, default=None, metavar="K",
                    help="2.5D input: K neighbouring slices on each side (default: the preset's)")
    ap.add_argument("--phase-channel", choices=("on", "off"), default=None,
                    help="cardiac phase as an input channel (default: the preset's)")
    ap.add_argument("--train-minutes", type=float, default=None,
                    help="wall-clock training budget (default: the preset's)")
    ap.add_argument("--qc-png", action="store_true", help="also draw a QC picture per patient "
                    "(inside predict_seconds; ~0.3 s each)")
    ap.add_argument("--cv", type=int, default=None, metavar="K",
                    help="K-fold cross-validation over all patients instead of the 70/30 split")
    ap.add_argument("--overwrite", action="store_true", help="retrain even if a finished model exists")
    ap.add_argument("--finished-only", action="store_true",
                    help="with --cv: train nothing; score the folds whose training has finished")
    ap.add_argument("--spacing", type=float, default=None, metavar="MM",
                    help="store grid pixel size when this script prepares WORK (default: the cpu preset's "
                    "1.25 mm, segment/grid.py; prepare's 1.5 mm for gpu)")
    ap.add_argument("--size", type=int, default=None, metavar="PX",
                    help="store grid side when this script prepares WORK (default: the cpu preset's 224, "
                    "prepare's 192 for gpu)")
    args = ap.parse_args(argv)
    data = Path(args.data) if args.data else REPO / ".." / "shared" / "data" / "acdc"
    if not data.is_absolute() and args.data:
        data = (Path.cwd() / data)
    data = data.resolve()
    if not data.is_dir() or not any(data.iterdir()):
        print(json.dumps({"skipped": f"data not found at {data}"}))
        return 0
    if args.cv is not None and args.cv < 2:
        ap.error("--cv needs K >= 2")
    if args.finished_only and args.cv is None:
        ap.error("--finished-only needs --cv")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    from cardioclr.data.prepare import PrepareConfig, default_workers, prepare
    from cardioclr.segment.grid import CPU_GRID

    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    work = Path(args.work or f"/tmp/cardioclr_bench_seg_{args.preset}")
    t0 = time.perf_counter()
    if not (work / "dataset.json").is_file():
        print(f"preparing {data} -> {work}", flush=True)
        # The cpu preset's own grid unless told otherwise (segment/grid.py); the gpu preset's is
        # prepare's default.
        grid: dict[str, Any] = ({"spacing_mm": CPU_GRID.spacing_mm, "image_size": CPU_GRID.image_size}
                                if args.preset == "cpu" else {})
        given = (("spacing_mm", args.spacing), ("image_size", args.size))
        grid.update({k: v for k, v in given if v is not None})
        prepare(PrepareConfig(data=str(data), out=str(work), workers=default_workers(), **grid))
    prep_s = time.perf_counter() - t0
    dataset = json.loads((work / "dataset.json").read_text())
    if args.cv is not None:
        result: dict[str, Any] = {"preset": args.preset, **_cross_validate(work, args.cv, args)}
    else:
        result = {"preset": args.preset, **_train_predict_evaluate(work, args)}
    result.update({
        "prepare_seconds": round(prep_s, 1),
        "store_spacing_mm": dataset.get("spacing_mm"),
        "store_size": dataset.get("image_size"),
        "wall_seconds": round(time.perf_counter() - start, 1),
        "cpu_count": os.cpu_count(),
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "work": str(work),
    })
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
