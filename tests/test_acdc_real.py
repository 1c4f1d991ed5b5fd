"""The real ACDC training set (100 patients), read and prepared. Skipped when the data is absent."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from cardioclr.data.acdc import find_acdc_cases
from cardioclr.data.prepare import PrepareConfig, default_workers, prepare
from cardioclr.data.store import SliceStore
from cardioclr.io.volume import grid_difference, read_label_volume, read_volume

pytestmark = pytest.mark.acdc


def test_acdc_layout_100_patients_20_per_group(acdc_root: Path) -> None:
    cases, skipped = find_acdc_cases(acdc_root)
    assert skipped == []
    assert len(cases) == 100
    assert Counter(c.label for c in cases) == {g: 20 for g in ("DCM", "HCM", "MINF", "NOR", "RV")}
    for c in cases:
        assert c.ed_image.is_file() and c.es_image.is_file()
        assert c.ed_image.name == f"{c.patient_id}_frame{c.ed_frame:02d}.nii.gz"
        assert c.es_image.name == f"{c.patient_id}_frame{c.es_frame:02d}.nii.gz"
        assert c.ed_frame != c.es_frame
        assert c.ed_mask is not None and c.es_mask is not None
        assert c.height_cm is not None and 100 < c.height_cm < 220
        assert c.weight_kg is not None and 20 < c.weight_kg < 200


@pytest.mark.parametrize("pid", ["patient001", "patient042", "patient100"])
def test_acdc_spacing_and_masks_plausible(acdc_root: Path, pid: str) -> None:
    cases, _ = find_acdc_cases(acdc_root)
    case = next(c for c in cases if c.patient_id == pid)
    for image, mask in ((case.ed_image, case.ed_mask), (case.es_image, case.es_mask)):
        vol = read_volume(image)
        sz, sy, sx = vol.spacing
        assert 5.0 <= sz <= 10.0, vol.spacing
        assert 0.7 <= sy <= 2.5 and 0.7 <= sx <= 2.5, vol.spacing
        assert 6 <= vol.shape[0] <= 21 and min(vol.shape[1:]) >= 150
        labels = read_label_volume(mask)
        assert labels.shape == vol.shape
        assert grid_difference(vol, labels) is None  # _gt files share their frame's header
        assert set(np.unique(labels.array)) == {0, 1, 2, 3}


@pytest.mark.slow
def test_prepare_all_100_without_skips(acdc_root: Path, tmp_path: Path) -> None:
    summary = prepare(PrepareConfig(data=str(acdc_root), out=str(tmp_path / "work"),
                                    workers=default_workers()))
    assert summary["patients"] == 100 and summary["skipped"] == 0
    assert (summary["train"], summary["test"]) == (70, 30)
    store = SliceStore(tmp_path / "work")
    p = store.load("patient001")
    assert p.ed_image.shape == (p.n_slices, 192, 192)
    assert p.ed_mask is not None and set(np.unique(p.ed_mask)) == {0, 1, 2, 3}


@pytest.mark.parametrize("pid", ["patient001", "patient025", "patient042", "patient100"])
def test_regional_features_on_native_acdc_masks(acdc_root: Path, pid: str) -> None:
    """AHA segments on the expert masks at their native spacing: the RV insertion points are
    found in most ED slices, the septum between them spans a plausible arc, every segment has a
    physiological thickness, and the HCM patient has the thickest wall."""
    from cardioclr.clinical.regional import regional_features

    cases, _ = find_acdc_cases(acdc_root)
    case = next(c for c in cases if c.patient_id == pid)
    ed, es = read_label_volume(case.ed_mask), read_label_volume(case.es_mask)
    r = regional_features(ed.array, es.array, ed.spacing).values
    n_lv = int((ed.array == 2).any(axis=(1, 2)).sum())
    assert r["n_insertion_slices"] >= n_lv / 2
    assert 60.0 <= r["septal_arc_deg"] <= 170.0
    wt = np.array([r[f"wt_ed_seg{s:02d}_mm"] for s in range(1, 17)])
    assert np.isfinite(wt).all() and (wt > 2.0).all() and (wt < 30.0).all(), wt
    if pid == "patient025":  # HCM
        assert r["wt_ed_segment_max_mm"] > 15.0
    else:
        assert r["wt_ed_segment_max_mm"] < 15.0
