"""AHA-segment geometry of :mod:`cardioclr.clinical.regional` on synthetic masks with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cardioclr.clinical.regional import (
    REGIONAL_NAMES,
    boundary_points,
    insertion_angles,
    lv_eccentricity,
    regional_features,
    slice_levels,
)


def _heart(n_slices: int = 9, spacing_yx: tuple[float, float] = (1.0, 1.0), size_mm: float = 130.0,
           wall_mm: float = 8.0, thin_mm: float | None = None, thin_deg: tuple[float, float] = (300, 360),
           rv_deg: tuple[float, float] = (120, 240), rotate_deg: float = 0.0, rv: bool = True,
           cavity_shrink_mm: float = 0.0) -> np.ndarray:
    """(z, y, x) labels: LV cavity disc, myocardial ring of ``wall_mm`` (``thin_mm`` inside the
    ``thin_deg`` sector), RV crescent touching the epicardium over ``rv_deg``. Angles are
    counter-clockwise with y pointing down the image (the standard view); ``rotate_deg`` turns
    the whole heart. The base (z = 0) has the largest cavity."""
    sy, sx = spacing_yx
    ny, nx = int(size_mm / sy), int(size_mm / sx)
    yy, xx = np.mgrid[0:ny, 0:nx]
    dy, dx = (yy - ny / 2) * sy, (xx - nx / 2) * sx
    r = np.hypot(dy, dx)
    ang = np.mod(np.degrees(np.arctan2(-dy, dx)) - rotate_deg, 360.0)
    out = np.zeros((n_slices, ny, nx), np.uint8)
    for z in range(n_slices):
        r1 = 24.0 - 1.0 * z - cavity_shrink_mm
        wall = np.full_like(r, wall_mm)
        if thin_mm is not None:
            wall[(ang >= thin_deg[0]) & (ang < thin_deg[1])] = thin_mm
        r2 = r1 + wall
        lab = out[z]
        if rv:
            lo, hi = rv_deg
            in_arc = (ang >= lo) & (ang < hi) if lo < hi else (ang >= lo) | (ang < hi)
            lab[in_arc & (r >= r1 + wall_mm) & (r < r1 + wall_mm + 14)] = 1
        lab[(r >= r1) & (r < r2)] = 2
        lab[r < r1] = 3
    return out


def _segments(values: dict[str, float], prefix: str, segs: range) -> np.ndarray:
    return np.array([values[f"{prefix}_seg{s:02d}_mm"] for s in segs])


def test_ring_of_known_thickness_everywhere():
    ed = _heart(wall_mm=8.0)
    es = _heart(wall_mm=12.0, cavity_shrink_mm=4.0)
    r = regional_features(ed, es, (10.0, 1.0, 1.0))
    assert set(r.values) == set(REGIONAL_NAMES)
    ed_wt = _segments(r.values, "wt_ed", range(1, 17))
    es_wt = _segments(r.values, "wt_es", range(1, 17))
    assert np.all(np.abs(ed_wt - 8.0) < 1.0), ed_wt
    assert np.all(np.abs(es_wt - 12.0) < 1.0), es_wt
    th = np.array([r.values[f"thickening_seg{s:02d}_pct"] for s in range(1, 17)])
    assert np.all(np.abs(th - 50.0) < 15.0), th
    assert r.values["n_thin_segments"] == 0 and r.values["n_hypokinetic_segments"] == 0
    # Anterior insertion at the counter-clockwise start of the 120-240 degree contact arc.
    assert abs(r.values["anterior_insertion_deg"] - 120.0) < 8.0
    assert r.values["n_insertion_slices"] == 9
    assert r.values["wt_ed_circ_sd_mean_mm"] < 0.5
    assert abs(r.values["lv_eccentricity_ed"] - 1.0) < 0.03  # a round cavity
    assert abs(r.values["lv_eccentricity_es"] - 1.0) < 0.03
    # Every segment's cavity shrinks by 4 mm of radius: EF 1 - ((r - 4) / r)^2, 31 % at the base
    # (r = 24 mm) to 44 % at the apex (r = 16 mm), the same in every sector of a slice.
    seg_ef = np.array([r.values[f"lv_ef_seg{s:02d}_pct"] for s in range(1, 17)])
    assert np.all((seg_ef > 28.0) & (seg_ef < 47.0)), seg_ef
    assert r.values["lv_ef_segment_sd_pct"] < 5.0


def _sector(shape_yx: tuple[int, int], spacing_yx: tuple[float, float], lo_deg: float, hi_deg: float,
            rotate_deg: float) -> np.ndarray:
    """Bool (y, x): the pixels of :func:`_heart`'s grid whose angle lies in [lo, hi) degrees."""
    yy, xx = np.mgrid[0:shape_yx[0], 0:shape_yx[1]]
    dy, dx = (yy - shape_yx[0] / 2) * spacing_yx[0], (xx - shape_yx[1] / 2) * spacing_yx[1]
    ang = np.mod(np.degrees(np.arctan2(-dy, dx)) - rotate_deg, 360.0)
    return (ang >= lo_deg) & (ang < hi_deg)


