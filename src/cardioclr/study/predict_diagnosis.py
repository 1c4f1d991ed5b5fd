"""Clinical outputs of ``cardioclr predict``: each new patient's indices, regional features and
the study's clinical-baseline diagnosis probabilities.

The clinical baseline of a study (``OUT/baseline/clinical``) writes no model file (a pickle would
be code from a file); its ``metrics.json`` names the chosen classifier, feature set and seed, and
its ``features.csv`` holds the training patients' features and labels. The model is refitted
from those (deterministic for the seed; the CSV keeps 6 significant digits, so probabilities can
differ from the study's in the last digits) and applied to the new patients' features, measured
on their predicted masks.

Outputs in ``DIR``: ``clinical_features.csv`` (patient_id + every index and regional feature,
units in the column names), ``clinical_feature_notes.csv`` (why a regional value is NaN),
``bullseye/PID.png`` (AHA bull's-eye maps of the patient's segmental wall thickness, thickening
and ejection fraction: :mod:`cardioclr.evaluate.bullseye`; swapped in whole, like ``saliency/``) and
``diagnosis.csv`` (patient_id, predicted, prob_<class>..., segmentation_flags: the QC flags of the
patient's predicted masks from ``qc_flags.csv``, ``;``-separated, empty when none). A diagnosis
on flagged masks deserves a look at the masks first: on ACDC's cross-fitted masks the 5x5 CV
accuracy was 0.89 for patients flagged ``low_confidence`` against 0.97 for the others
(``benchmarks/diagnosis_quality.py``, ``predicted_cv_accuracy_by_segmentation_flag``).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cardioclr.atomic import atomic_dir, read_json, write_text
from cardioclr.data.masks import mask_flags
from cardioclr.errors import CardioclrError

log = logging.getLogger(__name__)


def baseline_dir_of(model_dir: str | os.PathLike[str]) -> Path:
    """``OUT/baseline/clinical`` of the study that holds the fine-tuning cell ``model_dir``
    (``OUT/finetune/<cell>``)."""
    return Path(model_dir).resolve().parent.parent / "baseline" / "clinical"


def refit_baseline(baseline_dir: Path) -> tuple[Any, list[str], list[str], dict[str, Any]]:
    """The study's clinical baseline refitted on its training rows.

    Returns (fitted pipeline, classes, feature columns, metrics.json). Raises
    :class:`CardioclrError` when the baseline is missing or from another version.
    """
    from cardioclr.evaluate.baseline import GRID_MODELS, build_model, candidate_pipeline

    mpath, fpath = baseline_dir / "metrics.json", baseline_dir / "features.csv"
    if not (mpath.is_file() and fpath.is_file()):
        raise CardioclrError(f"{baseline_dir}: no clinical baseline (metrics.json, features.csv) to "
                             "refit; the study's baseline cell has not run")
    m = read_json(mpath)
    cols = list((m.get("features") or {}).get("columns") or [])
    hp = m.get("hyperparameters") or {}
    seed = int((m.get("config") or {}).get("seed", 0))
    classes = list(m.get("classes") or [])
    if not cols or not classes:
        raise CardioclrError(f"{mpath}: written by an older cardioclr (no feature columns or classes); "
                             "re-run the study's baseline")
    feats = pd.read_csv(fpath, index_col=0)
    train = feats[feats["subset"] == "train"]
    missing = [c for c in cols if c not in train.columns]
    if missing:
        raise CardioclrError(f"{fpath}: columns {missing[:3]} missing")
    x, y = train[cols].astype(float), train["label_index"].to_numpy(int)
    if "classifier" in hp:
        model = candidate_pipeline(str(hp["classifier"]), cols, [], 0, seed)
    else:
        name = str(m.get("model", "")).split("-", 1)[-1]
        if name not in GRID_MODELS:
            raise CardioclrError(f"{mpath}: unknown baseline model {m.get('model')!r}")
        model = build_model(hp, cols, [], 0, name, seed)
    return model.fit(x, y), classes, cols, m


def write_bullseye_maps(feats: pd.DataFrame, out: Path) -> int | str:
    """Replace ``out/bullseye`` by one map per patient of ``feats``; returns how many were
    written, or why none were (the features and the diagnosis do not depend on the maps)."""
    from cardioclr.evaluate.bullseye import write_bullseyes

    folder = out / "bullseye"
    try:
        with atomic_dir(folder) as tmp:
            return write_bullseyes(feats, tmp)
    except Exception as err:  # noqa: BLE001 - the maps are a view of values already written
        log.error("bull's-eye maps failed: %s", err)
        shutil.rmtree(folder, ignore_errors=True)
        return f"failed: {type(err).__name__}: {err}"


def write_clinical_outputs(work: Path, patient_ids: list[str], out: Path,
                           baseline_dir: Path) -> dict[str, Any]:
    """Features of ``patient_ids`` (predicted masks in the prediction store ``work``) and the
    refitted clinical baseline's probabilities; returns a summary for ``predict_info.json``."""
    from cardioclr.clinical.classifier import predict_full, tempered
    from cardioclr.evaluate.clinical_features import feature_table
    from cardioclr.evaluate.metrics import prob_columns

    notes: dict[str, list[str]] = {}
    feats = feature_table(work, patient_ids, "predicted", regional=True, notes=notes)
    write_text(out / "clinical_features.csv", feats.to_csv(float_format="%.4g"))
    write_text(out / "clinical_feature_notes.csv", pd.DataFrame(
        [(p, n) for p, ns in notes.items() for n in ns], columns=["patient_id", "note"]).to_csv(index=False))
    summary: dict[str, Any] = {"clinical_features": len(feats), "bullseye": write_bullseye_maps(feats, out),
                               "diagnosis": None}
    try:
        model, classes, cols, m = refit_baseline(baseline_dir)
    except CardioclrError as err:
        (out / "diagnosis.csv").unlink(missing_ok=True)
        summary["diagnosis"] = f"not written: {err}"
        log.warning("clinical diagnosis not written: %s", err)
        return summary
    # The study's temperature (fitted on its CV on train; 1 for paper-style grid models).
    proba = tempered(predict_full(model, feats[cols], len(classes)),
                     float((m.get("cv") or {}).get("temperature", 1.0)))
    df = pd.DataFrame({"patient_id": patient_ids,
                       "predicted": [classes[i] for i in np.argmax(proba, axis=1)]})
    for c, col in enumerate(prob_columns(classes)):
        df[col] = proba[:, c]
    df["segmentation_flags"] = mask_flags(work, patient_ids)
    write_text(out / "diagnosis.csv", df.to_csv(index=False, float_format="%.6f"))
    summary["diagnosis"] = {"model": m.get("model"), "trained_on_masks": m.get("mask_source"),
                            "baseline": str(baseline_dir), "patients": len(df)}
    return summary
