"""Out-of-fold segmentation quality of cross-fitted runs: a design choice made on train only.

A single 70/30 split scores a segmentation design on 30 test patients, and those may not be
used to choose it. A cross-fit (``cardioclr segment train W --folds K`` then ``cardioclr
segment predict W``) segments every one of the 70 train patients with a fold model that never
saw it: 70 honest scores from train patients alone. This script reads such work directories
and reports, per design, the out-of-fold Dice and HD95; given two (``--work A --against B``),
the paired per-patient difference of mean Dice A - B with a bootstrap 95% CI and the Wilcoxon
signed-rank p-value, and how many patients each design wins.

The test patients' scores of each run (the K-model ensemble, ``segment evaluate``) are printed
too, marked as not used for the choice.

``--grid store`` (default) scores on the store grid, where both runs must live (same
``prepare`` spacing and size). ``--grid source`` scores on each patient's source image grid
against the dataset's own expert label files (as the ACDC challenge scores): the predicted labels
mapped back as ``segment predict`` writes its NIfTI output. Use it to compare designs prepared
on different grids (e.g. ``prepare --spacing 1.25`` against 1.5 mm).

Usage::

    python benchmarks/segmentation_crossfit.py --work A [--against B] [--grid source] [--bootstrap 10000]

Last line: one JSON object (keys in benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def source_grid_pair(work: Path, store: Any, pid: str, cases: dict[str, Any]
                     ) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """Predicted and expert labels of ``pid`` on its source grid ({phase: (z, H, W) uint8}) and
    the source voxel spacing (z, y, x) mm. The expert labels are read from the dataset's files
    (``cases``: patient_id -> :class:`cardioclr.data.cases.Case`), not from the store
    (``store``: ``work``'s :class:`cardioclr.data.store.SliceStore`, for the patient's geometry)."""
    from cardioclr.data.masks import load_labels
    from cardioclr.data.store import to_source_grid
    from cardioclr.io.volume import read_label_volume
    from cardioclr.segment.evaluate import PHASES

    ps = store.load(pid)
    case = cases[pid]
    pred, ref = {}, {}
    for phase, labels, path in zip(PHASES, load_labels(work, pid, "predicted"), (case.ed_mask, case.es_mask),
                                   strict=True):
        if path is None:
            raise SystemExit(f"{case.source}: no expert {phase} label file to score on the source grid")
        pred[phase] = to_source_grid(labels, ps.geometry)
        ref[phase] = read_label_volume(path).array
    return pred, ref, ps.geometry.source_spacing_zyx


def out_of_fold_metrics(work: Path, grid: str = "store") -> Any:
    """DataFrame (index patient_id) of Dice / HD95 per phase and structure of ``work``'s
    out-of-fold patients, with ``mean_dice`` (mean of the 6 Dice) and ``mean_hd95``; on the store
    grid, or (``grid="source"``) on each patient's source grid against the dataset's files."""
    import pandas as pd

    from cardioclr.data.discover import discover_cases
    from cardioclr.data.masks import load_labels
    from cardioclr.data.store import SliceStore
    from cardioclr.segment.crossfit import MASK_SOURCES_FILE
    from cardioclr.segment.evaluate import PHASES, patient_metrics

    path = work / "segmentation" / MASK_SOURCES_FILE
    if not path.is_file():
        raise SystemExit(f"{path}: not found; run `cardioclr segment train {work} --folds K` and "
                         f"`cardioclr segment predict {work}` first")
    sources = pd.read_csv(path, dtype=str).set_index("patient_id")["source"]
    store = SliceStore(work)
    cases: dict[str, Any] = {}
    if grid == "source":
        dataset = json.loads((work / "dataset.json").read_text())["source"]
        cases = {c.patient_id: c for c in discover_cases(dataset)[0]}
    rows = []
    for pid in sorted(sources.index[sources == "out_of_fold"]):
        if grid == "source":
            pred, ref, spacing = source_grid_pair(work, store, pid, cases)
        else:
            pred = dict(zip(PHASES, load_labels(work, pid, "predicted"), strict=True))
            ref = dict(zip(PHASES, load_labels(work, pid, "expert"), strict=True))
            spacing = store.load(pid).spacing_zyx
        rows.append({"patient_id": pid, **patient_metrics(pred, ref, spacing)})
    table = pd.DataFrame(rows).set_index("patient_id")
    table["mean_dice"] = table[[c for c in table.columns if c.startswith("dice_")]].mean(axis=1)
    table["mean_hd95"] = table[[c for c in table.columns if c.startswith("hd95_")]].mean(axis=1)
    return table


def fold_training(work: Path) -> list[dict[str, Any]]:
    """Epochs, seconds and best validation Dice of each fold model (its ``done.json``)."""
    from cardioclr.segment.crossfit import folds_dir

    out = []
    for done in sorted(folds_dir(work).glob("fold_*/model/done.json")):
        info = json.loads(done.read_text())
        out.append({"fold": done.parent.parent.name, "epochs": info.get("epochs"),
                    "train_seconds": info.get("train_seconds"), "best_val_dice": info.get("best_val_dice"),
                    "context_slices": (info.get("config") or {}).get("network", {}).get("context_slices", 0),
                    "phase_channel": bool((info.get("config") or {}).get("network", {}).get("phase_channel")),
                    "precision": info.get("precision")})
    return out


def summary(work: Path, table: Any, grid: str = "store") -> dict[str, Any]:
    """The design's out-of-fold scores, its fold trainings and (not for choosing) its test scores."""
    from cardioclr.segment.evaluate import metrics_path

    dice = {c.removeprefix("dice_"): round(float(table[c].mean()), 4) for c in table.columns
            if c.startswith("dice_")}
    test = None
    mp = metrics_path(work)
    if mp.is_file():
        m = json.loads(mp.read_text())
        test = {"mean_dice": m.get("mean_dice"), "dice": m.get("dice"), "mean_hd95": m.get("mean_hd95"),
                "n_test": m.get("n_test")}
    spacing = json.loads((work / "dataset.json").read_text()).get("spacing_mm")
    return {"work": str(work), "grid": grid, "store_spacing_mm": spacing, "n_out_of_fold": len(table),
            "out_of_fold_mean_dice": round(float(table["mean_dice"].mean()), 4),
            "out_of_fold_mean_dice_sd": round(float(table["mean_dice"].std()), 4),
            "out_of_fold_dice": dice,
            "out_of_fold_mean_hd95": round(float(np.nanmean(table["mean_hd95"])), 2),
            "folds": fold_training(work),
            "test_ensemble_not_used_for_choice": test}