@pytest.mark.parametrize("rotate", [0.0, 130.0])
@pytest.mark.parametrize("spacing", [(1.0, 1.0), (0.8, 1.3)])
def test_akinetic_sector_gives_its_segments_no_ejection_whatever_the_rotation(rotate, spacing):
    # The cavity does not move inward from 116 to 184 degrees past the anterior insertion (120
    # degrees): AHA segments 4 (basal inferior) and 10 (mid inferior) eject nothing while the
    # rest of the cavity shrinks by 6 mm of radius (EF 44-61 %).
    ed = _heart(spacing_yx=spacing, rotate_deg=rotate)
    es = _heart(spacing_yx=spacing, wall_mm=12.0, cavity_shrink_mm=6.0, rotate_deg=rotate)
    still = _sector(ed.shape[1:], spacing, 236.0, 304.0, rotate)
    es = np.where(still[None], ed, es)
    r = regional_features(ed, es, (10.0, *spacing))
    ef = np.array([r.values[f"lv_ef_seg{s:02d}_pct"] for s in range(1, 17)])
    assert abs(ef[3]) < 3.0 and abs(ef[9]) < 3.0, ef
    assert np.all(np.delete(ef[:12], [2, 3, 4, 8, 9, 10]) > 40.0), ef
    assert r.values["lv_ef_segment_min_pct"] == pytest.approx(float(np.min(ef)))
    assert r.values["lv_ef_segment_max_pct"] > 55.0
    assert r.values["lv_ef_segment_sd_pct"] > 15.0


@pytest.mark.parametrize("rotate", [0.0, 90.0, 215.0])
@pytest.mark.parametrize("spacing", [(1.0, 1.0), (0.8, 1.3)])
def test_thinned_sector_is_found_in_its_segment_whatever_the_rotation_and_pixels(rotate, spacing):
    # Thin (4 mm), akinetic wall from 60 to 120 degrees past the anterior insertion at 120
    # degrees (+-4 degrees, so that the whole segment is thin): AHA segments 4 (basal inferior)
    # and 10 (mid inferior). ``rotate_deg`` turns the RV and the thin sector together.
    kw = {"thin_deg": (236.0, 304.0), "rotate_deg": rotate}
    ed = _heart(spacing_yx=spacing, wall_mm=8.0, thin_mm=4.0, **kw)
    es = _heart(spacing_yx=spacing, wall_mm=12.0, thin_mm=4.0, cavity_shrink_mm=4.0, **kw)
    r = regional_features(ed, es, (10.0, *spacing))
    basal, mid = _segments(r.values, "wt_ed", range(1, 7)), _segments(r.values, "wt_ed", range(7, 13))
    assert int(np.argmin(basal)) + 1 == 4, basal
    assert int(np.argmin(mid)) + 7 == 10, mid
    assert basal[3] < 6.0 and mid[3] < 6.0
    others = np.delete(np.concatenate([basal, mid]), [3, 9])
    assert np.all(others > 6.5), others
    assert r.values["n_thin_segments"] >= 2
    assert r.values["thickening_seg04_pct"] < 25.0 and r.values["thickening_seg10_pct"] < 25.0
    assert r.values["n_hypokinetic_segments"] >= 2
    assert abs(((r.values["anterior_insertion_deg"] - 120.0 - rotate) + 180) % 360 - 180) < 8.0


def test_base_at_high_z_gives_the_same_segments():
    ed = _heart(thin_mm=4.0, thin_deg=(240.0, 300.0))
    es = _heart(wall_mm=12.0, thin_mm=4.0, thin_deg=(240.0, 300.0), cavity_shrink_mm=4.0)
    a = regional_features(ed, es, (10.0, 1.0, 1.0)).values
    b = regional_features(ed[::-1], es[::-1], (10.0, 1.0, 1.0)).values
    levels, base_high = slice_levels(ed[::-1])
    assert base_high and levels[8] == "basal" and levels[0] == "apical"
    for k in REGIONAL_NAMES:
        assert a[k] == pytest.approx(b[k], nan_ok=True), k


def test_mirrored_store_swaps_anterior_and_inferior():
    ed = _heart(thin_mm=4.0, thin_deg=(240.0, 300.0))  # segment 4 in the standard view
    es = _heart(wall_mm=12.0, cavity_shrink_mm=4.0)
    r = regional_features(ed[:, :, ::-1], es[:, :, ::-1], (10.0, 1.0, 1.0), mirrored=True)
    assert int(np.argmin(_segments(r.values, "wt_ed", range(1, 7)))) + 1 == 4


