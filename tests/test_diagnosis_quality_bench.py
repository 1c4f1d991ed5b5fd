"""benchmarks/diagnosis_quality.py: the diagnosis accuracy of patients whose masks carry a
segmentation QC flag against the others (the benchmark itself runs on real cross-fits)."""

from __future__ import annotations

import numpy as np

from conftest import load_benchmark


def test_accuracy_by_flag_splits_patients_by_flag_kind() -> None:
    bench = load_benchmark("diagnosis_quality")
    ids = ["p1", "p2", "p3", "p4"]
    y = np.array([0, 1, 1, 0])
    proba = np.array([[0.2, 0.8], [0.1, 0.9], [0.3, 0.7], [0.6, 0.4]])  # p1 wrong, the others right
    flags = ["fragmented;low_confidence", "fragmented", "", ""]  # as data.masks.mask_flags gives them
    got = bench.accuracy_by_flag(proba, y, flags)
    assert got["low_confidence"] == {"flagged": {"n": 1, "accuracy": 0.0},
                                     "unflagged": {"n": 3, "accuracy": 1.0}}
    assert got["any_flag"] == {"flagged": {"n": 2, "accuracy": 0.5}, "unflagged": {"n": 2, "accuracy": 1.0}}
    none = bench.accuracy_by_flag(proba, y, [""] * len(ids))
    assert none["any_flag"]["flagged"] == {"n": 0, "accuracy": None}


def test_persistent_errors_lists_patients_wrong_after_averaging_with_their_indices() -> None:
    import pandas as pd

    bench = load_benchmark("diagnosis_quality")
    ids = ["p1", "p2", "p3"]
    y = np.array([0, 1, 1])
    proba = np.array([[0.9, 0.1], [0.6, 0.4], [0.45, 0.55]])  # only p2 wrong on average
    features = pd.DataFrame({"lv_ef_pct": [60.0, 31.25, 20.0], "rv_ef_pct": [50.0, float("nan"), 40.0]},
                            index=ids)
    got = bench.persistent_errors(proba, y, ids, ["NOR", "DCM"], features)
    assert [e["patient_id"] for e in got] == ["p2"]
    assert got[0]["label"] == "DCM" and got[0]["predicted"] == "NOR" and got[0]["p_label"] == 0.4
    assert got[0]["indices"]["lv_ef_pct"] == 31.2 and got[0]["indices"]["rv_ef_pct"] is None
    assert got[0]["indices"]["lv_edv_ml_per_m2"] is None  # not in the table


def test_nested_choice_scores_the_choice_against_every_fixed_pair_on_the_same_folds() -> None:
    """The choice is re-run inside each outer fold; when it always picks the one informative
    feature set, its held-out predictions are exactly that fixed pair's, and the noise set's pair
    is no better than chance."""
    import pandas as pd

    from cardioclr.evaluate.baseline import BaselineConfig

    bench = load_benchmark("diagnosis_quality")
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 12)
    good = pd.DataFrame({"a": y * 3.0 + rng.normal(0, 0.5, y.size), "b": rng.normal(0, 1, y.size)})
    noise = pd.DataFrame({"c": rng.normal(0, 1, y.size), "d": rng.normal(0, 1, y.size)})
    cfg = BaselineConfig(work="", out="", model="auto", candidates=("logistic",), cv_repeats=1, cv_splits=3)
    got = bench.nested_choice_on_train({"good": good, "noise": noise}, y, 3, cfg, outer_repeats=2,
                                       outer_splits=3)
    assert got["chosen_per_fold"] == {"logistic/good": 6}
    assert set(got["fixed"]) == {"logistic/good", "logistic/noise"}
    assert got["choice"]["accuracy"]["per_repeat"] == got["fixed"]["logistic/good"]["accuracy"]["per_repeat"]
    assert got["choice"]["accuracy"]["mean"] > 0.9
    assert got["fixed"]["logistic/noise"]["accuracy"]["mean"] < 0.6
    assert got["best_fixed"] == "logistic/good"
    assert len(got["choice"]["macro_auc"]["per_repeat"]) == 2


def test_nested_choice_fits_on_the_extra_rows_of_its_training_patients() -> None:
    """Extra rows (the other masks' features in the benchmark) enter the fits: second rows whose signal
    points the other way confuse every model fitted on them, and the protocol says they were used."""
    import pandas as pd

    from cardioclr.evaluate.baseline import BaselineConfig

    bench = load_benchmark("diagnosis_quality")
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 12)
    ids = [f"p{i:02d}" for i in range(y.size)]
    good = pd.DataFrame({"a": y * 3.0 + rng.normal(0, 0.5, y.size), "b": rng.normal(0, 1, y.size)}, index=ids)
    reversed_signal = good.assign(a=-good["a"])
    cfg = BaselineConfig(work="", out="", model="auto", candidates=("logistic",), cv_repeats=1, cv_splits=3)
    plain = bench.nested_choice_on_train({"good": good}, y, 3, cfg, outer_repeats=1, outer_splits=3)
    mixed = bench.nested_choice_on_train({"good": good}, y, 3, cfg, outer_repeats=1, outer_splits=3,
                                         extra_by_set={"good": reversed_signal})
    assert "second rows" in mixed["protocol"] and "second rows" not in plain["protocol"]
    assert plain["fixed"]["logistic/good"]["accuracy"]["mean"] > 0.8
    assert mixed["fixed"]["logistic/good"]["accuracy"]["mean"] < 0.7


def test_calibrated_cv_keeps_the_folds_and_argmax_and_scales_an_underconfident_model() -> None:
    """Scored on the plain CV's held-out probabilities (raw scores are repeated_cv's), accuracy unchanged by
    the scaling, and for a well-separated problem (a flat random forest) the temperature sharpens
    and the log-loss falls."""
    import pandas as pd

    from cardioclr.clinical.classifier import repeated_cv
    from cardioclr.evaluate.baseline import candidate_pipeline

    bench = load_benchmark("diagnosis_quality")
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 15)
    x = pd.DataFrame({"a": y * 3.0 + rng.normal(0, 0.6, y.size), "b": rng.normal(0, 1, y.size)})
    plain = repeated_cv("rf", x, y, 3, n_splits=3, n_repeats=2, seed=0,
                        model=candidate_pipeline("rf", ["a", "b"], [], 0, 0))
    got = bench.calibrated_cv("rf", x, y, 3, splits=3, repeats=2, seed=0, inner_repeats=1,
                              raw=plain.repeat_proba)
    assert np.allclose(got["raw"]["log_loss"]["per_repeat"], plain.log_loss)
    assert got["scaled"]["accuracy"]["per_repeat"] == got["raw"]["accuracy"]["per_repeat"]
    assert got["temperature"]["max"] < 1.0
    assert got["scaled"]["log_loss"]["mean"] < got["raw"]["log_loss"]["mean"]