def paired(a: Any, b: Any, n_boot: int, seed: int) -> dict[str, Any]:
    """Per-patient mean Dice a - b over the patients both scored: mean, bootstrap 95% CI,
    Wilcoxon signed-rank p, wins; and the same mean difference per phase and structure."""
    from scipy.stats import wilcoxon

    common = a.index.intersection(b.index)
    d = (a.loc[common, "mean_dice"] - b.loc[common, "mean_dice"]).to_numpy()
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(axis=1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    per = {c.removeprefix("dice_"): round(float((a.loc[common, c] - b.loc[common, c]).mean()), 4)
           for c in a.columns if c.startswith("dice_")}
    return {"n": int(len(d)), "mean_dice_difference": round(float(d.mean()), 4),
            "ci95": [round(float(lo), 4), round(float(hi), 4)],
            "wilcoxon_p": float(wilcoxon(d).pvalue) if np.any(d != 0) else 1.0,
            "wins": int((d > 0).sum()), "losses": int((d < 0).sum()), "dice_difference": per}


def main(argv: list[str] | None = None) -> int:  # noqa: D103
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", required=True, help="cross-fitted work directory (design A)")
    ap.add_argument("--against", default=None, help="another one on the same store and split (design B)")
    ap.add_argument("--grid", choices=("store", "source"), default="store",
                    help="score on the store grid (both runs prepared alike) or on each patient's "
                    "source grid against the dataset's expert files")
    ap.add_argument("--bootstrap", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    load_before = os.getloadavg()[0]
    a_work = Path(args.work)
    a = out_of_fold_metrics(a_work, args.grid)
    result: dict[str, Any] = {"a": summary(a_work, a, args.grid)}
    if args.against:
        b_work = Path(args.against)
        b = out_of_fold_metrics(b_work, args.grid)
        result["b"] = summary(b_work, b, args.grid)
        result["a_minus_b"] = paired(a, b, args.bootstrap, args.seed)
    result.update({"seconds": round(time.perf_counter() - t0, 1), "load_before": round(load_before, 2),
                   "load_after": round(os.getloadavg()[0], 2), "cpu_count": os.cpu_count()})
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
