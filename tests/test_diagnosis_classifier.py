"""Diagnosis classifier candidates, repeated CV and the regional baseline path: reproducible for a
seed, no validation/test patient in any fit, scaling statistics from training patients only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin

import cardioclr.clinical.classifier as clf_mod
import cardioclr.evaluate.clinical_features as features_mod
from cardioclr.clinical.regional import REGIONAL_NAMES
from cardioclr.data.store import SliceStore
from cardioclr.evaluate.baseline import REGIONAL_SUMMARY, BaselineConfig, run_baseline


def _toy(n: int = 60, k: int = 3, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    x = rng.normal(size=(n, 6)) + y[:, None] * np.array([1.5, 0, 0, 1.0, 0, 0])
    x[rng.random(x.shape) < 0.05] = np.nan  # missing values are part of the job
    return pd.DataFrame(x, columns=[f"c{i}" for i in range(6)], index=[f"p{i:03d}" for i in range(n)]), y


@pytest.mark.parametrize("name", ["ensemble", "ensemble-no-gb", "ensemble-calibrated"])
def test_candidates_are_reproducible_for_a_seed(name):
    x, y = _toy(n=30)
    a = clf_mod.build_classifier(name, seed=3).fit(x, y).predict_proba(x)
    b = clf_mod.build_classifier(name, seed=3).fit(x, y).predict_proba(x)
    np.testing.assert_array_equal(a, b)
    assert np.allclose(a.sum(1), 1.0)


def test_both_votes_are_candidates_with_their_members():
    """Gradient boosting lowered the vote's train CV with expert masks and raised it with
    predicted ones: both votes are candidates, so CV on train decides."""
    members = {name: [m for m, _ in clf_mod.build_classifier(name)["clf"].estimators]
               for name in ("ensemble", "ensemble-no-gb")}
    assert members == {"ensemble": ["rf", "gb", "logistic", "svm"],
                       "ensemble-no-gb": ["rf", "logistic", "svm"]}
    assert {"ensemble", "ensemble-no-gb"} <= set(clf_mod.CANDIDATES)


@pytest.mark.parametrize("n", [30, 7])  # 7 rows over 3 classes: a class with fewer than 5 rows
def test_svm_probabilities_are_calibrated_without_the_deprecated_path(n, recwarn):
    x, y = _toy(n=n)
    model = clf_mod.build_classifier("svm", seed=1).fit(x, y)
    p = model.predict_proba(x)
    assert p.shape == (n, 3) and np.allclose(p.sum(1), 1.0) and (p > 0).all()
    np.testing.assert_array_equal(p, clf_mod.build_classifier("svm", seed=1).fit(x, y).predict_proba(x))
    assert not [w for w in recwarn if issubclass(w.category, FutureWarning)]  # SVC(probability=True)
    assert (model.predict(x) == p.argmax(1)).mean() > 0.5
    assert model.named_steps["clf"].C_ in (0.5, 1.0, 2.0, 4.0, 8.0)  # chosen by inner CV on these rows


def test_svm_regularisation_is_chosen_by_inner_cv():
    x, y = _toy(n=40)
    x = x.fillna(0).to_numpy()
    # Learnable labels: a tiny C underfits every inner fold, so the inner CV prefers the larger C.
    assert clf_mod.CalibratedSVC(C=None, c_grid=(0.001, 10.0), random_state=0).fit(x, y).C_ == 10.0
    assert clf_mod.CalibratedSVC(C=3.0).fit(x, y).C_ == 3.0


def test_svm_calibration_with_a_single_row_class():
    x, y = _toy(n=13)
    y[y == 2] = 1
    y[-1] = 2  # class 2 has one row: no cross-validated calibration possible
    p = clf_mod.build_classifier("svm", seed=0).fit(x, y).predict_proba(x)
    assert p.shape == (13, 3) and np.allclose(p.sum(1), 1.0)


def test_seed_changes_the_forest():
    x, y = _toy(n=30)
    a = clf_mod.build_classifier("rf", seed=0).fit(x, y).predict_proba(x)
    b = clf_mod.build_classifier("rf", seed=1).fit(x, y).predict_proba(x)
    assert not np.array_equal(a, b)


class _Recorder(BaseEstimator, ClassifierMixin):
    """Predicts class priors; records the rows of every fit."""

    fits: list[list[str]] = []

    def fit(self, x, y):
        _Recorder.fits.append(list(x.index))
        self.classes_ = np.unique(y)
        self.prior_ = np.bincount(y) / len(y)
        return self

    def predict_proba(self, x):
        return np.tile(self.prior_[self.classes_], (len(x), 1))


def test_repeated_cv_never_fits_on_the_patient_it_predicts():
    x, y = _toy(n=40, k=2)
    _Recorder.fits = []
    r = clf_mod.repeated_cv("recorder", x, y, 2, n_splits=4, n_repeats=3, seed=0, model=_Recorder())
    assert len(_Recorder.fits) == 12 and len(r.accuracy) == 3
    # In each repeat, each patient is left out of exactly one of the 4 fits.
    for rep in range(3):
        fits = _Recorder.fits[rep * 4:(rep + 1) * 4]
        for pid in x.index:
            assert sum(pid not in f for f in fits) == 1
    assert r.confusion.sum() == 3 * len(y)


class _RowRecorder(_Recorder):
    """Records (patient ids, labels) of every fit, duplicates included."""

    rows: list[tuple[list[str], list[int]]] = []

    def fit(self, x, y):
        _RowRecorder.rows.append((list(x.index), [int(v) for v in y]))
        return super().fit(x, y)


def test_extra_rows_enter_exactly_the_fits_of_their_own_patients_with_their_labels():
    x, y = _toy(n=40, k=2)
    extra = (x.iloc[::2] * 1.1).iloc[::-1]  # second rows of every other patient, in another order
    label = dict(zip(x.index, y, strict=True))
    _RowRecorder.rows = []
    clf_mod.repeated_cv("recorder", x, y, 2, n_splits=4, n_repeats=2, seed=0, model=_RowRecorder(),
                        extra=extra)
    assert len(_RowRecorder.rows) == 8
    for ids, labels in _RowRecorder.rows:
        main, second = ids[:30], ids[30:]  # 4 folds of 40: 30 training patients, then their extras
        assert len(set(main)) == 30
        assert sorted(second) == sorted(p for p in main if p in extra.index)  # never a held-out one
        assert labels == [label[p] for p in ids]
    x_fit, y_fit = clf_mod.fit_rows(x, y, np.arange(40), extra)
    assert len(x_fit) == 60 and list(x_fit.columns) == list(x.columns)
    np.testing.assert_allclose(x_fit.iloc[40:].to_numpy(), extra.to_numpy())
    assert clf_mod.fit_rows(x, y, [0, 1], None)[0].index.tolist() == ["p000", "p001"]


def test_grouped_permutation_importance_scores_each_group_once():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 20)
    x = pd.DataFrame({"signal": y + rng.normal(0, 0.3, 60), "noise_a": rng.normal(size=60),
                      "noise_b": rng.normal(size=60)})
    model = clf_mod.build_classifier("logistic", 0).fit(x, y)
    grouped = clf_mod.permutation_importances(model, x, y, groups={"signal": ["signal"],
                                                                   "noise": ["noise_a", "noise_b"]})
    assert list(grouped) == ["signal", "noise"]  # one entry per group, largest first
    assert grouped["signal"] > 0.5 > abs(grouped["noise"])
    single = clf_mod.permutation_importances(model, x, y)
    assert set(single) == set(x.columns) and next(iter(single)) == "signal"


def test_choose_model_sees_only_what_it_is_given():
    x, y = _toy()
    best, results = clf_mod.choose_model(x, y, 3, ("logistic", "svm"), n_splits=3, n_repeats=2)
    assert best in ("logistic", "svm") and set(results) == {"logistic", "svm"}
    assert all(len(r.accuracy) == 2 for r in results.values())


def test_regional_baseline_reads_test_last_and_scales_on_train_only(tiny_work: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch):
    store = SliceStore(tiny_work)
    train, test = set(store.splits.train), set(store.splits.test)
    events: list[tuple[str, set[str]]] = []
    real_pf, real_choose, real_perm = (features_mod.patient_features, clf_mod.choose_model,
                                       clf_mod.permutation_importances)
    captured = {}

    def pf_spy(store, pid, source, regional=False, notes=None):
        events.append(("features", {pid}))
        return real_pf(store, pid, source, regional=regional, notes=notes)

    def choose_spy(x, *a, **kw):
        events.append(("choose", set(x.index)))
        return real_choose(x, *a, **kw)

    def perm_spy(model, x, y, seed=0, n_repeats=5, groups=None):
        captured["model"], captured["x"] = model, x
        return real_perm(model, x, y, seed, n_repeats=2, groups=groups)

    monkeypatch.setattr(features_mod, "patient_features", pf_spy)
    monkeypatch.setattr(clf_mod, "choose_model", choose_spy)
    monkeypatch.setattr(clf_mod, "permutation_importances", perm_spy)
    out = tmp_path / "o"
    m = run_baseline(BaselineConfig(work=str(tiny_work), out=str(out), masks="expert", model="auto",
                                    features="regional", candidates=("logistic", "svm"), cv_repeats=2,
                                    cv_splits=3, n_boot=100))
    first_test = next(i for i, (k, ids) in enumerate(events) if k == "features" and ids & test)
    choose_at = next(i for i, (k, _) in enumerate(events) if k == "choose")
    assert events[choose_at][1] == train and choose_at < first_test
    assert m["model"] in ("clinical-logistic", "clinical-svm") and m["cv"]["chosen"] in ("logistic", "svm")
    assert set(captured["x"].index) == train
    # The imputer of the final model was fitted on the train patients' features only.
    feats = pd.read_csv(out / "features.csv", index_col=0)
    cols = list(captured["x"].columns)
    assert cols == [*features_mod.FEATURE_NAMES, *REGIONAL_SUMMARY]
    imputer = captured["model"].named_steps["impute"]
    train_median = feats.loc[feats["subset"] == "train", cols].median().to_numpy()
    all_median = feats[cols].median().to_numpy()
    np.testing.assert_allclose(imputer.statistics_, np.nan_to_num(train_median, nan=0.0), rtol=1e-5)
    assert not np.allclose(train_median, all_median, equal_nan=True)
    assert set(REGIONAL_NAMES) <= set(feats.columns)
    written = json.loads((out / "metrics.json").read_text())
    assert written["feature_importance_kind"].startswith("permutation")
    assert set(written["feature_importances"]) == set(cols)
    for err in written["test_errors"]:
        assert err["patient_id"] in test and len(err["drivers"]) == 3


def test_auto_features_choose_by_cv_and_record_every_pair(tiny_work: Path, tmp_path: Path):
    m = run_baseline(BaselineConfig(work=str(tiny_work), out=str(tmp_path / "a"), masks="expert",
                                    model="auto", candidates=("logistic",), cv_repeats=1, cv_splits=2,
                                    n_boot=50))
    assert set(m["cv"]["results"]) == {"logistic/regional", "logistic/indices"}
    assert m["hyperparameters"] == {"classifier": "logistic", "features": m["cv"]["chosen_features"]}
    assert m["model"] == "clinical-logistic"


def _regional_toy(n: int = 40, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Rows with every column of the largest feature set: one index and one regional summary carry
    the class, the rest is noise with some NaN."""
    from cardioclr.evaluate.baseline import FEATURE_SETS

    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    cols = list(FEATURE_SETS["regional"])
    x = pd.DataFrame(rng.normal(size=(n, len(cols))), columns=cols, index=[f"p{i:03d}" for i in range(n)])
    x[features_mod.FEATURE_NAMES[0]] += 2.0 * y
    x[REGIONAL_SUMMARY[0]] += 1.5 * y
    x.iloc[::7, 3] = np.nan
    return x, y


