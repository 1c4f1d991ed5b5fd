"""Diagnosis classifiers on clinical + regional features, and repeated stratified CV.

Candidates (:data:`CANDIDATES`), all sklearn pipelines that start with median imputation, so
NaN features (a slice without myocardium, an RV without insertion points, unknown height) are
handled; every statistic of the imputer and scaler is fitted on the training patients of the
fit only:

* ``rf``: random forest (the ACDC-winner / paper-style baseline), balanced class weights;
* ``gb``: gradient boosting of depth-2 trees with subsampling;
* ``logistic``: L2-regularised multinomial logistic regression on standardised features;
* ``svm``: RBF support-vector machine on standardised features, C chosen by inner repeated CV
  of the training rows, probabilities calibrated by Platt scaling on cross-validated decision
  values of the training rows (:class:`CalibratedSVC`);
* ``ensemble``: soft voting (mean probability) of the four, as the ACDC challenge winners
  (Isensee et al. 2017; Khened et al. 2019) combined several classifiers;
* ``ensemble-no-gb``: the same vote without ``gb``. Which vote is better depends on the masks
  (5x5 CV accuracy on the 70 ACDC train patients): with expert masks on the indices gb pulled
  the vote down (four members 0.963, three 0.989), with cross-fitted predicted masks on the
  regional set it lifted it (0.946 vs 0.937); both are candidates and CV on train chooses;
* ``ensemble-calibrated``: the ensemble wrapped in :class:`~sklearn.calibration.CalibratedClassifierCV`
  (sigmoid, 3 inner folds of the training patients).

Temperature scaling (:func:`fit_temperature`, :func:`tempered`): one parameter T fitted on the
out-of-fold probabilities of a repeated CV (:meth:`CVResult.temperature`); probabilities are
raised to 1/T and renormalised, which changes no argmax. ``cardioclr baseline`` applies it to its
fitted vote (or ``--model auto`` choice; the paper-style grid models keep their own
probabilities), because a soft vote of disagreeing members is under-confident.

``cardioclr baseline --model auto`` chooses a candidate by :func:`choose_model`: repeated
stratified CV on the training patients only, never on test. The default (and the study's) model
is a fixed soft vote of ``rf``, ``gb``, ``logistic`` and ``svm`` on each feature set
(:func:`cardioclr.evaluate.baseline.feature_set_vote`): in a nested CV the per-run choice did
worse than it. Every candidate is reproducible for a seed (the seed
sets every estimator's ``random_state`` and the CV splitters).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier, VotingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import RepeatedStratifiedKFold, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from threadpoolctl import threadpool_limits

from cardioclr.choices import DIAGNOSIS_CLASSIFIERS
from cardioclr.errors import CardioclrError

CANDIDATES = DIAGNOSIS_CLASSIFIERS
#: The members of each soft-voting ensemble (module docstring).
ENSEMBLE_MEMBERS: dict[str, tuple[str, ...]] = {"ensemble": ("rf", "gb", "logistic", "svm"),
                                                "ensemble-no-gb": ("rf", "logistic", "svm")}


def _impute() -> SimpleImputer:
    return SimpleImputer(strategy="median", keep_empty_features=True)


class CalibratedSVC(ClassifierMixin, BaseEstimator):  # type: ignore[misc]  # sklearn is untyped
    """RBF support-vector machine with sigmoid-calibrated (Platt) probabilities, the way
    scikit-learn >= 1.9 recommends instead of ``SVC(probability=True)``:
    ``CalibratedClassifierCV(SVC(), ensemble=False)`` (one SVC fitted on all rows; the sigmoid
    fitted on its cross-validated decision values).

    Why a wrapper: the calibration's stratified folds must not outnumber the rarest class, which
    with 5 folds refuses cohorts with fewer than 5 patients in a class (small studies, inner CV
    folds). :meth:`fit` uses ``min(max_folds, rarest class count)`` folds (at least 2), decided on
    the rows it is given. ``class_weight="balanced"``; ``gamma="scale"``.

    ``C=None`` chooses the regularisation from ``c_grid`` by ``inner_repeats`` x (up to 5)
    repeated stratified CV accuracy of the plain SVC on the rows given to :meth:`fit` (ties: the
    smaller C), so the choice is nested inside every outer fit and never sees the rows it will
    predict; the chosen value is ``C_``. On the 70 ACDC train patients (expert masks, 35 indices)
    the fixed C = 1 gave 5x5 CV accuracy 0.977, C chosen this way 0.989 (benchmarks/README.md).
    """

    def __init__(self, C: float | None = 1.0, c_grid: Sequence[float] = (0.5, 1.0, 2.0, 4.0, 8.0),
                 inner_repeats: int = 2, max_folds: int = 5, random_state: int | None = None) -> None:
        self.C = C
        self.c_grid = c_grid
        self.inner_repeats = inner_repeats
        self.max_folds = max_folds
        self.random_state = random_state

    def _choose_c(self, x: Any, y: np.ndarray, rarest: int) -> float:
        if self.C is not None:
            return float(self.C)
        if rarest < 2:
            return float(sorted(self.c_grid)[len(self.c_grid) // 2])  # no CV possible: the middle
        # GridSearchCV(SVC, scoring="accuracy") by hand: the same splits, mean fold accuracy and
        # first-best tie rule, without its per-fit validation and scorer overhead (5x fewer
        # seconds: it was two thirds of the demo's clinical baseline).
        grid = sorted(self.c_grid)
        cv = RepeatedStratifiedKFold(n_splits=int(min(self.max_folds, rarest)),
                                     n_repeats=self.inner_repeats, random_state=self.random_state)
        xa = np.asarray(x, dtype=float)
        scores = np.zeros(len(grid))
        for tr, va in cv.split(xa, y):
            for i, c in enumerate(grid):
                svc = SVC(C=c, gamma="scale", class_weight="balanced").fit(xa[tr], y[tr])
                scores[i] += float((svc.predict(xa[va]) == y[va]).mean())
        return float(grid[int(np.argmax(scores))])  # first of the tied best = the smallest C

    def fit(self, x: Any, y: Any) -> CalibratedSVC:
        """Fit on ``x`` (n, features) and labels ``y`` (n,)."""
        # The sigmoid fits are tiny L-BFGS problems whose BLAS threads only spin: one thread made
        # a fit 7x faster (0.9 -> 0.13 s on 56 ACDC patients, loaded 2-core machine).
        with threadpool_limits(limits=1):
            return self._fit(x, y)

    def _fit(self, x: Any, y: Any) -> CalibratedSVC:
        y = np.asarray(y)
        self.classes_, counts = np.unique(y, return_counts=True)
        self.C_ = self._choose_c(x, y, int(counts.min()))
        svc = SVC(C=self.C_, gamma="scale", class_weight="balanced", random_state=self.random_state)
        self.calibrated_: Any = None
        self.svc_: Any = None
        self.calibrator_: Any = None
        if counts.min() >= 2:
            folds = int(min(self.max_folds, counts.min()))
            cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=self.random_state)
            self.calibrated_ = CalibratedClassifierCV(svc, method="sigmoid", cv=cv,
                                                      ensemble=False).fit(x, y)
        else:
            # A class with a single row cannot be cross-validated (sklearn refuses it): a
            # multinomial logistic map of the training rows' own decision values (optimistic,
            # but defined; tiny cohorts only).
            self.svc_ = svc.fit(x, y)
            self.calibrator_ = LogisticRegression(max_iter=1000).fit(self._decision(x), y)
        return self

    def _decision(self, x: Any) -> np.ndarray:
        d = np.asarray(self.svc_.decision_function(x))
        return d[:, None] if d.ndim == 1 else d

    def predict_proba(self, x: Any) -> np.ndarray:
        """Calibrated probabilities (n, len(classes_))."""
        if self.calibrated_ is not None:
            return np.asarray(self.calibrated_.predict_proba(x))
        return np.asarray(self.calibrator_.predict_proba(self._decision(x)))

    def predict(self, x: Any) -> np.ndarray:
        """Most probable class of each row (n,)."""
        return np.asarray(self.classes_[self.predict_proba(x).argmax(1)])


def build_classifier(name: str, seed: int = 0, n_jobs: int = 1) -> Pipeline:
    """Unfitted pipeline ``impute -> [scale ->] classifier`` for candidate ``name``."""
    if name == "rf":
        return Pipeline([("impute", _impute()),
                         ("clf", RandomForestClassifier(n_estimators=300, max_features="sqrt",
                                                        class_weight="balanced", random_state=seed,
                                                        n_jobs=n_jobs))])
    if name == "gb":
        # Classic (not histogram) boosting: with ~70 patients the histogram binning buys
        # nothing, and its OpenMP threads spun for minutes per fit on the loaded 2-core machine.
        return Pipeline([("impute", _impute()),
                         ("clf", GradientBoostingClassifier(n_estimators=100, max_depth=2,
                                                            learning_rate=0.1, subsample=0.8,
                                                            random_state=seed))])
    if name == "logistic":
        return Pipeline([("impute", _impute()), ("scale", StandardScaler()),
                         ("clf", LogisticRegression(C=0.1, max_iter=5000, class_weight="balanced"))])
    if name == "svm":
        return Pipeline([("impute", _impute()), ("scale", StandardScaler()),
                         ("clf", CalibratedSVC(C=None, random_state=seed))])
    if name in ("ensemble", "ensemble-no-gb", "ensemble-calibrated"):
        names = ENSEMBLE_MEMBERS["ensemble" if name == "ensemble-calibrated" else name]
        vote = VotingClassifier([(m, build_classifier(m, seed, n_jobs)) for m in names], voting="soft")
        if name != "ensemble-calibrated":
            return Pipeline([("clf", vote)])
        return Pipeline([("clf", CalibratedClassifierCV(vote, method="sigmoid", cv=3))])
    raise CardioclrError(f"unknown classifier {name!r}; choose one of {', '.join(CANDIDATES)}")


def predict_full(model: ClassifierMixin, x: pd.DataFrame, k: int) -> np.ndarray:
    """Probabilities (n, k) in class-index order, zero for classes absent from the fit."""
    p = model.predict_proba(x)
    out = np.zeros((len(x), k))
    out[:, np.asarray(model.classes_).astype(int)] = p
    return out


def macro_auc(y: np.ndarray, proba: np.ndarray) -> float:
    """Macro one-vs-rest AUC over the classes present in ``y`` (NaN with fewer than two)."""
    present = np.unique(y)
    if present.size < 2:
        return math.nan
    aucs = [roc_auc_score(y == c, proba[:, c]) for c in present]
    return float(np.mean(aucs))


def log_loss_of(y: np.ndarray, proba: np.ndarray) -> float:
    """Mean negative log probability of the true class (nats): ``y`` (n,) class indices,
    ``proba`` (n, k). The proper scoring rule that tells calibrated probabilities from merely
    accurate argmaxes. Probabilities are clipped at 1e-6 (at most 13.8 nats per patient). Why not
    ``sklearn.metrics.log_loss``: since 1.5 it clips at the float epsilon, so one patient given
    probability 0 costs 36 nats, and with ~100 patients a single such error would outweigh the
    calibration of all the others in a comparison of models."""
    p = np.clip(np.asarray(proba)[np.arange(len(y)), np.asarray(y, int)], 1e-6, 1.0)
    return float(-np.mean(np.log(p)))


#: Range of :func:`fit_temperature` (unitless). The lower bound keeps a CV without errors from
#: sharpening probabilities to 0 and 1 (a probe with a 0.05 bound saturated such folds).
TEMPERATURE_BOUNDS = (0.1, 10.0)


def tempered(proba: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities (n, k) raised to ``1 / temperature`` and renormalised per row: below 1
    sharpens, above 1 flattens, 1 changes nothing; the argmax and zero entries are kept."""
    p = np.asarray(proba, float)
    if temperature == 1.0:
        return p
    with np.errstate(divide="ignore"):
        logit = np.where(p > 0, np.log(np.where(p > 0, p, 1.0)), -np.inf) / temperature
    q = np.exp(logit - logit.max(axis=1, keepdims=True))
    return np.asarray(q / q.sum(axis=1, keepdims=True))


