"""Does the orientation search of ``segment predict`` find each heart's true orientation?

A model trained without mirroring knows hearts in one orientation; ``segment predict`` segments
each patient in whichever of the 8 orientations of the slice (:mod:`cardioclr.segment.orientation`)
its test-time views agree on best (:func:`cardioclr.segment.predict.segment_patient`). This
script segments every stored patient in all 8 orientations, each with the model(s) allowed to
see it (``out_of_fold`` for a cross-fit's train patients), and reports per orientation the mean
disagreement of the views and the mean Dice against the expert labels (labels turned back; on
the store grid, so comparable between orientations only).

Because the candidates of the search are the same 8 images whatever orientation a patient is
stored in, the search picks the true orientation for a patient stored in ANY orientation exactly
when the stored (true, for ACDC) orientation has the lowest disagreement of the 8: the script
counts those patients and the margin to the runner-up, the Dice of the orientation the search
picks (``mean_dice_found_orientation``: for a cohort stored in any orientation) and what
``segment predict`` gives the cohort as stored (``predict_as_stored``: it searches only when the
stored orientation's views disagree more than the quality flag's threshold).

Usage::

    python benchmarks/orientation_search.py --work W [--threads 2]

``W``: a work directory where ``cardioclr segment train W [--folds K]`` ran on expert-labelled
patients. Last line: one JSON object (keys in benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np


def _mean_dice(labels: np.ndarray, expert: np.ndarray) -> float:
    """Mean Dice (0-1) of RV, MYO, LV over those present in either."""
    from cardioclr.clinical.labels import STRUCTURES
    from cardioclr.segment.evaluate import dice

    return float(np.mean([dice(labels == v, expert == v) for v in STRUCTURES.values()
                          if (labels == v).any() or (expert == v).any()]))


def measure(work: Path) -> list[dict[str, Any]]:
    """One row per (patient, orientation): disagreement, mean Dice of ED and ES (store grid)."""
    import torch

    from cardioclr.data.store import SliceStore
    from cardioclr.segment.crossfit import crossfit_ready, folds_dir, models_for, read_assignment
    from cardioclr.segment.orientation import ORIENTATIONS, describe, orient
    from cardioclr.segment.predict import load_model, segment_patient
    from cardioclr.segment.train import model_dir

    device = torch.device("cpu")
    store = SliceStore(work)
    folds = read_assignment(work) if crossfit_ready(work) else None
    if folds is not None:
        models = [load_model(folds_dir(work) / f"fold_{k}" / "model", device) for k in range(len(folds))]
    else:
        models = [load_model(model_dir(work), device)]
    rows = []
    for pid in store.patient_ids:
        ps = store.load(pid, with_cine=False)
        if ps.ed_mask is None or ps.es_mask is None:
            continue
        use = [models[k] for k in models_for(pid, folds)] if folds is not None else models
        for o in ORIENTATIONS:
            turned = dataclasses.replace(ps, ed_image=orient(ps.ed_image, o), es_image=orient(ps.es_image, o))
            res = segment_patient(use, turned, device, tta=True, orientation_search=False)
            dice = np.mean([_mean_dice(orient(res.labels[ph], o, inverse=True), m)
                            for ph, m in (("ED", ps.ed_mask), ("ES", ps.es_mask))])
            rows.append({"patient_id": pid, "orientation": describe(o), "disagreement": res.disagreement,
                         "mean_dice": float(dice)})
    return rows


def summarise(rows: list[dict[str, Any]], flag: float) -> dict[str, Any]:
    """Per-orientation means, and how often the stored orientation agrees best (see module doc)."""
    import pandas as pd

    d = pd.DataFrame(rows)
    per = d.groupby("orientation")[["disagreement", "mean_dice"]].mean().round(4)
    wide = d.pivot(index="patient_id", columns="orientation", values="disagreement")
    stored = wide["as_stored"]
    runner_up = wide.drop(columns="as_stored").min(axis=1)
    chosen = wide.idxmin(axis=1)
    dice = d.pivot(index="patient_id", columns="orientation", values="mean_dice")
    found = dice.to_numpy()[np.arange(len(dice)), [dice.columns.get_loc(c) for c in chosen]]
    # What `segment predict` does on the cohort as stored: search only past the flag threshold.
    kept = chosen.where(stored > flag, "as_stored")
    as_predicted = dice.to_numpy()[np.arange(len(dice)), [dice.columns.get_loc(c) for c in kept]]
    return {
        "patients": int(len(wide)),
        "per_orientation": per.to_dict(orient="index"),
        "stored_agrees_best": int((chosen == "as_stored").sum()),
        "margin_to_runner_up": {"min": float((runner_up - stored).min()),
                                "median": float((runner_up - stored).median())},
        "runner_up_over_stored_min_ratio": float((runner_up / stored).min()),
        "stored_above_flag": int((stored > flag).sum()),
        "flag": flag,
        "mean_dice_as_stored": float(dice["as_stored"].mean()),
        "mean_dice_found_orientation": float(np.mean(found)),
        "mean_dice_worst_orientation": float(dice.min(axis=1).mean()),
        "chosen_orientations": {str(k): int(v) for k, v in chosen.value_counts().items()},
        "predict_as_stored": {"reoriented": int((kept != "as_stored").sum()),
                              "mean_dice": float(np.mean(as_predicted))},
    }


def main(argv: list[str] | None = None) -> int:
    """Measure and print the summary; returns the exit code."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", required=True, help="work directory with a trained model or cross-fit")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", default=None, metavar="CSV", help="also write every (patient, orientation) row")
    args = ap.parse_args(argv)
    work = Path(args.work)
    if not (work / "segmentation").is_dir():
        print(json.dumps({"skipped": f"no segmentation models in {work}"}))
        return 0
    import torch

    from cardioclr.segment.qc import DISAGREEMENT_FLAG

    torch.set_num_threads(args.threads)
    start, load_before = time.perf_counter(), os.getloadavg()[0]
    rows = measure(work)
    if args.rows:
        import pandas as pd

        pd.DataFrame(rows).to_csv(args.rows, index=False)
    result = summarise(rows, DISAGREEMENT_FLAG)
    result.update({"work": str(work), "seconds": round(time.perf_counter() - start, 1),
                   "threads": args.threads, "cpu_count": os.cpu_count(),
                   "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2)})
    print(json.dumps(result, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
