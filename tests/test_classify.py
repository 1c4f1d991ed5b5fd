"""Tests of the dual-phase classifier: pairing, patient aggregation, test isolation, the CLI run."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cardioclr.classify import cv as cv_mod
from cardioclr.classify.data import FINETUNE_AUGMENT, SliceBank, patient_probabilities
from cardioclr.classify.finetune import FinetuneConfig, finetune
from cardioclr.classify.model import DualPhaseClassifier, count_parameters
from cardioclr.classify.predict import load_classifier
from cardioclr.cli import main
from cardioclr.data.augment import augment_batch
from cardioclr.data.pairs import InputSpec, load_patient_inputs
from cardioclr.data.store import SliceStore
from cardioclr.evaluate.metrics import prob_columns
from cardioclr.training import TrainerSettings

# ----------------------------------------------------------------------------- data


def test_pairs_are_ed_and_es_of_the_same_slice_and_patient(tiny_work: Path) -> None:
    store = SliceStore(tiny_work)
    pid = store.splits.train[0]
    ps = store.load(pid)
    # Network size = store size, so no resampling: the pair must be the store slices exactly.
    inp = load_patient_inputs(store, pid, InputSpec("full", "expert", image_size=store.image_size))
    heart_slices = np.nonzero(((ps.ed_mask > 0) | (ps.es_mask > 0)).any(axis=(1, 2)))[0]
    assert inp.images.shape == (len(heart_slices), 2, store.image_size, store.image_size)
    np.testing.assert_array_equal(inp.slice_index, heart_slices)
    for row, z in enumerate(inp.slice_index):
        np.testing.assert_array_equal(inp.images[row, 0], ps.ed_image[z])
        np.testing.assert_array_equal(inp.images[row, 1], ps.es_image[z])
        np.testing.assert_array_equal(inp.hearts[row, 0], ps.ed_mask[z] > 0)
        np.testing.assert_array_equal(inp.hearts[row, 1], ps.es_mask[z] > 0)
    assert inp.label_index == store.label_index(pid)


def test_slice_bank_rows_belong_to_their_patient(tiny_work: Path) -> None:
    store = SliceStore(tiny_work)
    pids = store.splits.train[:3]
    spec = InputSpec("segmented", "expert", image_size=32)
    bank = SliceBank.load(store, pids, spec)
    per = [load_patient_inputs(store, p, spec) for p in pids]
    assert len(bank) == sum(p.n_slices for p in per)
    ds = bank.dataset([pids[1]])
    assert len(ds) == per[1].n_slices
    images, hearts, label, row = ds[0]
    assert images.shape == (2, 32, 32) and hearts.shape == (2, 32, 32)
    assert int(label) == store.label_index(pids[1])
    assert bank.patient_ids[int(bank.patient[row])] == pids[1]
    np.testing.assert_array_equal(images.numpy(), per[1].images[0])
    assert ds.patient_ids == [pids[1]]


def test_roi_mode_crops_both_phases_with_one_box(tiny_work: Path) -> None:
    store = SliceStore(tiny_work)
    pid = store.splits.train[0]
    full = load_patient_inputs(store, pid, InputSpec("full", "expert", image_size=32))
    roi = load_patient_inputs(store, pid, InputSpec("roi", "expert", image_size=32))
    # The heart fills much more of a roi crop than of the full field of view.
    assert roi.hearts.mean() > 2 * full.hearts.mean()
    assert roi.pixel_mm < full.pixel_mm


def test_patient_probability_is_mean_of_slice_probabilities() -> None:
    slice_p = np.array([[0.2, 0.8], [0.6, 0.4], [0.9, 0.1], [0.3, 0.7], [0.5, 0.5]])
    patient = np.array(["b", "a", "b", "b", "a"])
    keys, p = patient_probabilities(slice_p, patient)
    assert list(keys) == ["a", "b"]
    np.testing.assert_allclose(p[0], [(0.6 + 0.5) / 2, (0.4 + 0.5) / 2])
    np.testing.assert_allclose(p[1], [(0.2 + 0.9 + 0.3) / 3, (0.8 + 0.1 + 0.7) / 3])
    np.testing.assert_allclose(p.sum(axis=1), 1.0)


def test_augmentation_moves_ed_and_es_together() -> None:
    g = torch.Generator().manual_seed(0)
    base = torch.rand(4, 1, 32, 32, generator=g)
    images = torch.cat([base, base], dim=1)  # ED == ES
    hearts = torch.zeros(4, 2, 32, 32)
    hearts[:, :, 8:24, 8:24] = 1
    # Noise is drawn per pixel and phase (as real MRI noise is); switch it off to compare.
    cfg = dataclasses.replace(FINETUNE_AUGMENT, p_noise=0.0)
    out, warped = augment_batch(images, hearts, "segmented", cfg, generator=g)
    torch.testing.assert_close(out[:, 0], out[:, 1])
    assert not torch.allclose(out[:, 0], base[:, 0])  # something happened
    assert torch.all(out[warped == 0] == 0)  # segmented: nothing outside the warped heart


# ----------------------------------------------------------------------------- model


def test_shared_and_separate_encoder_parameter_counts() -> None:
    from cardioclr.models.encoders import build_encoder

    enc, d = build_encoder("smallcnn")
    n_enc = count_parameters(enc)
    head = 2 * d * 5 + 5
    assert count_parameters(DualPhaseClassifier("smallcnn", 5)) == 2 * n_enc + head
    shared = DualPhaseClassifier("smallcnn", 5, shared_encoder=True)
    assert count_parameters(shared) == n_enc + head
    probe = DualPhaseClassifier("smallcnn", 5, freeze_encoders=True)
    assert count_parameters(probe, trainable_only=True) == head
    probe.train()
    assert probe.head.training and not probe.encoder_ed.training and not probe.encoder_es.training


def test_model_output_shapes_and_phase_order() -> None:
    m = DualPhaseClassifier("smallcnn", 3).eval()
    ed, es = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    assert m(ed, es).shape == (2, 3)
    f = m.features(ed, es)
    assert f.shape == (2, 2 * m.feature_dim)
    torch.testing.assert_close(f[:, : m.feature_dim], m.encoder_ed(ed))
    torch.testing.assert_close(f[:, m.feature_dim:], m.encoder_es(es))


# ----------------------------------------------------------------------------- test isolation


def test_cv_never_touches_test_patients(tiny_work: Path, monkeypatch: pytest.MonkeyPatch,
                                        tmp_path: Path) -> None:
    store = SliceStore(tiny_work)
    splits = store.splits
    seen: list[tuple[list[str], list[str]]] = []

    def fake_fit(run_dir, model, bank, train_ids, val_ids, hyper, *args, **kwargs):
        seen.append((list(train_ids), list(val_ids)))
        return {"history": [{"epoch": 0, "train_loss": 1.0, "val_loss": 1.0, "val_auc": 0.5}],
                "best_epoch": 0, "val_loss": 1.0, "val_auc": 0.5, "epochs_run": 1, "seconds": 0.0}

    monkeypatch.setattr(cv_mod, "fit_run", fake_fit)
    points = cv_mod.grid([1e-3], [8])
    cv_mod.run_cv(tmp_path, bank=None, splits=splits, points=points, make_model=lambda s: None,
                  input_mode="full", n_classes=5, settings=TrainerSettings(), seed=0)
    assert len(seen) == len(splits.folds)
    test = set(splits.test)
    for k, (train_ids, val_ids) in enumerate(seen):
        assert not (set(train_ids) | set(val_ids)) & test
        assert set(val_ids) == set(splits.folds[k])
        assert set(train_ids) | set(val_ids) == set(splits.train)
    # A second call reuses the stored fold results instead of training again.
    seen.clear()
    again = cv_mod.run_cv(tmp_path, bank=None, splits=splits, points=points, make_model=lambda s: None,
                          input_mode="full", n_classes=5, settings=TrainerSettings(), seed=0)
    assert seen == [] and len(again) == len(splits.folds)


def test_selection_prefers_auc_then_loss_and_averages_epochs() -> None:
    rows = []
    for lr, aucs, losses, epochs in ((1e-4, (0.7, 0.8), (1.0, 1.0), (3, 5)),
                                     (3e-4, (0.9, 0.8), (1.2, 1.2), (2, 3))):
        for k in range(2):
            rows.append({"lr": lr, "batch_size": 16, "fold": k, "val_auc": aucs[k],
                         "val_loss": losses[k], "epochs_to_best": epochs[k]})
    chosen = cv_mod.select(cv_mod.cv_table(rows))
    assert chosen["lr"] == 3e-4 and chosen["epochs"] == 2  # round(2.5) -> 2 (banker's), >= 1


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny_run(tiny_work: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[FinetuneConfig, dict]:
    out = tmp_path_factory.mktemp("finetune")
    cfg = FinetuneConfig(work=str(tiny_work), encoder="smallcnn", init="none", input_mode="segmented",
                         mask_source="expert", out=str(out / "run"), image_size=32, grid_lr=(1e-3,),
                         grid_batch=(16,), max_epochs=1, patience=1, max_folds=1, seeds=(0,),
                         n_boot=50)
    return cfg, finetune(cfg)


def test_tiny_finetune_writes_the_output_contract(tiny_run: tuple[FinetuneConfig, dict],
                                                  tiny_work: Path) -> None:
    cfg, _ = tiny_run
    out = Path(cfg.out)
    store = SliceStore(tiny_work)
    m = json.loads((out / "metrics.json").read_text())
    for key in ("encoder", "pretraining", "downstream_input", "mask_source", "classes", "test",
                "per_seed", "seed_spread", "cv", "selected", "saliency", "train_seconds"):
        assert key in m, key
    assert m["pretraining"] == "none" and m["downstream_input"] == "segmented"
    assert m["mask_source"] == "expert" and m["classes"] == store.classes
    assert m["test"]["n"] == len(store.splits.test)
    assert 0.0 <= m["test"]["macro_auc"]["value"] <= 1.0
    assert m["selected"]["lr"] == 1e-3 and m["selected"]["epochs"] == 1
    assert len(m["per_seed"]) == 1 and m["seed_spread"]["n_seeds"] == 1
    assert m["saliency"]["n"] == len(store.splits.test) and m["saliency"]["margin_mm"] == 5.0

    pred = pd.read_csv(out / "predictions.csv", dtype={"patient_id": str})
    assert sorted(pred["patient_id"]) == sorted(store.splits.test)
    probs = pred[prob_columns(store.classes)].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    assert list(pred["label_index"]) == [store.label_index(p) for p in pred["patient_id"]]

    curves = pd.read_csv(out / "curves.csv")
    assert set(curves["split"]) == {"cv", "final"}
    assert {"epoch", "fold", "seed", "train_loss", "val_loss", "val_auc"} <= set(curves.columns)
    assert curves.loc[curves["split"] == "cv", "val_loss"].notna().all()

    # Fitted to the train labels: written under a name the hybrid baseline refuses.
    assert not (out / "deep_features.csv").exists()
    assert m["finetuned_features"]["file"] == "finetuned_features.csv"
    feats = pd.read_csv(out / "finetuned_features.csv", dtype={"patient_id": str})
    assert set(store.splits.train + store.splits.test) <= set(feats["patient_id"])
    assert feats.shape[1] == 1 + 2 * 256  # patient_id + [ED, ES] smallcnn features

    sal = pd.read_csv(out / "saliency" / "saliency.csv", dtype={"patient_id": str})
    assert sorted(sal["patient_id"]) == sorted(store.splits.test)
    for pid in store.splits.test:
        assert (out / "saliency" / f"{pid}.png").stat().st_size > 1000
    assert (out / "config.yaml").is_file() and (out / "versions.json").is_file()


def test_final_model_trains_on_train_only(tiny_run: tuple[FinetuneConfig, dict], tiny_work: Path) -> None:
    cfg, m = tiny_run
    splits = SliceStore(tiny_work).splits
    final = json.loads((Path(cfg.out) / "final" / "seed0" / "result.json").read_text())
    assert final["train_patients"] == sorted(splits.train)
    assert not set(m["patients"]["cv_touched"]) & set(splits.test)
    assert set(m["patients"]["cv_touched"]) <= set(splits.train)
    assert sorted(m["patients"]["test_ids"]) == sorted(splits.test)


def test_saved_model_reproduces_predictions(tiny_run: tuple[FinetuneConfig, dict], tiny_work: Path) -> None:
    cfg, _ = tiny_run
    clf = load_classifier(cfg.out)
    assert clf.spec.input_mode == "segmented" and clf.spec.image_size == 32 and clf.encoder == "smallcnn"
    saved = pd.read_csv(Path(cfg.out) / "predictions.csv", dtype={"patient_id": str})
    again = clf.predict(tiny_work, list(saved["patient_id"][:2]))
    cols = prob_columns(clf.classes)
    np.testing.assert_allclose(again[cols].to_numpy(), saved[cols].to_numpy()[:2], atol=1e-5)
    obj = torch.load(Path(cfg.out) / "model.pt", map_location="cpu", weights_only=True)
    assert obj["input"]["mask_margin_mm"] == 0.0 and obj["classes"] == clf.classes


def test_finished_run_is_skipped(tiny_run: tuple[FinetuneConfig, dict]) -> None:
    cfg, m = tiny_run
    before = (Path(cfg.out) / "metrics.json").stat().st_mtime_ns
    again = finetune(cfg)
    assert again["fingerprint"] == m["fingerprint"]
    assert (Path(cfg.out) / "metrics.json").stat().st_mtime_ns == before


# ----------------------------------------------------------------------------- init errors


def test_imagenet_without_weights_is_a_clear_error(tiny_work: Path, capsys: pytest.CaptureFixture) -> None:
    rc = main(["finetune", str(tiny_work), "--encoder", "vgg16", "--init", "imagenet",
               "--input", "full", "--masks", "expert"])
    assert rc == 1
    assert "--init imagenet needs --weights" in capsys.readouterr().err


def test_simclr_with_mismatched_encoder_is_a_clear_error(tiny_work: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    from cardioclr.models.checkpoint import save_encoder
    from cardioclr.models.encoders import build_encoder

    enc, d = build_encoder("resnet18")
    path = save_encoder(tmp_path / "encoder.pt", enc, "resnet18", d, "segmented", 64)
    rc = main(["finetune", str(tiny_work), "--encoder", "smallcnn", "--init", "simclr",
               "--weights", str(path), "--input", "segmented", "--masks", "expert",
               "--out", str(tmp_path / "out")])
    assert rc == 1
    err = capsys.readouterr().err
    assert "resnet18" in err and "smallcnn" in err
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_simclr_init_loads_weights_and_records_input_mode(tmp_path: Path) -> None:
    from cardioclr.classify.model import initialise_encoders
    from cardioclr.models.checkpoint import save_encoder
    from cardioclr.models.encoders import build_encoder

    torch.manual_seed(1)
    enc, d = build_encoder("smallcnn")
    path = save_encoder(tmp_path / "encoder.pt", enc, "smallcnn", d, "full", 64)
    model = DualPhaseClassifier("smallcnn", 2)
    info = initialise_encoders(model, "simclr", path)
    assert info.pretraining == "simclr-full"
    for e in model.encoders():
        for k, v in enc.state_dict().items():
            torch.testing.assert_close(e.state_dict()[k], v)


def test_interrupted_run_resumes_from_last_checkpoint(tiny_work: Path, tmp_path: Path) -> None:
    from cardioclr.classify.train import RunHyper, fit_run

    store = SliceStore(tiny_work)
    few = store.splits.train[:4]  # small: only the resume mechanics matter here
    bank = SliceBank.load(store, few, InputSpec("segmented", "expert", image_size=32))
    settings = TrainerSettings(progress_bar=False)
    run = tmp_path / "run"
    first = fit_run(run, DualPhaseClassifier("smallcnn", 5), bank, few, None,
                    RunHyper(1e-3, 32, 1), "segmented", 5, settings, seed=0)
    assert (run / "checkpoints" / "last.ckpt").is_file()
    # Same run asked for 2 epochs (as if stopped after the first): continues, keeps epoch 0's row.
    second = fit_run(run, DualPhaseClassifier("smallcnn", 5), bank, few, None,
                     RunHyper(1e-3, 32, 2), "segmented", 5, settings, seed=0)
    assert [h["epoch"] for h in second["history"]] == [0, 1]
    assert second["history"][0]["train_loss"] == first["history"][0]["train_loss"]


def test_binary_task_end_to_end(tmp_path: Path) -> None:
    # A two-class cohort (NOR vs DCM): the macro AUC is the plain AUC of class 1, computed on
    # patient probabilities (mean of slice probabilities), and several seeds report a spread.
    from sklearn.metrics import roc_auc_score

    from cardioclr.data.prepare import PrepareConfig, prepare
    from conftest import write_tiny_acdc

    write_tiny_acdc(tmp_path / "raw", n_per_class=6, seed=3, groups=("NOR", "DCM"))
    work = tmp_path / "work"
    prepare(PrepareConfig(data=str(tmp_path / "raw"), out=str(work), spacing_mm=3.5, image_size=48,
                          workers=1, seed=0))
    cfg = FinetuneConfig(work=str(work), encoder="smallcnn", init="none", input_mode="segmented",
                         mask_source="expert", out=str(tmp_path / "run"), image_size=32,
                         grid_lr=(1e-3,), grid_batch=(16,), max_epochs=1, patience=1, max_folds=1,
                         seeds=(0, 1), n_boot=50, saliency=False, accelerator="cpu")
    m = finetune(cfg)
    store = SliceStore(work)
    assert len(store.classes) == 2 and m["classes"] == store.classes
    pred = pd.read_csv(tmp_path / "run" / "predictions.csv", dtype={"patient_id": str})
    assert sorted(pred["patient_id"]) == sorted(store.splits.test)
    p1 = pred[prob_columns(store.classes)[1]].to_numpy()
    y = pred["label_index"].to_numpy()
    assert len(set(y)) == 2  # both classes in test, so the AUC is defined
    assert m["test"]["macro_auc"]["value"] == pytest.approx(roc_auc_score(y, p1), abs=1e-12)
    aucs = [m["test"]["per_class_auc"][c]["value"] for c in store.classes]
    assert aucs[0] == pytest.approx(aucs[1], abs=1e-12)
    assert m["seed_spread"]["n_seeds"] == 2 and len(m["per_seed"]) == 2
    per_seed = pd.read_csv(tmp_path / "run" / "predictions_per_seed.csv", dtype={"patient_id": str})
    cols = prob_columns(store.classes)
    ens = per_seed.groupby("patient_id")[cols].mean().loc[pred["patient_id"]].to_numpy()
    np.testing.assert_allclose(ens, pred[cols].to_numpy(), atol=1e-6)  # seed ensemble = mean


def test_linear_probe_run_changes_only_the_head(tiny_work: Path, tmp_path: Path) -> None:
    # Through a real Lightning fit (train + validation epochs): frozen encoders keep their
    # weights AND their batch-norm running statistics (they stay in eval mode); the head learns.
    from cardioclr.classify.train import RunHyper, fit_run

    store = SliceStore(tiny_work)
    train_ids, val_ids = store.splits.train[:4], store.splits.train[4:6]
    bank = SliceBank.load(store, train_ids + val_ids, InputSpec("segmented", "expert", image_size=32))
    torch.manual_seed(0)
    model = DualPhaseClassifier("smallcnn", 5, freeze_encoders=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fit_run(tmp_path / "run", model, bank, train_ids, val_ids, RunHyper(1e-2, 8, 1), "segmented", 5,
            TrainerSettings(progress_bar=False, accelerator="cpu"), seed=0)
    after = model.state_dict()
    encoder_keys = [k for k in before if k.startswith("encoder_")]
    assert any("running_mean" in k for k in encoder_keys)
    for k in encoder_keys:
        assert torch.equal(after[k].cpu(), before[k]), k
    assert not torch.equal(after["head.fc.weight"].cpu(), before["head.fc.weight"])


def test_resumed_run_ends_with_the_same_weights_as_an_uninterrupted_one(tiny_work: Path,
                                                                          tmp_path: Path) -> None:
    # Shuffling and augmentation draw random numbers every epoch: a resumed run must continue
    # the interrupted run's random state, not restart it, to finish with identical weights.
    import torch

    from cardioclr.classify.train import RunHyper, fit_run

    store = SliceStore(tiny_work)
    few = store.splits.train[:4]
    bank = SliceBank.load(store, few, InputSpec("segmented", "expert", image_size=32))
    settings = TrainerSettings(progress_bar=False, accelerator="cpu")
    torch.manual_seed(0)
    straight = DualPhaseClassifier("smallcnn", 5)
    init = {k: v.clone() for k, v in straight.state_dict().items()}
    fit_run(tmp_path / "straight", straight, bank, few, None, RunHyper(1e-3, 8, 3), "segmented", 5,
            settings, seed=0)
    resumed = DualPhaseClassifier("smallcnn", 5)
    resumed.load_state_dict(init)
    fit_run(tmp_path / "resumed", resumed, bank, few, None, RunHyper(1e-3, 8, 1), "segmented", 5,
            settings, seed=0)
    torch.manual_seed(12345)  # a fresh process: another global random state
    again = DualPhaseClassifier("smallcnn", 5)
    again.load_state_dict(init)  # weights come from last.ckpt anyway
    fit_run(tmp_path / "resumed", again, bank, few, None, RunHyper(1e-3, 8, 3), "segmented", 5,
            settings, seed=0)
    for key, value in straight.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key
