"""Segmentation quality on the test split: Dice, HD95 and clinical-index agreement.

Computed on the store grid (in-plane ``SliceStore.spacing_mm``, slice spacing of the patient),
where both the predicted masks and the (nearest-neighbour resampled) expert masks live.

* Dice per structure (LV cavity, MYO, RV) and phase (ED, ES), per patient in 3D, then the mean
  over test patients. Both empty -> 1 (nothing to find, nothing found).
* HD95 (mm): the 95th percentile of the symmetric surface distances (the distances from every
  predicted surface voxel to the expert surface and back, pooled, as in the ACDC challenge /
  medpy ``hd95``), with the real anisotropic voxel spacing. Undefined (NaN, left out of the
  mean) when either mask is empty.
* Clinical indices (:func:`cardioclr.clinical.indices.compute_indices`) from predicted and expert
  masks: Pearson r and Bland-Altman bias +- SD (predicted - expert) over test patients.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.ndimage import binary_erosion, distance_transform_edt, generate_binary_structure

from cardioclr.atomic import read_json, write_json, write_text
from cardioclr.choices import MASK_SOURCES
from cardioclr.clinical.indices import compute_indices
from cardioclr.clinical.labels import STRUCTURES
from cardioclr.data.masks import load_labels, predicted_mask_path, segmentation_dir
from cardioclr.data.store import SliceStore
from cardioclr.errors import CardioclrError
from cardioclr.layout import WorkLayout
from cardioclr.segment.crossfit import MASK_SOURCES_FILE, crossfit_ready, folds_dir
from cardioclr.segment.qc import DISAGREEMENT_FLAG, QUALITY_FILE

log = logging.getLogger(__name__)

PHASES = ("ED", "ES")
#: Indices whose agreement is reported in metrics.json (the ones a cardiologist reads first).
AGREEMENT_INDICES = ("lv_edv_ml", "lv_esv_ml", "lv_ef_pct", "rv_edv_ml", "rv_esv_ml", "rv_ef_pct",
                     "myo_mass_ed_g", "wt_ed_max_mm")


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice overlap 2|A∩B| / (|A| + |B|) of two boolean arrays; 1.0 when both are empty."""
    p, r = pred.astype(bool), ref.astype(bool)
    total = int(p.sum()) + int(r.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(p, r).sum()) / total


def _surface(mask: np.ndarray) -> np.ndarray:
    # Voxels of the mask with a face-neighbour outside it (the image border counts as outside).
    eroded = binary_erosion(mask, structure=generate_binary_structure(mask.ndim, 1), border_value=0)
    surface: np.ndarray = mask & ~eroded
    return surface


