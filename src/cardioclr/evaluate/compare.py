"""Paired comparison of two models evaluated on the same test patients.

* Binary tasks (K = 2): DeLong's test for two correlated ROC AUCs (DeLong, DeLong &
  Clarke-Pearson, Biometrics 1988), computed with the fast midrank algorithm of Sun & Xu,
  "Fast Implementation of DeLong's Algorithm for Comparing the Areas Under Correlated Receiver
  Operating Characteristic Curves", IEEE Signal Processing Letters 21(11), 2014.
* Multi-class tasks: a paired stratified bootstrap of the macro one-vs-rest AUC: the SAME
  patient resamples (within-class, as in :mod:`cardioclr.evaluate.metrics`) are applied to both
  models, and the two-sided p-value is ``2 * min(P*(diff <= 0), P*(diff >= 0))`` over resamples
  (with the +1 correction, so it is never reported as exactly 0; the smallest attainable value is
  about ``2 / (n_boot + 1)``). This is the p-value that inverts the percentile CI of the
  difference: p < 0.05 exactly when the 95% interval excludes 0. Per-class one-vs-rest DeLong
  tests are reported too, uncorrected for multiplicity.

Inputs are ``predictions.csv`` tables (contract in :mod:`cardioclr.evaluate.metrics`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import binomtest, norm, rankdata

from cardioclr.errors import CardioclrError
from cardioclr.evaluate.metrics import (
    check_predictions,
    macro_of,
    ovr_auc_boot,
    prob_columns,
    stratified_bootstrap_counts,
)

#: Variances below this are treated as 0 (identical models, or both AUCs exactly 0 or 1).
_VAR_EPS = 1e-15


def fast_delong(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs and their DeLong covariance for M score vectors on the same patients.

    ``y``: (N,) 0/1 (1 = positive). ``scores``: (M, N), higher = more positive.
    Returns ``aucs`` (M,) and ``cov`` (M, M). Uses midranks (Sun & Xu 2014): with ``tz`` the
    ranks among all patients, ``tx``/``ty`` the ranks among positives/negatives,
    V10_i = (tz_i - tx_i) / n for positives and V01_j = 1 - (tz_j - ty_j) / m for negatives
    (m positives, n negatives); cov = cov(V10) / m + cov(V01) / n.
    """
    y = np.asarray(y).astype(bool)
    s = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    m, n = int(y.sum()), int((~y).sum())
    if m < 2 or n < 2:
        raise CardioclrError(f"DeLong needs at least 2 positives and 2 negatives; got {m} and {n}")
    pos, neg = s[:, y], s[:, ~y]
    tx = rankdata(pos, axis=1)
    ty = rankdata(neg, axis=1)
    tz = rankdata(np.concatenate([pos, neg], axis=1), axis=1)
    aucs = (tz[:, :m].sum(axis=1) - m * (m + 1) / 2) / (m * n)
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return aucs, cov


def delong_test(y: np.ndarray, score_a: np.ndarray, score_b: np.ndarray,
                ci_level: float = 0.95) -> dict[str, float]:
    """DeLong test of AUC(a) = AUC(b) for a binary task on the same N patients.

    ``y`` (N,) 0/1; ``score_a``/``score_b`` (N,) scores for class 1. Returns auc_a, auc_b,
    auc_diff (a - b), se_diff, z, p_value (two-sided normal) and a normal CI of the difference.
    Identical scores give z = 0, p = 1; a zero variance with a non-zero difference gives NaN.
    """
    aucs, cov = fast_delong(y, np.vstack([score_a, score_b]))
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    q = float(norm.ppf(0.5 + ci_level / 2))
    if var <= _VAR_EPS:
        z, p, se = (0.0, 1.0, 0.0) if abs(diff) < 1e-12 else (math.nan, math.nan, 0.0)
    else:
        se = math.sqrt(var)
        z = diff / se
        p = float(2 * norm.sf(abs(z)))
    return {"auc_a": float(aucs[0]), "auc_b": float(aucs[1]), "auc_diff": diff, "se_diff": se,
            "z": z, "p_value": p, "diff_ci_low": diff - q * se, "diff_ci_high": diff + q * se}


