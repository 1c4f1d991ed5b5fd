"""Choose and check the basal end-systolic RV rule on out-of-fold train masks only.

:func:`cardioclr.segment.postprocess.trim_basal_es_rv` drops the RV from leading basal ES
slices where the ventricle has left the slice (ES RV area < ``area_ratio`` x ED RV area on that
slice, and myocardium area < ``myo_ratio`` x the next slice's). This script scores the rule on
the train patients whose masks are ``out_of_fold`` in a cross-fit (``segment train W --folds
K``; ``segment predict W --keep-basal-es-rv``, so the masks are the network's without the rule);
several ``--work`` cross-fits of the same patients (e.g. two seeds) are pooled, each patient
once per cross-fit:

* every (area_ratio, myo_ratio) of a grid: mean ES RV Dice, patients better / worse, worst loss;
* the constants in ``postprocess.py``: ES RV Dice, mean Dice of the six structures, RV
  end-systolic volume error and RV ejection fraction bias against the expert masks, before and
  after, with a paired bootstrap 95% CI of the per-patient ES RV Dice change;
* nested cross-validation of the choice itself (pick the grid's best mean on 4/5 of the
  patients, score it on the other 1/5; 5 folds x ``--repeats``; a patient's masks from every
  cross-fit fall in one fold), an estimate of what choosing by this grid gains on patients the
  choice did not see.

No test patient is read.

Usage::

    python benchmarks/basal_es_rv.py --work W [W2 ...] [--repeats 3] [--bootstrap 10000]

Last line: one JSON object (keys in benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

AREA_RATIOS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
MYO_RATIOS = (0.6, 0.7, 0.8, 0.9, 1.0)
RV = 1


def load_out_of_fold(work: Path) -> dict[str, dict[str, Any]]:
    """Per out-of-fold patient: predicted and expert ED/ES labels (z, S, S) and voxel volume (mL)."""
    import pandas as pd

    from cardioclr.data.masks import load_labels
    from cardioclr.data.store import SliceStore
    from cardioclr.segment.crossfit import MASK_SOURCES_FILE

    table = pd.read_csv(work / "segmentation" / MASK_SOURCES_FILE, dtype=str)
    sources = table.set_index("patient_id")["source"]
    store = SliceStore(work)
    out = {}
    for pid in sources.index[sources == "out_of_fold"]:
        ed_p, es_p = load_labels(work, pid, "predicted")
        ed_e, es_e = load_labels(work, pid, "expert")
        out[pid] = {"ed_p": ed_p, "es_p": es_p, "ed_e": ed_e, "es_e": es_e,
                    "voxel_ml": float(np.prod(store.load(pid).spacing_zyx)) / 1000.0}
    return out


def patient_scores(p: dict[str, Any], es: np.ndarray) -> dict[str, float]:
    """ES RV Dice, mean Dice of the six structures, RV ESV error (mL) and RV EF (%) of one patient
    whose ES labels are ``es`` (the ED labels are the predicted ones)."""
    from cardioclr.clinical.indices import ejection_fraction_pct
    from cardioclr.segment.evaluate import dice

    dices = [dice(pred == v, ref == v) for pred, ref in ((p["ed_p"], p["ed_e"]), (es, p["es_e"]))
             for v in (1, 2, 3)]
    v = p["voxel_ml"]
    edv, esv = float((p["ed_p"] == RV).sum()) * v, float((es == RV).sum()) * v
    return {"es_rv_dice": dice(es == RV, p["es_e"] == RV), "mean_dice": float(np.mean(dices)),
            "rv_esv_error_ml": esv - float((p["es_e"] == RV).sum()) * v,
            "rv_ef_pct": ejection_fraction_pct(edv, esv)}


def bootstrap_ci(diff: np.ndarray, n_boot: int, seed: int) -> list[float]:
    """95% percentile bootstrap CI of the mean of per-patient differences."""
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), (n_boot, len(diff)))].mean(1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def best_point(scores: dict[Any, np.ndarray], rows: np.ndarray) -> Any:
    """The grid point with the best mean ES RV Dice over ``rows`` (bool mask of the keys); ties go
    to the more conservative (smaller) constants."""
    return max(scores, key=lambda g: (scores[g][rows].mean(), *(-x for x in g)))


def nested_choice_gain(keys: list[tuple[str, str]], scores: dict[Any, np.ndarray], base: np.ndarray,
                       seed: int, folds: int = 5) -> float:
    """Mean ES RV Dice gain of choosing the grid point with the best mean on 4/5 of the patients,
    scored on the other 1/5 (``folds`` folds over patients: a patient's masks from every
    cross-fit on the same side). ``keys``: (work, patient_id) of each mask set; ``scores``:
    grid point -> per-key ES RV Dice; ``base``: per-key Dice without the rule."""
    from sklearn.model_selection import KFold

    pids = sorted({pid for _, pid in keys})
    scored = np.zeros(len(keys))
    for _, held_idx in KFold(folds, shuffle=True, random_state=seed).split(pids):
        held = {pids[i] for i in held_idx}
        fit = np.array([pid not in held for _, pid in keys])
        scored[~fit] = scores[best_point(scores, fit)][~fit]
    return float(scored.mean() - base.mean())


def main(argv: list[str] | None = None) -> int:  # noqa: D103
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", required=True, nargs="+", help="cross-fitted work directories (the "
                    "same patients), predicted with --keep-basal-es-rv")
    ap.add_argument("--repeats", type=int, default=3, help="repeats of the nested 5-fold CV")
    ap.add_argument("--bootstrap", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    start = time.perf_counter()
    load_before = os.getloadavg()[0]
    works = [Path(w) for w in args.work]
    for work in works:
        seg = work / "segmentation"
        if not (seg / "mask_sources.csv").is_file():
            print(json.dumps({"skipped": f"no cross-fitted masks in {work}"}))
            return 0
        summary = json.loads((seg / "predict_summary.json").read_text())
        if summary.get("basal_es_rv", False):
            print(f"{seg / 'predict_summary.json'}: the masks were predicted with the rule; run "
                  f"`cardioclr segment predict {work} --keep-basal-es-rv` first", file=sys.stderr)
            return 2

    from cardioclr.segment.evaluate import dice
    from cardioclr.segment.postprocess import (
        BASAL_ES_RV_AREA_RATIO,
        BASAL_ES_RV_MYO_RATIO,
        trim_basal_es_rv,
    )

    patients = {(str(w), pid): masks for w in works for pid, masks in load_out_of_fold(w).items()}
    keys = sorted(patients)
    before = [patient_scores(patients[k], patients[k]["es_p"]) for k in keys]
    base = np.array([s["es_rv_dice"] for s in before])
    chosen = (BASAL_ES_RV_AREA_RATIO, BASAL_ES_RV_MYO_RATIO)
    grid = list(itertools.product(AREA_RATIOS, MYO_RATIOS))
    if chosen not in grid:
        grid.append(chosen)

    def rule(k: tuple[str, str], g: tuple[float, float]) -> tuple[np.ndarray, int]:
        return trim_basal_es_rv(patients[k]["ed_p"], patients[k]["es_p"], *g)

    es_rv = {g: np.array([dice(rule(k, g)[0] == RV, patients[k]["es_e"] == RV) for k in keys]) for g in grid}
    table = [{"area_ratio": g[0], "myo_ratio": g[1],
              "es_rv_dice": round(float(es_rv[g].mean()), 4),
              "better": int((es_rv[g] > base).sum()), "worse": int((es_rv[g] < base).sum()),
              "worst_change": round(float((es_rv[g] - base).min()), 4)} for g in grid]
    # the constants, in full
    trimmed = [rule(k, chosen) for k in keys]
    after = [patient_scores(patients[k], es) for k, (es, _) in zip(keys, trimmed, strict=True)]
    expert = [patient_scores({**patients[k], "ed_p": patients[k]["ed_e"]}, patients[k]["es_e"]) for k in keys]

    def agg(rows: list[dict[str, float]]) -> dict[str, float]:
        err = np.array([r["rv_esv_error_ml"] for r in rows])
        ef = np.array([r["rv_ef_pct"] for r in rows]) - np.array([r["rv_ef_pct"] for r in expert])
        return {"es_rv_dice": round(float(np.mean([r["es_rv_dice"] for r in rows])), 4),
                "mean_dice": round(float(np.mean([r["mean_dice"] for r in rows])), 4),
                "rv_esv_bias_ml": round(float(err.mean()), 2),
                "rv_esv_mean_abs_error_ml": round(float(np.abs(err).mean()), 2),
                "rv_ef_bias_pct": round(float(np.nanmean(ef)), 2)}

    diff = np.array([a["es_rv_dice"] - b["es_rv_dice"] for a, b in zip(after, before, strict=True)])
    nested = [nested_choice_gain(keys, es_rv, base, args.seed + rep) for rep in range(args.repeats)]
    best_mean = best_point(es_rv, np.ones(len(keys), bool))
    result = {
        "n_out_of_fold": len(keys),
        "n_patients": len({pid for _, pid in keys}),
        "constants": {"area_ratio": chosen[0], "myo_ratio": chosen[1]},
        "grid_best_mean": {"area_ratio": best_mean[0], "myo_ratio": best_mean[1],
                           "es_rv_dice": round(float(es_rv[best_mean].mean()), 4)},
        "before": agg(before),
        "after": agg(after),
        "patients_trimmed": int(sum(1 for _, n in trimmed if n)),
        "slices_trimmed": int(sum(n for _, n in trimmed)),
        "es_rv_dice_change": {"mean": round(float(diff.mean()), 4),
                              "ci95": [round(x, 4) for x in bootstrap_ci(diff, args.bootstrap, args.seed)],
                              "better": int((diff > 0).sum()), "worse": int((diff < 0).sum()),
                              "worst": round(float(diff.min()), 4)},
        "nested_cv_es_rv_dice_gain": {"mean": round(float(np.mean(nested)), 4),
                                      "per_repeat": [round(x, 4) for x in nested]},
        "grid": table,
        "work": [str(w) for w in works],
        "seconds": round(time.perf_counter() - start, 1), "cpu_count": os.cpu_count(),
        "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
