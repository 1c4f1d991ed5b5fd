"""Calibrate the per-patient segmentation quality flag on out-of-fold patients, then test it.

The ``low_confidence`` flag of ``segment predict`` fires when the disagreement between the
test-time views (mirrored, or rotated for a model trained without mirroring) exceeds
:data:`cardioclr.segment.qc.DISAGREEMENT_FLAG`. This script chooses that threshold honestly and
shows whether it is informative:

1. **Calibration** (``--crossfit-work W``: a work directory where ``cardioclr segment train W
   --folds K`` and ``segment predict W`` ran): the train patients whose mask is
   ``out_of_fold`` (from a fold model that never saw them) give pairs (disagreement of that one
   model's test-time views, mean Dice against the expert mask). ``WORK_cvK/out_of_fold`` of
   ``segmentation_quality.py --cv K`` serves too: its test patients are left out here.
   :func:`cardioclr.segment.qc.calibrate_disagreement_threshold` picks the threshold that best
   separates masks with mean Dice below ``--poor-below`` (Youden's J). No test patient is used.
2. **Test** (``--test-work W2``, optional: a work directory where one model segmented the test
   split, e.g. ``segmentation_quality.py``'s): the test patients' mean Dice, flagged vs not at
   the calibrated threshold and at the current constant.

Usage::

    python benchmarks/qc_calibration.py --crossfit-work W [--test-work W2] [--poor-below 0.85]

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


def out_of_fold_table(work: Path) -> Any:
    """DataFrame (index patient_id): ``disagreement``, ``mean_dice`` of the out-of-fold train patients."""
    import pandas as pd

    from cardioclr.data.masks import load_labels
    from cardioclr.data.store import SliceStore
    from cardioclr.segment.crossfit import MASK_SOURCES_FILE
    from cardioclr.segment.evaluate import PHASES, patient_metrics
    from cardioclr.segment.qc import QUALITY_FILE

    seg = work / "segmentation"
    sources = pd.read_csv(seg / MASK_SOURCES_FILE, dtype=str).set_index("patient_id")["source"]
    quality = pd.read_csv(seg / QUALITY_FILE, dtype={"patient_id": str}).set_index("patient_id")
    store = SliceStore(work)
    rows = []
    # Train patients only, whatever their source: the directory of a segmentation CV
    # (``segmentation_quality.py --cv K``) has out-of-fold masks for the test patients too.
    train = set(store.splits.train)
    for pid in sources.index[(sources == "out_of_fold") & sources.index.isin(train)]:
        pred = dict(zip(PHASES, load_labels(work, pid, "predicted"), strict=True))
        ref = dict(zip(PHASES, load_labels(work, pid, "expert"), strict=True))
        m = patient_metrics(pred, ref, store.load(pid).spacing_zyx)
        dice = [v for k, v in m.items() if k.startswith("dice_")]
        rows.append({"patient_id": pid, "disagreement": float(quality.at[pid, "disagreement"]),
                     "mean_dice": sum(dice) / len(dice)})
    return pd.DataFrame(rows).set_index("patient_id")


def compare_on_test(work: Path, threshold: float) -> dict[str, Any]:
    """Test patients' mean Dice flagged (disagreement > threshold) vs not, from ``work``'s
    ``metrics_per_patient.csv`` (``segment evaluate``) and ``quality.csv``."""
    import pandas as pd

    seg = work / "segmentation"
    per = pd.read_csv(seg / "metrics_per_patient.csv", dtype={"patient_id": str}).set_index("patient_id")
    q = pd.read_csv(seg / "quality.csv", dtype={"patient_id": str}).set_index("patient_id")
    dice = per[[c for c in per.columns if c.startswith("dice_")]].mean(axis=1)
    dis = q.loc[dice.index, "disagreement"].astype(float)
    flagged = dis > threshold

    def group(mask: Any) -> dict[str, Any]:
        d = dice[mask]
        return {"n": int(mask.sum()), "mean_dice": float(d.mean()) if len(d) else None,
                "min_dice": float(d.min()) if len(d) else None,
                "patients": sorted(d.index) if mask.sum() <= 10 else None}

    return {"threshold": threshold, "flagged": group(flagged), "unflagged": group(~flagged)}


def main(argv: list[str] | None = None) -> int:
    """Run the calibration (and the test comparison); returns the exit code."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--crossfit-work", required=True,
                    help="work directory of `segment train --folds K` + `segment predict`")
    ap.add_argument("--test-work", default=None,
                    help="work directory whose test patients were segmented and evaluated")
    ap.add_argument("--poor-below", type=float, default=0.85,
                    help="a mask is poor when its mean Dice is below this (default 0.85)")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    load_before = os.getloadavg()[0]
    work = Path(args.crossfit_work)
    if not (work / "segmentation" / "mask_sources.csv").is_file():
        print(json.dumps({"skipped": f"no cross-fitted masks in {work}"}))
        return 0

    from scipy.stats import spearmanr

    from cardioclr.segment.qc import DISAGREEMENT_FLAG, calibrate_disagreement_threshold

    table = out_of_fold_table(work)
    chosen = calibrate_disagreement_threshold(table["disagreement"], table["mean_dice"], args.poor_below)
    result: dict[str, Any] = {
        "calibration": chosen,
        "poor_below": args.poor_below,
        "n_out_of_fold": len(table),
        "out_of_fold_mean_dice": float(table["mean_dice"].mean()),
        "out_of_fold_spearman_disagreement_vs_dice": float(
            spearmanr(table["disagreement"], table["mean_dice"]).statistic),
        "current_threshold": DISAGREEMENT_FLAG,
    }
    if args.test_work:
        tw = Path(args.test_work)
        result["test_at_calibrated"] = (compare_on_test(tw, chosen["threshold"])
                                        if chosen is not None else None)
        result["test_at_current"] = compare_on_test(tw, DISAGREEMENT_FLAG)
    result.update({"crossfit_work": str(work), "test_work": args.test_work,
                   "seconds": round(time.perf_counter() - start, 1), "cpu_count": os.cpu_count(),
                   "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2)})
    print(json.dumps(result, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
