"""Tests of the saliency share, the Grad-CAM target layer choice and the Grad-CAM maps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cardioclr.classify.model import DualPhaseClassifier
from cardioclr.evaluate.saliency import gradcam_pairs, in_heart_share, summarise, target_layer
from cardioclr.models.encoders import build_encoder


def test_share_is_one_when_saliency_is_zero_outside_the_mask() -> None:
    mask = np.zeros((2, 8, 8), bool)
    mask[:, 2:6, 2:6] = True
    sal = np.where(mask, np.random.default_rng(0).uniform(0.1, 1.0, mask.shape), 0.0)
    assert in_heart_share(sal, mask) == pytest.approx(1.0)


def test_share_hand_computed_and_negative_saliency_ignored() -> None:
    mask = np.array([[True, False], [False, False]])
    sal = np.array([[3.0, 1.0], [-5.0, 0.0]])  # positive mass 4, of which 3 inside
    assert in_heart_share(sal, mask) == pytest.approx(0.75)
    assert in_heart_share(np.ones((4, 4)), np.eye(4, dtype=bool)) == pytest.approx(4 / 16)


def test_share_undefined_without_positive_saliency() -> None:
    assert math.isnan(in_heart_share(np.zeros((3, 3)), np.ones((3, 3), bool)))
    with pytest.raises(ValueError):
        in_heart_share(np.zeros((3, 3)), np.ones((2, 2), bool))


def test_summary_mean_sd_and_empty_maps() -> None:
    import pandas as pd

    df = pd.DataFrame({"in_heart_share": [0.5, 1.0, float("nan")], "mask_area_share": [0.1, 0.1, 0.1]})
    s = summarise(df, 5.0, "full", "expert")
    assert s["in_heart_share_mean"] == pytest.approx(0.75)
    assert s["in_heart_share_sd"] == pytest.approx(np.std([0.5, 1.0], ddof=1))
    assert s["n"] == 2 and s["n_empty_maps"] == 1 and s["margin_mm"] == 5.0
    assert summarise(df, 5.0, "segmented", "expert")["caveat"]


@pytest.mark.parametrize(("name", "expected"), [
    ("smallcnn", "features"),
    ("vgg16", "features.29"),  # last ReLU before the final max-pool
    ("resnet18", "layer4"),  # the block output, not the ReLU module called twice per block
    ("densenet121", "features"),  # ends in norm5 (1024 ch), not the last 32-channel conv
])
def test_target_layer_is_the_last_full_width_feature_map(name: str, expected: str) -> None:
    enc, d = build_encoder(name)
    assert target_layer(enc, d, image_size=32) == expected


@pytest.mark.parametrize("shared", [False, True])
def test_gradcam_maps_per_phase(shared: bool) -> None:
    torch.manual_seed(0)
    model = DualPhaseClassifier("smallcnn", 3, shared_encoder=shared).eval()
    x = torch.rand(3, 2, 48, 48)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    maps = gradcam_pairs(model, x, class_idx=1)
    assert maps.shape == (3, 2, 48, 48)
    assert np.all(maps >= 0) and np.isfinite(maps).all()
    assert maps.sum() > 0
    # The model itself is untouched (Grad-CAM works on a copy).
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k])


def test_gradcam_leaves_no_model_copy_alive() -> None:
    # MONAI's GradCAM keeps its hooks and the class score, whose autograd graph refers back to
    # the hooks: a cycle through C++ nodes that gc cannot collect. Each call leaked the copied
    # network (hundreds of MB per fine-tuning cell) until the cycle was broken explicitly.
    import gc

    from cardioclr.evaluate.saliency import _PairNet

    model = DualPhaseClassifier("smallcnn", 3).eval()
    for _ in range(3):
        gradcam_pairs(model, torch.rand(2, 2, 32, 32), class_idx=0)
    gc.collect()
    assert not [o for o in gc.get_objects() if isinstance(o, _PairNet)]


def test_overlays_only_for_the_first_patients_in_id_order_shares_for_all(tmp_path) -> None:
    from cardioclr.data.pairs import PatientInputs
    from cardioclr.evaluate.saliency import run_saliency

    torch.manual_seed(0)
    model = DualPhaseClassifier("smallcnn", 3).eval()
    rng = np.random.default_rng(0)
    hearts = np.zeros((2, 2, 32, 32), bool)
    hearts[:, :, 8:24, 8:24] = True
    patients = [PatientInputs(pid, 0, rng.random((2, 2, 32, 32), np.float32), hearts,
                              np.arange(2), 2.0, hearts) for pid in ("p3", "p1", "p2")]
    pred = {p.patient_id: 1 for p in patients}
    summary = run_saliency(model, patients, pred, ["A", "B", "C"], "full", tmp_path, figures=2)
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["p1.png", "p2.png"]
    assert summary["n"] + summary["n_empty_maps"] == 3  # every patient scored
    run_saliency(model, patients, pred, ["A", "B", "C"], "full", tmp_path / "all")
    assert len(list((tmp_path / "all").glob("*.png"))) == 3