def fit_temperature(y: np.ndarray, proba: np.ndarray) -> float:
    """The temperature (within :data:`TEMPERATURE_BOUNDS`) minimising :func:`log_loss_of` of
    ``tempered(proba, t)`` for labels ``y`` (n,): temperature scaling (Guo et al., ICML 2017),
    one parameter, so ~70 patients' out-of-fold probabilities determine it."""
    lo, hi = (math.log(b) for b in TEMPERATURE_BOUNDS)
    res = minimize_scalar(lambda lt: log_loss_of(y, tempered(proba, math.exp(lt))), bounds=(lo, hi),
                          method="bounded", options={"xatol": 1e-4})
    return float(math.exp(res.x))


@dataclass
class CVResult:
    """Repeated CV of one candidate: per-repeat accuracy, macro AUC and log-loss (pooled
    out-of-fold probabilities of each repeat), every repeat's out-of-fold probabilities
    (n_repeats, n, k) and the confusion counts (true, predicted) summed over repeats."""

    name: str
    accuracy: list[float]
    macro_auc: list[float]
    repeat_proba: np.ndarray
    confusion: np.ndarray
    log_loss: list[float]

    @property
    def oof_proba(self) -> np.ndarray:
        """Out-of-fold probabilities (n, k), the mean over repeats."""
        return np.asarray(self.repeat_proba.mean(axis=0))

    def temperature(self, y: np.ndarray) -> float:
        """:func:`fit_temperature` on every repeat's out-of-fold probabilities of labels ``y`` (n,)."""
        r, n, k = self.repeat_proba.shape
        return fit_temperature(np.tile(np.asarray(y, int), r), self.repeat_proba.reshape(r * n, k))

    def summary(self) -> dict[str, Any]:
        """JSON-able ``{accuracy: {mean, sd, per_repeat}, macro_auc: {...}, log_loss: {...}}``."""
        return {"accuracy": repeat_summary(self.accuracy), "macro_auc": repeat_summary(self.macro_auc),
                "log_loss": repeat_summary(self.log_loss)}


