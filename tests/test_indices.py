"""Clinical indices on hand-made geometry with known answers."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from cardioclr.clinical.indices import (
    INDEX_NAMES,
    compute_indices,
    mosteller_bsa,
    slice_sector_thickness,
)
from cardioclr.errors import CardioclrError


def disk(size: int, radius_px: float, centre: tuple[float, float] | None = None) -> np.ndarray:
    """Boolean (size, size) disk of pixel centres within ``radius_px`` of ``centre``."""
    cy, cx = centre if centre is not None else ((size - 1) / 2, (size - 1) / 2)
    yy, xx = np.mgrid[:size, :size]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= radius_px**2


def lv_stack(nz: int, size: int, r_cav: float, r_epi: float, rv: bool = False) -> np.ndarray:
    """(nz, size, size) LV: cavity disk of radius r_cav inside a myocardial annulus to r_epi."""
    sl = np.zeros((size, size), np.uint8)
    sl[disk(size, r_epi)] = 2
    sl[disk(size, r_cav)] = 3
    if rv:
        sl[disk(size, 6, centre=(size / 2, 4))] = 1
    return np.repeat(sl[None], nz, axis=0)


def test_cylinder_volume_matches_analytic() -> None:
    # Cylinder of radius 20 mm, height 10 slices x 8 mm = 80 mm, 1.25 mm pixels.
    px, dz, nz = 1.25, 8.0, 10
    r_mm = 20.0
    ed = lv_stack(nz, 64, r_mm / px, r_mm / px + 6)
    es = lv_stack(nz, 64, 10.0 / px, 10.0 / px + 8)
    out = compute_indices(ed, es, (dz, px, px))
    analytic_ml = math.pi * r_mm**2 * nz * dz / 1000.0  # 100.5 mL
    assert out["lv_edv_ml"] == pytest.approx(analytic_ml, rel=0.02)
    assert out["lv_esv_ml"] == pytest.approx(math.pi * 10.0**2 * nz * dz / 1000.0, rel=0.04)
    # EF from the two measured volumes.
    assert out["lv_ef_pct"] == pytest.approx(
        100 * (out["lv_edv_ml"] - out["lv_esv_ml"]) / out["lv_edv_ml"], rel=1e-12)


def test_mass_is_density_times_volume() -> None:
    px, dz = 1.5, 10.0
    ed = lv_stack(5, 48, 8, 13)
    out = compute_indices(ed, ed, (dz, px, px))
    myo_ml = np.count_nonzero(ed == 2) * dz * px * px / 1000.0
    assert out["myo_mass_ed_g"] == pytest.approx(1.05 * myo_ml, rel=1e-12)
    assert out["mass_lv_edv_ratio_g_per_ml"] == pytest.approx(
        out["myo_mass_ed_g"] / out["lv_edv_ml"], rel=1e-12)


@pytest.mark.parametrize(("r_cav", "r_epi"), [(10, 16), (15, 19), (8, 18)])
def test_annulus_wall_thickness(r_cav: int, r_epi: int) -> None:
    px = 1.4
    sl = lv_stack(1, 64, r_cav, r_epi)[0]
    t = slice_sector_thickness(sl, (px, px))
    assert np.isfinite(t).all()
    # Uniform wall: every sector within one pixel of the analytic thickness.
    assert np.abs(t - (r_epi - r_cav) * px).max() < px
    out = compute_indices(lv_stack(3, 64, r_cav, r_epi), lv_stack(3, 64, r_cav, r_epi), (8, px, px))
    assert out["wt_ed_mean_mm"] == pytest.approx((r_epi - r_cav) * px, abs=0.6 * px)
    assert out["wt_ed_std_mm"] < 0.5 * px
    assert out["thickening_mean_pct"] == pytest.approx(0.0, abs=1e-9)


def test_anisotropic_pixels_use_mm() -> None:
    # Same pixel geometry, doubling the pixel size doubles thickness.
    sl = lv_stack(1, 64, 10, 15)[0]
    a = np.nanmean(slice_sector_thickness(sl, (1.0, 1.0)))
    b = np.nanmean(slice_sector_thickness(sl, (2.0, 2.0)))
    assert b == pytest.approx(2 * a, rel=1e-9)


def test_asymmetric_wall_detected() -> None:
    # Thick wall on one side (septal hypertrophy-like): max > mean and sector spread > 0.
    sl = lv_stack(1, 80, 10, 15)[0]
    thick = disk(80, 16, centre=(39.5, 45.5)) & ~disk(80, 10)
    sl[thick & (sl == 0)] = 2
    out = compute_indices(sl[None], sl[None], (8, 1, 1))
    assert out["wt_ed_max_mm"] > out["wt_ed_mean_mm"] + 2
    assert out["wt_ed_sector_sd_mm"] > 1.0


def test_thickening_and_rv() -> None:
    ed = lv_stack(4, 64, 14, 19, rv=True)
    es = lv_stack(4, 64, 9, 17, rv=True)
    es[es == 1] = 0
    es[:, 30:34, 2:8] = 1  # smaller RV at ES
    out = compute_indices(ed, es, (10, 1.5, 1.5))
    assert out["thickening_mean_pct"] > 30
    assert 0 < out["rv_ef_pct"] < 100
    assert out["rv_lv_edv_ratio"] == pytest.approx(out["rv_edv_ml"] / out["lv_edv_ml"])


def test_bsa_indexing() -> None:
    ed = lv_stack(4, 48, 10, 14)
    out = compute_indices(ed, ed, (10, 1.5, 1.5), height_cm=180, weight_kg=80)
    bsa = math.sqrt(180 * 80 / 3600)
    assert out["bsa_m2"] == pytest.approx(bsa)
    assert out["lv_edv_ml_per_m2"] == pytest.approx(out["lv_edv_ml"] / bsa)
    no = compute_indices(ed, ed, (10, 1.5, 1.5))
    assert math.isnan(no["bsa_m2"]) and math.isnan(no["lv_edv_ml_per_m2"])
    assert math.isnan(mosteller_bsa(float("nan"), 80)) and math.isnan(mosteller_bsa(170, 0))


def test_empty_structures_give_nan_without_warnings() -> None:
    empty = np.zeros((3, 32, 32), np.uint8)
    only_myo = empty.copy()
    only_myo[:, 10:20, 10:20] = 2  # apex-like: myocardium, no cavity
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = compute_indices(empty, empty, (10, 1.5, 1.5))
        out2 = compute_indices(only_myo, empty, (10, 1.5, 1.5))
    assert list(out) == list(INDEX_NAMES)
    assert all(math.isnan(v) for v in out.values())
    assert math.isnan(out2["wt_ed_mean_mm"]) and out2["myo_mass_ed_g"] > 0
    assert math.isnan(out2["mass_lv_edv_ratio_g_per_ml"])


def test_bad_input_raises() -> None:
    ok = np.zeros((2, 8, 8), np.uint8)
    with pytest.raises(CardioclrError, match="labels must be 0-3"):
        compute_indices(ok + 4, ok, (1, 1, 1))
    with pytest.raises(CardioclrError, match="spacing"):
        compute_indices(ok, ok, (1, 0, 1))
    with pytest.raises(CardioclrError, match="shape"):
        compute_indices(ok[0], ok, (1, 1, 1))


def test_stray_fragments_do_not_change_thickness() -> None:
    sl = lv_stack(1, 80, 10, 15)[0]
    clean = slice_sector_thickness(sl, (1.0, 1.0))
    noisy = sl.copy()
    noisy[2:5, 2:5] = 2  # stray myocardium far from the LV
    noisy[74:77, 74:76] = 3  # stray cavity blob
    assert np.allclose(slice_sector_thickness(noisy, (1.0, 1.0)), clean)
