"""The patient-level model (issue 11 item 2): shapes with variable slice counts, padding that
never changes an output, base -> apex slice positions, and a tiny end-to-end ``finetune --model
patient`` (predictions, metrics, model.pt for ``cardioclr predict``, saliency)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cardioclr.classify.data import FINETUNE_AUGMENT
from cardioclr.classify.finetune import FinetuneConfig, finetune
from cardioclr.classify.patient_data import pad_patients
from cardioclr.classify.patient_predict import PatientEnsemble
from cardioclr.classify.patient_train import augment_patients, patient_network_inputs
from cardioclr.classify.predict import load_classifier
from cardioclr.cli import main
from cardioclr.clinical.labels import LV_CAVITY, LV_MYOCARDIUM
from cardioclr.data.pairs import InputSpec, load_patient_inputs, slice_positions
from cardioclr.data.store import SliceStore
from cardioclr.evaluate.metrics import prob_columns
from cardioclr.evaluate.saliency import gradcam_pairs
from cardioclr.models.patient import MILPooling, PatientClassifier

K, H = 5, 32


def _patient(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, int]:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 2, H, H, generator=g), torch.ones(n, 2, H, H), torch.linspace(0, 1, n), seed % K,
            seed)


def _logits(model: PatientClassifier, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    images, hearts, positions, mask, _, _ = batch
    ed, es = patient_network_inputs(images, hearts, "full")
    return model(ed, es, positions, mask)


# ----------------------------------------------------------------------------- model


@pytest.mark.parametrize("pooling", ["gated", "attention", "mean"])
def test_variable_slice_counts_give_one_logit_row_per_patient(pooling: str) -> None:
    torch.manual_seed(0)
    model = PatientClassifier("smallcnn", K, in_channels=1, pooling=pooling)
    batch = pad_patients([_patient(n, i) for i, n in enumerate((3, 7, 1))])
    images, _, positions, mask, labels, index = batch
    assert images.shape == (3, 7, 2, H, H) and positions.shape == mask.shape == (3, 7)
    assert mask.sum(dim=1).tolist() == [3, 7, 1] and labels.shape == index.shape == (3,)
    logits = _logits(model, batch)
    assert logits.shape == (3, K) and torch.isfinite(logits).all()
    ed, es = patient_network_inputs(images, batch[1], "full")
    _, a = model.embed(ed, es, positions, mask)
    assert torch.allclose(a.sum(dim=1), torch.ones(3)) and (a[~mask] == 0).all()


def test_padded_slices_never_change_the_output_even_in_training_mode() -> None:
    """Padding (any values, any amount) must not change a patient's logits: not through the
    attention, not through batch-norm statistics (train mode), not through the batch."""
    torch.manual_seed(0)
    model = PatientClassifier("smallcnn", K, in_channels=1, pooling="gated", dropout=0.0)
    patients = [_patient(n, i) for i, n in enumerate((4, 6))]
    for train in (False, True):
        model.train(train)
        base = _logits(model, pad_patients(patients))
        # Extra padding, filled with garbage: a third, longer patient in the batch would pad the
        # others to 9 slices; here the padding itself is overwritten with noise.
        images, hearts, positions, mask, labels, index = pad_patients(patients + [_patient(9, 7)])
        images[~mask] = torch.randn_like(images[~mask]) * 100
        positions[~mask] = 0.37
        noisy = _logits(model, (images[:2], hearts[:2], positions[:2], mask[:2], labels[:2], index[:2]))
        torch.testing.assert_close(noisy, base, rtol=1e-5, atol=1e-5)
    # Attention pooling itself: padded instances get weight 0 whatever their values.
    pool = MILPooling(8, 4, "gated")
    h = torch.randn(1, 5, 8)
    mask = torch.tensor([[True, True, False, False, False]])
    z1, _ = pool(h, mask)
    h[0, 2:] = 1e4
    z2, a = pool(h, mask)
    torch.testing.assert_close(z1, z2)
    assert (a[0, 2:] == 0).all()


def test_position_input_changes_the_output() -> None:
    """The position encoding is wired in: reversing base and apex changes the logits."""
    torch.manual_seed(0)
    model = PatientClassifier("smallcnn", K, in_channels=1).eval()
    images, hearts, positions, mask, labels, index = pad_patients([_patient(5, 0)])
    a = _logits(model, (images, hearts, positions, mask, labels, index))
    b = _logits(model, (images, hearts, positions.flip(1), mask, labels, index))
    assert not torch.allclose(a, b)


def test_any_channel_count_is_accepted() -> None:
    """An input mode with C channels per phase (e.g. image + LV/MYO/RV masks) needs only
    ``in_channels = C``."""
    model = PatientClassifier("smallcnn", K, in_channels=4)
    ed = torch.rand(2, 3, 4, H, H)
    mask = torch.tensor([[True, True, True], [True, False, False]])
    assert model(ed, ed.clone(), torch.rand(2, 3), mask).shape == (2, K)


def test_padding_keeps_the_mask_channels_of_the_input_mode() -> None:
    """Hearts may have more channels than the two phases (anatomy mode: LV, MYO, RV per phase)."""
    items = [(torch.rand(n, 2, H, H), torch.ones(n, 6, H, H), torch.linspace(0, 1, n), 0, i)
             for i, n in enumerate((2, 5))]
    images, hearts, _, mask, _, _ = pad_patients(items)
    assert images.shape == (2, 5, 2, H, H) and hearts.shape == (2, 5, 6, H, H)
    assert hearts[0, 2:].sum() == 0 and hearts[mask].min() == 1


def test_augmentation_is_one_transform_per_patient() -> None:
    """All slices and both phases of a patient get the same geometry and intensity change."""
    torch.manual_seed(0)
    one = torch.rand(1, 1, 1, H, H).expand(2, 3, 2, H, H).clone()  # every slice/phase identical
    views, _ = augment_patients(one, torch.ones_like(one), "full", FINETUNE_AUGMENT)
    for b in range(2):
        flat = views[b].reshape(-1, H, H)
        assert torch.allclose(flat, flat[0].expand_as(flat), atol=1e-6)
    assert not torch.allclose(views[0], views[1])  # patients differ


# ----------------------------------------------------------------------------- positions


def _stack(lv_radius_per_slice: list[int]) -> np.ndarray:
    yy, xx = np.mgrid[:40, :40]
    lab = np.zeros((len(lv_radius_per_slice), 40, 40), dtype=np.uint8)
    for z, r in enumerate(lv_radius_per_slice):
        if r:
            d = np.hypot(yy - 20, xx - 20)
            lab[z][d <= r + 3] = LV_MYOCARDIUM
            lab[z][d <= r] = LV_CAVITY
    return lab


def test_positions_run_base_to_apex_whichever_end_the_store_starts_with() -> None:
    base_first = _stack([0, 12, 11, 9, 7, 4, 0])  # large LV at low z = base (ACDC's order)
    keep = np.arange(1, 6)
    np.testing.assert_allclose(slice_positions(base_first, keep), [0, 0.25, 0.5, 0.75, 1.0])
    apex_first = base_first[::-1].copy()  # the same heart stored apex first
    np.testing.assert_allclose(slice_positions(apex_first, keep), [1.0, 0.75, 0.5, 0.25, 0])
    assert slice_positions(base_first, np.array([3])).tolist() == [0.5]


def test_store_positions_follow_the_lv_size(tiny_work: Path) -> None:
    """On a prepared store: position 0 is the kept slice with the larger LV cross-section end."""
    store = SliceStore(tiny_work)
    spec = InputSpec("segmented", "expert", 32)
    for pid in store.splits.train[:4]:
        inp = load_patient_inputs(store, pid, spec)
        assert inp.positions is not None and inp.positions.shape == (inp.n_slices,)
        assert inp.positions.min() == 0.0 and inp.positions.max() == 1.0
        ed = store.load(pid).ed_mask
        assert ed is not None
        lv = ((ed == LV_CAVITY) | (ed == LV_MYOCARDIUM)).sum(axis=(1, 2))[inp.slice_index]
        base, apex = int(np.argmin(inp.positions)), int(np.argmax(inp.positions))
        assert lv[base] >= lv[apex]


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def patient_run(tiny_work: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[FinetuneConfig, dict]:
    out = tmp_path_factory.mktemp("patient_finetune")
    cfg = FinetuneConfig(work=str(tiny_work), encoder="smallcnn", init="none", input_mode="segmented",
                         mask_source="expert", out=str(out / "run"), image_size=32, grid_lr=(1e-3,),
                         grid_batch=(4,), max_epochs=1, patience=1, max_folds=1, seeds=(0, 1),
                         n_boot=50, model="patient")
    return cfg, finetune(cfg)


def test_patient_finetune_writes_predictions_metrics_and_a_loadable_model(
        patient_run: tuple[FinetuneConfig, dict], tiny_work: Path) -> None:
    cfg, _ = patient_run
    out = Path(cfg.out or "")
    store = SliceStore(tiny_work)
    m = json.loads((out / "metrics.json").read_text())
    assert m["model"] == "patient" and m["pooling"] == "gated" and m["test"]["n"] == len(store.splits.test)
    assert m["patients"]["test_overlap_with_training"] == [] and len(m["per_seed"]) == 2
    pred = pd.read_csv(out / "predictions.csv", dtype={"patient_id": str})
    cols = prob_columns(store.classes)
    assert list(pred["patient_id"]) == list(store.splits.test)
    np.testing.assert_allclose(pred[cols].sum(axis=1), 1.0, atol=1e-6)
    att = pd.read_csv(out / "attention.csv", dtype={"patient_id": str})
    sums = att.groupby(["patient_id", "seed"])["weight"].sum()
    np.testing.assert_allclose(sums, 1.0, atol=1e-4)
    assert set(att["patient_id"]) == set(store.splits.test)
    clf = load_classifier(out)
    assert isinstance(clf, PatientEnsemble) and len(clf.models) == 2
    again = clf.predict(tiny_work, list(pred["patient_id"][:3]))
    np.testing.assert_allclose(again[cols].to_numpy(), pred[cols].to_numpy()[:3], atol=1e-5)
    sal = pd.read_csv(out / "saliency" / "saliency.csv", dtype={"patient_id": str})
    assert len(sal) == len(store.splits.test) and m["saliency"]["n"] >= 1
    assert (out / "saliency" / f"{sal['patient_id'][0]}.png").is_file()
    feats = pd.read_csv(out / "finetuned_features.csv", dtype={"patient_id": str})
    assert feats.shape[1] - 1 == m["finetuned_features"]["n_features"] == 128


def test_patient_saliency_maps_every_slice_through_the_patient_score(
        patient_run: tuple[FinetuneConfig, dict], tiny_work: Path) -> None:
    cfg, _ = patient_run
    clf = load_classifier(cfg.out or "")
    assert isinstance(clf, PatientEnsemble)
    inp = load_patient_inputs(SliceStore(tiny_work), SliceStore(tiny_work).splits.test[0], clf.spec)
    x = torch.from_numpy(inp.images) * torch.from_numpy(inp.hearts).float()
    maps = gradcam_pairs(clf.models[0], x, class_idx=0, positions=inp.positions)
    assert maps.shape == inp.images.shape and np.isfinite(maps).all()
    with pytest.raises(ValueError, match="positions"):
        gradcam_pairs(clf.models[0], x, class_idx=0)


def test_cli_model_patient_and_its_errors(tiny_work: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["finetune", str(tiny_work), "--encoder", "smallcnn", "--input", "full", "--model", "bag"])
    code = main(["finetune", str(tiny_work), "--encoder", "smallcnn", "--input", "full", "--model",
                 "patient", "--linear-probe", "--out", str(tmp_path / "x")])
    assert code != 0 and "--linear-probe" in capsys.readouterr().err


def test_slice_model_fingerprint_is_unchanged_by_the_new_options(tiny_work: Path) -> None:
    """Finished slice-model runs stay valid: the new fields do not enter its fingerprint."""
    from cardioclr.classify.finetune import fingerprint

    base = FinetuneConfig(work=str(tiny_work), encoder="smallcnn")
    assert fingerprint(base) == fingerprint(FinetuneConfig(work=str(tiny_work), encoder="smallcnn",
                                                           pooling="mean"))
    assert fingerprint(base) != fingerprint(FinetuneConfig(work=str(tiny_work), encoder="smallcnn",
                                                           model="patient"))