def repeat_summary(values: Sequence[float]) -> dict[str, Any]:
    """JSON-able ``{mean, sd, per_repeat}`` of one score per CV repeat (SD with ddof 1; 0 for one)."""
    a = np.asarray(values, float)
    return {"mean": float(a.mean()), "sd": float(a.std(ddof=1)) if a.size > 1 else 0.0,
            "per_repeat": [float(x) for x in a]}


def fit_rows(x: pd.DataFrame, y: np.ndarray, rows: np.ndarray | Sequence[int],
             extra: pd.DataFrame | None = None) -> tuple[pd.DataFrame, np.ndarray]:
    """The training rows of a fit: rows ``rows`` (positions) of ``x`` (n, features; indexed by
    unique patient ids) with labels ``y`` (n,), followed by the rows of ``extra`` (second feature
    rows of some patients, indexed by patient id, e.g. from their expert masks) that belong to
    those same patients, labelled as in ``y``. A patient's extra row therefore enters exactly the
    fits its own row enters: a CV fold never trains on another measurement of a held-out patient."""
    rows = np.asarray(rows, int)
    if extra is None or extra.empty:
        return x.iloc[rows], y[rows]
    own = extra[extra.index.isin(x.index[rows])]
    labels = pd.Series(np.asarray(y), index=x.index)
    return pd.concat([x.iloc[rows], own[list(x.columns)]]), np.concatenate(
        [y[rows], labels.loc[own.index].to_numpy()])