def _align(pred_a: pd.DataFrame, pred_b: pd.DataFrame,
           classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Check both tables and put them in the same patient order: (y, proba_a, proba_b, ids)."""
    a = check_predictions(pred_a, classes, "predictions A").set_index("patient_id")
    b = check_predictions(pred_b, classes, "predictions B").set_index("patient_id")
    if set(a.index) != set(b.index):
        only_a = sorted(set(a.index) - set(b.index))[:5]
        only_b = sorted(set(b.index) - set(a.index))[:5]
        raise CardioclrError("a paired comparison needs the same patients in both predictions; "
                             f"only in A: {only_a}, only in B: {only_b}")
    ids = sorted(a.index)
    a, b = a.loc[ids], b.loc[ids]
    mismatch = a["label_index"].to_numpy() != b["label_index"].to_numpy()
    if mismatch.any():
        raise CardioclrError(f"true label_index differs between A and B for patient(s) "
                             f"{[ids[i] for i in np.nonzero(mismatch)[0][:5]]}")
    cols = prob_columns(classes)
    pa, pb = a[cols].to_numpy(np.float64), b[cols].to_numpy(np.float64)
    # Renormalise as classification_metrics does, so both report the same AUCs.
    pa, pb = pa / pa.sum(1, keepdims=True), pb / pb.sum(1, keepdims=True)
    return a["label_index"].to_numpy(np.int64), pa, pb, ids


def compare_predictions(pred_a: pd.DataFrame, pred_b: pd.DataFrame, classes: Sequence[str],
                        n_boot: int = 2000, seed: int = 0, ci_level: float = 0.95) -> dict[str, Any]:
    """Paired comparison of model A and model B (predictions tables, same test patients).

    Returns a dict with ``test`` ("DeLong" for K = 2, "paired stratified bootstrap" otherwise),
    ``n``, ``classes``, ``macro_auc_a``, ``macro_auc_b``, ``macro_auc_diff`` {value, ci_low,
    ci_high} (A - B, percentile CI of the paired bootstrap), ``p_value`` of the chosen test,
    ``bootstrap_p_value``, ``delong`` (K = 2: :func:`delong_test` of class 1), and
    ``per_class_delong`` {class: delong_test of one-vs-rest} for K > 2, plus ``notes``.
    """
    classes = list(classes)
    y, pa, pb, ids = _align(pred_a, pred_b, classes)
    k = len(classes)
    notes: list[str] = []
    w = stratified_bootstrap_counts(y, n_boot, seed)
    auc_a, auc_b = macro_of(ovr_auc_boot(y, pa, None), k), macro_of(ovr_auc_boot(y, pb, None), k)
    diff_b = macro_of(ovr_auc_boot(y, pa, w), k) - macro_of(ovr_auc_boot(y, pb, w), k)
    diff_b = diff_b[np.isfinite(diff_b)]
    if diff_b.size == 0:
        raise CardioclrError("macro AUC is undefined (fewer than two classes among the patients)")
    nb = diff_b.size
    boot_p = min(1.0, 2 * min((np.sum(diff_b <= 0) + 1) / (nb + 1), (np.sum(diff_b >= 0) + 1) / (nb + 1)))
    alpha = (1 - ci_level) / 2 * 100
    lo, hi = np.percentile(diff_b, [alpha, 100 - alpha])
    out: dict[str, Any] = {
        "n": len(ids), "classes": classes,
        "macro_auc_a": float(auc_a), "macro_auc_b": float(auc_b),
        "macro_auc_diff": {"value": float(auc_a - auc_b), "ci_low": float(lo), "ci_high": float(hi)},
        "bootstrap_p_value": float(boot_p),
        "bootstrap": {"n_boot": int(n_boot), "seed": int(seed), "ci_level": ci_level,
                      "method": "paired stratified patient bootstrap, same resamples for A and B"},
    }
    if k == 2:
        out["test"] = "DeLong"
        out["delong"] = delong_test(y, pa[:, 1], pb[:, 1], ci_level)
        out["p_value"] = out["delong"]["p_value"]
    else:
        out["test"] = "paired stratified bootstrap"
        out["p_value"] = float(boot_p)
        per: dict[str, Any] = {}
        for c, name in enumerate(classes):
            yc = (y == c).astype(int)
            if min(yc.sum(), (1 - yc).sum()) < 2:
                per[name] = None
                notes.append(f"class {name}: fewer than 2 patients, no DeLong test")
                continue
            per[name] = delong_test(yc, pa[:, c], pb[:, c], ci_level)
        out["per_class_delong"] = per
        notes.append("per-class DeLong p-values are not corrected for multiple comparisons")
    out["notes"] = notes
    return out


def compare_accuracy(pred_a: pd.DataFrame, pred_b: pd.DataFrame, classes: Sequence[str],
                     n_boot: int = 2000, seed: int = 0, ci_level: float = 0.95) -> dict[str, Any]:
    """Paired comparison of the accuracies of models A and B on the same test patients.

    Predicted class = argmax of the probabilities. ``accuracy_diff`` {value, ci_low, ci_high}
    (A - B) with the percentile CI of the same paired stratified patient bootstrap as
    :func:`compare_predictions`; ``mcnemar_p_value``: exact (binomial) McNemar test on the
    discordant patients (``a_only``: right by A only, ``b_only``: right by B only); 1.0 when
    there is none.
    """
    classes = list(classes)
    y, pa, pb, ids = _align(pred_a, pred_b, classes)
    ca = (pa.argmax(axis=1) == y).astype(np.float64)
    cb = (pb.argmax(axis=1) == y).astype(np.float64)
    w = stratified_bootstrap_counts(y, n_boot, seed)
    diff_b = w @ (ca - cb) / len(y)
    alpha = (1 - ci_level) / 2 * 100
    lo, hi = np.percentile(diff_b, [alpha, 100 - alpha])
    a_only, b_only = int(np.sum((ca == 1) & (cb == 0))), int(np.sum((ca == 0) & (cb == 1)))
    p = 1.0 if a_only + b_only == 0 else float(binomtest(a_only, a_only + b_only, 0.5).pvalue)
    return {"n": len(ids), "accuracy_a": float(ca.mean()), "accuracy_b": float(cb.mean()),
            "accuracy_diff": {"value": float(ca.mean() - cb.mean()), "ci_low": float(lo),
                              "ci_high": float(hi)},
            "mcnemar_p_value": p, "discordant": {"a_only": a_only, "b_only": b_only},
            "method": "exact McNemar on discordant patients; paired stratified bootstrap CI"}
