"""Clinical cardiac indices from short-axis label maps (ED and ES).

Label convention: :mod:`cardioclr.clinical.labels` (0 background, 1 RV cavity, 2 LV myocardium,
3 LV cavity), as in the store's expert masks, the segmentation output and the phantoms.

This module is the one home of the body surface area (:func:`mosteller_bsa`), the ejection
fraction (:func:`ejection_fraction_pct`) and the myocardial mass (:func:`myocardial_mass_g`).

Volumes are voxel counts times the voxel volume (slice spacing x pixel x pixel, mm^3 / 1000 =
mL): the "summation of discs" a cardiologist would compute from the same contours. The slice
spacing of the short-axis stack (not the slice thickness) is used, so gaps between slices are
counted as if filled by the slice above, as in the ACDC reference volumes.

Wall thickness (mm) is measured in 2D, per slice, with a distance transform:

1. the epicardial boundary of a slice is every myocardium pixel with a 4-neighbour that is
   neither myocardium nor LV cavity;
2. for each boundary pixel, the thickness is the Euclidean distance (in mm, using the in-plane
   spacing) from its centre to the nearest LV-cavity pixel centre. For an annulus of inner radius
   r1 and outer radius r2 this is ~ (r2 - 0.5 px) - (r1 - 0.5 px) = r2 - r1;
3. only the connected LV (myocardium + cavity) with the largest cavity is measured, so stray
   fragments of a predicted mask do not count; volumes and mass still count every voxel;
4. the boundary pixels are grouped into :data:`N_SEGMENTS` equal angular sectors around the
   LV-cavity centroid of the slice, and a sector's thickness is the mean over its pixels.

The statistics ``wt_{ed,es}_{max,mean,std}_mm`` are taken over all (slice, sector) values. The
sectors are not anatomically anchored (no RV-insertion reference): they only make the statistic
independent of how many boundary pixels each part of the wall has. ``wt_{ed,es}_sector_sd_mm``
is the mean over slices of the within-slice standard deviation across sectors (asymmetric, e.g.
septal, hypertrophy). Slices with myocardium but no LV cavity (apex) have no defined thickness
and are skipped. Every index is NaN, never an exception or a numpy warning, when the structure it
needs is absent.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.ndimage import distance_transform_edt, label

from cardioclr.clinical.labels import LABEL_MEANINGS, LV_CAVITY, LV_MYOCARDIUM, MAX_LABEL, RV_CAVITY
from cardioclr.errors import CardioclrError

#: Density of myocardium (g/mL) that turns a myocardial volume into a mass.
MYOCARDIUM_DENSITY_G_PER_ML = 1.05
N_SEGMENTS = 6

#: Indices divided by body surface area (Mosteller, m^2) when height and weight are known.
INDEXED = ("lv_edv_ml", "lv_esv_ml", "lv_sv_ml", "rv_edv_ml", "rv_esv_ml", "rv_sv_ml",
           "myo_mass_ed_g", "myo_mass_es_g")

#: Every key :func:`compute_indices` returns, in a stable order (the feature-table columns).
INDEX_NAMES: tuple[str, ...] = (
    "lv_edv_ml", "lv_esv_ml", "lv_sv_ml", "lv_ef_pct",
    "rv_edv_ml", "rv_esv_ml", "rv_sv_ml", "rv_ef_pct",
    "myo_mass_ed_g", "myo_mass_es_g",
    "wt_ed_max_mm", "wt_ed_mean_mm", "wt_ed_std_mm", "wt_ed_sector_sd_mm",
    "wt_es_max_mm", "wt_es_mean_mm", "wt_es_std_mm", "wt_es_sector_sd_mm",
    "thickening_mean_pct", "thickening_max_pct",
    "rv_lv_edv_ratio", "rv_lv_esv_ratio", "mass_lv_edv_ratio_g_per_ml",
    "bsa_m2",
    *(f"{k}_per_m2" for k in INDEXED),
)


def mosteller_bsa(height_cm: float | None, weight_kg: float | None) -> float:
    """Body surface area (m^2) by Mosteller: sqrt(height_cm * weight_kg / 3600).

    NaN when either value is unknown (None, not a number) or not a positive finite number:
    never an exception, so one patient's missing Info.cfg field only blanks its indexed values.
    """
    try:
        h, w = float(height_cm), float(weight_kg)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan
    if not (math.isfinite(h) and math.isfinite(w)) or h <= 0 or w <= 0:
        return math.nan
    return math.sqrt(h * w / 3600.0)


def ejection_fraction_pct(edv_ml: float, esv_ml: float) -> float:
    """Ejection fraction in %: 100 * (EDV - ESV) / EDV; NaN when EDV is not a positive finite
    volume or ESV is not finite (never an exception or a numpy warning)."""
    if not (math.isfinite(edv_ml) and math.isfinite(esv_ml)) or edv_ml <= 0:
        return math.nan
    return 100.0 * (edv_ml - esv_ml) / edv_ml


def myocardial_mass_g(myocardium_ml: float) -> float:
    """Myocardial mass in g: volume (mL) x :data:`MYOCARDIUM_DENSITY_G_PER_ML`."""
    return myocardium_ml * MYOCARDIUM_DENSITY_G_PER_ML


def _div(a: float, b: float) -> float:
    """a / b, NaN when either is not finite or b is 0 (no numpy warning)."""
    if not (math.isfinite(a) and math.isfinite(b)) or b == 0:
        return math.nan
    return a / b


def _check(labels: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(labels)
    if a.ndim != 3:
        raise CardioclrError(f"{name}: expected a (z, y, x) label map, got shape {a.shape}")
    if a.size and (a.min() < 0 or a.max() > MAX_LABEL):
        raise CardioclrError(f"{name}: labels must be 0-{MAX_LABEL} ({LABEL_MEANINGS}); "
                             f"found values {np.unique(a)[:10].tolist()}")
    return a


def _volume_ml(labels: np.ndarray, label: int, voxel_ml: float) -> float:
    """Volume of one label in mL; NaN when the label is absent (an empty structure is a failure
    of segmentation, not a volume of 0 that would make EF look like 0/0 or 100%)."""
    n = int(np.count_nonzero(labels == label))
    return n * voxel_ml if n else math.nan


def slice_sector_thickness(labels_2d: np.ndarray, spacing_yx: Sequence[float],
                           n_segments: int = N_SEGMENTS) -> np.ndarray:
    """Wall thickness (mm) of each angular sector of one short-axis slice.

    ``labels_2d``: (y, x) label map. Returns a float array (n_segments,) with NaN for sectors
    without epicardial boundary pixels; all NaN when the slice has no myocardium or no LV cavity.
    """
    myo = labels_2d == LV_MYOCARDIUM
    cav = labels_2d == LV_CAVITY
    out = np.full(n_segments, np.nan)
    if not myo.any() or not cav.any():
        return out
    # Work on the bounding box of the LV (+1 px margin) so the distance transform is small.
    ys, xs = np.nonzero(myo | cav)
    y0, y1 = max(ys.min() - 1, 0), ys.max() + 2
    x0, x1 = max(xs.min() - 1, 0), xs.max() + 2
    myo, cav = myo[y0:y1, x0:x1], cav[y0:y1, x0:x1]
    myo, cav, boundary = lv_component_and_epicardium(myo, cav)
    if not boundary.any():
        return out
    dist = distance_transform_edt(~cav, sampling=tuple(float(s) for s in spacing_yx))
    by, bx = np.nonzero(boundary)
    thick = dist[by, bx]
    cy, cx = (c.mean() for c in np.nonzero(cav))
    angle = np.arctan2((by - cy) * spacing_yx[0], (bx - cx) * spacing_yx[1])
    sector = np.minimum(((angle + np.pi) / (2 * np.pi) * n_segments).astype(int), n_segments - 1)
    counts = np.bincount(sector, minlength=n_segments)
    sums = np.bincount(sector, weights=thick, minlength=n_segments)
    has = counts > 0
    out[has] = sums[has] / counts[has]
    return out


def wall_thickness_stats(labels: np.ndarray, spacing_yx: Sequence[float]) -> dict[str, float]:
    """Max, mean and std (mm) over all (slice, sector) thicknesses of a (z, y, x) label map,
    plus ``sector_sd``: the mean over slices of the across-sector std. NaN when none exists."""
    per_slice = [slice_sector_thickness(s, spacing_yx) for s in labels]
    vals = np.concatenate(per_slice) if per_slice else np.empty(0)
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return {"max": math.nan, "mean": math.nan, "std": math.nan, "sector_sd": math.nan}
    sds = [float(np.std(t[np.isfinite(t)])) for t in per_slice if np.isfinite(t).sum() >= 2]
    return {"max": float(vals.max()), "mean": float(vals.mean()), "std": float(vals.std()),
            "sector_sd": float(np.mean(sds)) if sds else math.nan}


def compute_indices(ed_labels: np.ndarray, es_labels: np.ndarray, spacing_zyx: Sequence[float],
                    height_cm: float | None = None, weight_kg: float | None = None) -> dict[str, float]:
    """Clinical indices of one patient from ED and ES label maps.

    ``ed_labels``/``es_labels``: integer (z, y, x) maps with labels 0-3 (see module docstring);
    they may differ in z only if the spacing is the same (it is one stack). ``spacing_zyx``:
    (slice spacing, pixel y, pixel x) in mm. ``height_cm``/``weight_kg`` give the Mosteller BSA
    for the ``*_per_m2`` indices (NaN when unknown).

    Returns a dict with exactly the keys of :data:`INDEX_NAMES`: volumes in mL, EF and thickening
    in %, mass in g (myocardial volume x 1.05 g/mL), thickness in mm, ratios unitless (mass/EDV in
    g/mL), indexed values per m^2. Missing structures give NaN.
    """
    ed = _check(ed_labels, "ed_labels")
    es = _check(es_labels, "es_labels")
    sp = tuple(float(s) for s in spacing_zyx)
    if len(sp) != 3 or not all(math.isfinite(s) and s > 0 for s in sp):
        raise CardioclrError(f"spacing_zyx must be 3 positive finite numbers (mm), got {spacing_zyx}")
    voxel_ml = sp[0] * sp[1] * sp[2] / 1000.0

    r: dict[str, float] = {}
    r["lv_edv_ml"] = _volume_ml(ed, LV_CAVITY, voxel_ml)
    r["lv_esv_ml"] = _volume_ml(es, LV_CAVITY, voxel_ml)
    r["lv_sv_ml"] = r["lv_edv_ml"] - r["lv_esv_ml"]
    r["lv_ef_pct"] = ejection_fraction_pct(r["lv_edv_ml"], r["lv_esv_ml"])
    r["rv_edv_ml"] = _volume_ml(ed, RV_CAVITY, voxel_ml)
    r["rv_esv_ml"] = _volume_ml(es, RV_CAVITY, voxel_ml)
    r["rv_sv_ml"] = r["rv_edv_ml"] - r["rv_esv_ml"]
    r["rv_ef_pct"] = ejection_fraction_pct(r["rv_edv_ml"], r["rv_esv_ml"])
    r["myo_mass_ed_g"] = myocardial_mass_g(_volume_ml(ed, LV_MYOCARDIUM, voxel_ml))
    r["myo_mass_es_g"] = myocardial_mass_g(_volume_ml(es, LV_MYOCARDIUM, voxel_ml))

    for phase, lab in (("ed", ed), ("es", es)):
        st = wall_thickness_stats(lab, sp[1:])
        for k, v in st.items():
            r[f"wt_{phase}_{k}_mm" if k != "sector_sd" else f"wt_{phase}_sector_sd_mm"] = v
    r["thickening_mean_pct"] = 100.0 * _div(r["wt_es_mean_mm"] - r["wt_ed_mean_mm"], r["wt_ed_mean_mm"])
    r["thickening_max_pct"] = 100.0 * _div(r["wt_es_max_mm"] - r["wt_ed_max_mm"], r["wt_ed_max_mm"])

    r["rv_lv_edv_ratio"] = _div(r["rv_edv_ml"], r["lv_edv_ml"])
    r["rv_lv_esv_ratio"] = _div(r["rv_esv_ml"], r["lv_esv_ml"])
    r["mass_lv_edv_ratio_g_per_ml"] = _div(r["myo_mass_ed_g"], r["lv_edv_ml"])

    bsa = mosteller_bsa(height_cm, weight_kg)
    r["bsa_m2"] = bsa
    for k in INDEXED:
        r[f"{k}_per_m2"] = _div(r[k], bsa)
    return {k: float(r[k]) for k in INDEX_NAMES}


def lv_component_and_epicardium(myo: np.ndarray, cav: np.ndarray
                                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The connected LV (myocardium + cavity, 8-connected) with the most cavity, and its
    epicardial myocardium pixels. ``myo``, ``cav``: bool (y, x); returns (myo, cav, boundary).

    A stray myocardium blob of a predicted mask would otherwise add a huge "thickness" (its
    distance to the cavity), and a stray cavity blob would shift the sector centre.
    """
    comp, n_comp = label(myo | cav, structure=np.ones((3, 3), bool))
    if n_comp > 1:
        keep = int(np.argmax(np.bincount(comp[cav], minlength=n_comp + 1)[1:])) + 1
        myo, cav = myo & (comp == keep), cav & (comp == keep)
    inside = np.pad(myo | cav, 1, constant_values=False)
    # A myocardium pixel is epicardial when one of its 4 neighbours is outside the LV.
    outside_nb = (~inside[:-2, 1:-1]) | (~inside[2:, 1:-1]) | (~inside[1:-1, :-2]) | (~inside[1:-1, 2:])
    return myo, cav, myo & outside_nb