def test_vote_has_each_member_on_each_feature_set_and_averages_them():
    from cardioclr.evaluate.baseline import VOTE_MEMBERS, feature_set_vote

    x, y = _regional_toy()
    vote = feature_set_vote(list(x.columns), [], 0, seed=2).fit(x, y)
    members = vote.named_steps["clf"].named_estimators_
    assert set(members) == {f"{m}-{fs}" for m in VOTE_MEMBERS for fs in ("regional", "indices")}
    # Each member saw its own set's columns only.
    assert list(members["rf-indices"].named_steps["select"].get_feature_names_out()) == list(
        features_mod.FEATURE_NAMES)
    assert len(members["rf-regional"].named_steps["select"].get_feature_names_out()) == x.shape[1]
    mean = np.mean([m.predict_proba(x) for m in members.values()], axis=0)
    np.testing.assert_allclose(vote.predict_proba(x), mean)
    again = feature_set_vote(list(x.columns), [], 0, seed=2).fit(x, y).predict_proba(x)
    np.testing.assert_array_equal(vote.predict_proba(x), again)  # reproducible for a seed


def test_vote_on_the_indices_alone_has_one_member_per_classifier_and_refuses_unknown_columns():
    from cardioclr.errors import CardioclrError
    from cardioclr.evaluate.baseline import VOTE_MEMBERS, feature_set_vote

    x, y = _regional_toy()
    indices = list(features_mod.FEATURE_NAMES)
    vote = feature_set_vote(indices, [], 0, seed=0).fit(x[indices], y)
    assert len(vote.named_steps["clf"].named_estimators_) == len(VOTE_MEMBERS)
    with pytest.raises(CardioclrError, match="columns of a feature set"):
        feature_set_vote(["c0", "c1"], [], 0, seed=0)


