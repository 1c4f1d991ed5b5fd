"""Calibrate the per-patient segmentation quality flag on out-of-fold patients, then test it.

The ``low_confidence`` flag of ``segment predict`` fires when the disagreement between the
test-time views exceeds a threshold: :data:`cardioclr.segment.qc.DISAGREEMENT_FLAG` for the
mirrored views of mirror-trained models, :data:`~cardioclr.segment.qc.ROTATED_VIEWS_DISAGREEMENT_FLAG`
for the rotated views of models trained without mirroring. This script chooses such a threshold
honestly and shows whether it is informative:

1. **Calibration** (``--crossfit-work W``: a work directory where ``cardioclr segment train W
   --folds K`` and ``segment predict W`` ran): the train patients whose mask is
   ``out_of_fold`` (from a fold model that never saw them) give pairs (disagreement of that one
   model's test-time views, mean Dice against the expert mask). ``WORK_cvK/out_of_fold`` of
   ``segmentation_quality.py --cv K`` serves too: its test patients are left out here.
   :func:`cardioclr.segment.qc.calibrate_disagreement_threshold` picks the threshold that best
   separates masks with mean Dice below ``--poor-below`` (Youden's J), or, with
   ``--poor-quantile Q``, below the Q-quantile of these train patients' own Dice (the worst
   fraction Q: for models so good that almost no mask falls below a fixed Dice). No test patient
   is used.
2. **Test**, optional: the test patients' mean Dice, flagged vs not, at the calibrated threshold
   and at the current constants. ``--test-work W2``: a work directory where one model segmented
   the test split (e.g. ``segmentation_quality.py``'s; its ``metrics_per_patient.csv``).
   ``--test-from-crossfit``: the test patients' own out-of-fold masks in ``W`` (a segmentation
   CV's ``out_of_fold`` directory, where every test patient's mask comes from a fold model that
   never saw it).

Usage::

    python benchmarks/qc_calibration.py --crossfit-work W [--test-work W2 | --test-from-crossfit]
        [--poor-below 0.85 | --poor-quantile Q]

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


def out_of_fold_table(work: Path, subset: str = "train") -> Any:
    """DataFrame (index patient_id): ``disagreement``, ``mean_dice`` of the out-of-fold patients
    of the split's ``subset`` ("train" or "test")."""
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
    # One subset only, whatever their source: the directory of a segmentation CV
    # (``segmentation_quality.py --cv K``) has out-of-fold masks for the test patients too.
    wanted = set(store.splits.train if subset == "train" else store.splits.test)
    for pid in sources.index[(sources == "out_of_fold") & sources.index.isin(wanted)]:
        pred = dict(zip(PHASES, load_labels(work, pid, "predicted"), strict=True))
        ref = dict(zip(PHASES, load_labels(work, pid, "expert"), strict=True))
        m = patient_metrics(pred, ref, store.load(pid).spacing_zyx)
        dice = [v for k, v in m.items() if k.startswith("dice_")]
        rows.append({"patient_id": pid, "disagreement": float(quality.at[pid, "disagreement"]),
                     "mean_dice": sum(dice) / len(dice)})
    return pd.DataFrame(rows).set_index("patient_id")


def scored_test_table(work: Path) -> Any:
    """DataFrame (index patient_id): ``disagreement``, ``mean_dice`` of the test patients of
    ``work``'s ``metrics_per_patient.csv`` (``segment evaluate``) and ``quality.csv``."""
    import pandas as pd

    seg = work / "segmentation"
    per = pd.read_csv(seg / "metrics_per_patient.csv", dtype={"patient_id": str}).set_index("patient_id")
    q = pd.read_csv(seg / "quality.csv", dtype={"patient_id": str}).set_index("patient_id")
    dice = per[[c for c in per.columns if c.startswith("dice_")]].mean(axis=1)
    return pd.DataFrame({"disagreement": q.loc[dice.index, "disagreement"].astype(float),
                         "mean_dice": dice})


def compare_on_test(table: Any, threshold: float) -> dict[str, Any]:
    """Test patients' mean Dice flagged (disagreement > threshold) vs not; ``table`` as
    :func:`scored_test_table` or :func:`out_of_fold_table`."""
    dice, dis = table["mean_dice"], table["disagreement"]
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
    tests = ap.add_mutually_exclusive_group()
    tests.add_argument("--test-work", default=None,
                       help="work directory whose test patients were segmented and evaluated")
    tests.add_argument("--test-from-crossfit", action="store_true",
                       help="test on the test patients' out-of-fold masks in --crossfit-work")
    poor = ap.add_mutually_exclusive_group()
    poor.add_argument("--poor-below", type=float, default=0.85,
                      help="a mask is poor when its mean Dice is below this (default 0.85)")
    poor.add_argument("--poor-quantile", type=float, default=None, metavar="Q",
                      help="a mask is poor when its mean Dice is below the Q-quantile of the "
                           "out-of-fold train patients' (0 < Q < 1; replaces --poor-below)")
    args = ap.parse_args(argv)
    if args.poor_quantile is not None and not 0 < args.poor_quantile < 1:
        ap.error("--poor-quantile needs 0 < Q < 1")
    start = time.perf_counter()
    load_before = os.getloadavg()[0]
    work = Path(args.crossfit_work)
    if not (work / "segmentation" / "mask_sources.csv").is_file():
        print(json.dumps({"skipped": f"no cross-fitted masks in {work}"}))
        return 0

    from scipy.stats import spearmanr

    from cardioclr.segment.qc import (
        DISAGREEMENT_FLAG,
        ROTATED_VIEWS_DISAGREEMENT_FLAG,
        calibrate_disagreement_threshold,
    )

    table = out_of_fold_table(work)
    poor_below = (float(table["mean_dice"].quantile(args.poor_quantile)) if args.poor_quantile is not None
                  else args.poor_below)
    chosen = calibrate_disagreement_threshold(table["disagreement"], table["mean_dice"], poor_below)
    result: dict[str, Any] = {
        "calibration": chosen,
        "poor_below": poor_below,
        "poor_quantile": args.poor_quantile,
        "n_out_of_fold": len(table),
        "out_of_fold_mean_dice": float(table["mean_dice"].mean()),
        "out_of_fold_spearman_disagreement_vs_dice": float(
            spearmanr(table["disagreement"], table["mean_dice"]).statistic),
        "current_threshold": DISAGREEMENT_FLAG,
        "rotated_views_threshold": ROTATED_VIEWS_DISAGREEMENT_FLAG,
    }
    tests = (scored_test_table(Path(args.test_work)) if args.test_work
             else out_of_fold_table(work, "test") if args.test_from_crossfit else None)
    if tests is not None:
        result["n_test"] = len(tests)
        result["test_spearman_disagreement_vs_dice"] = float(
            spearmanr(tests["disagreement"], tests["mean_dice"]).statistic)
        result["test_at_calibrated"] = (compare_on_test(tests, chosen["threshold"])
                                        if chosen is not None else None)
        result["test_at_current"] = compare_on_test(tests, DISAGREEMENT_FLAG)
        result["test_at_rotated_views_threshold"] = compare_on_test(tests, ROTATED_VIEWS_DISAGREEMENT_FLAG)
    result.update({"crossfit_work": str(work), "test_work": args.test_work,
                   "test_from_crossfit": args.test_from_crossfit,
                   "seconds": round(time.perf_counter() - start, 1), "cpu_count": os.cpu_count(),
                   "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2)})
    print(json.dumps(result, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