def test_no_rv_gives_nan_segments_with_a_reason_and_keeps_the_rest():
    ed, es = _heart(rv=False), _heart(rv=False, wall_mm=12.0, cavity_shrink_mm=4.0)
    r = regional_features(ed, es, (10.0, 1.0, 1.0))
    assert all(math.isnan(r.values[f"wt_ed_seg{s:02d}_mm"]) for s in range(1, 17))
    assert all(math.isnan(r.values[f"lv_ef_seg{s:02d}_pct"]) for s in range(1, 17))
    assert math.isnan(r.values["lv_ef_segment_min_pct"])
    assert math.isnan(r.values["n_thin_segments"])
    assert any("no RV insertion point" in n for n in r.notes)
    assert any("no RV-myocardium contact" in n for n in r.notes)
    assert abs(r.values["thickening_mid_pct"] - 50.0) < 15.0  # anchor-free features survive
    assert np.isfinite(r.values["wt_ed_circ_sd_mean_mm"])
    assert math.isnan(r.values["lv_eccentricity_ed"]) and math.isnan(r.values["lv_eccentricity_es"])
    assert any("no RV: no septal axis" in n for n in r.notes)


def test_rv_around_the_whole_lv_is_not_a_septum():
    p = boundary_points(_heart(rv_deg=(0.0, 360.0))[4], (1.0, 1.0))
    assert not isinstance(p, str)
    reason = insertion_angles(p)
    assert isinstance(reason, str) and "surrounds" in reason


def test_slices_without_myocardium_or_cavity_and_empty_masks_do_not_crash():
    ed = _heart()
    es = _heart(wall_mm=12.0, cavity_shrink_mm=4.0)
    es[3] = 0  # ES slice without anything
    ed[8][ed[8] == 3] = 2  # apical ED slice: myocardium without cavity
    r = regional_features(ed, es, (10.0, 1.0, 1.0))
    assert any("ES slice 3: no myocardium" in n for n in r.notes)
    assert any("ED slice 8: no LV cavity" in n for n in r.notes)
    assert np.isfinite(r.values["wt_ed_seg01_mm"])
    nothing = np.zeros((5, 40, 40), np.uint8)
    empty = regional_features(nothing, nothing, (8.0, 1.5, 1.5))
    assert all(math.isnan(v) for v in empty.values.values())
    assert empty.notes and "no LV myocardium" in empty.notes[0]


def _flattened_slice(septal_mm: float, parallel_mm: float, rv_side: float, rotate_deg: float,
                     spacing_yx: tuple[float, float]) -> np.ndarray:
    """(y, x) labels: an elliptic LV cavity with semi-axis ``septal_mm`` towards the RV (on the
    ``rv_side`` +1 / -1 of it) and ``parallel_mm`` along the septum, an 8 mm myocardium and an RV
    block beyond the septum; the whole slice turned by ``rotate_deg``."""
    sy, sx = spacing_yx
    ny, nx = int(120 / sy), int(120 / sx)
    yy, xx = np.mgrid[0:ny, 0:nx]
    dy, dx = (yy - ny / 2) * sy, (xx - nx / 2) * sx
    t = math.radians(rotate_deg)
    along = rv_side * (dx * math.cos(t) - dy * math.sin(t))  # towards the RV, mm
    across = dx * math.sin(t) + dy * math.cos(t)
    lab = np.zeros((ny, nx), np.uint8)
    lab[(along > septal_mm + 8) & (along < septal_mm + 24) & (np.abs(across) < 20)] = 1
    outer = (along / (septal_mm + 8)) ** 2 + (across / (parallel_mm + 8)) ** 2 < 1
    lab[outer] = 2
    lab[(along / septal_mm) ** 2 + (across / parallel_mm) ** 2 < 1] = 3
    return lab


@pytest.mark.parametrize("rotate", [0.0, 37.0, 120.0])
@pytest.mark.parametrize("spacing", [(1.0, 1.0), (0.8, 1.3)])
@pytest.mark.parametrize("rv_side", [1.0, -1.0])
def test_eccentricity_of_a_flattened_cavity_is_its_axis_ratio(rotate, spacing, rv_side):
    # A uniform ellipse's position SD along an axis is its semi-axis / 2, so the ratio is exact up
    # to pixelation, whatever the rotation, pixel shape or side the RV is on.
    flat = _flattened_slice(14.0, 21.0, rv_side, rotate, spacing)
    assert lv_eccentricity(flat, spacing) == pytest.approx(1.5, abs=0.04)
    round_ = _flattened_slice(18.0, 18.0, rv_side, rotate, spacing)
    assert lv_eccentricity(round_, spacing) == pytest.approx(1.0, abs=0.03)
    # Elongated towards the RV (the opposite of septal flattening): below 1.
    assert lv_eccentricity(_flattened_slice(21.0, 14.0, rv_side, rotate, spacing), spacing) < 0.7


def test_eccentricity_without_rv_or_cavity_says_why():
    flat = _flattened_slice(14.0, 21.0, 1.0, 0.0, (1.0, 1.0))
    no_rv = np.where(flat == 1, 0, flat)
    assert "no RV" in str(lv_eccentricity(no_rv, (1.0, 1.0)))
    no_cavity = np.where(flat == 3, 2, flat)
    assert "no LV cavity" in str(lv_eccentricity(no_cavity, (1.0, 1.0)))
    sliver = np.where(flat == 3, 2, flat)
    sliver[60, 60:65] = 3
    assert "too small" in str(lv_eccentricity(sliver, (1.0, 1.0)))