def test_default_baseline_is_the_fixed_vote_with_its_train_cv_reported(tiny_work: Path, tmp_path: Path):
    m = run_baseline(BaselineConfig(work=str(tiny_work), out=str(tmp_path / "v"), masks="expert",
                                    cv_repeats=1, cv_splits=2, n_boot=50))
    assert m["model"] == "clinical-vote"
    assert m["hyperparameters"] == {"classifier": "vote", "features": "regional"}
    assert set(m["cv"]["results"]) == {"vote/regional"}  # nothing chosen among candidates


def test_log_loss_is_the_mean_negative_log_probability_of_the_true_class():
    proba = np.array([[0.5, 0.5], [0.9, 0.1], [0.0, 1.0]])
    y = np.array([0, 0, 0])  # the last is a certain error: clipped at 1e-6, not infinite
    expected = -(np.log(0.5) + np.log(0.9) + np.log(1e-6)) / 3
    assert clf_mod.log_loss_of(y, proba) == pytest.approx(expected)
    x, y2 = _toy(n=30)
    s = clf_mod.repeated_cv("logistic", x, y2, 3, n_splits=3, n_repeats=2).summary()
    assert len(s["log_loss"]["per_repeat"]) == 2 and 0 < s["log_loss"]["mean"] < np.log(3)


