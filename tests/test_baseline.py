"""Clinical-feature baseline on the tiny synthetic cohort (expert masks: no segmentation needed)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import cardioclr.evaluate.baseline as baseline_mod
import cardioclr.evaluate.clinical_features as features_mod
from cardioclr.clinical.indices import compute_indices
from cardioclr.data.store import SliceStore
from cardioclr.errors import CardioclrError, DataError
from cardioclr.evaluate.baseline import BaselineConfig, run_baseline
from cardioclr.evaluate.cli import register
from cardioclr.evaluate.metrics import read_predictions


def main(argv: list[str]) -> int:
    """Run an evaluate subcommand through its own parser (independent of other stages' CLIs)."""
    parser = argparse.ArgumentParser(prog="cardioclr")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return int(args.func(args))


# A tiny grid so each run takes well under a second per CV fit.
TINY = {"n_estimators": (25,), "max_depth": (2, None), "max_features": ("sqrt",), "n_boot": 200,
        "model": "rf", "features": "indices"}


def test_feature_table_matches_compute_indices(tiny_work: Path) -> None:
    store = SliceStore(tiny_work)
    pid = store.splits.train[0]
    df = features_mod.feature_table(store, [pid], "expert")
    ps = store.load(pid)
    row = store.manifest.loc[pid]
    ref = compute_indices(ps.ed_mask, ps.es_mask, ps.spacing_zyx, row["height_cm"], row["weight_kg"])
    assert df.loc[pid, "lv_edv_ml"] == pytest.approx(ref["lv_edv_ml"])
    assert df.loc[pid, "lv_edv_ml_per_m2"] == pytest.approx(ref["lv_edv_ml"] / row["bsa_m2"])
    assert df.loc[pid, "height_cm"] == pytest.approx(row["height_cm"])


def test_predicted_masks_missing_is_a_clear_error(tiny_work: Path, tmp_path: Path) -> None:
    with pytest.raises(CardioclrError, match="segment predict"):
        run_baseline(BaselineConfig(work=str(tiny_work), out=str(tmp_path / "o"), masks="predicted",
                                    **TINY))


def test_baseline_never_reads_test_before_the_final_prediction(tiny_work: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    splits = SliceStore(tiny_work).splits
    events: list[tuple[str, list[str]]] = []
    real_fit, real_select = baseline_mod.fit_model, baseline_mod.select_hyperparameters
    real_pf = features_mod.patient_features

    def fit_spy(params, x, y, deep_cols, cfg):
        events.append(("fit", list(x.index)))
        return real_fit(params, x, y, deep_cols, cfg)

    def select_spy(*args, **kwargs):
        events.append(("select-start", []))
        out = real_select(*args, **kwargs)
        events.append(("select-end", []))
        return out

    def features_spy(store, pid, source):
        events.append(("features", [pid]))
        return real_pf(store, pid, source)

    monkeypatch.setattr(baseline_mod, "fit_model", fit_spy)
    monkeypatch.setattr(baseline_mod, "select_hyperparameters", select_spy)
    monkeypatch.setattr(features_mod, "patient_features", features_spy)
    r = run_baseline(BaselineConfig(work=str(tiny_work), out=str(tmp_path / "o"), masks="expert", **TINY))

    test = set(splits.test)
    first_test_read = next(i for i, (kind, ids) in enumerate(events)
                           if kind == "features" and set(ids) & test)
    fits = [(i, ids) for i, (kind, ids) in enumerate(events) if kind == "fit"]
    # Every fit, the CV ones and the final refit, sees train patients only...
    assert fits and all(set(ids) <= set(splits.train) for _, ids in fits)
    # ...the last fit is the refit on all of train...
    assert set(fits[-1][1]) == set(splits.train)
    # ...and no test patient is even loaded until selection and the refit are over.
    assert first_test_read > max(i for i, _ in fits)
    assert first_test_read > events.index(("select-end", []))
    # CV fits never include their own validation fold.
    n_cv = len(fits) - 1
    assert n_cv == 2 * len([f for f in splits.folds if f])
    assert r["n_test"] == len(test)


def test_baseline_outputs_and_separable_auc(tiny_work: Path, tmp_path: Path) -> None:
    out = tmp_path / "base"
    code = main(["baseline", str(tiny_work), "--out", str(out), "--masks", "expert", "--n-boot", "200",
                 "--model", "rf", "--features", "indices"])
    assert code == 0
    for name in ("config.yaml", "versions.json", "metrics.json", "predictions.csv", "features.csv"):
        assert (out / name).is_file(), name
    m = json.loads((out / "metrics.json").read_text())
    for key in ("macro_auc", "accuracy", "balanced_accuracy"):
        assert set(m[key]) == {"value", "ci_low", "ci_high"}
    assert m["mask_source"] == "expert" and m["model"] == "clinical-rf"
    assert set(m["hyperparameters"]) == {"n_estimators", "max_depth", "max_features"}
    assert len(m["feature_importances"]) == len(features_mod.FEATURE_NAMES)
    # The cartoon groups differ grossly in LV size, wall and RV: clearly separable.
    assert m["macro_auc"]["value"] > 0.9
    store = SliceStore(tiny_work)
    pred = read_predictions(out / "predictions.csv", store.classes)
    assert sorted(pred["patient_id"]) == sorted(store.splits.test)
    feats = pd.read_csv(out / "features.csv", dtype={"patient_id": str})
    assert set(feats.loc[feats["subset"] == "test", "patient_id"]) == set(store.splits.test)


def write_deep(path: Path, store: SliceStore, informative: bool, drop: str | None = None) -> None:
    rng = np.random.default_rng(0)
    ids = [p for p in store.splits.train + store.splits.test if p != drop]
    f = rng.normal(size=(len(ids), 40))
    if informative:
        f[:, :5] += 3 * np.array([store.label_index(p) for p in ids])[:, None]
    df = pd.DataFrame(f, columns=[f"f{i}" for i in range(40)])
    df.insert(0, "patient_id", ids)
    path.mkdir(parents=True, exist_ok=True)
    df.to_csv(path / "deep_features.csv", index=False)


def test_hybrid_uses_pca_of_deep_features(tiny_work: Path, tmp_path: Path) -> None:
    store = SliceStore(tiny_work)
    write_deep(tmp_path / "deep", store, informative=True)
    r = run_baseline(BaselineConfig(work=str(tiny_work), out=str(tmp_path / "h"), masks="expert",
                                    deep_features=str(tmp_path / "deep"), pca_components=4, **TINY))
    assert r["model"] == "hybrid-rf"
    assert r["deep_features"]["n_input"] == 40 and r["deep_features"]["pca_components"] == 4
    assert "deep_pc0" in r["feature_importances"]
    assert not math.isnan(r["macro_auc"]["value"])
    lr = run_baseline(BaselineConfig(work=str(tiny_work), out=str(tmp_path / "l"), masks="expert",
                                     deep_features=str(tmp_path / "deep"), model="logistic",
                                     features="indices", pca_components=4, logistic_c=(0.1, 1.0), n_boot=100))
    assert lr["model"] == "hybrid-logistic" and lr["hyperparameters"]["C"] in (0.1, 1.0)


def test_hybrid_with_simclr_features_file(tiny_work: Path, tmp_path: Path) -> None:
    """The study's hybrid: indices + the features ``cardioclr pretrain`` writes (a file path)."""
    from cardioclr.models.checkpoint import save_encoder
    from cardioclr.models.encoders import build_encoder
    from cardioclr.ssl.features import write_simclr_features

    encoder, dim = build_encoder("smallcnn")
    save_encoder(tmp_path / "encoder.pt", encoder, "smallcnn", dim, "segmented", 32,
                 mask_source="expert")
    info = write_simclr_features(tmp_path / "encoder.pt", tiny_work)
    csv = tmp_path / "deep_features.csv"  # default: beside encoder.pt
    assert info["file"] == str(csv) and info["n_features"] == 2 * dim
    assert info["n_patients"] == len(SliceStore(tiny_work).patient_ids) and not info["skipped"]
    r = run_baseline(BaselineConfig(work=str(tiny_work), out=str(tmp_path / "h"), masks="expert",
                                    deep_features=str(csv), pca_components=4, **TINY))
    assert r["model"] == "hybrid-rf" and r["deep_features"]["n_input"] == 2 * dim
    assert r["deep_features"]["file"] == str(csv)


def test_hybrid_refuses_a_fine_tuned_models_features(tiny_work: Path, tmp_path: Path) -> None:
    """A fine-tuned classifier's features are fitted to the train labels: never the hybrid's input."""
    store = SliceStore(tiny_work)
    write_deep(tmp_path / "cell", store, informative=True)
    (tmp_path / "cell" / "deep_features.csv").rename(tmp_path / "cell" / "finetuned_features.csv")
    for given in (tmp_path / "cell", tmp_path / "cell" / "finetuned_features.csv"):
        with pytest.raises(DataError, match="not found|must not feed the hybrid"):
            run_baseline(BaselineConfig(work=str(tiny_work), out=str(tmp_path / "h"), masks="expert",
                                        deep_features=str(given), **TINY))


def test_hybrid_missing_patient_is_a_data_error(tiny_work: Path, tmp_path: Path) -> None:
    store = SliceStore(tiny_work)
    write_deep(tmp_path / "deep", store, informative=False, drop=store.splits.train[0])
    with pytest.raises(DataError, match="no deep features"):
        run_baseline(BaselineConfig(work=str(tiny_work), out=str(tmp_path / "h"), masks="expert",
                                    deep_features=str(tmp_path / "deep"), **TINY))


def test_metrics_and_compare_cli(tiny_work: Path, tmp_path: Path) -> None:
    out = tmp_path / "base"
    run_baseline(BaselineConfig(work=str(tiny_work), out=str(out), masks="expert", **TINY))
    assert main(["metrics", str(out / "predictions.csv"), "--out", str(tmp_path / "m.json"),
                 "--n-boot", "50"]) == 0
    assert "macro_auc" in json.loads((tmp_path / "m.json").read_text())
    assert main(["compare", str(out / "predictions.csv"), str(out / "predictions.csv"),
                 "--out", str(tmp_path / "c.json"), "--n-boot", "50"]) == 0
    assert json.loads((tmp_path / "c.json").read_text())["p_value"] == pytest.approx(1.0)


def test_predicted_masks_train_also_on_the_train_patients_expert_rows(tiny_work: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch
                                                                       ) -> None:
    """With predicted masks every train patient adds its expert-mask row to the fit (features.csv,
    ``masks`` column, both rows labelled alike); no test patient's expert masks are ever read;
    ``cardioclr predict`` refits on exactly those rows; ``--no-both-masks`` trains on one row each."""
    from cardioclr.clinical.classifier import predict_full
    from cardioclr.study.predict_diagnosis import refit_baseline

    real = features_mod.patient_features
    read: list[tuple[str, str]] = []

    def fake(store, pid, source, **kw):  # "predicted" = the expert masks measured 10% larger
        read.append((pid, source))
        f = real(store, pid, "expert", **kw)
        return {k: v * 1.1 for k, v in f.items()} if source == "predicted" else f

    monkeypatch.setattr(features_mod, "patient_features", fake)
    store = SliceStore(tiny_work)
    train, test = store.splits.train, store.splits.test
    out = tmp_path / "with"
    m = run_baseline(BaselineConfig(work=str(tiny_work), out=str(out), masks="predicted", model="logistic",
                                    features="indices", n_boot=50))
    assert m["training_rows"] == {"predicted": len(train), "expert": len(train)}
    assert {p for p, src in read if src == "expert"} == set(train)
    feats = pd.read_csv(out / "features.csv", index_col=0)
    rows = feats[feats["subset"] == "train"]
    assert sorted(rows.index[rows["masks"] == "expert"]) == sorted(train)
    assert sorted(rows.index[rows["masks"] == "predicted"]) == sorted(train)
    assert rows.groupby(level=0)["label_index"].nunique().max() == 1
    assert set(feats.loc[feats["subset"] == "test", "masks"]) == {"predicted"}
    model, classes, cols, _ = refit_baseline(out)
    test_rows = feats[feats["subset"] == "test"]
    ref = pd.read_csv(out / "predictions.csv", index_col="patient_id").loc[test_rows.index]
    np.testing.assert_allclose(predict_full(model, test_rows[cols].astype(float), len(classes)),
                               ref[[f"prob_{c}" for c in classes]].to_numpy(), atol=1e-3)

    read.clear()
    code = main(["baseline", str(tiny_work), "--out", str(tmp_path / "without"), "--masks", "predicted",
                 "--model", "logistic", "--features", "indices", "--n-boot", "50", "--no-both-masks"])
    assert code == 0 and not [p for p, src in read if src == "expert"]
    m2 = json.loads((tmp_path / "without" / "metrics.json").read_text())
    assert m2["training_rows"] == {"predicted": len(train)}
    assert len(pd.read_csv(tmp_path / "without" / "features.csv")) == len(train) + len(test)


def test_expert_masks_train_also_on_the_predicted_rows_of_train_patients_that_have_them(
        tiny_work: Path, tmp_path: Path) -> None:
    """With expert masks, the train patients whose predicted masks exist add them as second rows;
    a test patient's predicted masks are never read; without any predicted mask nothing is added."""
    import shutil

    from cardioclr.data.masks import load_labels, predicted_mask_path

    work = tmp_path / "work"
    shutil.copytree(tiny_work, work)
    store = SliceStore(work)
    train, test = store.splits.train, store.splits.test
    with_masks = [*train[:5], test[0]]
    for pid in with_masks:  # an eroded heart: the expert labels of the top half only
        ed, es = load_labels(work, pid, "expert")
        half = ed.shape[1] // 2
        ed, es = ed.copy(), es.copy()
        ed[:, half:], es[:, half:] = 0, 0
        path = predicted_mask_path(work, pid)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, ed_mask=ed, es_mask=es)
    m = run_baseline(BaselineConfig(work=str(work), out=str(tmp_path / "b"), masks="expert", model="logistic",
                                    features="indices", n_boot=50))
    assert m["training_rows"] == {"expert": len(train), "predicted": 5}
    feats = pd.read_csv(tmp_path / "b" / "features.csv", index_col=0)
    second = feats[feats["masks"] == "predicted"]
    assert sorted(second.index) == sorted(train[:5]) and set(second["subset"]) == {"train"}
    assert test[0] not in second.index
    for pid in with_masks:
        predicted_mask_path(work, pid).unlink()
    m2 = run_baseline(BaselineConfig(work=str(work), out=str(tmp_path / "c"), masks="expert",
                                     model="logistic", features="indices", n_boot=50))
    assert m2["training_rows"] == {"expert": len(train)}
