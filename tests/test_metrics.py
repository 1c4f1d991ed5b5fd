"""Metrics with bootstrap CIs, the predictions.csv contract, and paired model comparison."""

from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from cardioclr.errors import CardioclrError, DataError
from cardioclr.evaluate.compare import compare_predictions, delong_test, fast_delong
from cardioclr.evaluate.metrics import (
    check_predictions,
    classification_metrics,
    metrics_from_predictions,
    ovr_auc_boot,
    stratified_bootstrap_counts,
    to_jsonable,
)

CLASSES = ["DCM", "HCM", "MINF", "NOR", "RV"]


def simulate(n: int, k: int, signal: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels (n,) balanced over k classes and softmax probabilities (n, k) with given signal."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += signal
    p = np.exp(logits)
    return y, p / p.sum(1, keepdims=True)


def table(y: np.ndarray, p: np.ndarray, classes: list[str]) -> pd.DataFrame:
    df = pd.DataFrame({"patient_id": [f"p{i:03d}" for i in range(len(y))], "label_index": y})
    for c, name in enumerate(classes):
        df[f"prob_{name}"] = p[:, c]
    return df


# ----------------------------------------------------------------------------- metrics


def test_point_estimates_match_sklearn() -> None:
    y, p = simulate(60, 5, 1.0, seed=1)
    p = np.round(p, 2)  # ties: the half-credit rule must match sklearn
    p /= p.sum(1, keepdims=True)
    m = classification_metrics(y, p, CLASSES, n_boot=50)
    assert m["macro_auc"]["value"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr"), abs=1e-12)
    for c, name in enumerate(CLASSES):
        assert m["per_class_auc"][name]["value"] == pytest.approx(roc_auc_score(y == c, p[:, c]), abs=1e-12)
    assert m["accuracy"]["value"] == pytest.approx(np.mean(p.argmax(1) == y))
    cm = np.array(m["confusion_matrix"]["value"])
    assert cm.sum() == 60 and np.array_equal(cm.sum(1), np.bincount(y, minlength=5))  # rows = true
    assert m["n"] == 60 and m["n_per_class"]["RV"] == 12


def test_binary_macro_is_plain_auc() -> None:
    y, p = simulate(40, 2, 1.0, seed=2)
    m = classification_metrics(y, p, ["neg", "pos"], n_boot=100)
    assert m["macro_auc"]["value"] == pytest.approx(roc_auc_score(y, p[:, 1]))
    assert m["per_class_auc"]["neg"]["value"] == pytest.approx(m["per_class_auc"]["pos"]["value"])


def test_weighted_bootstrap_auc_equals_auc_of_resampled_patients() -> None:
    y, p = simulate(35, 5, 0.8, seed=3)
    p = np.round(p, 1) + 1e-9
    w = stratified_bootstrap_counts(y, 20, seed=4)
    # Stratified: every resample keeps the class sizes.
    for c in range(5):
        assert np.all(w[:, y == c].sum(1) == (y == c).sum())
    boot = ovr_auc_boot(y, p, w)
    for b in range(0, 20, 5):
        idx = np.repeat(np.arange(35), w[b].astype(int))
        for c in range(5):
            assert boot[b, c] == pytest.approx(roc_auc_score(y[idx] == c, p[idx, c]), abs=1e-12)


def test_ci_ordering_and_shrinking_with_n() -> None:
    widths = []
    for n in (30, 300):
        y, p = simulate(n, 5, 1.2, seed=5)
        m = classification_metrics(y, p, CLASSES, n_boot=500, seed=1)
        for key in ("macro_auc", "accuracy", "balanced_accuracy"):
            e = m[key]
            assert e["ci_low"] <= e["value"] <= e["ci_high"]
            assert e["ci_low"] < e["ci_high"]
        widths.append(m["macro_auc"]["ci_high"] - m["macro_auc"]["ci_low"])
        assert m["bootstrap"]["n_valid"] == 500
    assert widths[1] < 0.6 * widths[0]  # ~1/sqrt(10) in theory


def test_seeded_bootstrap_is_reproducible() -> None:
    y, p = simulate(50, 5, 1.0, seed=6)
    a = classification_metrics(y, p, CLASSES, n_boot=200, seed=7)
    b = classification_metrics(y, p, CLASSES, n_boot=200, seed=7)
    c = classification_metrics(y, p, CLASSES, n_boot=200, seed=8)
    assert a == b
    assert a["macro_auc"]["ci_low"] != c["macro_auc"]["ci_low"]


def test_bootstrap_is_fast() -> None:
    y, p = simulate(300, 5, 1.0, seed=9)
    t = time.perf_counter()
    classification_metrics(y, p, CLASSES, n_boot=2000)
    assert time.perf_counter() - t < 2.0  # measured ~0.15 s; generous for a shared CPU


def test_absent_class_gives_nan_and_note() -> None:
    y, p = simulate(40, 5, 1.0, seed=10)
    keep = y != 2
    y, p = y[keep], p[keep]
    m = classification_metrics(y, p, CLASSES, n_boot=100)
    assert math.isnan(m["per_class_auc"]["MINF"]["value"])
    present = [c for c in range(5) if c != 2]
    expect = np.mean([roc_auc_score(y == c, p[:, c]) for c in present])
    assert m["macro_auc"]["value"] == pytest.approx(expect)
    assert any("MINF" in n and "no patient" in n for n in m["notes"])
    assert to_jsonable(m)["per_class_auc"]["MINF"]["value"] is None


def test_bad_inputs() -> None:
    y, p = simulate(20, 5, 1.0, seed=11)
    bad = p.copy()
    bad[3, 1] = np.nan
    with pytest.raises(CardioclrError, match="NaN"):
        classification_metrics(y, bad, CLASSES)
    with pytest.raises(CardioclrError, match="0..4"):
        classification_metrics(np.where(y == 0, 5, y), p, CLASSES)
    with pytest.raises(CardioclrError, match="logits"):
        classification_metrics(y, np.log(p), CLASSES)
    with pytest.raises(CardioclrError, match="expected y_true"):
        classification_metrics(y, p[:, :4], CLASSES)
    m = classification_metrics(y, p * 3, CLASSES, n_boot=10)
    assert any("renormalised" in n for n in m["notes"])
    assert m["macro_auc"]["value"] == pytest.approx(classification_metrics(y, p, CLASSES, n_boot=10)
                                                    ["macro_auc"]["value"])


def test_small_class_note() -> None:
    y = np.array([0, 0, 0, 0, 0, 0, 1, 1])
    p = np.tile([0.6, 0.4], (8, 1))
    m = classification_metrics(y, p, ["a", "b"], n_boot=10)
    assert any("only 2 patient" in n for n in m["notes"])


def test_predictions_contract() -> None:
    y, p = simulate(30, 5, 1.0, seed=12)
    df = table(y, p, CLASSES)
    m = metrics_from_predictions(df, n_boot=50)
    assert m["classes"] == CLASSES
    with pytest.raises(DataError, match="prob_"):
        check_predictions(df.drop(columns=["prob_HCM"]), CLASSES)
    dup = pd.concat([df, df.iloc[:1]])
    with pytest.raises(DataError, match="more than once"):
        check_predictions(dup)


# ----------------------------------------------------------------------------- compare


def delong_slow(y: np.ndarray, sa: np.ndarray, sb: np.ndarray) -> tuple[float, float, float]:
    """Reference DeLong (1988) with explicit loops over structural components."""

    def psi(x: float, z: float) -> float:
        return 1.0 if x > z else 0.5 if x == z else 0.0

    def components(s: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        pos, neg = s[y == 1], s[y == 0]
        v10 = np.array([np.mean([psi(x, z) for z in neg]) for x in pos])
        v01 = np.array([np.mean([psi(x, z) for x in pos]) for z in neg])
        return v10, v01, float(v10.mean())

    a10, a01, auc_a = components(sa)
    b10, b01, auc_b = components(sb)
    m, n = len(a10), len(a01)
    s10 = np.cov(np.vstack([a10, b10]))
    s01 = np.cov(np.vstack([a01, b01]))
    s = s10 / m + s01 / n
    var = s[0, 0] + s[1, 1] - 2 * s[0, 1]
    return auc_a, auc_b, var


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_delong_matches_loops(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 45
    y = (rng.random(n) < 0.4).astype(int)
    sa = np.round(rng.normal(size=n) + y, 1)  # rounded: ties exercise the midranks
    sb = rng.normal(size=n) + 0.5 * y
    aucs, cov = fast_delong(y, np.vstack([sa, sb]))
    ra, rb, rvar = delong_slow(y, sa, sb)
    assert aucs[0] == pytest.approx(ra, abs=1e-10) and aucs[1] == pytest.approx(rb, abs=1e-10)
    assert cov[0, 0] + cov[1, 1] - 2 * cov[0, 1] == pytest.approx(rvar, abs=1e-10)
    assert aucs[0] == pytest.approx(roc_auc_score(y, sa), abs=1e-12)


def test_delong_identical_and_different() -> None:
    rng = np.random.default_rng(3)
    y = np.arange(200) % 2
    good = rng.normal(size=200) + 2.0 * y
    bad = rng.normal(size=200) + 0.2 * y
    same = delong_test(y, good, good)
    assert same["p_value"] == pytest.approx(1.0) and same["auc_diff"] == 0
    diff = delong_test(y, good, bad)
    assert diff["auc_diff"] > 0.2 and diff["p_value"] < 1e-4


def test_compare_predictions_binary_and_multiclass() -> None:
    y, good = simulate(100, 5, 2.5, seed=13)
    _, weak = simulate(100, 5, 0.3, seed=14)
    a, b = table(y, good, CLASSES), table(y, weak, CLASSES)
    same = compare_predictions(a, a.sample(frac=1, random_state=0), CLASSES, n_boot=300)
    assert same["test"] == "paired stratified bootstrap" and same["p_value"] == pytest.approx(1.0)
    res = compare_predictions(a, b, CLASSES, n_boot=300)
    assert res["macro_auc_diff"]["value"] > 0.2 and res["p_value"] < 0.01
    assert res["macro_auc_diff"]["ci_low"] > 0
    assert set(res["per_class_delong"]) == set(CLASSES)

    yb, pb = simulate(80, 2, 2.0, seed=15)
    _, qb = simulate(80, 2, 0.2, seed=16)
    r2 = compare_predictions(table(yb, pb, ["no", "yes"]), table(yb, qb, ["no", "yes"]), ["no", "yes"])
    assert r2["test"] == "DeLong" and r2["p_value"] < 0.01


def test_compare_requires_same_patients() -> None:
    y, p = simulate(20, 5, 1.0, seed=17)
    a = table(y, p, CLASSES)
    with pytest.raises(CardioclrError, match="same patients"):
        compare_predictions(a, a.iloc[1:], CLASSES)
    b = a.copy()
    b.loc[0, "label_index"] = (b.loc[0, "label_index"] + 1) % 5
    with pytest.raises(CardioclrError, match="label"):
        compare_predictions(a, b, CLASSES)


def test_zero_width_ci_is_flagged() -> None:
    y = np.arange(20) % 2
    p = np.stack([1 - y * 0.9 - 0.05, y * 0.9 + 0.05], axis=1)  # perfect separation
    m = classification_metrics(y, p, ["a", "b"], n_boot=50)
    assert m["macro_auc"]["ci_low"] == m["macro_auc"]["ci_high"] == 1.0
    assert any("zero-width" in n and "macro AUC" in n for n in m["notes"])