def surface_distances(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Distances (mm) from each surface voxel of ``pred`` to the surface of ``ref`` and back.

    ``spacing``: voxel size per axis in mm, e.g. (slice spacing, pixel, pixel) for (z, y, x).
    Both masks must be non-empty.
    """
    p, r = pred.astype(bool), ref.astype(bool)
    sp = tuple(float(s) for s in spacing)
    sp_, sr = _surface(p), _surface(r)
    to_ref = distance_transform_edt(~sr, sampling=sp)[sp_]
    to_pred = distance_transform_edt(~sp_, sampling=sp)[sr]
    return np.concatenate([to_ref, to_pred])


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> float:
    """95th-percentile symmetric Hausdorff distance in mm; NaN when either mask is empty."""
    if not pred.any() or not ref.any():
        return math.nan
    return float(np.percentile(surface_distances(pred, ref, spacing), 95))


def patient_metrics(pred: dict[str, np.ndarray], ref: dict[str, np.ndarray],
                    spacing_zyx: Sequence[float]) -> dict[str, float]:
    """Dice and HD95 per phase and structure for one patient.

    ``pred``/``ref``: ``{"ED": labels, "ES": labels}``, uint8 (z, S, S). Keys of the result:
    ``dice_ED_LV``, ``hd95_ES_RV``, ...
    """
    out: dict[str, float] = {}
    for phase in PHASES:
        for name, value in STRUCTURES.items():
            p, r = pred[phase] == value, ref[phase] == value
            out[f"dice_{phase}_{name}"] = dice(p, r)
            out[f"hd95_{phase}_{name}"] = hd95(p, r, spacing_zyx)
    return out


def agreement(pred: Sequence[float], ref: Sequence[float]) -> dict[str, float | int]:
    """Pearson r and Bland-Altman statistics of paired values (pairs with a NaN are dropped).

    ``bias`` = mean(pred - ref), ``sd`` = its sample SD, limits of agreement bias +- 1.96 SD.
    Values NaN when fewer than 2 (3 for r) pairs remain or a side is constant.
    """
    a, b = np.asarray(pred, dtype=float), np.asarray(ref, dtype=float)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    n = int(a.size)
    res: dict[str, float | int] = {"n": n, "pearson_r": math.nan, "bias": math.nan, "sd": math.nan,
                                   "loa_low": math.nan, "loa_high": math.nan,
                                   "mean_pred": math.nan, "mean_expert": math.nan}
    if n == 0:
        return res
    d = a - b
    res["bias"] = float(d.mean())
    res["mean_pred"], res["mean_expert"] = float(a.mean()), float(b.mean())
    if n >= 2:
        res["sd"] = float(d.std(ddof=1))
        res["loa_low"] = res["bias"] - 1.96 * res["sd"]
        res["loa_high"] = res["bias"] + 1.96 * res["sd"]
    if n >= 3 and a.std() > 0 and b.std() > 0:
        res["pearson_r"] = float(np.corrcoef(a, b)[0, 1])
    return res


def _finite_or_none(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def _clean(obj: Any) -> Any:
    # JSON has no NaN: write null so every reader (not only Python) can parse metrics.json.
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return _finite_or_none(float(obj))
    return obj


def _body_size(store: SliceStore, pid: str) -> tuple[float | None, float | None]:
    row = store.manifest.loc[pid]
    h, w = row.get("height_cm"), row.get("weight_kg")
    h = float(h) if h is not None and pd.notna(h) else None
    w = float(w) if w is not None and pd.notna(w) else None
    return h, w


def clinical_indices_table(work: str | os.PathLike[str], patient_ids: Sequence[str]) -> pd.DataFrame:
    """Clinical indices per patient and mask source (rows: patient_id, split, source, indices...).

    Patients without predicted masks (failed or not predicted) have only an ``expert`` row.
    """
    store = SliceStore(work)
    split_of = {p: "train" for p in store.splits.train} | {p: "test" for p in store.splits.test}
    rows: list[dict[str, Any]] = []
    for pid in patient_ids:
        h, w = _body_size(store, pid)
        try:
            spacing = store.load(pid).spacing_zyx
        except CardioclrError as err:  # one unreadable patient must not stop the table
            log.warning("clinical indices: skipping %s: %s", pid, err)
            continue
        for source in MASK_SOURCES:
            try:
                ed, es = load_labels(work, pid, source)
            except CardioclrError:
                continue
            row: dict[str, Any] = {"patient_id": pid, "split": split_of.get(pid, "unlabelled"),
                                   "source": source}
            row.update(compute_indices(ed, es, spacing, height_cm=h, weight_kg=w))
            rows.append(row)
    return pd.DataFrame(rows)


def evaluate(work: str | os.PathLike[str]) -> dict[str, Any]:
    """Evaluate ``WORK/segmentation/masks`` against the expert masks of the test split.

    Writes ``metrics.json``, ``metrics_per_patient.csv`` and ``indices.csv`` into
    ``WORK/segmentation`` and returns the metrics dict.
    """
    store = SliceStore(work)
    seg = segmentation_dir(work)
    test = [p for p in store.splits.test if p in set(store.patient_ids)]
    with_expert = [p for p in test if _has_expert(work, p)]
    if not with_expert:
        raise CardioclrError(f"{work}: no test patient has an expert mask; nothing to evaluate")
    missing = [p for p in with_expert if not predicted_mask_path(work, p).is_file()]
    if len(missing) == len(with_expert):
        raise CardioclrError(f"{seg / 'masks'}: no predicted masks for the test patients; run "
                             f"`cardioclr segment predict {work}` first")
    if missing:
        log.warning("%d test patients have no predicted mask (prediction failed?): %s",
                    len(missing), ", ".join(missing))
    per_patient: list[dict[str, Any]] = []
    for pid in with_expert:
        if pid in missing:
            continue
        pred = dict(zip(PHASES, load_labels(work, pid, "predicted"), strict=True))
        ref = dict(zip(PHASES, load_labels(work, pid, "expert"), strict=True))
        spacing = store.load(pid).spacing_zyx
        for phase in PHASES:
            if pred[phase].shape != ref[phase].shape:
                raise CardioclrError(f"{predicted_mask_path(work, pid)}: {phase} mask shape "
                                     f"{pred[phase].shape} differs from the store's "
                                     f"{ref[phase].shape}; re-run `cardioclr segment predict`")
        per_patient.append({"patient_id": pid, **patient_metrics(pred, ref, spacing)})
    df = pd.DataFrame(per_patient).set_index("patient_id")
    metrics: dict[str, Any] = {"grid": f"store ({store.image_size} px at {store.spacing_mm} mm "
                                       "in-plane, native slice spacing)"}
    for kind in ("dice", "hd95"):
        metrics[kind] = {ph: {s: float(df[f"{kind}_{ph}_{s}"].mean(skipna=True)) for s in STRUCTURES}
                         for ph in PHASES}
        cols = [f"{kind}_{ph}_{s}" for ph in PHASES for s in STRUCTURES]
        metrics[f"mean_{kind}"] = float(np.nanmean(df[cols].to_numpy(dtype=float)))
    metrics["dice_per_structure"] = {s: float(df[[f"dice_{ph}_{s}" for ph in PHASES]].to_numpy().mean())
                                     for s in STRUCTURES}
    metrics["hd95_undefined"] = int(df[[c for c in df.columns if c.startswith("hd95")]].isna().sum().sum())
    metrics["n_test"] = len(per_patient)
    metrics["test_without_prediction"] = missing

    indices = clinical_indices_table(work, store.patient_ids)
    write_text(seg / "indices.csv", indices.to_csv(index=False, float_format="%.3f"))
    metrics["indices_agreement"] = _index_agreement(indices, set(df.index))

    metrics["quality_flag"] = quality_flag_comparison(seg, df)
    sources_csv = seg / MASK_SOURCES_FILE
    if sources_csv.is_file():
        src = pd.read_csv(sources_csv, dtype=str, keep_default_na=False)
        metrics["mask_sources"] = {str(k): int(v) for k, v in src["source"].value_counts().items()}
    run = read_json(seg / "predict_summary.json") if (seg / "predict_summary.json").is_file() else {}
    metrics["basal_es_rv"] = run.get("basal_es_rv")  # None: predicted before the rule existed
    metrics["basal_es_rv_patients"] = run.get("basal_es_rv_patients")
    model_info = WorkLayout(work).segmentation_model / "done.json"
    if crossfit_ready(work):
        model_info = folds_dir(work) / "done.json"
    info = read_json(model_info) if model_info.is_file() else {}
    metrics["train_seconds"] = info.get("train_seconds")
    metrics["n_train"] = len(info.get("train_patients", []))
    metrics["n_val"] = len(info.get("val_patients", []))
    metrics["config"] = info.get("config")
    metrics = _clean(metrics)
    write_json(seg / "metrics.json", metrics)
    write_text(seg / "metrics_per_patient.csv", df.to_csv(float_format="%.4f"))
    return metrics


def quality_flag_comparison(seg: Path, per_patient: pd.DataFrame) -> dict[str, Any]:
    """Is the per-patient quality estimate informative? Test Dice of flagged vs other patients.

    ``per_patient``: metrics_per_patient rows (index patient_id, ``dice_*`` columns). Reads
    ``quality.csv`` (disagreement per patient) and flags ``low_confidence`` at the threshold
    ``segment predict`` used (``predict_summary.json``; runs older than that record
    :data:`cardioclr.segment.qc.DISAGREEMENT_FLAG`). Also the Spearman correlation of the
    disagreement with the patient's mean Dice (negative: more disagreement, worse masks).
    """
    path = seg / QUALITY_FILE
    if not path.is_file():
        return {}
    q = pd.read_csv(path, dtype={"patient_id": str}).set_index("patient_id")
    dice_cols = [c for c in per_patient.columns if c.startswith("dice_")]
    mean_dice = per_patient[dice_cols].mean(axis=1)
    both = [p for p in per_patient.index if p in q.index and np.isfinite(q.at[p, "disagreement"])]
    if not both:
        return {}
    dis = q.loc[both, "disagreement"].astype(float)
    summary = seg / "predict_summary.json"
    recorded = read_json(summary).get("low_confidence_threshold") if summary.is_file() else None
    threshold = float(recorded) if recorded is not None else DISAGREEMENT_FLAG
    flagged = dis > threshold

    def group(mask: pd.Series) -> dict[str, Any]:
        ids = list(dis.index[mask])
        return {"n": len(ids), "mean_dice": float(mean_dice[ids].mean()) if ids else None,
                "min_dice": float(mean_dice[ids].min()) if ids else None}

    from scipy.stats import spearmanr

    rho = (float(spearmanr(dis.to_numpy(), mean_dice[both].to_numpy()).statistic)
           if len(both) >= 3 and dis.nunique() > 1 else None)
    return {"estimate": "disagreement of the test-time views (1 - mean Dice of each view's labels with "
                        "their average)",
            "threshold": threshold, "flagged": group(flagged), "unflagged": group(~flagged),
            "spearman_disagreement_vs_dice": rho,
            "mean_disagreement": float(dis.mean())}


def _has_expert(work: str | os.PathLike[str], pid: str) -> bool:
    try:
        load_labels(work, pid, "expert")
    except CardioclrError:
        return False
    return True


def _index_agreement(indices: pd.DataFrame, patients: set[str]) -> dict[str, Any]:
    if indices.empty:
        return {}
    sub = indices[indices["patient_id"].isin(patients)]
    pred = sub[sub["source"] == "predicted"].set_index("patient_id")
    ref = sub[sub["source"] == "expert"].set_index("patient_id")
    both = sorted(set(pred.index) & set(ref.index))
    return {k: agreement(pred.loc[both, k].to_numpy(float), ref.loc[both, k].to_numpy(float))
            for k in AGREEMENT_INDICES if k in pred.columns}


def format_summary(metrics: dict[str, Any]) -> str:
    """A few human-readable lines of metrics.json for the terminal."""
    lines = [f"test patients: {metrics['n_test']}; mean Dice {metrics['mean_dice']:.3f}, "
             f"mean HD95 {metrics['mean_hd95']:.1f} mm"]
    for ph in PHASES:
        d, h = metrics["dice"][ph], metrics["hd95"][ph]
        lines.append(f"  {ph}: " + ", ".join(
            f"{s} Dice {d[s]:.3f} / HD95 {h[s]:.1f} mm" if h[s] is not None else f"{s} Dice {d[s]:.3f}"
            for s in STRUCTURES))
    for k, a in metrics.get("indices_agreement", {}).items():
        if a["n"]:
            r = f"{a['pearson_r']:.3f}" if a["pearson_r"] is not None else "n/a"
            sd = f"{a['sd']:.2f}" if a["sd"] is not None else "n/a"
            lines.append(f"  {k}: r={r}, bias {a['bias']:+.2f} ± {sd} (n={a['n']})")
    qf = metrics.get("quality_flag") or {}
    if qf.get("flagged", {}).get("n"):
        f, u = qf["flagged"], qf["unflagged"]
        lines.append(f"  quality estimate: {f['n']} low-confidence test patients, mean Dice "
                     f"{f['mean_dice']:.3f} vs {u['mean_dice']:.3f} for the {u['n']} others"
                     if u.get("n") else f"  quality estimate: all {f['n']} test patients flagged")
    elif qf:
        lines.append(f"  quality estimate: no test patient flagged (threshold {qf['threshold']:g})")
    return "\n".join(lines)


def metrics_path(work: str | os.PathLike[str]) -> Path:
    """``WORK/segmentation/metrics.json``."""
    return WorkLayout(work).segmentation_metrics