def repeated_cv(name: str, x: pd.DataFrame, y: np.ndarray, k: int, n_splits: int = 5,
                n_repeats: int = 5, seed: int = 0, n_jobs: int = 1,
                model: Pipeline | None = None, extra: pd.DataFrame | None = None) -> CVResult:
    """``n_repeats`` x ``n_splits`` repeated stratified CV of candidate ``name`` (or ``model``).

    Each fold's model (imputer, scaler and classifier) is fitted on that fold's training rows
    only, plus the ``extra`` rows of those patients (:func:`fit_rows`); the held-out patients
    are predicted from their rows of ``x``. Accuracy and macro AUC are computed per repeat on the
    pooled out-of-fold predictions.
    """
    y = np.asarray(y, int)
    splitter = RepeatedStratifiedKFold(n_splits=n_splits, n_repeats=n_repeats, random_state=seed)
    proto = model if model is not None else build_classifier(name, seed, n_jobs)
    repeats: list[np.ndarray] = []
    fold_proba = np.zeros((len(y), k))
    acc, auc, loss = [], [], []
    confusion = np.zeros((k, k), int)
    for i, (tr, va) in enumerate(splitter.split(np.zeros(len(y)), y)):
        m = clone(proto).fit(*fit_rows(x, y, tr, extra))
        fold_proba[va] = predict_full(m, x.iloc[va], k)
        if (i + 1) % n_splits == 0:  # one repeat done: every patient predicted once
            pred = fold_proba.argmax(1)
            acc.append(float((pred == y).mean()))
            auc.append(macro_auc(y, fold_proba))
            loss.append(log_loss_of(y, fold_proba))
            np.add.at(confusion, (y, pred), 1)
            repeats.append(fold_proba)
            fold_proba = np.zeros((len(y), k))
    return CVResult(name, acc, auc, np.stack(repeats), confusion, loss)


