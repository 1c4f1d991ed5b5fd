"""Dice, HD95, Bland-Altman agreement and the quality-flag comparison on hand-made inputs with
known values."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from cardioclr.atomic import write_json
from cardioclr.segment.evaluate import agreement, dice, hd95, patient_metrics, quality_flag_comparison
from cardioclr.segment.qc import DISAGREEMENT_FLAG


def test_dice_known_values():
    a = np.zeros((1, 4, 4), bool)
    b = np.zeros((1, 4, 4), bool)
    a[0, 0, 0:4] = True  # 4 voxels
    b[0, 0, 1:4] = True
    b[0, 1, 0:3] = True  # 6 voxels, 3 shared
    assert dice(a, b) == pytest.approx(0.6)
    assert dice(np.zeros(3, bool), np.zeros(3, bool)) == 1.0
    assert dice(a, np.zeros_like(a)) == 0.0


def test_hd95_uses_anisotropic_spacing():
    a = np.zeros((3, 5, 5), bool)
    b = np.zeros((3, 5, 5), bool)
    a[0, 2, 0] = True
    b[0, 2, 3] = True  # 3 columns apart
    assert hd95(a, b, (10.0, 1.0, 2.0)) == pytest.approx(6.0)
    c = np.zeros_like(a)
    c[2, 2, 0] = True  # 2 slices apart
    assert hd95(a, c, (10.0, 1.0, 2.0)) == pytest.approx(20.0)
    assert math.isnan(hd95(a, np.zeros_like(a), (1, 1, 1)))


def test_hd95_pools_both_directions():
    ref = np.zeros((1, 5, 5), bool)
    ref[0, 1:4, 1:4] = True  # one slice: every voxel is surface
    pred = np.zeros_like(ref)
    pred[0, 2, 2] = True
    # pred->ref: 0; ref->pred: 0, 4 x 1, 4 x sqrt(2): the 95th percentile of the pooled 10 is sqrt(2).
    assert hd95(pred, ref, (1.0, 1.0, 1.0)) == pytest.approx(math.sqrt(2))
    assert hd95(ref, ref, (1.0, 1.0, 1.0)) == 0.0


def test_patient_metrics_per_structure_and_phase():
    ref = np.zeros((2, 8, 8), np.uint8)
    ref[:, 1:4, 1:4] = 1
    ref[:, 5:7, 5:7] = 3
    pred = ref.copy()
    pred[:, 5:7, 5:7] = 0  # LV missed
    m = patient_metrics({"ED": pred, "ES": ref}, {"ED": ref, "ES": ref}, (10.0, 1.5, 1.5))
    assert m["dice_ED_RV"] == 1.0 and m["dice_ED_LV"] == 0.0 and m["dice_ED_MYO"] == 1.0
    assert math.isnan(m["hd95_ED_LV"]) and m["hd95_ES_LV"] == 0.0


def test_agreement_bias_sd_and_correlation():
    ref = np.array([100.0, 120.0, 140.0, 160.0])
    pred = ref + np.array([1.0, 3.0, 1.0, 3.0])
    a = agreement(pred, ref)
    assert a["n"] == 4
    assert a["bias"] == pytest.approx(2.0)
    assert a["sd"] == pytest.approx(np.std([1, 3, 1, 3], ddof=1))
    assert a["loa_high"] == pytest.approx(2.0 + 1.96 * a["sd"])
    assert a["pearson_r"] == pytest.approx(np.corrcoef(pred, ref)[0, 1])
    b = agreement([1.0, np.nan, 3.0], [1.0, 2.0, np.nan])  # NaN pairs dropped
    assert b["n"] == 1 and b["bias"] == 0.0 and math.isnan(b["sd"])


def test_quality_flag_comparison_uses_the_threshold_predict_recorded(tmp_path):
    seg = tmp_path / "segmentation"
    seg.mkdir()
    pd.DataFrame({"patient_id": ["a", "b", "c"], "disagreement": [0.010, 0.035, 0.060]}).to_csv(
        seg / "quality.csv", index=False)
    per_patient = pd.DataFrame({"dice_ED_LV": [0.95, 0.90, 0.80]}, index=["a", "b", "c"])
    # No predict_summary.json (a run older than the recorded threshold): the mirrored views' one.
    old = quality_flag_comparison(seg, per_patient)
    assert old["threshold"] == DISAGREEMENT_FLAG and old["flagged"]["n"] == 1
    write_json(seg / "predict_summary.json", {"low_confidence_threshold": 0.03})
    new = quality_flag_comparison(seg, per_patient)
    assert new["threshold"] == 0.03
    assert new["flagged"]["n"] == 2 and new["flagged"]["mean_dice"] == pytest.approx(0.85)
    assert new["unflagged"]["n"] == 1