def test_temperature_scaling_keeps_the_argmax_and_recovers_a_known_flattening():
    from cardioclr.clinical.classifier import fit_temperature, tempered

    rng = np.random.default_rng(0)
    q = rng.dirichlet(np.full(5, 0.3), size=4000)  # calibrated probabilities
    y = np.array([rng.choice(5, p=row) for row in q])
    flat = tempered(q, 3.0)  # an under-confident model: q flattened by T = 3
    assert (flat.argmax(1) == q.argmax(1)).all() and np.allclose(flat.sum(1), 1.0)
    assert np.allclose(tempered(q, 1.0), q)
    t = fit_temperature(y, flat)
    assert abs(t - 1 / 3) < 0.03, t  # sharpening by 3 undoes it
    assert clf_mod.log_loss_of(y, tempered(flat, t)) < clf_mod.log_loss_of(y, flat) - 0.05
    zero = np.array([[0.0, 0.5, 0.5], [0.2, 0.3, 0.5]])
    assert tempered(zero, 0.5)[0, 0] == 0.0
    certain = np.eye(5)[y]  # no error at all: bounded, not sharpened to infinity
    assert fit_temperature(y, 0.6 * certain + 0.1) == pytest.approx(clf_mod.TEMPERATURE_BOUNDS[0], rel=1e-3)


def test_repeated_cv_keeps_every_repeats_out_of_fold_probabilities():
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(3), 10)
    x = pd.DataFrame({"a": y + rng.normal(0, 0.8, y.size), "b": rng.normal(size=y.size)})
    r = clf_mod.repeated_cv("logistic", x, y, 3, n_splits=3, n_repeats=2, seed=0)
    assert r.repeat_proba is not None and r.repeat_proba.shape == (2, 30, 3)
    assert np.allclose(r.repeat_proba.mean(0), r.oof_proba)
    assert 0.1 <= r.temperature(y) <= 10.0
