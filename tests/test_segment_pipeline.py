"""Segmentation stage end to end on a tiny synthetic cohort: train, resume, predict, evaluate.

One module-scoped work directory (12 synthetic patients, 48 px at 3.5 mm) with hand-set splits:
a train patient with an empty expert mask, a one-slice patient, a test patient without an
expert mask. The network is tiny (4-8-16 channels) and trains for one epoch.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from cardioclr import accel
from cardioclr.atomic import save_npz
from cardioclr.choices import MASK_SOURCES
from cardioclr.data.masks import load_labels, predicted_mask_path
from cardioclr.data.prepare import PrepareConfig, prepare
from cardioclr.data.store import SliceStore
from cardioclr.errors import CardioclrError, DataError
from cardioclr.segment import train as train_mod
from cardioclr.segment.datamodule import select_patients
from cardioclr.segment.evaluate import evaluate
from cardioclr.segment.model import NetworkConfig, build_network
from cardioclr.segment.predict import (
    LoadedModel,
    PredictConfig,
    check_compatible,
    predict,
    write_source_nifti,
)
from cardioclr.segment.qc import DISAGREEMENT_FLAG, QUALITY_FILE, ROTATED_VIEWS_DISAGREEMENT_FLAG
from cardioclr.segment.train import preset_config, train
from conftest import write_nifti, write_tiny_acdc

TRAIN = ["patient001", "patient002", "patient003", "patient004", "patient005", "patient006",
         "patient011"]
TEST = ["patient007", "patient008", "patient009", "patient010", "patient012"]
EMPTY_MASK = "patient002"   # train patient whose ED expert mask is all background
ONE_SLICE = "patient011"    # a single short-axis slice
NO_EXPERT = "patient012"    # test patient without expert mask


def _tiny_config(work: Path, **kw: object) -> train_mod.SegTrainConfig:
    # Uncompiled: compiling costs more than these one-epoch trainings (one test compiles).
    # float32 whatever the CPU (the preset's auto precision is bf16 on CPUs with bf16
    # instructions), so the suite runs the same code everywhere; one test trains in bf16.
    cfg = preset_config(work, "cpu", **{"max_epochs": 1, "progress_bar": False, "batch_size": 8,
                                        "compile_network": False, "precision": "32-true", **kw})
    return dataclasses.replace(cfg, network=NetworkConfig(channels=(4, 8, 16), num_res_units=0),
                               crop=32, val_fraction=0.2)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("seg_data")
    write_tiny_acdc(root, n_per_class=2, seed=1)  # patient001-010, 6 slices
    write_tiny_acdc(root, n_per_class=1, seed=2, groups=("NOR", "DCM"), start_index=11,
                    shape_zyx=(1, 48, 48))  # patient011-012, one slice
    gt = root / "training" / EMPTY_MASK / f"{EMPTY_MASK}_frame01_gt.nii.gz"
    write_nifti(gt, np.zeros(nib.load(gt).shape[::-1], np.uint8))
    return root


@pytest.fixture(scope="module")
def work(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    w = tmp_path_factory.mktemp("seg_work")
    prepare(PrepareConfig(data=str(data_root), out=str(w), spacing_mm=3.5, image_size=48, workers=1,
                          test_fraction=0.5, n_folds=2))
    (w / "splits.json").write_text(json.dumps({"train": TRAIN, "test": TEST, "folds": [TRAIN[:2]],
                                               "unlabelled": [], "seed": 0, "method": "random"}))
    # Drop the expert mask of one test patient (as for a cohort annotated only in part).
    p = w / "store" / f"{NO_EXPERT}.npz"
    with np.load(p) as z:
        arrays = dict(z)
    arrays["has_mask"] = np.array(False)
    save_npz(p, **arrays)
    m = pd.read_csv(w / "manifest.csv", dtype={"patient_id": str})
    m.loc[m["patient_id"] == NO_EXPERT, "has_expert_mask"] = False
    m.to_csv(w / "manifest.csv", index=False)
    return w


@pytest.fixture(scope="module")
def trained(work: Path) -> tuple[Path, dict, set[str]]:
    """Train once, recording every patient the store hands out while training."""
    loaded: set[str] = set()
    original = SliceStore.load

    def recording_load(self: SliceStore, patient_id: str, with_cine: bool = False):
        loaded.add(patient_id)
        return original(self, patient_id, with_cine)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SliceStore, "load", recording_load)
        info = train(_tiny_config(work))
    return work, info, loaded


def test_training_only_touches_train_split_and_excludes_empty_masks(trained):
    work, info, loaded = trained
    assert loaded, "the recorder saw no load at all"
    assert loaded <= set(TRAIN)
    assert not loaded & set(TEST)
    assert EMPTY_MASK in info["excluded_patients"]
    assert "empty" in info["excluded_patients"][EMPTY_MASK]
    used = set(info["train_patients"]) | set(info["val_patients"])
    assert used == set(TRAIN) - {EMPTY_MASK}
    assert not set(info["train_patients"]) & set(info["val_patients"])
    model = work / "segmentation" / "model"
    for f in ("model.pt", "done.json", "config.yaml", "versions.json", "checkpoints/last.ckpt"):
        assert (model / f).is_file(), f
    blob = torch.load(model / "model.pt", weights_only=True)
    assert blob["image_size"] == 48 and blob["spacing_mm"] == 3.5


def test_finished_training_is_skipped_and_interrupted_one_resumes(trained, tmp_path, monkeypatch):
    work, info, _ = trained
    copy = tmp_path / "work"
    shutil.copytree(work, copy)

    def no_trainer(*args, **kwargs):
        raise AssertionError("a finished training must not build a trainer")

    with monkeypatch.context() as mp:
        mp.setattr(train_mod, "make_trainer", no_trainer)
        again = train(_tiny_config(copy))
    assert again["train_seconds"] == info["train_seconds"]
    # Simulate an interrupted run: checkpoints but no done.json; ask for one more epoch.
    (copy / "segmentation" / "model" / "done.json").unlink()
    resumed = train(_tiny_config(copy, max_epochs=2))
    assert resumed["epochs"] == 2
    assert resumed["train_seconds"] >= info["train_seconds"]  # the clock is kept in the checkpoint
    logged = pd.read_csv(copy / "segmentation" / "model" / "logs" / "csv" / "metrics.csv")
    assert logged["val_dice"].notna().sum() >= 1


def test_no_usable_train_patient_is_a_clear_error(work, tmp_path):
    copy = tmp_path / "w"
    shutil.copytree(work, copy, ignore=shutil.ignore_patterns("segmentation"))
    (copy / "splits.json").write_text(json.dumps({"train": [EMPTY_MASK], "test": TEST, "folds": [],
                                                  "seed": 0, "method": "random"}))
    with pytest.raises(CardioclrError, match="no train-split patient has a usable expert mask"):
        select_patients(SliceStore(copy), 0.1, 0)


def test_unreadable_or_off_grid_store_files_are_excluded_not_fatal(work, tmp_path):
    copy = tmp_path / "w"
    shutil.copytree(work, copy, ignore=shutil.ignore_patterns("segmentation"))
    truncated = copy / "store" / "patient001.npz"
    truncated.write_bytes(truncated.read_bytes()[:300])
    off_grid = copy / "store" / "patient003.npz"
    with np.load(off_grid) as z:
        arrays = dict(z)
    for k in ("ed_image", "es_image", "ed_mask", "es_mask"):
        arrays[k] = arrays[k][:, :40, :40]  # not the store's 48 x 48 grid
    save_npz(off_grid, **arrays)
    store = SliceStore(copy)
    with pytest.raises(DataError, match="unreadable store file") as info:
        store.load("patient001")
    assert info.value.path == str(truncated)
    sel = select_patients(store, 0.2, 0)
    assert "unreadable store file" in sel.excluded["patient001"]
    assert "not the store's (48, 48)" in sel.excluded["patient003"]
    assert {"patient001", "patient003"}.isdisjoint(sel.train + sel.val)
    assert sel.train  # the others still train


@pytest.fixture(scope="module")
def predicted(trained) -> tuple[Path, dict]:
    work, _, _ = trained
    # QC pictures cost ~0.3 s each: drawn for one patient in its own test below.
    return work, predict(PredictConfig(work=str(work), tta=False, margin_mm=7.0, qc_png=False))


def test_predict_writes_masks_for_every_patient(predicted):
    work, summary = predicted
    store = SliceStore(work)
    assert summary["segmented"] == len(store.patient_ids) == 12 and not summary["failed"]
    for pid in store.patient_ids:
        ed, es = load_labels(work, pid, "predicted")
        n = store.load(pid).n_slices
        assert ed.shape == es.shape == (n, 48, 48) and ed.dtype == np.uint8 and ed.max() <= 3
        with np.load(predicted_mask_path(work, pid)) as z:
            assert z["ed_heart"].shape == ed.shape and z["ed_heart"].dtype == bool
            assert (z["ed_heart"] | ~(ed > 0)).all()  # the heart mask covers every label
    assert store.load(ONE_SLICE).n_slices == 1
    flags = pd.read_csv(work / "segmentation" / "qc_flags.csv")
    assert list(flags.columns) == ["patient_id", "phase", "flag", "detail"]
    quality = pd.read_csv(work / "segmentation" / "quality.csv", dtype={"patient_id": str})
    assert set(quality["patient_id"]) == set(store.patient_ids)
    assert quality["basal_es_rv_slices"].between(0, 2).all()
    assert summary["basal_es_rv"] is True


def test_predict_draws_qc_pictures_with_tta(trained, tmp_path):
    work, _, _ = trained
    copy = tmp_path / "w"
    shutil.copytree(work, copy)
    s = predict(PredictConfig(work=str(copy), tta=True, qc_png=True), patient_ids=["patient001", ONE_SLICE])
    assert s["segmented"] == 2
    for pid in ("patient001", ONE_SLICE):
        assert (copy / "segmentation" / "qc" / f"{pid}.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("mirrored", [False, True])
def test_predict_flags_low_confidence_at_the_threshold_of_the_models_views(trained, tmp_path, mirrored):
    # A model trained without mirroring (the cpu preset) is predicted with rotated views, whose
    # disagreement has its own calibrated threshold; a mirror-trained one keeps the mirrored
    # views' threshold. predict records which one it used.
    work, _, _ = trained
    copy = tmp_path / "w"
    shutil.copytree(work, copy)
    model_pt = copy / "segmentation" / "model" / "model.pt"
    blob = torch.load(model_pt, map_location="cpu", weights_only=True)
    torch.save({**blob, "mirrored_training": mirrored}, model_pt)
    s = predict(PredictConfig(work=str(copy), tta=True, qc_png=False),
                patient_ids=["patient001", "patient007"])
    expected = DISAGREEMENT_FLAG if mirrored else ROTATED_VIEWS_DISAGREEMENT_FLAG
    assert s["low_confidence_threshold"] == expected
    quality = pd.read_csv(copy / "segmentation" / QUALITY_FILE, dtype={"patient_id": str})
    flags = pd.read_csv(copy / "segmentation" / "qc_flags.csv", dtype={"patient_id": str})
    low = set(flags.loc[flags["flag"] == "low_confidence", "patient_id"])
    assert low == set(quality.loc[quality["disagreement"] > expected, "patient_id"])


def test_predict_segments_every_cine_frame(trained, tmp_path):
    # A store patient with a 4D cine (frames: ED, ES, ED): every frame gets post-processed labels.
    work, _, _ = trained
    copy = tmp_path / "w"
    shutil.copytree(work, copy, ignore=shutil.ignore_patterns("masks", "nifti", "qc"))
    pid = "patient007"
    path = copy / "store" / f"{pid}.npz"
    with np.load(path) as z:
        arrays = dict(z)
    arrays["cine"] = np.stack([arrays["ed_image"], arrays["es_image"], arrays["ed_image"]]
                              ).astype(np.float16)
    save_npz(path, **arrays)
    s = predict(PredictConfig(work=str(copy), tta=False, qc_png=False), patient_ids=[pid])
    assert s["segmented"] == 1
    with np.load(predicted_mask_path(copy, pid)) as z:
        cine, ed, es = z["cine_masks"], z["ed_mask"], z["es_mask"]
    assert cine.shape == (3, 6, 48, 48) and cine.dtype == np.uint8 and cine.max() <= 3
    # Frames equal to ED/ES (up to float16 rounding of the input) give the same labels.
    for frame, ref in ((0, ed), (1, es), (2, ed)):
        assert (cine[frame] == ref).mean() > 0.99


def test_predicted_nifti_has_source_affine_and_shape(predicted, data_root):
    work, _ = predicted
    pid = "patient007"
    src_img = nib.load(data_root / "training" / pid / f"{pid}_frame01.nii.gz")
    pred = nib.load(work / "segmentation" / "nifti" / pid / f"{pid}_frame01_pred.nii.gz")
    assert pred.shape == src_img.shape
    np.testing.assert_allclose(pred.affine, src_img.affine)
    assert pred.get_data_dtype() == np.uint8
    es_files = sorted((work / "segmentation" / "nifti" / pid).glob("*_pred.nii.gz"))
    assert len(es_files) == 2


def test_source_nifti_keeps_the_source_voxel_size_with_an_acdc_style_affine(work, tmp_path):
    # ACDC headers: sform diag(-1, -1, 1) (no spacing in it), true spacing in pixdim only.
    store = SliceStore(work)
    ps = store.load("patient003")
    quirk = np.diag([-1.0, -1.0, 1.0, 1.0])
    ps = dataclasses.replace(ps, geometry=dataclasses.replace(ps.geometry, source_affine=quirk))
    write_source_nifti(tmp_path, store, ps, {"ED": ps.ed_mask, "ES": ps.es_mask})
    for f in sorted(tmp_path.glob("*_pred.nii.gz")):
        img = nib.load(f)
        np.testing.assert_allclose(img.affine, quirk)
        sz, sy, sx = ps.geometry.source_spacing_zyx
        np.testing.assert_allclose(img.header.get_zooms()[:3], (sx, sy, sz))


def test_source_nifti_round_trip_reproduces_the_expert_file(work, data_root, tmp_path):
    # Axis order and geometry: the store's expert labels written back must equal the source file.
    store = SliceStore(work)
    pid = "patient003"
    ps = store.load(pid)
    write_source_nifti(tmp_path, store, ps, {"ED": ps.ed_mask, "ES": ps.es_mask})
    es_frame = int(store.manifest.at[pid, "es_frame"])
    for frame in (1, es_frame):
        ours = np.asarray(nib.load(tmp_path / f"{pid}_frame{frame:02d}_pred.nii.gz").dataobj)
        ref = np.asarray(nib.load(data_root / "training" / pid / f"{pid}_frame{frame:02d}_gt.nii.gz").dataobj)
        assert np.array_equal(ours, ref)


def test_one_bad_patient_does_not_stop_predict(trained, tmp_path, monkeypatch):
    work, _, _ = trained
    copy = tmp_path / "w"
    shutil.copytree(work, copy)
    bad = "patient008"
    stale = predicted_mask_path(copy, bad)
    save_npz(stale, ed_mask=np.zeros((6, 48, 48), np.uint8), es_mask=np.zeros((6, 48, 48), np.uint8))
    original = SliceStore.load

    def failing_load(self: SliceStore, patient_id: str, with_cine: bool = False):
        if patient_id == bad:
            raise DataError(self.path(patient_id), "corrupt archive")
        return original(self, patient_id, with_cine)

    monkeypatch.setattr(SliceStore, "load", failing_load)
    s = predict(PredictConfig(work=str(copy), tta=False, qc_png=False))
    assert list(s["failed"]) == [bad] and s["segmented"] == 11
    assert not stale.exists() and not (copy / "segmentation" / "nifti" / bad).exists()
    flags = pd.read_csv(copy / "segmentation" / "qc_flags.csv")
    row = flags[flags["flag"] == "predict_failed"]
    assert row["patient_id"].tolist() == [bad] and "corrupt archive" in row["detail"].iloc[0]
    assert predicted_mask_path(copy, "patient007").is_file()


def test_model_for_another_store_grid_is_refused(work):
    store = SliceStore(work)
    model = LoadedModel(torch.nn.Identity(), 4, 64, 3.0, Path("model.pt"), {})
    with pytest.raises(CardioclrError, match="trained on a 64 px store at 3.0 mm"):
        check_compatible(model, store)
    check_compatible(dataclasses.replace(model, image_size=48, spacing_mm=3.5), store)


def test_load_labels_sources_and_errors(work, tmp_path):
    assert MASK_SOURCES == ("predicted", "expert")
    ed, es = load_labels(work, "patient001", "expert")
    assert ed.dtype == np.uint8 and ed.shape == (6, 48, 48) and set(np.unique(ed)) == {0, 1, 2, 3}
    with pytest.raises(CardioclrError, match="no expert mask"):
        load_labels(work, NO_EXPERT, "expert")
    with pytest.raises(CardioclrError, match="unknown mask source"):
        load_labels(work, "patient001", "manual")
    fresh = tmp_path / "w"
    shutil.copytree(work, fresh, ignore=shutil.ignore_patterns("segmentation"))
    with pytest.raises(CardioclrError, match=r"cardioclr segment predict"):
        load_labels(fresh, "patient001", "predicted")


def test_evaluate_with_perfect_predictions(work, tmp_path):
    # Predicted = expert: Dice 1, HD95 0, index bias 0 -- the test patient without expert is skipped.
    copy = tmp_path / "w"
    shutil.copytree(work, copy, ignore=shutil.ignore_patterns("segmentation"))
    for pid in TEST:
        if pid != NO_EXPERT:
            ed, es = load_labels(copy, pid, "expert")
            save_npz(predicted_mask_path(copy, pid), ed_mask=ed, es_mask=es)
    m = evaluate(copy)
    assert m["n_test"] == len(TEST) - 1
    assert m["mean_dice"] == 1.0 and m["mean_hd95"] == 0.0
    assert m["dice"]["ED"] == {"RV": 1.0, "MYO": 1.0, "LV": 1.0}
    lv = m["indices_agreement"]["lv_edv_ml"]
    assert lv["n"] == len(TEST) - 1 and lv["bias"] == 0.0 and lv["pearson_r"] == pytest.approx(1.0)
    assert json.loads((copy / "segmentation" / "metrics.json").read_text())["n_test"] == m["n_test"]
    idx = pd.read_csv(copy / "segmentation" / "indices.csv")
    assert set(idx["source"]) == {"predicted", "expert"}
    assert {"lv_edv_ml", "lv_ef_pct", "myo_mass_ed_g", "wt_ed_max_mm"} <= set(idx.columns)


def test_cli_preset_names_match_presets_and_parser_needs_no_torch():
    import subprocess
    import sys

    from cardioclr.segment.cli import PRESET_NAMES

    assert PRESET_NAMES == tuple(train_mod.PRESETS)
    code = ("import sys, cardioclr.segment.cli, cardioclr.data.cli_synth, "
            "cardioclr.data.cli_prepare; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _write_flags(path: Path, rows: list[tuple[str, str]]) -> None:
    pd.DataFrame([{"patient_id": p, "phase": "ED", "flag": f, "detail": "from an older run"}
                  for p, f in rows]).to_csv(path, index=False)


def test_interrupted_predict_leaves_no_stale_qc_flags(trained, tmp_path, monkeypatch):
    # The previous run's flags describe its masks; once this run has replaced one mask they no
    # longer do, so an interrupt must not leave them behind as if they were current.
    from cardioclr.segment import predict as predict_mod

    work, _, _ = trained
    copy = tmp_path / "w"
    shutil.copytree(work, copy, ignore=shutil.ignore_patterns("masks", "nifti", "qc"))
    flags_csv = copy / "segmentation" / "qc_flags.csv"
    _write_flags(flags_csv, [("patient001", "stale_flag"), ("patient009", "stale_flag")])
    calls = []
    original = predict_mod.segment_patient

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C after the first patient's mask was written
        return original(*args, **kwargs)

    monkeypatch.setattr(predict_mod, "segment_patient", interrupted)
    with pytest.raises(KeyboardInterrupt):
        predict(PredictConfig(work=str(copy), tta=False, qc_png=False))
    assert predicted_mask_path(copy, SliceStore(copy).patient_ids[0]).is_file()  # a new mask...
    assert not flags_csv.exists()  # ...and no flags file claiming to describe it
    assert not (copy / "segmentation" / "predict_summary.json").exists()
    monkeypatch.setattr(predict_mod, "segment_patient", original)
    predict(PredictConfig(work=str(copy), tta=False, qc_png=False))
    assert "stale_flag" not in set(pd.read_csv(flags_csv)["flag"])


def test_predict_on_a_subset_keeps_the_other_patients_flags(trained, tmp_path):
    work, _, _ = trained
    copy = tmp_path / "w"
    shutil.copytree(work, copy)
    flags_csv = copy / "segmentation" / "qc_flags.csv"
    _write_flags(flags_csv, [("patient001", "old_flag"), ("patient009", "old_flag"),
                             ("gone999", "old_flag")])
    predict(PredictConfig(work=str(copy), tta=False, qc_png=False), patient_ids=["patient001"])
    flags = pd.read_csv(flags_csv)
    # patient009's mask was not touched: its row still describes it. patient001 was
    # re-segmented: its old row is gone. A patient no longer in the store is dropped.
    old = flags[flags["flag"] == "old_flag"]
    assert old["patient_id"].tolist() == ["patient009"]
    assert list(flags.columns) == ["patient_id", "phase", "flag", "detail"]


def test_segment_cli_accelerator_option():
    from cardioclr.cli import build_parser
    from cardioclr.segment.cli import predict_device

    parser = build_parser()
    args = parser.parse_args(["segment", "train", "W", "--accelerator", "cpu"])
    assert args.accelerator == "cpu"
    assert parser.parse_args(["segment", "train", "W"]).accelerator is None
    cfg = preset_config("W", "gpu", accelerator=args.accelerator)
    assert cfg.trainer.accelerator == "cpu"
    assert preset_config("W", "gpu", accelerator=None).trainer.accelerator == "auto"
    with pytest.raises(SystemExit):
        parser.parse_args(["segment", "predict", "W", "--accelerator", "tpu"])
    args = parser.parse_args(["segment", "predict", "W", "--accelerator", "cpu"])
    assert predict_device(args.accelerator, args.device) == "cpu"
    assert predict_device("gpu", "auto") == "cuda" and predict_device("gpu", "cuda:1") == "cuda:1"
    assert predict_device(None, "cuda:1") == "cuda:1" and predict_device("auto", "cpu") == "cpu"
    with pytest.raises(ValueError, match="contradicts"):
        predict_device("cpu", "cuda")


def test_segment_train_cli_passes_accelerator_to_the_trainer(monkeypatch, capsys):
    from cardioclr.cli import main

    seen = {}

    def fake_train(cfg, overwrite=False):
        seen["cfg"] = cfg
        return {}

    monkeypatch.setattr(train_mod, "train", fake_train)
    assert main(["segment", "train", "W", "--accelerator", "cpu", "--preset", "gpu"]) == 0
    assert seen["cfg"].trainer.accelerator == "cpu"
    assert main(["segment", "train", "W"]) == 0
    assert seen["cfg"].compile_network  # the cpu preset compiles
    assert main(["segment", "train", "W", "--no-compile"]) == 0
    assert not seen["cfg"].compile_network
    assert seen["cfg"].trainer.precision == "auto" and seen["cfg"].trainer.cpu_bf16
    assert main(["segment", "train", "W", "--precision", "32-true"]) == 0
    assert seen["cfg"].trainer.precision == "32-true"
    assert main(["segment", "train", "W", "--context-slices", "2"]) == 0
    assert seen["cfg"].network.context_slices == 2
    assert main(["segment", "train", "W", "--context-slices", "-1"]) != 0
    assert "--context-slices must be 0 or more" in capsys.readouterr().err
    assert main(["segment", "train", "W", "--phase-channel", "on"]) == 0
    assert seen["cfg"].network.phase_channel
    assert main(["segment", "train", "W", "--phase-channel", "off"]) == 0
    assert not seen["cfg"].network.phase_channel


def test_segment_predict_cli_forces_cpu(monkeypatch, capsys):
    from cardioclr.cli import main
    from cardioclr.segment import predict as predict_mod

    seen = {}

    def fake_predict(cfg, patient_ids=None):
        seen["device"] = cfg.device
        seen["precision"] = cfg.precision
        seen["basal_es_rv"] = cfg.basal_es_rv
        return {"segmented": 1, "patients": 1, "seconds": 0, "flags": 0, "flagged_patients": 0,
                "failed": {}}

    monkeypatch.setattr(predict_mod, "predict", fake_predict)
    assert main(["segment", "predict", "W", "--accelerator", "cpu", "--no-evaluate"]) == 0
    assert seen["device"] == "cpu" and seen["precision"] == "auto" and seen["basal_es_rv"] is True
    assert main(["segment", "predict", "W", "--precision", "32-true", "--no-evaluate",
                 "--keep-basal-es-rv"]) == 0
    assert seen["precision"] == "32-true" and seen["basal_es_rv"] is False
    with pytest.raises(SystemExit):
        main(["segment", "predict", "W", "--accelerator", "cpu", "--device", "cuda"])
    assert "contradicts" in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(CardioclrError, match="no CUDA GPU"):
            predict_mod.resolve_device("cuda")


def test_compiled_training_exports_the_eager_networks_weights(work, tmp_path, monkeypatch):
    """The cpu preset compiles its network: the exported weights must keep the eager names
    (``torch.compile(module)`` would prefix them with ``_orig_mod.``) and load strictly."""
    import cardioclr.segment.model as model_mod

    copy = tmp_path / "work"
    shutil.copytree(work, copy, ignore=shutil.ignore_patterns("segmentation"))
    compiled = []

    def spy(module, device):
        compiled.append(accel.compile_in_place(module, device))
        return compiled[-1]

    monkeypatch.setattr(model_mod, "compile_in_place", spy)
    cfg = _tiny_config(copy, compile_network=True)
    train(cfg)
    assert compiled == [True]
    blob = torch.load(copy / "segmentation" / "model" / "model.pt", weights_only=True)
    eager = build_network(cfg.network)
    assert set(blob["state_dict"]) == set(eager.state_dict())
    eager.load_state_dict(blob["state_dict"])  # strict


def test_bf16_training_exports_float32_weights_that_predict(work, tmp_path):
    """The cpu preset trains under bf16 autocast on CPUs with bf16 instructions: forced here
    (emulated elsewhere, slower but the same arithmetic), the run must finish, log its precision
    and export float32 weights that segment every patient."""
    copy = tmp_path / "work"
    shutil.copytree(work, copy, ignore=shutil.ignore_patterns("segmentation"))
    info = train(_tiny_config(copy, precision="bf16-mixed"))
    assert info["precision"] == "bf16-mixed"
    blob = torch.load(copy / "segmentation" / "model" / "model.pt", weights_only=True)
    assert {v.dtype for v in blob["state_dict"].values() if v.is_floating_point()} == {torch.float32}
    summary = predict(PredictConfig(work=str(copy), qc_png=False))
    assert summary["segmented"] == summary["patients"] > 0
    assert summary["precision"] in ("bf16-autocast", "float32")


def _network_inputs_of_predicting(work: Path, pid: str, monkeypatch: pytest.MonkeyPatch) -> list[np.ndarray]:
    """Predict one patient of ``work``; the image arrays given to ``infer_slices``, in call order."""
    from cardioclr.segment import predict as predict_mod

    seen: list[np.ndarray] = []
    original = predict_mod.infer_slices

    def spy(model, images, *args, **kwargs):
        seen.append(np.asarray(images))
        return original(model, images, *args, **kwargs)

    monkeypatch.setattr(predict_mod, "infer_slices", spy)
    summary = predict(PredictConfig(work=str(work), qc_png=False), patient_ids=[pid])
    assert summary["segmented"] == 1
    return seen


def test_context_slice_training_feeds_each_slice_with_its_neighbours(work, tmp_path, monkeypatch):
    """2.5D (``context_slices`` 1): the exported network takes 3 channels, and prediction feeds
    each slice between its own neighbours (edge slices repeated), ED never next to ES."""

    copy = tmp_path / "work"
    shutil.copytree(work, copy, ignore=shutil.ignore_patterns("segmentation"))
    cfg = _tiny_config(copy)
    cfg = dataclasses.replace(cfg, network=dataclasses.replace(cfg.network, context_slices=1))
    train(cfg)
    blob = torch.load(copy / "segmentation" / "model" / "model.pt", weights_only=True)
    assert blob["network"]["context_slices"] == 1
    seen = _network_inputs_of_predicting(copy, "patient001", monkeypatch)
    ps = SliceStore(copy).load("patient001")
    z = ps.n_slices
    whole = seen[0]  # the localising pass: whole ED slices
    assert whole.shape == (z, 3, *ps.ed_image.shape[1:])
    np.testing.assert_array_equal(whole[:, 1], ps.ed_image)
    np.testing.assert_array_equal(whole[1:, 0], ps.ed_image[:-1])   # the slice before
    np.testing.assert_array_equal(whole[:-1, 2], ps.ed_image[1:])   # the slice after
    np.testing.assert_array_equal(whole[0, 0], ps.ed_image[0])      # repeated at the edges
    np.testing.assert_array_equal(whole[-1, 2], ps.ed_image[-1])
    window = seen[1]  # ED then ES in the heart window: the first ES slice repeats itself
    assert window.shape[:2] == (2 * z, 3)
    np.testing.assert_array_equal(window[z, 0], window[z, 1])
    assert not np.array_equal(window[z, 0], window[z - 1, 1])


def test_an_ensemble_of_models_with_different_context_is_refused():
    from cardioclr.segment.predict import volume_slices

    def model(k: int) -> LoadedModel:
        return LoadedModel(torch.nn.Identity(), 4, 48, 3.5, Path("w/folds/fold_0/model/model.pt"), {},
                           None, k)

    v = np.zeros((3, 8, 8), np.float32)
    assert volume_slices([model(1), model(1)], v, v).shape == (6, 3, 8, 8)
    assert volume_slices([model(0)], v).shape == (3, 1, 8, 8)
    with pytest.raises(CardioclrError, match="different inputs"):
        volume_slices([model(0), model(1)], v)


def test_a_context_slice_segmentation_model_gives_a_one_slice_encoder(tmp_path):
    """``--init segmentation`` from a 2.5D model: the one-channel encoder computes on a slice
    what the 2.5D down path computes on that slice repeated as its own neighbours."""
    from cardioclr.models.segunet import SEGUNET_NETWORK, SegUNetEncoder, unet_down_path
    from cardioclr.segment.encoder import load_segmentation_encoder
    from cardioclr.segment.model import network_config_dict, network_config_from_dict
    from cardioclr.segment.train import MODEL_FORMAT

    cfg = dataclasses.replace(network_config_from_dict(dict(SEGUNET_NETWORK)), context_slices=1)
    torch.manual_seed(0)
    net = build_network(cfg).eval()
    torch.save({"format": MODEL_FORMAT, "state_dict": net.state_dict(), "network": network_config_dict(cfg),
                "image_size": 64, "spacing_mm": 1.5, "window": None}, tmp_path / "model.pt")
    state, _ = load_segmentation_encoder(tmp_path / "model.pt")
    encoder = SegUNetEncoder()
    encoder.load_state_dict(state)
    encoder.eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        want = torch.nn.Sequential(*unet_down_path(net))(x.repeat(1, 3, 1, 1))
        got = encoder.down(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_predict_applies_the_basal_es_rv_rule_unless_told_not_to(trained, tmp_path, monkeypatch):
    from cardioclr.segment import predict as predict_mod

    work, _, _ = trained
    copy = tmp_path / "w"
    shutil.copytree(work, copy)
    calls: list[str] = []

    def trim_all_rv(ed, es):  # stands in for the rule: drops every ES RV voxel, says 2 slices
        calls.append("trim")
        out = es.copy()
        out[out == 1] = 0
        return out, 2

    monkeypatch.setattr(predict_mod, "trim_basal_es_rv", trim_all_rv)
    quality_csv = copy / "segmentation" / "quality.csv"
    predict(PredictConfig(work=str(copy), tta=False, qc_png=False), patient_ids=["patient001"])
    _, es = load_labels(copy, "patient001", "predicted")
    row = pd.read_csv(quality_csv, dtype={"patient_id": str}).set_index("patient_id").loc["patient001"]
    assert calls and not (es == 1).any() and row["basal_es_rv_slices"] == 2
    calls.clear()
    predict(PredictConfig(work=str(copy), tta=False, qc_png=False, basal_es_rv=False),
            patient_ids=["patient001"])
    row = pd.read_csv(quality_csv, dtype={"patient_id": str}).set_index("patient_id").loc["patient001"]
    assert not calls and row["basal_es_rv_slices"] == 0


def test_phase_channel_training_and_prediction_tell_the_network_ed_from_es(work, tmp_path, monkeypatch):
    """``phase_channel``: training appends the phase (0 ED, 1 ES) after augmentation, the
    exported network takes 2 channels, and prediction gives ED slices 0 and ES slices 1."""
    from cardioclr.segment.model import SegModule

    copy = tmp_path / "work"
    shutil.copytree(work, copy, ignore=shutil.ignore_patterns("segmentation"))
    cfg = _tiny_config(copy)
    cfg = dataclasses.replace(cfg, network=dataclasses.replace(cfg.network, phase_channel=True))
    planes: list[torch.Tensor] = []  # the last input channel of every training/validation forward
    original_forward = SegModule.forward

    def recording(self, x):
        planes.append(x[:, -1].detach().clone())
        return original_forward(self, x)

    monkeypatch.setattr(SegModule, "forward", recording)
    train(cfg)
    values: set[float] = set()
    for p in planes:
        flat = p.flatten(1)
        assert (flat == flat[:, :1]).all()  # constant over each slice: never augmented
        values |= set(flat[:, 0].tolist())
    assert values == {0.0, 1.0}  # ED and ES slices both seen
    blob = torch.load(copy / "segmentation" / "model" / "model.pt", weights_only=True)
    assert blob["network"]["phase_channel"] is True
    first_conv = next(v for v in blob["state_dict"].values() if v.ndim == 4)
    assert first_conv.shape[1] == 2
    seen = _network_inputs_of_predicting(copy, "patient001", monkeypatch)
    ps = SliceStore(copy).load("patient001")
    z = ps.n_slices
    whole, window = seen[0], seen[1]  # the localising pass (ED), then ED and ES in the window
    assert whole.shape == (z, 2, *ps.ed_image.shape[1:]) and (whole[:, 1] == 0).all()
    np.testing.assert_array_equal(whole[:, 0], ps.ed_image)
    assert (window[:z, 1] == 0).all() and (window[z:, 1] == 1).all()


def test_volume_slices_appends_the_phase_a_phase_model_needs():
    from cardioclr.segment.predict import volume_slices

    def model(phase: bool) -> LoadedModel:
        return LoadedModel(torch.nn.Identity(), 4, 48, 3.5, Path("w/model/model.pt"), {}, None, 0, phase)

    v = np.ones((3, 8, 8), np.float32)
    out = volume_slices([model(True)], v, v, phases=[0.0, 1.0])
    assert out.shape == (6, 2, 8, 8)
    assert (out[:3, 1] == 0).all() and (out[3:, 1] == 1).all() and (out[:, 0] == 1).all()
    assert volume_slices([model(False)], v, phases=[1.0]).shape == (3, 1, 8, 8)  # ignored
    with pytest.raises(ValueError, match="phase value per volume"):
        volume_slices([model(True)], v, v)
    with pytest.raises(CardioclrError, match="different inputs"):
        volume_slices([model(True), model(False)], v, phases=[0.0])


def test_cine_phase_values_rise_through_systole_and_fall_through_diastole():
    from cardioclr.segment.model import UNKNOWN_PHASE, cine_phase_values

    np.testing.assert_allclose(cine_phase_values(10, 0, 4),
                               [0, 0.25, 0.5, 0.75, 1, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6], atol=1e-6)
    wrapped = cine_phase_values(6, 4, 1)  # ED late in the recording: systole wraps round
    assert wrapped[4] == 0 and wrapped[1] == 1
    np.testing.assert_allclose(wrapped[[5, 0]], [1 / 3, 2 / 3], atol=1e-6)
    for ed, es in ((None, 3), (0, None), (2, 2), (0, 9)):
        assert (cine_phase_values(6, ed, es) == UNKNOWN_PHASE).all()


def test_a_phase_channel_segmentation_model_gives_an_end_diastolic_encoder(tmp_path):
    """``--init segmentation`` from a phase-aware model: the one-channel encoder computes what
    the network's down path computes on that slice with phase value 0 (ED)."""
    from cardioclr.models.segunet import SEGUNET_NETWORK, SegUNetEncoder, unet_down_path
    from cardioclr.segment.encoder import load_segmentation_encoder
    from cardioclr.segment.model import network_config_dict, network_config_from_dict
    from cardioclr.segment.train import MODEL_FORMAT

    cfg = dataclasses.replace(network_config_from_dict(dict(SEGUNET_NETWORK)), phase_channel=True)
    torch.manual_seed(0)
    net = build_network(cfg).eval()
    torch.save({"format": MODEL_FORMAT, "state_dict": net.state_dict(), "network": network_config_dict(cfg),
                "image_size": 64, "spacing_mm": 1.5, "window": None}, tmp_path / "model.pt")
    state, _ = load_segmentation_encoder(tmp_path / "model.pt")
    encoder = SegUNetEncoder()
    encoder.load_state_dict(state)
    encoder.eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        want = torch.nn.Sequential(*unet_down_path(net))(torch.cat([x, torch.zeros_like(x)], dim=1))
        got = encoder.down(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_training_without_validation_trains_every_patient_and_exports_the_last_epoch(work, tmp_path):
    """``val_fraction`` 0: no patient is held out, no validation runs, and model.pt holds the
    weights of the last epoch (there is no best epoch to choose); the time budget still stops it."""
    copy = tmp_path / "work"
    shutil.copytree(work, copy, ignore=shutil.ignore_patterns("segmentation"))
    cfg = dataclasses.replace(_tiny_config(copy, max_epochs=3), val_fraction=0.0)
    info = train(cfg)
    assert info["val_patients"] == [] and info["best_val_dice"] is None
    assert set(info["train_patients"]) == set(TRAIN) - {EMPTY_MASK}
    assert info["epochs"] == 3
    model = copy / "segmentation" / "model"
    assert not (model / "checkpoints" / "best.ckpt").exists()
    last = torch.load(model / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["epoch"] == info["epochs"]  # written when the last epoch ended
    blob = torch.load(model / "model.pt", weights_only=True)
    for k, v in blob["state_dict"].items():
        assert torch.equal(v, last["state_dict"][f"network.{k}"]), k
    logged = pd.read_csv(model / "logs" / "csv" / "metrics.csv")
    assert "val_dice" not in logged or logged["val_dice"].isna().all()
    # The wall-clock budget works without validation epochs too.
    budgeted = tmp_path / "budgeted"
    shutil.copytree(work, budgeted, ignore=shutil.ignore_patterns("segmentation"))
    cfg = dataclasses.replace(_tiny_config(budgeted, max_epochs=50), val_fraction=0.0)
    cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, time_budget_s=1e-3))
    assert train(cfg)["stopped_by"] == "time budget"


@pytest.mark.parametrize("fraction", [-0.1, 1.0])
def test_a_validation_fraction_outside_0_1_is_a_clear_error(tmp_path, fraction):
    cfg = dataclasses.replace(_tiny_config(tmp_path / "unused"), val_fraction=fraction)
    with pytest.raises(CardioclrError, match="val_fraction must be in"):
        train(cfg)


def test_segment_predict_cli_says_how_many_masks_to_check_first(monkeypatch, capsys):
    from cardioclr.cli import main
    from cardioclr.segment import predict as predict_mod

    def fake_predict(cfg, patient_ids=None):
        return {"segmented": 3, "patients": 3, "seconds": 0, "flags": 2, "flagged_patients": 2,
                "low_confidence_patients": 2, "low_confidence_threshold": 0.03, "failed": {}}

    monkeypatch.setattr(predict_mod, "predict", fake_predict)
    assert main(["segment", "predict", "W", "--no-evaluate", "--no-png"]) == 0
    assert "2 patients flagged low_confidence" in capsys.readouterr().out
