"""Patient-level classification metrics with stratified-bootstrap confidence intervals.

The ``predictions.csv`` contract
--------------------------------
Every model in cardioclr (dual-phase classifier, clinical baseline, hybrid) writes its test-set
predictions as ``predictions.csv`` with ONE ROW PER PATIENT and at least these columns:

=================  ===========================================================================
``patient_id``     string, the store's patient id (unique within the file)
``label_index``    int, the true class index 0..K-1 in the store's class order (``dataset.json``)
``prob_<class>``   float in [0, 1], one column per class, named after the class (e.g.
                   ``prob_DCM``), in the store's class order; each row sums to 1
=================  ===========================================================================

Other columns (``label``, ``pred_index``, ``fold``, ...) are allowed and ignored. The predicted
class is the argmax of the probabilities. :func:`read_predictions` checks the contract;
:func:`metrics_from_predictions` computes :func:`classification_metrics` from such a table.

Statistics
----------
* ROC AUC is one-vs-rest per class; the macro AUC is their unweighted mean (the metric of
  Nakashima et al.; identical to ``sklearn.metrics.roc_auc_score(multi_class="ovr")``). For a
  binary task (K = 2) the macro AUC is the plain AUC of class 1 (both one-vs-rest AUCs are equal).
* Confidence intervals are 95% percentile intervals of ``n_boot`` stratified bootstrap
  resamples of PATIENTS: each resample draws, within every class, as many patients as that class
  has, with replacement. Stratification keeps every class present in every resample, so the AUC
  is defined in every resample (no degenerate resamples to drop) and the class mix is that of
  the test set. With few patients per class the percentile interval is optimistic (too narrow);
  classes with fewer than :data:`SMALL_CLASS` patients are flagged in ``notes``.
* The bootstrap is vectorised: a resample is a vector of patient counts ``w`` (multinomial
  within class), and the AUC of a resample is ``w_pos^T H w_neg / (n_pos n_neg)`` with
  ``H[i, j] = 1[s_i > s_j] + 0.5 1[s_i = s_j]`` over the ORIGINAL positives i and negatives j,
  which is exactly the Mann-Whitney AUC of the resampled patients (ties included).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cardioclr.errors import CardioclrError, DataError

PROB_PREFIX = "prob_"
#: Classes with fewer test patients than this get a note: their CIs are unreliable.
SMALL_CLASS = 5
#: Row sums of probabilities further than this from 1 are renormalised (with a note).
ROW_SUM_TOL = 1e-3


# ----------------------------------------------------------------------------- input checks


def check_inputs(y_true: Any, proba: Any, classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Validate labels (N,) and probabilities (N, K); returns (y int64, proba float64, notes).

    Raises :class:`CardioclrError` for NaN/inf or negative probabilities, a shape mismatch, labels
    outside 0..K-1 or a row summing to 0. Rows whose sum is off 1 by more than
    :data:`ROW_SUM_TOL` are renormalised and a note says how many.
    """
    notes: list[str] = []
    k = len(classes)
    if k < 2:
        raise CardioclrError(f"need at least 2 classes, got {list(classes)}")
    y = np.asarray(y_true)
    p = np.asarray(proba, dtype=np.float64)
    if y.ndim != 1 or p.ndim != 2 or p.shape != (y.shape[0], k):
        raise CardioclrError(f"expected y_true (N,) and proba (N, {k}); got {y.shape} and {p.shape}")
    if y.shape[0] == 0:
        raise CardioclrError("no patients to evaluate (N = 0)")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.isfinite(y.astype(float))) or np.any(y.astype(float) % 1 != 0):
            raise CardioclrError(f"y_true must be integer class indices, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= k:
        raise CardioclrError(f"labels must be in 0..{k - 1} for classes {list(classes)}; "
                             f"found {sorted(set(y[(y < 0) | (y >= k)].tolist()))}")
    if not np.all(np.isfinite(p)):
        bad = np.nonzero(~np.all(np.isfinite(p), axis=1))[0]
        raise CardioclrError(f"probabilities contain NaN/inf in {bad.size} row(s) (first: row {bad[0]})")
    if np.any(p < 0):
        raise CardioclrError("probabilities must be >= 0 (were logits passed instead of softmax "
                             "outputs?)")
    s = p.sum(axis=1)
    if np.any(s <= 0):
        raise CardioclrError(f"probabilities sum to 0 in row {int(np.argmax(s <= 0))}")
    off = np.abs(s - 1.0) > ROW_SUM_TOL
    if off.any():
        notes.append(f"{int(off.sum())} probability row(s) did not sum to 1 (max |sum-1| = "
                     f"{float(np.abs(s - 1).max()):.3g}) and were renormalised")
        p = p / s[:, None]
    return y, p, notes


# ----------------------------------------------------------------------------- AUC kernels


def _pair_matrix(pos_scores: np.ndarray, neg_scores: np.ndarray) -> np.ndarray:
    """H (P, Q): 1 where positive score > negative score, 0.5 on ties, else 0."""
    d = pos_scores[:, None] - neg_scores[None, :]
    h: np.ndarray = (d > 0).astype(np.float64) + 0.5 * (d == 0)
    return h


def auc_binary(y_pos: np.ndarray, scores: np.ndarray) -> float:
    """Mann-Whitney ROC AUC of ``scores`` (N,) for the boolean positives ``y_pos`` (N,).

    Ties count one half. NaN when there is no positive or no negative.
    """
    pos, neg = scores[y_pos], scores[~y_pos]
    if pos.size == 0 or neg.size == 0:
        return math.nan
    return float(_pair_matrix(pos, neg).mean())


def stratified_bootstrap_counts(y: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Bootstrap resamples as count matrices W (n_boot, N): W[b, i] = times patient i is drawn.

    Within every class c present in ``y`` the counts of its n_c patients sum to n_c (drawn
    uniformly with replacement), so every resample has the class sizes of ``y``.
    """
    rng = np.random.default_rng(seed)
    w = np.zeros((n_boot, y.shape[0]), dtype=np.float64)
    for c in np.unique(y):
        idx = np.nonzero(y == c)[0]
        w[:, idx] = rng.multinomial(idx.size, np.full(idx.size, 1.0 / idx.size), size=n_boot)
    return w


def ovr_auc_boot(y: np.ndarray, proba: np.ndarray, w: np.ndarray | None) -> np.ndarray:
    """One-vs-rest AUC of every class: (K,) for the data itself (``w`` None) or (B, K) per resample.

    ``w`` (B, N) are stratified bootstrap counts, so the numbers of positives and negatives of
    each class are those of ``y``. Classes absent from ``y`` (or the only class) give NaN.
    """
    n, k = proba.shape
    b = 1 if w is None else w.shape[0]
    out = np.full((b, k), np.nan)
    for c in range(k):
        pos = y == c
        n_pos, n_neg = int(pos.sum()), int(n - pos.sum())
        if n_pos == 0 or n_neg == 0:
            continue
        h = _pair_matrix(proba[pos, c], proba[~pos, c])
        if w is None:
            out[0, c] = h.mean()
        else:
            out[:, c] = np.einsum("bp,pq,bq->b", w[:, pos], h, w[:, ~pos], optimize=True) / (n_pos * n_neg)
    return out[0] if w is None else out


def macro_of(per_class: np.ndarray, k: int) -> np.ndarray:
    """Macro AUC from one-vs-rest AUCs (..., K): class 1 for K = 2, else the mean over defined
    classes (NaN if none)."""
    if k == 2:
        return per_class[..., 1]
    defined = np.isfinite(per_class)
    cnt = defined.sum(axis=-1)
    tot = np.where(defined, per_class, 0.0).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, tot / np.maximum(cnt, 1), np.nan)


# ----------------------------------------------------------------------------- main entry


def _ci(stat: np.ndarray, level: float) -> tuple[float, float]:
    """Percentile interval of bootstrap values (NaN-ignoring; NaN when none is finite)."""
    v = stat[np.isfinite(stat)]
    if v.size == 0:
        return math.nan, math.nan
    a = (1 - level) / 2 * 100
    lo, hi = np.percentile(v, [a, 100 - a])
    return float(lo), float(hi)


def _est(value: float, boot: np.ndarray, level: float) -> dict[str, float]:
    lo, hi = _ci(boot, level)
    return {"value": float(value), "ci_low": lo, "ci_high": hi}


def classification_metrics(y_true: Any, proba: Any, classes: Sequence[str], n_boot: int = 2000,
                           seed: int = 0, ci_level: float = 0.95) -> dict[str, Any]:
    """Patient-level metrics with stratified-bootstrap percentile CIs.

    ``y_true``: (N,) int class indices 0..K-1. ``proba``: (N, K) class probabilities (rows are
    renormalised if they do not sum to 1; see :func:`check_inputs`). ``classes``: K names.

    Returns a JSON-able dict (NaN where undefined; see :func:`to_jsonable` before writing)::

        n, n_per_class{cls: int}, classes, predicted_by: "argmax",
        macro_auc, accuracy, balanced_accuracy: {value, ci_low, ci_high}
        per_class_auc{cls: {value, ci_low, ci_high}}
        confusion_matrix: {value, ci_low, ci_high: (K, K) lists of counts; rows true, cols predicted}
        bootstrap: {n_boot, seed, ci_level, method, n_valid}
        notes: [str]   (renormalised rows, absent or small classes)
    """
    y, p, notes = check_inputs(y_true, proba, classes)
    if n_boot < 1:
        raise CardioclrError(f"n_boot must be >= 1, got {n_boot}")
    if not 0 < ci_level < 1:
        raise CardioclrError(f"ci_level must be in (0, 1), got {ci_level}")
    n, k = p.shape
    counts = np.bincount(y, minlength=k)
    present = counts > 0
    for c in np.nonzero(~present)[0]:
        notes.append(f"class {classes[int(c)]} has no patient in y_true: its AUC and recall are NaN and "
                     "it is left out of the macro AUC and balanced accuracy")
    if present.sum() < 2:
        notes.append("only one class present: no AUC is defined")
    for c in np.nonzero(present & (counts < SMALL_CLASS))[0]:
        notes.append(f"class {classes[int(c)]} has only {counts[c]} patient(s): its bootstrap CI is "
                     "unreliable (too narrow)")
    if k == 2 and not present.all():
        notes.append("binary task with one class absent: macro AUC is NaN")

    pred = p.argmax(axis=1)
    correct = (pred == y).astype(np.float64)
    w = stratified_bootstrap_counts(y, n_boot, seed)

    auc = ovr_auc_boot(y, p, None)
    auc_b = ovr_auc_boot(y, p, w)
    macro, macro_b = float(macro_of(auc, k)), macro_of(auc_b, k)

    acc, acc_b = float(correct.mean()), w @ correct / n
    # Per-class recall in each resample: counts of class c are fixed at counts[c] by stratification.
    onehot = (y[:, None] == np.arange(k)[None, :]).astype(np.float64)  # (N, K)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = (onehot * correct[:, None]).sum(0) / counts
        recall_b = (w @ (onehot * correct[:, None])) / counts
    bacc = float(np.nanmean(recall[present]))
    bacc_b = np.nanmean(recall_b[:, present], axis=1)

    cell = y * k + pred  # (N,) index into the flattened confusion matrix
    cell_onehot = (cell[:, None] == np.arange(k * k)[None, :]).astype(np.float64)
    cm = cell_onehot.sum(0).reshape(k, k)
    cm_b = (w @ cell_onehot).reshape(n_boot, k, k)
    a = (1 - ci_level) / 2 * 100
    cm_lo, cm_hi = np.percentile(cm_b, [a, 100 - a], axis=0)

    valid = int(np.isfinite(macro_b).sum())
    zero_width = [name for name, v in (("macro AUC", macro_b), ("accuracy", acc_b),
                                       *((f"AUC of {classes[c]}", auc_b[:, c]) for c in range(k)))
                  if np.isfinite(v).any() and np.nanmin(v) == np.nanmax(v)]
    if zero_width:
        notes.append(f"zero-width bootstrap CI for {', '.join(zero_width)}: the value is the same in "
                     "every resample (e.g. perfect separation), which with few patients is not "
                     "certainty; the percentile bootstrap cannot express the uncertainty here")
    return {
        "n": int(n),
        "n_per_class": {classes[c]: int(counts[c]) for c in range(k)},
        "classes": list(classes),
        "predicted_by": "argmax",
        "macro_auc": _est(macro, macro_b, ci_level),
        "per_class_auc": {classes[c]: _est(auc[c], auc_b[:, c], ci_level) for c in range(k)},
        "accuracy": _est(acc, acc_b, ci_level),
        "balanced_accuracy": _est(bacc, bacc_b, ci_level),
        "confusion_matrix": {"rows": "true", "cols": "predicted",
                             "value": cm.astype(int).tolist(), "ci_low": cm_lo.tolist(),
                             "ci_high": cm_hi.tolist()},
        "bootstrap": {"n_boot": int(n_boot), "seed": int(seed), "ci_level": float(ci_level),
                      "method": "stratified (within-class) patient bootstrap, percentile interval",
                      "n_valid": valid},
        "notes": notes,
    }


# ----------------------------------------------------------------------------- predictions.csv


def prob_columns(classes: Sequence[str]) -> list[str]:
    """``prob_<class>`` column names in class order."""
    return [f"{PROB_PREFIX}{c}" for c in classes]


def classes_from_columns(df: pd.DataFrame) -> list[str]:
    """Class names from the ``prob_<class>`` columns of a predictions table, in column order."""
    return [c[len(PROB_PREFIX):] for c in df.columns if str(c).startswith(PROB_PREFIX)]


def check_predictions(df: pd.DataFrame, classes: Sequence[str] | None = None,
                      source: str | os.PathLike[str] = "predictions") -> pd.DataFrame:
    """Check a predictions table against the contract; returns it with ``patient_id`` as str.

    ``classes`` None: taken from the ``prob_`` columns. Raises :class:`DataError` naming
    ``source`` for a missing column, a duplicated patient, or a bad label/probability.
    """
    classes = list(classes) if classes is not None else classes_from_columns(df)
    need = ["patient_id", "label_index", *prob_columns(classes)]
    missing = [c for c in need if c not in df.columns]
    if missing or len(classes) < 2:
        raise DataError(source, f"predictions table lacks column(s) {missing or ['prob_<class>']}; "
                        "expected patient_id, label_index, prob_<class> per class")
    out = df.copy()
    out["patient_id"] = out["patient_id"].astype(str)
    dup = out["patient_id"][out["patient_id"].duplicated()]
    if len(dup):
        raise DataError(source, f"patient {dup.iloc[0]} appears more than once")
    try:
        check_inputs(out["label_index"].to_numpy(), out[prob_columns(classes)].to_numpy(), classes)
    except CardioclrError as err:
        raise DataError(source, str(err)) from err
    out["label_index"] = out["label_index"].astype(np.int64)
    return out


def read_predictions(path: str | os.PathLike[str], classes: Sequence[str] | None = None) -> pd.DataFrame:
    """Read and check a ``predictions.csv`` (see module docstring)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(p, "predictions file not found")
    try:
        df = pd.read_csv(p, dtype={"patient_id": str})
    except (OSError, ValueError) as err:
        raise DataError(p, f"unreadable CSV ({err})") from err
    return check_predictions(df, classes, p)


def metrics_from_predictions(df: pd.DataFrame, classes: Sequence[str] | None = None,
                             n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """:func:`classification_metrics` of a predictions table (contract in the module docstring)."""
    classes = list(classes) if classes is not None else classes_from_columns(df)
    df = check_predictions(df, classes)
    return classification_metrics(df["label_index"].to_numpy(), df[prob_columns(classes)].to_numpy(),
                                  classes, n_boot=n_boot, seed=seed)


def to_jsonable(obj: Any) -> Any:
    """Replace NaN/inf floats by None (strict JSON) in nested dicts/lists of a metrics dict."""
    if isinstance(obj, dict):
        return {k: to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
