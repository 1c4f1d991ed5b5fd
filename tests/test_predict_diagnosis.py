"""``cardioclr predict``'s clinical outputs and the report's diagnosis blocks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cardioclr.clinical.classifier import TEMPERATURE_BOUNDS, predict_full, tempered
from cardioclr.data.masks import load_labels, mask_flags, predicted_mask_path
from cardioclr.data.store import SliceStore
from cardioclr.errors import CardioclrError
from cardioclr.evaluate.baseline import BaselineConfig, run_baseline
from cardioclr.layout import WorkLayout
from cardioclr.study.html import Para, Table
from cardioclr.study.predict_diagnosis import refit_baseline, write_clinical_outputs
from cardioclr.study.report.sections.diagnosis import diagnosis_blocks


@pytest.fixture(scope="module")
def baseline_dir(tiny_work: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("b") / "baseline" / "clinical"
    run_baseline(BaselineConfig(work=str(tiny_work), out=str(out), masks="expert", features="regional",
                                candidates=("logistic",), cv_repeats=1, cv_splits=2, n_boot=50))
    return out


def test_refitted_baseline_reproduces_the_study_probabilities(baseline_dir: Path):
    model, classes, cols, m = refit_baseline(baseline_dir)
    feats = pd.read_csv(baseline_dir / "features.csv", index_col=0)
    test = feats[feats["subset"] == "test"]
    t = m["cv"]["temperature"]
    assert TEMPERATURE_BOUNDS[0] <= t <= TEMPERATURE_BOUNDS[1]
    p = tempered(predict_full(model, test[cols].astype(float), len(classes)), t)
    ref = pd.read_csv(baseline_dir / "predictions.csv", index_col="patient_id").loc[test.index]
    np.testing.assert_allclose(p, ref[[f"prob_{c}" for c in classes]].to_numpy(), atol=1e-3)


def test_clinical_outputs_of_new_patients(tiny_work: Path, baseline_dir: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch):
    import cardioclr.evaluate.clinical_features as features_mod

    # The tiny store has no predicted masks: its expert masks stand in for them.
    real = features_mod.patient_features
    monkeypatch.setattr(features_mod, "patient_features",
                        lambda store, pid, source, **kw: real(store, pid, "expert", **kw))
    ids = SliceStore(tiny_work).splits.test[:3]
    s = write_clinical_outputs(tiny_work, ids, tmp_path, baseline_dir)
    feats = pd.read_csv(tmp_path / "clinical_features.csv", index_col=0)
    assert list(feats.index) == ids and "wt_ed_seg01_mm" in feats.columns and "lv_ef_pct" in feats.columns
    diag = pd.read_csv(tmp_path / "diagnosis.csv")
    assert list(diag["patient_id"]) == ids
    assert np.allclose(diag.filter(like="prob_").sum(axis=1), 1.0, atol=1e-5)
    assert diag["segmentation_flags"].isna().all()  # the tiny store has no qc_flags.csv
    assert s["diagnosis"]["patients"] == 3
    assert s["bullseye"] == 3 and sorted(f.stem for f in (tmp_path / "bullseye").iterdir()) == sorted(ids)
    missing = write_clinical_outputs(tiny_work, ids[:1], tmp_path, tmp_path / "nowhere")
    assert "not written" in missing["diagnosis"] and not (tmp_path / "diagnosis.csv").exists()
    # A second run into the same folder keeps only its own patients' maps.
    assert [f.stem for f in (tmp_path / "bullseye").iterdir()] == ids[:1]


def test_mask_flags_name_each_patients_distinct_flags(tmp_path: Path):
    qc = WorkLayout(tmp_path).qc_flags
    qc.parent.mkdir(parents=True)
    pd.DataFrame({"patient_id": ["p1", "p1", "p1", "p2"], "phase": ["ES", "ED/ES", "ED", "ES"],
                  "flag": ["fragmented", "low_confidence", "fragmented", "structure_missing"],
                  "detail": ["", "", "", ""]}).to_csv(qc, index=False)
    assert mask_flags(tmp_path, ["p2", "p3", "p1"]) == ["structure_missing", "", "fragmented;low_confidence"]
    assert mask_flags(tmp_path / "elsewhere", ["p1"]) == [""]


def test_refit_refuses_a_missing_baseline(tmp_path: Path):
    with pytest.raises(CardioclrError, match="no clinical baseline"):
        refit_baseline(tmp_path)


def test_report_blocks_show_the_confusion_matrix_and_error_drivers(baseline_dir: Path):
    m = json.loads((baseline_dir / "metrics.json").read_text())
    m["test_errors"] = [{"patient_id": "p7", "label": "MINF", "predicted": "DCM", "prob_predicted": 0.6,
                         "drivers": [{"feature": "lv_ef_pct", "value": 18.0, "true_class_median": 33.0,
                                      "predicted_class_median": 16.0, "prob_true_gain": 0.3}]}]
    blocks = diagnosis_blocks(m["classes"], [m])
    paras = [b for b in blocks if isinstance(b, Para)]
    tables = {b.caption.split(":")[0]: b for b in blocks if isinstance(b, Table)}
    assert paras and "vote on the regional features, fixed in advance" in paras[0].text
    assert "training patients only" in paras[0].text
    loss = m["cv"]["results"]["vote/regional"]["log_loss"]["mean"]
    assert f"log-loss {loss:.3g}" in paras[0].text
    assert f"temperature-scaled (T = {m['cv']['temperature']:.2g}" in paras[0].text
    cm = tables["Confusion matrix on the test patients"]
    assert cm.header[1:] == m["classes"] and len(cm.rows) == len(m["classes"])
    err = next(b for b in blocks if isinstance(b, Table) and b.caption.startswith("Test errors"))
    assert err.rows[0][0].text == "p7" and "lv_ef_pct = 18" in err.rows[0][3].text
    assert len(err.header) == 4  # expert-mask errors carry no segmentation flags: no flag column
    assert "second rows" not in paras[0].text  # expert masks: nothing added
    m.update(mask_source="predicted", training_rows={"predicted": 14, "expert": 14})
    para = next(b for b in diagnosis_blocks(m["classes"], [m]) if isinstance(b, Para))
    assert "14 training patients' features from their predicted masks plus, as second rows, 14" in para.text


def test_report_names_the_segmentation_flags_of_errors_on_predicted_masks(baseline_dir: Path):
    m = json.loads((baseline_dir / "metrics.json").read_text())
    driver = {"feature": "rv_ef_pct", "value": 52.0, "true_class_median": 30.0,
              "predicted_class_median": 55.0, "prob_true_gain": 0.2}
    m["test_errors"] = [{"patient_id": p, "label": "RV", "predicted": "NOR", "prob_predicted": 0.7,
                         "drivers": [driver], "segmentation_flags": f}
                        for p, f in (("p1", "low_confidence;structure_missing"), ("p2", ""))]
    err = next(b for b in diagnosis_blocks(m["classes"], [m])
               if isinstance(b, Table) and b.caption.startswith("Test errors"))
    assert err.header[-1] == "Segmentation QC flags"
    assert [r[-1].text for r in err.rows] == ["low_confidence;structure_missing", "none"]


def test_baseline_test_errors_carry_the_flags_of_predicted_masks(tiny_work: Path, tmp_path: Path):
    work = tmp_path / "work"
    shutil.copytree(tiny_work, work)
    store = SliceStore(work)
    test = sorted(store.splits.test, key=store.label_index)
    # "Predicted" masks: a train patient's expert masks; a test patient gets the masks of the next
    # test patient in label order (mostly another class), so the classifier errs on test patients.
    source = {**{p: p for p in store.splits.train}, **dict(zip(test, test[1:] + test[:1], strict=True))}
    for pid, src in source.items():
        ed, es = load_labels(work, src, "expert")
        path = predicted_mask_path(work, pid)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, ed_mask=ed, es_mask=es)
    flags = {p: ("low_confidence" if i % 2 else "fragmented;structure_missing") for i, p in enumerate(test)}
    rows = [(p, "ES", f, "") for p, fs in flags.items() for f in fs.split(";")]
    pd.DataFrame(rows, columns=["patient_id", "phase", "flag", "detail"]).to_csv(WorkLayout(work).qc_flags,
                                                                              index=False)
    m = run_baseline(BaselineConfig(work=str(work), out=str(tmp_path / "p"), masks="predicted",
                                    candidates=("logistic",), features="indices", cv_repeats=1,
                                    cv_splits=2, n_boot=20))
    assert m["test_errors"]
    assert {e["patient_id"]: e["segmentation_flags"] for e in m["test_errors"]} == {
        e["patient_id"]: flags[e["patient_id"]] for e in m["test_errors"]}


def test_report_draws_a_bullseye_map_per_misclassified_test_patient(baseline_dir: Path, tmp_path: Path):
    from cardioclr.study.html import Gallery
    from cardioclr.study.report.collect import CellResult
    from cardioclr.study.report.sections.baselines import error_maps

    m = json.loads((baseline_dir / "metrics.json").read_text())
    feats = pd.read_csv(baseline_dir / "features.csv", index_col=0)
    test = list(feats.index[feats["subset"] == "test"][:2])
    m["test_errors"] = [{"patient_id": p, "label": "MINF", "predicted": "DCM"} for p in test]
    clinical = CellResult("baseline/clinical", "baseline", baseline_dir, metrics=m)
    hybrid = CellResult("baseline/hybrid", "baseline", baseline_dir,
                        metrics={**m, "model": "hybrid", "test_errors": m["test_errors"][:1]})
    maps = error_maps([clinical, hybrid])
    assert isinstance(maps, Gallery)
    assert [name for name, _, _ in maps.items] == [f"bullseye_{p}.png" for p in test]  # one per patient
    assert all(png[:8] == b"\x89PNG\r\n\x1a\n" for _, png, _ in maps.items)
    assert "-> DCM" in maps.items[0][2] and "hybrid -> DCM" in maps.items[0][2]
    assert "hybrid" not in maps.items[1][2]
    assert error_maps([CellResult("baseline/clinical", "baseline", baseline_dir,
                                  metrics={**m, "test_errors": []})]) is None
    assert error_maps([CellResult("baseline/clinical", "baseline", tmp_path, metrics=m)]) is None  # no CSV