def choose_model(x: pd.DataFrame, y: np.ndarray, k: int, candidates: Sequence[str] = CANDIDATES,
                 n_splits: int = 5, n_repeats: int = 5, seed: int = 0, n_jobs: int = 1,
                 build: Callable[[str], Pipeline] | None = None,
                 extra: pd.DataFrame | None = None) -> tuple[str, dict[str, CVResult]]:
    """The candidate with the best mean CV accuracy (ties: better macro AUC, then the earlier
    candidate), by repeated stratified CV on ``x``/``y`` only (the training patients; ``extra``:
    second rows of some of them, :func:`repeated_cv`).

    ``build(name)`` makes the unfitted pipeline of a candidate (default :func:`build_classifier`;
    the hybrid baseline puts its deep-feature PCA in front)."""
    make = build or (lambda c: build_classifier(c, seed, n_jobs))
    results = {c: repeated_cv(c, x, y, k, n_splits, n_repeats, seed, n_jobs, model=make(c), extra=extra)
               for c in candidates}
    best = max(candidates, key=lambda c: (round(float(np.mean(results[c].accuracy)), 6),
                                          round(float(np.mean(results[c].macro_auc)), 6),
                                          -list(candidates).index(c)))
    return best, results


def permutation_importances(model: Pipeline, x: pd.DataFrame, y: np.ndarray, seed: int = 0,
                            n_repeats: int = 5, groups: dict[str, list[str]] | None = None
                            ) -> dict[str, float]:
    """Mean drop of the log-loss score when one column (or one group of columns) of ``x`` is
    shuffled across patients, largest first. Computed on the training patients: it says what the
    fitted model relies on, not what generalises.

    ``groups``: importance name -> columns shuffled together (by the same permutation); default
    every column alone, which is sklearn's ``permutation_importance``. The hybrid baseline passes
    its hundreds of SimCLR features as ONE group: they mean nothing one at a time, and scoring
    them singly took 71 of the demo hybrid's 77 s.
    """
    if groups is None:
        from sklearn.inspection import permutation_importance

        r = permutation_importance(model, x, y, scoring="neg_log_loss", n_repeats=n_repeats,
                                   random_state=seed)
        order = np.argsort(-r.importances_mean)
        return {str(x.columns[i]): float(r.importances_mean[i]) for i in order}
    from sklearn.metrics import log_loss

    labels = model.classes_
    base = log_loss(y, model.predict_proba(x), labels=labels)
    rng = np.random.default_rng(seed)
    drops: dict[str, float] = {}
    for name, cols in groups.items():
        trial = []
        for _ in range(n_repeats):
            shuffled = x.copy()
            shuffled[cols] = x[cols].to_numpy()[rng.permutation(len(x))]
            trial.append(log_loss(y, model.predict_proba(shuffled), labels=labels) - base)
        drops[name] = float(np.mean(trial))
    return dict(sorted(drops.items(), key=lambda kv: -kv[1]))


def error_drivers(model: Pipeline, x_train: pd.DataFrame, y_train: np.ndarray, x_wrong: pd.DataFrame,
                  true: np.ndarray, pred: np.ndarray, k: int, top: int = 3) -> list[list[dict[str, Any]]]:
    """For each misclassified patient (rows of ``x_wrong`` with true class ``true`` and predicted
    ``pred``), the ``top`` features whose replacement by the true class's training median raises
    the true class's probability most: ``{feature, value, true_class_median, predicted_class_median,
    prob_true_gain}``. A one-at-a-time occlusion: it names the indices that pulled the patient
    towards the wrong class, in the units of the feature."""
    out: list[list[dict[str, Any]]] = []
    med = x_train.groupby(np.asarray(y_train)).median()
    for i in range(len(x_wrong)):
        row = x_wrong.iloc[[i]]
        t, p = int(true[i]), int(pred[i])
        if t not in med.index:
            out.append([])
            continue
        trial = pd.concat([row] * x_wrong.shape[1], ignore_index=True)
        for j, c in enumerate(x_wrong.columns):
            trial.iloc[j, j] = med.loc[t, c]
        base = float(predict_full(model, row, k)[0, t])
        gain = predict_full(model, trial, k)[:, t] - base
        order = np.argsort(-gain)[:top]
        out.append([{"feature": str(x_wrong.columns[j]), "value": float(row.iloc[0, j]),
                     "true_class_median": float(med.loc[t].iloc[j]),
                     "predicted_class_median": float(med.loc[p].iloc[j]) if p in med.index else math.nan,
                     "prob_true_gain": float(gain[j])} for j in order])
    return out
