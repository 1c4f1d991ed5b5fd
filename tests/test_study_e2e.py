"""End to end: ``cardioclr study`` on a tiny synthetic cohort, then ``report`` and ``predict``.

Everything is as small as the stages allow (20 patients, 32 px, one or two epochs), so the
numbers mean nothing; the test checks that the real stages chain, that the tables come out
with every cell, and that a re-run skips finished work.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from cardioclr.cli import main

TINY = {
    "preset": "demo",
    "synthetic": {"patients": 20, "seed": 1, "options": {"matrix": 64}},
    "prepare": {"image_size": 32, "spacing_mm": 5.0, "n_folds": 2},
    "segment": {"options": {"network": {"channels": [4, 8, 16, 32, 64]}, "crop": 32,
                            "batch_size": 16, "trainer": {"max_epochs": 2, "patience": 2},
                            "optim": {"time_budget_s": 20}}},
    "pretrain": {"options": {"batch_size": 16, "max_epochs": 1, "patience": 1,
                             "val_fraction": 0.2}},
    "finetune": {"options": {"max_epochs": 2, "patience": 1, "n_boot": 50, "grid_batch": [16]}},
    "baseline": {"options": {"model": "vote", "cv_repeats": 1, "n_boot": 50}},  # the default, not the demo's
    "report": {"saliency_patients": 2, "n_boot": 50},
}


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    root = tmp_path_factory.mktemp("e2e")
    cfg = root / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    out = root / "study"
    start = time.perf_counter()
    code = main(["study", "--out", str(out), "--config", str(cfg)])
    seconds = time.perf_counter() - start
    assert code == 0, (out / "study_state.json").read_text()
    return out, seconds


@pytest.mark.slow
def test_study_tables(tiny_study: tuple[Path, float]) -> None:
    out, seconds = tiny_study
    df = pd.read_csv(out / "results.csv")
    ft = df[df["kind"] == "finetune"]
    assert len(ft) == 8
    done = ft[ft["status"] == "done"]
    assert set(zip(done["pretraining"], done["downstream_input"], strict=True)) == {
        (p, i) for p in ("none", "simclr-full", "simclr-segmented") for i in ("full", "segmented")}
    assert done["auc"].between(0, 1).all()
    assert (done["auc_ci_low"] <= done["auc_ci_high"]).all()
    assert done["accuracy"].between(0, 1).all()
    assert (ft[ft["pretraining"] == "imagenet"]["status"] == "not-run").all()
    base = df[df["kind"] == "baseline"]
    assert len(base) == 2 and base["auc"].between(0, 1).all()
    # The hybrid's deep features are the SimCLR pretraining's (label-free), one row per patient.
    pre = out / "work" / "pretrain" / "smallcnn-segmented" / "deep_features.csv"
    hybrid = json.loads((out / "baseline" / "hybrid" / "metrics.json").read_text())
    assert hybrid["model"] == "hybrid-vote" and hybrid["deep_features"]["file"] == str(pre)
    feats = pd.read_csv(pre, dtype={"patient_id": str})
    manifest = pd.read_csv(out / "work" / "manifest.csv", dtype={"patient_id": str})
    assert sorted(feats["patient_id"]) == sorted(manifest["patient_id"])
    assert feats.shape[1] == 1 + 2 * 256  # patient_id + [ED, ES] smallcnn features
    md = (out / "report.md").read_text()
    for table in ("Table 1.", "Table 2.", "Table 3."):
        assert table in md
    assert "**" in md.split("Table 1.")[1].split("Table 2.")[0]  # a bold best cell
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3 and 'src="http' not in html
    state = json.loads((out / "study_state.json").read_text())
    assert {r["status"] for r in state["cells"].values()} == {"done", "not-run"}
    # Every cell is its own directory with its provenance.
    cell = out / "finetune" / "smallcnn__simclr-segmented__segmented"
    for name in ("config.yaml", "versions.json", "metrics.json", "predictions.csv", "curves.csv",
                 "model.pt"):
        assert (cell / name).is_file(), name
    print(f"tiny study: {seconds:.0f} s")


@pytest.mark.slow
def test_rerun_skips_finished_cells(tiny_study: tuple[Path, float],
                                    capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = tiny_study
    start = time.perf_counter()
    assert main(["study", "--out", str(out)]) == 0  # same study, config read from OUT/study.yaml
    assert time.perf_counter() - start < 30
    assert "15 cells done (0 run now)" in capsys.readouterr().out


@pytest.mark.slow
def test_fine_tuning_in_its_own_process_equals_in_process(tiny_study: tuple[Path, float],
                                                          tmp_path: Path) -> None:
    # The demo preset runs its fine-tuning cells two at a time, each as its own process
    # (finetune.concurrent). The same cell re-run inside the study process (concurrent 1) must
    # predict the same: same seed, threads and data, nothing taken from the process around it.
    out, _ = tiny_study
    assert yaml.safe_load((out / "study.yaml").read_text())["finetune"]["concurrent"] == 2
    copy = tmp_path / "study"
    shutil.copytree(out, copy, symlinks=True)
    name = "smallcnn__simclr-full__segmented"
    shutil.rmtree(copy / "finetune" / name)
    cfg = tmp_path / "sequential.yaml"
    cfg.write_text(yaml.safe_dump({**TINY, "finetune": {**TINY["finetune"], "concurrent": 1}}))
    assert main(["study", "--out", str(copy), "--config", str(cfg)]) == 0
    in_process = pd.read_csv(copy / "finetune" / name / "predictions.csv")
    own_process = pd.read_csv(out / "finetune" / name / "predictions.csv")
    pd.testing.assert_frame_equal(in_process, own_process)


@pytest.mark.slow
def test_predict_new_patients(tiny_study: tuple[Path, float], tmp_path: Path) -> None:
    out, _ = tiny_study
    data = out / "data"
    folders = sorted(p for p in data.glob("*/patient*") if p.is_dir())[:2]
    bad = tmp_path / "patient999"
    bad.mkdir()
    (bad / "Info.cfg").write_text("ED: 1\nES: 9\n")  # frames missing
    nifti = sorted(folders[0].glob("*_frame??.nii.gz"))
    assert len(nifti) == 2
    ed, es = nifti[0], nifti[1]
    shutil.copy(ed, tmp_path / "anon_ed.nii.gz")
    shutil.copy(es, tmp_path / "anon_es.nii.gz")
    model = out / "finetune" / "smallcnn__simclr-segmented__segmented"
    pred_out = tmp_path / "pred"
    code = main(["predict", str(model), *map(str, folders), str(bad), "--ed",
                 str(tmp_path / "anon_ed.nii.gz"), "--es", str(tmp_path / "anon_es.nii.gz"),
                 "--id", "anon1", "--out", str(pred_out), "--device", "cpu"])
    assert code == 1  # one patient failed; the others were predicted
    df = pd.read_csv(pred_out / "predictions.csv")
    assert list(df["patient_id"]) == [f.name for f in folders] + ["anon1"]
    probs = df[[c for c in df.columns if c.startswith("prob_")]]
    assert probs.shape[1] == 5 and (probs.sum(axis=1) - 1).abs().max() < 1e-4
    assert set(df["predicted"]) <= {c[5:] for c in probs.columns}
    failed = pd.read_csv(pred_out / "failed.csv")
    assert list(failed["patient_id"]) == ["patient999"] and "frame" in failed["reason"][0]
    for pid in df["patient_id"]:
        assert (pred_out / "saliency" / f"{pid}.png").is_file()
    study_run = out / "work" / "segmentation" / "predict_summary.json"
    new_run = pred_out / "work" / "segmentation" / "predict_summary.json"
    basal = json.loads(new_run.read_text())["basal_es_rv"]
    assert basal is json.loads(study_run.read_text())["basal_es_rv"] is True
    # A second run into the same DIR with another patient: its outputs describe that patient
    # only (no overlay of the first run's patients left beside the new predictions.csv). The
    # study's masks now say they were predicted without the basal ES RV rule: so are the new ones.
    original = study_run.read_text()
    study_run.write_text(json.dumps({**json.loads(original), "basal_es_rv": False}))
    try:
        assert main(["predict", str(model), str(folders[1]), "--out", str(pred_out),
                     "--device", "cpu"]) == 0
    finally:
        study_run.write_text(original)
    assert json.loads(new_run.read_text())["basal_es_rv"] is False
    df = pd.read_csv(pred_out / "predictions.csv")
    assert list(df["patient_id"]) == [folders[1].name]
    assert sorted(p.stem for p in (pred_out / "saliency").glob("*.png")) == [folders[1].name]


@pytest.mark.slow
def test_two_devices_run_each_training_cell_as_its_own_ddp_job(tmp_path: Path) -> None:
    # With devices > 1 Lightning's DDP launcher re-runs the current command for the other ranks.
    # Training cells therefore run as `python -m cardioclr.study.cell`, so a second rank trains
    # that cell only; were it `cardioclr study`, rank 1 would re-run the whole study (its
    # progress lines, data preparation and report) beside rank 0.
    tiny = {**TINY, "devices": 2, "accelerator": "cpu",
            "pretrain": {**TINY["pretrain"], "inputs": ["segmented"]},
            "finetune": {**TINY["finetune"], "inits": ["simclr"], "inputs": ["segmented"]},
            "baseline": {**TINY["baseline"], "hybrid": False}}
    cfg = tmp_path / "tiny2.yaml"
    cfg.write_text(yaml.safe_dump(tiny))
    out = tmp_path / "study"
    assert main(["study", "--out", str(out), "--config", str(cfg)]) == 0, (
        out / "study_state.json").read_text()
    df = pd.read_csv(out / "results.csv")
    cell = df[df["cell"] == "smallcnn__simclr-segmented__segmented"].iloc[0]
    assert cell["status"] == "done" and 0 <= cell["auc"] <= 1
    metrics = json.loads((out / "work" / "pretrain" / "smallcnn-segmented" / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    log = (out / "logs" / "finetune__smallcnn__simclr-segmented__segmented.log").read_text()
    assert "cardioclr.study.cell" in log
    # One study ran: the study-level progress file was written by one process only.
    state = json.loads((out / "study_state.json").read_text())
    assert {r["status"] for r in state["cells"].values()} <= {"done", "not-run"}


@pytest.mark.slow
def test_predict_dicom_input_writes_dicom_seg_and_indices(tiny_study: tuple[Path, float],
                                                          tmp_path: Path) -> None:
    import nibabel as nib
    import numpy as np
    import pydicom

    from conftest import write_dicom_series

    out, _ = tiny_study
    folder = sorted(p for p in (out / "data").glob("*/patient*") if p.is_dir())[0]
    for phase, frame in zip(("ed", "es"), sorted(folder.glob("*_frame??.nii.gz")), strict=True):
        img = nib.load(frame)  # int16 phantom frame, written again as a DICOM series
        sx, sy, sz = (float(v) for v in img.header.get_zooms()[:3])
        write_dicom_series(tmp_path / phase, np.asarray(img.dataobj).transpose(2, 1, 0),
                           spacing_zyx=(sz, sy, sx), patient_name="Doe^Jane", patient_id="MRN-0042")
    model = out / "finetune" / "smallcnn__simclr-segmented__segmented"
    pred = tmp_path / "pred"
    assert main(["predict", str(model), "--ed", str(tmp_path / "ed"), "--es", str(tmp_path / "es"),
                 "--id", "dcm1", "--out", str(pred), "--device", "cpu", "--no-saliency",
                 "--dicom-seg"]) == 0
    table = pd.read_csv(pred / "work" / "segmentation" / "dicom_seg" / "dicom_seg.csv")
    assert list(table["phase"]) == ["ED", "ES", "report"] and (table["status"] == "written").all()
    table = table[table["phase"] != "report"]
    assert table["roundtrip_ok"].all()
    for row in table.itertuples():
        seg = pydicom.dcmread(row.file)
        sources = {pydicom.dcmread(p).SOPInstanceUID for p in (tmp_path / row.phase.lower()).iterdir()}
        assert {i.ReferencedSOPInstanceUID
                for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence} == sources
        assert seg.PatientID == "dcm1" and b"Doe" not in Path(row.file).read_bytes()
    indices = pd.read_csv(pred / "indices.csv")
    assert list(indices["patient_id"]) == ["dcm1"] and "lv_ef_pct" in indices.columns
