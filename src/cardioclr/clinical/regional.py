"""Regional myocardial features from short-axis label maps: the AHA 16-segment model.

Label convention (as :mod:`cardioclr.clinical.indices`): 0 background, 1 RV cavity, 2 LV
myocardium, 3 LV cavity. Masks may be predicted or expert; spacing is the store's
``spacing_zyx`` = (slice spacing, pixel y, pixel x) in mm and pixels may be anisotropic: every
distance and angle below is computed in mm, never in pixels.

Geometry (Cerqueira et al., Circulation 2002, the AHA 17-segment model without the apical cap):

* **Levels.** The LV slices (myocardium present at ED) are split into basal, mid and apical
  thirds along z. The base is the end whose slices have the larger LV cross-section (ACDC stores
  slice 0 at the base, but the code does not assume it).
* **Anchor.** In every ED slice the RV-myocardium junction is the set of epicardial myocardium
  pixels within :data:`CONTACT_MM` of the RV cavity. Their angles around the LV cavity centroid
  cover an arc (the septum); its two ends are the RV insertion points. Going counter-clockwise
  in the standard short-axis view (anterior up, RV on the viewer's left, seen from the apex:
  ACDC's in-store orientation, checked on images), the arc runs from the anterior insertion to
  the inferior one. The patient's anchor is the circular mean of the anterior insertion angles
  over the ED slices where they were found; the ES phase uses the same anchor. ``mirrored=True``
  is for stores whose in-plane axes are mirrored with respect to that view.
* **Segments.** Basal (1-6) and mid (7-12) slices: six 60 degree sectors, segment 2
  (anteroseptal) / 8 starting at the anterior insertion and continuing through the septum
  (3/9 inferoseptal, 4/10 inferior, 5/11 inferolateral, 6/12 anterolateral, 1/7 anterior).
  Apical slices (13-16): four 90 degree sectors, 14 (septal) centred on the septum (60 degrees
  past the anterior insertion), then 15 inferior, 16 lateral, 13 anterior.

Wall thickness at an epicardial boundary pixel is its distance (mm) to the nearest LV-cavity
pixel centre (as in :mod:`cardioclr.clinical.indices`); a segment's thickness is the mean over
its pixels in all slices of its level. Systolic thickening of a segment is
``100 * (ES - ED) / ED`` (%). A segment is *thin* when its ED thickness is below
:data:`THIN_MM` (6 mm: below the lower normal limit of end-diastolic LV wall thickness, and the
usual cut-off for non-viable, scarred myocardium) and *hypokinetic* when its thickening is below
:data:`HYPOKINETIC_PCT` (25 %, the middle of the 20-30 % range used to call a segment
hypokinetic on cine thickening; normal segments thicken by 40-60 %).

Segmental ejection fraction (regional EF) of a segment is ``100 * (V_ED - V_ES) / V_ED`` (%),
where V is the number of LV-cavity pixels of the segment's slices that lie in its angular sector,
at ED and at ES, around each slice's **ED** cavity centroid (a fixed frame, so that a segment
that does not move inward keeps its ED share of the cavity; a frame following the ES centroid
would shift towards the akinetic wall and hide part of the defect). It is the cavity's view of
wall motion: it needs only the endocardial border, which segmentation draws far better than
the epicardial one that thickening needs (LV Dice ~0.96 against MYO ~0.88), and regional
heterogeneity of wall motion is what separates an infarct (akinetic segments beside normal
ones) from dilated cardiomyopathy (every segment hypokinetic).

Heterogeneity does not need the anchor: each slice's boundary is cut into
:data:`N_HETEROGENEITY_SECTORS` equal sectors around the cavity centroid and the circumferential
SD and max/min ratio of the sector thicknesses are taken per slice, then summarised over slices
(mean and max), with the SD over slices of the slice-mean thickness.

LV eccentricity (septal flattening): in each mid-level slice the LV cavity's spread (SD of its
pixel positions, mm) along the axis parallel to the septum divided by its spread along the
septal-lateral axis (LV cavity centroid -> RV cavity centroid); the patient's value at ED and at
ES is the median over the mid slices. 1 for a round cavity, above 1 when the septum is flattened
into a D shape: the moment form of the echocardiographic / CMR eccentricity index (Ryan et al.,
JACC 1985), whose diastolic and systolic values mark RV volume and pressure overload.

Every feature that cannot be measured is NaN and the reason is recorded in
:attr:`RegionalFeatures.notes` (a slice without myocardium or LV cavity, no RV contact, an RV
that surrounds the LV); nothing raises for an anatomically odd mask.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.ndimage import distance_transform_edt

from cardioclr.clinical.indices import MYOCARDIUM_DENSITY_G_PER_ML, lv_component_and_epicardium
from cardioclr.clinical.labels import LV_CAVITY, LV_MYOCARDIUM, RV_CAVITY

#: AHA segment numbers per level (basal, mid, apical).
LEVEL_SEGMENTS: dict[str, tuple[int, ...]] = {
    "basal": (1, 2, 3, 4, 5, 6), "mid": (7, 8, 9, 10, 11, 12), "apical": (13, 14, 15, 16)}
LEVELS = ("basal", "mid", "apical")
N_AHA = 16
THIN_MM = 6.0
HYPOKINETIC_PCT = 25.0
#: Epicardial pixels closer than this to the RV cavity form the RV-myocardium junction (mm).
CONTACT_MM = 3.0
#: A junction arc outside these bounds (degrees) is not a septum: no insertion points.
MIN_ARC_DEG, MAX_ARC_DEG = 30.0, 270.0
N_HETEROGENEITY_SECTORS = 24
N_PROFILE = 5  # points of the base-to-apex volume profiles
#: Fewest LV cavity pixels of a slice whose eccentricity is measured (a sliver has no shape).
MIN_ECCENTRICITY_PIXELS = 20

# AHA segment of each 60 degree (basal, mid) or 90 degree (apical) sector, counted
# counter-clockwise from the anterior insertion (basal/mid) or from 15 degrees past it (apical).
_SIX = (2, 3, 4, 5, 6, 1)
_FOUR = (14, 15, 16, 13)
_APICAL_OFFSET_DEG = 15.0  # septal apical sector = septum centre (60) -45 .. +45 degrees


def segment_arc_deg(segment: int) -> tuple[str, float, float]:
    """(level, start, width) of AHA ``segment`` (1-16): its sector starts ``start`` degrees
    counter-clockwise past the anterior RV insertion and spans ``width`` degrees."""
    if segment in _FOUR:
        return "apical", _APICAL_OFFSET_DEG + 90.0 * _FOUR.index(segment), 90.0
    for level in ("basal", "mid"):
        if segment in LEVEL_SEGMENTS[level]:
            return level, 60.0 * _SIX.index(segment - (6 if level == "mid" else 0)), 60.0
    raise ValueError(f"AHA segment {segment} is not one of 1-{N_AHA}")


def _seg(n: int) -> str:
    return f"seg{n:02d}"


#: Every key of :attr:`RegionalFeatures.values`, in a stable order (feature-table columns).
REGIONAL_NAMES: tuple[str, ...] = (
    *(f"wt_ed_{_seg(s)}_mm" for s in range(1, N_AHA + 1)),
    *(f"wt_es_{_seg(s)}_mm" for s in range(1, N_AHA + 1)),
    *(f"thickening_{_seg(s)}_pct" for s in range(1, N_AHA + 1)),
    *(f"lv_ef_{_seg(s)}_pct" for s in range(1, N_AHA + 1)),
    "lv_ef_segment_min_pct", "lv_ef_segment_max_pct", "lv_ef_segment_sd_pct",
    "wt_ed_segment_min_mm", "wt_ed_segment_max_mm", "wt_ed_segment_sd_mm",
    "thickening_segment_min_pct", "thickening_segment_sd_pct",
    "n_thin_segments", "n_hypokinetic_segments",
    *(f"thickening_{lv}_pct" for lv in LEVELS),
    *(f"lv_ef_{lv}_pct" for lv in LEVELS),
    *(f"wt_{ph}_{stat}" for ph in ("ed", "es")
      for stat in ("circ_sd_mean_mm", "circ_sd_max_mm", "max_min_ratio_mean", "max_min_ratio_max",
                   "slice_mean_sd_mm")),
    "lv_sphericity_ed", "lv_sphericity_es", "lv_long_axis_ed_mm", "lv_short_axis_ed_mm",
    *(f"lv_ed_profile_{i}_ml" for i in range(N_PROFILE)),
    *(f"lv_es_profile_{i}_ml" for i in range(N_PROFILE)),
    *(f"rv_ed_profile_{i}_ml" for i in range(N_PROFILE)),
    "rv_lv_sv_ratio", "rv_lv_ef_ratio", "mass_lv_esv_ratio_g_per_ml",
    "anterior_insertion_deg", "septal_arc_deg", "n_insertion_slices",
    "lv_eccentricity_ed", "lv_eccentricity_es",
)


@dataclass
class RegionalFeatures:
    """Result of :func:`regional_features`: ``values`` (keys :data:`REGIONAL_NAMES`; units in
    the names: mm, %, mL, degrees; ratios and counts unitless) and ``notes`` (why a value is NaN)."""

    values: dict[str, float]
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class BoundaryPoints:
    """Epicardial boundary of one slice: ``angle`` (rad, counter-clockwise in the standard view),
    ``thickness`` (mm) and ``rv_contact`` (bool), each (n,); ``centre_yx`` in pixels."""

    angle: np.ndarray
    thickness: np.ndarray
    rv_contact: np.ndarray
    centre_yx: tuple[float, float]


def boundary_points(labels_2d: np.ndarray, spacing_yx: Sequence[float],
                    mirrored: bool = False) -> BoundaryPoints | str:
    """Epicardial boundary points of one (y, x) slice, or the reason why there are none.

    Only the connected LV (myocardium + cavity) with the most cavity is measured (a stray blob of
    a predicted mask would add a spurious thickness). Angles are measured in mm around the
    cavity centroid, counter-clockwise with y pointing down the image (anterior up), so that a
    rotation of the heart in the image shifts every angle by the same amount.
    """
    sy, sx = (float(s) for s in spacing_yx)
    myo = labels_2d == LV_MYOCARDIUM
    cav = labels_2d == LV_CAVITY
    if not myo.any():
        return "no myocardium"
    if not cav.any():
        return "no LV cavity"
    myo, cav, boundary = lv_component_and_epicardium(myo, cav)
    if not boundary.any():
        return "no epicardial boundary"
    by, bx = np.nonzero(boundary)
    # Distances on the LV bounding box (+ margin) only: the full-grid transform is 10x larger.
    pad = int(math.ceil(CONTACT_MM / min(sy, sx))) + 2
    y0, x0 = max(int(by.min()) - pad, 0), max(int(bx.min()) - pad, 0)
    y1, x1 = int(by.max()) + pad + 1, int(bx.max()) + pad + 1
    dist = distance_transform_edt(~cav[y0:y1, x0:x1], sampling=(sy, sx))
    thick = dist[by - y0, bx - x0]
    rv = labels_2d[y0:y1, x0:x1] == RV_CAVITY
    if rv.any():
        rv_dist = distance_transform_edt(~rv, sampling=(sy, sx))
        contact = rv_dist[by - y0, bx - x0] <= CONTACT_MM
    else:
        contact = np.zeros(by.size, bool)
    cy, cx = (float(c.mean()) for c in np.nonzero(cav))
    return BoundaryPoints(_angles(by, bx, (cy, cx), (sy, sx), mirrored), thick, contact, (cy, cx))


def _angles(y: np.ndarray, x: np.ndarray, centre_yx: tuple[float, float], spacing_yx: Sequence[float],
            mirrored: bool) -> np.ndarray:
    """Angle (rad in [0, 2 pi), counter-clockwise in the standard view) of pixels (y, x) (n,)
    around ``centre_yx`` (pixels), measured in mm."""
    sy, sx = (float(s) for s in spacing_yx)
    angle = np.arctan2(-(y - centre_yx[0]) * sy, (x - centre_yx[1]) * sx)  # y down: -dy is "up"
    return np.mod(-angle if mirrored else angle, 2 * np.pi)


def insertion_angles(points: BoundaryPoints) -> tuple[float, float] | str:
    """(anterior insertion angle, septal arc length) in radians, or the reason for failure.

    The contact angles cover an arc; its complement is the largest gap between consecutive
    sorted angles. The arc starts (counter-clockwise) at the anterior insertion.
    """
    a = np.sort(points.angle[points.rv_contact])
    if a.size < 3:
        return "no RV-myocardium contact"
    gaps = np.diff(np.concatenate([a, a[:1] + 2 * np.pi]))
    g = int(np.argmax(gaps))
    arc = 2 * np.pi - float(gaps[g])
    if arc < math.radians(MIN_ARC_DEG):
        return f"RV-myocardium contact arc only {math.degrees(arc):.0f} degrees"
    if arc > math.radians(MAX_ARC_DEG):
        return f"RV contact surrounds the LV ({math.degrees(arc):.0f} degrees): no insertion points"
    start = float(a[(g + 1) % a.size])
    return start, arc


def lv_eccentricity(labels_2d: np.ndarray, spacing_yx: Sequence[float]) -> float | str:
    """LV eccentricity of one (y, x) slice (module docstring; unitless), or why it is undefined.

    The cavity of the connected LV with the most cavity only, as :func:`boundary_points`.
    """
    sy, sx = (float(s) for s in spacing_yx)
    cav = labels_2d == LV_CAVITY
    rv = labels_2d == RV_CAVITY
    if not cav.any():
        return "no LV cavity"
    if not rv.any():
        return "no RV: no septal axis for the eccentricity"
    _, cav, _ = lv_component_and_epicardium(labels_2d == LV_MYOCARDIUM, cav)
    if cav.sum() < MIN_ECCENTRICITY_PIXELS:  # the kept LV's cavity, not stray cavity blobs
        return "LV cavity too small for an eccentricity"
    cy, cx = np.nonzero(cav)
    pos = np.stack([cy * sy, cx * sx], axis=1)  # mm
    centre = pos.mean(axis=0)
    ry, rx = np.nonzero(rv)
    septal = np.array([ry.mean() * sy, rx.mean() * sx]) - centre
    norm = float(np.linalg.norm(septal))
    if norm == 0:
        return "RV centred on the LV cavity: no septal axis for the eccentricity"
    septal /= norm
    parallel = np.array([-septal[1], septal[0]])
    rel = pos - centre
    return _div(float(np.std(rel @ parallel)), float(np.std(rel @ septal)))


def _circular_mean(angles: Sequence[float]) -> float:
    return float(np.mod(np.arctan2(np.mean(np.sin(angles)), np.mean(np.cos(angles))), 2 * np.pi))


def _segment_of(angle: np.ndarray, anchor: float, level: str) -> np.ndarray:
    """AHA segment number of each boundary angle (rad) for a slice of ``level``."""
    rel = np.degrees(np.mod(angle - anchor, 2 * np.pi))
    if level == "apical":
        idx = (np.mod(rel - _APICAL_OFFSET_DEG, 360.0) // 90.0).astype(int).clip(0, 3)
        return np.asarray(np.asarray(_FOUR)[idx], dtype=np.int64)
    idx = (rel // 60.0).astype(int).clip(0, 5)
    return np.asarray(np.asarray(_SIX)[idx] + (6 if level == "mid" else 0), dtype=np.int64)


def slice_levels(ed: np.ndarray) -> tuple[dict[int, str], bool]:
    """Level (basal/mid/apical) of each z index with LV myocardium at ED, and whether the base is
    at the high-z end. Thirds by slice count: 3k slices -> k each; a remainder goes to mid, then
    basal (the apex is the smallest part of the stack)."""
    lv_area = ((ed == LV_MYOCARDIUM) | (ed == LV_CAVITY)).sum(axis=(1, 2))
    zs = [int(z) for z in np.nonzero((ed == LV_MYOCARDIUM).any(axis=(1, 2)))[0]]
    if not zs:
        return {}, False
    half = len(zs) // 2
    base_high = bool(half and lv_area[zs[-half:]].mean() > lv_area[zs[:half]].mean())
    ordered = zs[::-1] if base_high else zs  # base first
    n = len(ordered)
    n_ap = n // 3
    n_mid = (n - n_ap + 1) // 2
    n_bas = n - n_ap - n_mid
    levels = ["basal"] * n_bas + ["mid"] * n_mid + ["apical"] * n_ap
    return dict(zip(ordered, levels, strict=True)), base_high


def _profile(volumes: np.ndarray) -> np.ndarray:
    """Resample a base-to-apex per-slice volume curve (mL) to :data:`N_PROFILE` points."""
    if volumes.size == 0:
        return np.full(N_PROFILE, np.nan)
    if volumes.size == 1:
        return np.full(N_PROFILE, float(volumes[0]))
    at = np.linspace(0, volumes.size - 1, N_PROFILE)
    return np.asarray(np.interp(at, np.arange(volumes.size), volumes), dtype=float)


def _nan_stats(v: list[float]) -> tuple[float, float]:
    a = np.asarray([x for x in v if math.isfinite(x)])
    return (float(a.mean()), float(a.max())) if a.size else (math.nan, math.nan)


def _div(a: float, b: float) -> float:
    if not (math.isfinite(a) and math.isfinite(b)) or b == 0:
        return math.nan
    return a / b


def regional_features(ed_labels: np.ndarray, es_labels: np.ndarray, spacing_zyx: Sequence[float],
                      mirrored: bool = False) -> RegionalFeatures:
    """Regional features of one patient (keys :data:`REGIONAL_NAMES`) from (z, y, x) ED and ES
    label maps (values 0-3) and ``spacing_zyx`` in mm. See the module docstring for the model."""
    ed, es = np.asarray(ed_labels), np.asarray(es_labels)
    sz, sy, sx = (float(s) for s in spacing_zyx)
    voxel_ml = sz * sy * sx / 1000.0
    notes: list[str] = []
    v: dict[str, float] = dict.fromkeys(REGIONAL_NAMES, math.nan)

    levels, base_high = slice_levels(ed)
    if not levels:
        notes.append("no LV myocardium at ED: no regional features")
        return RegionalFeatures(v, notes)
    order = sorted(levels, reverse=base_high)  # base -> apex z indices

    pts: dict[str, dict[int, BoundaryPoints]] = {"ed": {}, "es": {}}
    for ph, lab in (("ed", ed), ("es", es)):
        for z in order:
            if z >= lab.shape[0]:
                notes.append(f"{ph.upper()} slice {z}: outside the stack")
                continue
            r = boundary_points(lab[z], (sy, sx), mirrored)
            if isinstance(r, str):
                notes.append(f"{ph.upper()} slice {z}: {r}")
            else:
                pts[ph][z] = r

    # Anchor: anterior RV insertion, circular mean over the ED slices where it was found.
    starts, arcs = [], []
    for z, p in pts["ed"].items():
        ins = insertion_angles(p)
        if isinstance(ins, str):
            notes.append(f"ED slice {z}: {ins}")
        else:
            starts.append(ins[0])
            arcs.append(ins[1])
    anchor = _circular_mean(starts) if starts else math.nan
    v["n_insertion_slices"] = float(len(starts))
    if starts:
        v["anterior_insertion_deg"] = math.degrees(anchor)
        v["septal_arc_deg"] = math.degrees(float(np.median(arcs)))
    else:
        notes.append("no RV insertion point in any ED slice: AHA segment features are NaN")

    # Per-segment thickness (mean over the boundary pixels of every slice of its level).
    seg_wt: dict[str, np.ndarray] = {}
    for ph in ("ed", "es"):
        sums, counts = np.zeros(N_AHA + 1), np.zeros(N_AHA + 1)
        if starts:
            for z, p in pts[ph].items():
                seg_of = _segment_of(p.angle, anchor, levels[z])
                sums += np.bincount(seg_of, weights=p.thickness, minlength=N_AHA + 1)
                counts += np.bincount(seg_of, minlength=N_AHA + 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            seg_wt[ph] = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)[1:]
        for s in range(1, N_AHA + 1):
            v[f"wt_{ph}_{_seg(s)}_mm"] = float(seg_wt[ph][s - 1])
    with np.errstate(invalid="ignore", divide="ignore"):
        thickening = 100.0 * (seg_wt["es"] - seg_wt["ed"]) / seg_wt["ed"]
    for s in range(1, N_AHA + 1):
        v[f"thickening_{_seg(s)}_pct"] = float(thickening[s - 1])
    ok_wt, ok_th = seg_wt["ed"][np.isfinite(seg_wt["ed"])], thickening[np.isfinite(thickening)]
    if ok_wt.size:
        v["wt_ed_segment_min_mm"], v["wt_ed_segment_max_mm"] = float(ok_wt.min()), float(ok_wt.max())
        v["wt_ed_segment_sd_mm"] = float(ok_wt.std())
        v["n_thin_segments"] = float((ok_wt < THIN_MM).sum())
    if ok_th.size:
        v["thickening_segment_min_pct"] = float(ok_th.min())
        v["thickening_segment_sd_pct"] = float(ok_th.std())
        v["n_hypokinetic_segments"] = float((ok_th < HYPOKINETIC_PCT).sum())

    # Segmental EF: each segment's LV-cavity pixels at ED and ES around the slice's ED centroid.
    cavity = np.zeros((2, N_AHA + 1))
    if starts:
        for z, p in pts["ed"].items():
            for i, lab in enumerate((ed, es)):
                if z >= lab.shape[0]:
                    continue
                _, cav, _ = lv_component_and_epicardium(lab[z] == LV_MYOCARDIUM, lab[z] == LV_CAVITY)
                cy, cx = np.nonzero(cav)
                seg_of = _segment_of(_angles(cy, cx, p.centre_yx, (sy, sx), mirrored), anchor, levels[z])
                cavity[i] += np.bincount(seg_of, minlength=N_AHA + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        seg_ef = np.where(cavity[0] > 0, 100.0 * (cavity[0] - cavity[1]) / cavity[0], np.nan)[1:]
    for s in range(1, N_AHA + 1):
        v[f"lv_ef_{_seg(s)}_pct"] = float(seg_ef[s - 1])
    ok_ef = seg_ef[np.isfinite(seg_ef)]
    if ok_ef.size:
        v["lv_ef_segment_min_pct"], v["lv_ef_segment_max_pct"] = float(ok_ef.min()), float(ok_ef.max())
        v["lv_ef_segment_sd_pct"] = float(ok_ef.std())

    # Per-level thickening (mean thickness of the level's slices; anchor-free) and slice EF.
    lv_ed_vol = np.array([(ed[z] == LV_CAVITY).sum() * voxel_ml for z in order])
    lv_es_vol = np.array([(es[z] == LV_CAVITY).sum() * voxel_ml if z < es.shape[0] else 0.0 for z in order])
    for lv in LEVELS:
        zs = [z for z in order if levels[z] == lv]
        t = {ph: [float(pts[ph][z].thickness.mean()) for z in zs if z in pts[ph]] for ph in ("ed", "es")}
        if t["ed"] and t["es"]:
            ed_mean, es_mean = float(np.mean(t["ed"])), float(np.mean(t["es"]))
            v[f"thickening_{lv}_pct"] = 100.0 * _div(es_mean - ed_mean, ed_mean)
        idx = [order.index(z) for z in zs]
        edv, esv = float(lv_ed_vol[idx].sum()), float(lv_es_vol[idx].sum())
        if edv > 0:
            v[f"lv_ef_{lv}_pct"] = 100.0 * (edv - esv) / edv

    # Heterogeneity from anchor-free sectors.
    for ph in ("ed", "es"):
        circ_sd, ratio, means = [], [], []
        for p in pts[ph].values():
            n_sec = N_HETEROGENEITY_SECTORS
            sec = (p.angle / (2 * np.pi) * n_sec).astype(int).clip(0, n_sec - 1)
            cnt = np.bincount(sec, minlength=n_sec)
            val = np.bincount(sec, weights=p.thickness, minlength=n_sec)[cnt > 0] / cnt[cnt > 0]
            means.append(float(p.thickness.mean()))
            if val.size >= 3:
                circ_sd.append(float(val.std()))
                ratio.append(_div(float(val.max()), float(val.min())))
        v[f"wt_{ph}_circ_sd_mean_mm"], v[f"wt_{ph}_circ_sd_max_mm"] = _nan_stats(circ_sd)
        v[f"wt_{ph}_max_min_ratio_mean"], v[f"wt_{ph}_max_min_ratio_max"] = _nan_stats(ratio)
        if len(means) >= 2:
            v[f"wt_{ph}_slice_mean_sd_mm"] = float(np.std(means))

    # Sphericity: widest short-axis cavity diameter / cavity long-axis extent (slices x spacing).
    for ph, lab in (("ed", ed), ("es", es)):
        areas = (lab == LV_CAVITY).sum(axis=(1, 2)) * sy * sx
        n_cav = int((areas > 0).sum())
        if n_cav:
            short = 2.0 * math.sqrt(float(areas.max()) / math.pi)
            long_ = n_cav * sz
            v[f"lv_sphericity_{ph}"] = short / long_
            if ph == "ed":
                v["lv_long_axis_ed_mm"], v["lv_short_axis_ed_mm"] = long_, short
        else:
            notes.append(f"{ph.upper()}: no LV cavity: sphericity is NaN")

    # Base-to-apex volume curves (per-slice mL, resampled to N_PROFILE points).
    for i, x in enumerate(_profile(lv_ed_vol)):
        v[f"lv_ed_profile_{i}_ml"] = float(x)
    for i, x in enumerate(_profile(lv_es_vol)):
        v[f"lv_es_profile_{i}_ml"] = float(x)
    rv_z = np.nonzero((ed == RV_CAVITY).any(axis=(1, 2)))[0]
    rv_vol = np.array([(ed[z] == RV_CAVITY).sum() * voxel_ml for z in (rv_z[::-1] if base_high else rv_z)])
    for i, x in enumerate(_profile(rv_vol)):
        v[f"rv_ed_profile_{i}_ml"] = float(x)

    # Septal flattening: median mid-slice LV eccentricity per phase.
    for ph, lab in (("ed", ed), ("es", es)):
        values = []
        for z in (z for z in order if levels[z] == "mid" and z < lab.shape[0]):
            e = lv_eccentricity(lab[z], (sy, sx))
            if isinstance(e, str):
                notes.append(f"{ph.upper()} slice {z}: {e}")
            elif math.isfinite(e):
                values.append(e)
        if values:
            v[f"lv_eccentricity_{ph}"] = float(np.median(values))
        else:
            notes.append(f"{ph.upper()}: no mid slice with an LV eccentricity")

    lv_edv, lv_esv = float((ed == LV_CAVITY).sum() * voxel_ml), float((es == LV_CAVITY).sum() * voxel_ml)
    rv_edv, rv_esv = float((ed == RV_CAVITY).sum() * voxel_ml), float((es == RV_CAVITY).sum() * voxel_ml)
    lv_ef = _div(lv_edv - lv_esv, lv_edv)
    rv_ef = _div(rv_edv - rv_esv, rv_edv) if rv_edv > 0 else math.nan
    v["rv_lv_sv_ratio"] = _div(rv_edv - rv_esv, lv_edv - lv_esv) if rv_edv > 0 else math.nan
    v["rv_lv_ef_ratio"] = _div(rv_ef, lv_ef)
    mass_es = float((es == LV_MYOCARDIUM).sum() * voxel_ml * MYOCARDIUM_DENSITY_G_PER_ML)
    v["mass_lv_esv_ratio_g_per_ml"] = _div(mass_es, lv_esv) if mass_es > 0 else math.nan
    return RegionalFeatures({k: float(v[k]) for k in REGIONAL_NAMES}, notes)
