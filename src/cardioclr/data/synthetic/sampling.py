"""Drawing one phantom patient: physique, group-specific targets (volumes, EF, mass, wall),
the heart designed to meet them, and the scanner grid.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from cardioclr.clinical.indices import mosteller_bsa
from cardioclr.clinical.labels import DIAGNOSES
from cardioclr.data.synthetic.anatomy import (
    DPHI,
    Heart,
    PatientSpec,
    boundary_radii,
    epi_radius,
    k_table,
    phase_parts,
    positive_root,
)


def uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _sample_physique(rng: np.random.Generator) -> tuple[float, float]:
    """(height cm, weight kg), rounded like ACDC's Info.cfg; independent of the group."""
    male = rng.random() < 0.6
    height = float(np.clip(rng.normal(176.0, 7.0) if male else rng.normal(163.0, 6.5), 148, 200))
    bmi = float(np.clip(rng.normal(26.0, 4.0), 17.5, 40.0))
    return float(round(height)), float(round(bmi * (height / 100.0) ** 2))


def _sample_targets(rng: np.random.Generator, group: str) -> dict[str, float]:
    """Indexed volumes (mL/m2), EFs (%), wall thickness (mm) and motion for one group.

    The ranges sit inside the ACDC criteria with a margin, so that pixelisation of the masks
    does not push a patient across a threshold (patients are re-checked on the masks anyway).
    """
    t: dict[str, float] = {"hcm_extra": 0.0, "inf_on": 0.0}
    t["c_es"] = uniform(rng, 0.82, 0.9)
    t["length_factor"] = 1.0
    if group == "NOR":
        t.update(lv_edvi=uniform(rng, 62, 92), lv_ef=uniform(rng, 56, 72), t0=uniform(rng, 7.0, 10.0),
                 rv_edvi=uniform(rng, 60, 100), rv_ef=uniform(rng, 47, 65))
    elif group == "DCM":
        # Often biventricular failure, so the RV may be large or weak too (LV rules come first).
        t.update(lv_edvi=uniform(rng, 112, 175), lv_ef=uniform(rng, 12, 35), t0=uniform(rng, 6.0, 9.0),
                 rv_edvi=uniform(rng, 60, 125), rv_ef=uniform(rng, 25, 58), c_es=uniform(rng, 0.9, 0.97),
                 length_factor=uniform(rng, 1.05, 1.18))
    elif group == "HCM":
        t.update(lv_edvi=uniform(rng, 52, 85), lv_ef=uniform(rng, 60, 80), rv_edvi=uniform(rng, 55, 95),
                 rv_ef=uniform(rng, 47, 66), length_factor=uniform(rng, 0.88, 0.98))
        kind = rng.choice(["septal", "concentric", "apical"], p=[0.6, 0.25, 0.15])
        t["hcm_kind"] = {"septal": 0.0, "concentric": 1.0, "apical": 2.0}[str(kind)]
        if kind == "septal":
            t.update(t0=uniform(rng, 11.5, 14.5), hcm_extra=uniform(rng, 4.0, 10.0))
        elif kind == "concentric":
            t.update(t0=uniform(rng, 15.5, 19.0), hcm_extra=uniform(rng, 0.0, 3.0))
        else:
            t.update(t0=uniform(rng, 12.0, 14.5), hcm_extra=uniform(rng, 5.0, 9.0))
    elif group == "MINF":
        t.update(lv_edvi=uniform(rng, 72, 125), lv_ef=uniform(rng, 18, 36), t0=uniform(rng, 7.5, 10.5),
                 rv_edvi=uniform(rng, 55, 100), rv_ef=uniform(rng, 43, 60), c_es=uniform(rng, 0.9, 0.96),
                 inf_on=1.0, length_factor=uniform(rng, 1.0, 1.1))
        t["t_inf_ratio"] = uniform(rng, 0.3, 0.48)
        t["territory"] = float(rng.integers(3))  # 0 LAD, 1 RCA, 2 LCX
    elif group == "RV":
        t.update(lv_edvi=uniform(rng, 60, 90), lv_ef=uniform(rng, 53, 68), t0=uniform(rng, 6.5, 9.5))
        if rng.random() < 0.6:  # dilated RV (volume overload, ARVC, ...)
            t.update(rv_edvi=uniform(rng, 118, 175), rv_ef=uniform(rng, 25, 52))
        else:  # failing RV of near-normal size (pressure overload)
            t.update(rv_edvi=uniform(rng, 80, 108), rv_ef=uniform(rng, 18, 36))
    else:
        raise ValueError(f"unknown group {group!r}; expected one of {DIAGNOSES}")
    return t


def _design_heart(rng: np.random.Generator, group: str, bsa: float, dz: float,
                  targets: dict[str, float]) -> Heart | None:
    """Heart geometry whose slice-sampled volumes hit ``targets``; None if implausible."""
    rot = uniform(rng, -0.45, 0.45)  # in-plane rotation of the whole heart
    length = rng.normal(86.0, 5.0) * (1.0 + 0.12 * (bsa - 1.85)) * targets["length_factor"]
    beta = uniform(rng, 1.1, 1.35)  # base beyond the equator: widest cavity near the base
    d_base = float(length)
    t0 = targets["t0"]
    t_apex = t0 * uniform(rng, 0.6, 0.9)
    # Slice stack: the first slice sits at or just below the base, the stack runs to the apex
    # and sometimes one slice beyond it.
    d_top = d_base + uniform(rng, -0.6, 0.15) * dz
    n_in = int(math.floor((d_top + t_apex) / dz)) + 1
    nz = n_in + int(rng.random() < 0.4)
    d_slices = d_top - dz * np.arange(nz)

    septum = math.pi + rot + uniform(rng, -0.15, 0.15)
    h = Heart(d_slices=d_slices, centers=np.zeros((nz, 2)), septum=septum,
              ell_angle=uniform(rng, 0, math.pi), ell_eps=uniform(rng, 0.0, 0.1), r0=1.0,
              d_eq=d_base / beta, d_base=d_base, t0=t0, taper=uniform(rng, 0.1, 0.25),
              t_apex=t_apex, c_es=targets["c_es"], rv_wall=uniform(rng, 2.5, 4.5),
              rv_half_pos=math.radians(uniform(rng, 75, 115)),
              rv_half_neg=math.radians(uniform(rng, 50, 85)), rv_pow=uniform(rng, 0.3, 0.8),
              rv_d_apex=d_base * uniform(rng, 0.12, 0.35), pap_radius=uniform(rng, 2.5, 4.5),
              pap_angles=(-math.pi / 4 + rot + uniform(rng, -0.25, 0.25),
                          1.75 + rot + uniform(rng, -0.25, 0.25)))
    if group == "HCM":
        kind = targets["hcm_kind"]
        if kind == 0.0:  # asymmetric septal hypertrophy, mid-ventricular band
            h = dataclasses.replace(h, hcm_extra=targets["hcm_extra"],
                                    hcm_angle=septum + uniform(rng, -0.45, 0.45),
                                    hcm_plateau=math.radians(uniform(rng, 35, 70)),
                                    hcm_ramp=math.radians(uniform(rng, 25, 45)),
                                    hcm_mid=d_base * uniform(rng, 0.45, 0.75),
                                    hcm_half=d_base * uniform(rng, 0.25, 0.45), hcm_ramp_d=0.2 * d_base)
        elif kind == 1.0:  # concentric, slightly more at the septum
            h = dataclasses.replace(h, hcm_extra=targets["hcm_extra"], hcm_angle=septum,
                                    hcm_plateau=math.radians(40), hcm_ramp=math.radians(60),
                                    hcm_mid=0.5 * d_base, hcm_half=d_base, hcm_ramp_d=1.0)
        else:  # apical
            h = dataclasses.replace(h, hcm_extra=targets["hcm_extra"], hcm_angle=0.0,
                                    hcm_plateau=4.0, hcm_ramp=1.0, hcm_mid=0.0,
                                    hcm_half=d_base * uniform(rng, 0.2, 0.35), hcm_ramp_d=0.2 * d_base)
    if targets["inf_on"]:
        territory = int(targets["territory"])
        anterior = -math.pi / 2 + rot
        if territory == 0:  # LAD: anterior / anteroseptal, mid to apex
            angle, mid, half = anterior + uniform(rng, -0.9, 0.2), 0.3, uniform(rng, 0.15, 0.3)
        elif territory == 1:  # RCA: inferior / inferoseptal, base to mid
            angle, mid, half = anterior + math.pi + uniform(rng, -0.1, 0.8), 0.65, uniform(rng, 0.2, 0.35)
        else:  # LCX: lateral / inferolateral, base to mid
            angle, mid, half = anterior + math.pi / 2 + uniform(rng, -0.3, 0.9), 0.6, uniform(rng, 0.2, 0.35)
        h = dataclasses.replace(h, inf_on=1.0, inf_angle=angle,
                                inf_plateau=math.radians(uniform(rng, 28, 55)),
                                inf_ramp=math.radians(uniform(rng, 12, 25)), inf_mid=mid * d_base,
                                inf_half=half * d_base, inf_ramp_d=0.12 * d_base,
                                t_inf=max(3.0, t0 * targets["t_inf_ratio"]))

    # Volumes are f * sum(r^2) over the tables; every unknown below enters r linearly, so
    # each one solves a quadratic exactly (no iteration).
    f = 0.5 * DPHI * dz / 1000.0  # mm^2 sums -> mL
    edv = targets["lv_edvi"] * bsa
    p0 = phase_parts(h, 0.0)  # r0 = 1 here: the cavity area scales with r0^2
    r0 = math.sqrt(edv / (f * float(np.sum(p0.re_ed**2))))
    if not 15.0 <= r0 <= 48.0 or r0 / d_base > 0.55:
        return None
    h = dataclasses.replace(h, r0=r0)

    # Radial ES factor outside the infarct, from the target ESV: r_es = (k (1-w) + w) r_ed.
    p1 = phase_parts(h, 1.0)
    re2, wi = p1.re_ed**2, p1.winf
    esv = edv * (1.0 - targets["lv_ef"] / 100.0)
    k_es = positive_root(float(np.sum((1 - wi) ** 2 * re2)), float(np.sum(2 * wi * (1 - wi) * re2)),
                          float(np.sum(wi**2 * re2)) - esv / f)
    if k_es is None or not 0.15 <= k_es <= 1.0:
        return None
    h = dataclasses.replace(h, k_es=k_es)

    # RV crescent depth: RV volume = f * sum(2 w u r_epi + w^2 u^2) at each phase.
    p0 = phase_parts(h, 0.0)
    p1 = phase_parts(h, 1.0)
    rv_edv = targets["rv_edvi"] * bsa
    rv_esv = rv_edv * (1.0 - targets["rv_ef"] / 100.0)
    ws = []
    for p, alpha, vol in ((p0, 0.0, rv_edv), (p1, 1.0, rv_esv)):
        repi = epi_radius(p, k_table(h, alpha, p) * p.re_ed)
        ws.append(positive_root(float(np.sum(p.rv_unit**2)),
                                 float(np.sum(2 * p.rv_unit * repi)), -vol / f))
    w_ed, w_es = ws
    if w_ed is None or w_es is None or not 8.0 <= w_ed <= 90.0 or not 0 < w_es < 1.3 * w_ed:
        return None
    return dataclasses.replace(h, rv_w_ed=w_ed, rv_w_es=w_es)


def heart_extent(h: Heart) -> float:
    """Largest distance (mm) of any heart tissue (incl. fat margin) from the LV axis at ED."""
    _, repi, rrv = boundary_radii(h, 0.0)
    return float(max(repi.max(), rrv.max() + h.rv_wall)) + 12.0


def _sample_grid(rng: np.random.Generator, extent: float, dz: float, nz: int,
                 matrix: int | None) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """Matrix (nx, ny, nz) and spacing (dx, dy, dz) mm, large enough to hold the heart.

    The field of view is drawn from a range that holds any phantom heart, independently of
    its size, so the pixel grid does not hint at the diagnosis (only rare giant hearts
    widen it).
    """
    need = 2.0 * extent + 40.0  # heart plus room for its offset from the image centre
    if matrix is None:
        dx = uniform(rng, 1.2, 1.9)
        fov_short = max(uniform(rng, 250.0, 360.0), need)
        n_short = int(np.clip(round(fov_short / dx / 2.0) * 2, 160, 256))
        if n_short * dx < need:  # coarser pixels rather than a matrix beyond ACDC's
            dx = min(1.9, need / n_short)
            n_short = max(n_short, int(math.ceil(need / dx / 2.0)) * 2)
        n_long = max(n_short, int(rng.choice(np.arange(192, 257, 8))))
        nx, ny = (n_short, n_long) if rng.random() < 0.8 else (n_long, n_short)
    else:
        fov = max(uniform(rng, 300.0, 400.0), need)
        dx = fov / matrix
        nx = ny = matrix
    return (nx, ny, nz), (float(np.float32(dx)), float(np.float32(dx)), float(dz))


def sample_patient(rng: np.random.Generator, pid: str, subset: str, group: str,
                    matrix: int | None) -> PatientSpec:
    """Draw one patient's body, heart and scanner until its geometry is plausible."""
    for _ in range(200):
        height, weight = _sample_physique(rng)
        bsa = mosteller_bsa(height, weight)
        dz = float(rng.choice([10.0, 8.0, 7.0, 6.5, 5.0], p=[0.6, 0.1, 0.08, 0.07, 0.15]))
        targets = _sample_targets(rng, group)
        heart = _design_heart(rng, group, bsa, dz, targets)
        if heart is None:
            continue
        extent = heart_extent(heart)
        shape, spacing = _sample_grid(rng, extent, dz, heart.d_slices.size, matrix)
        fov = np.array(shape[:2]) * spacing[0]
        # LV axis: random offset from the image centre, a tilt across slices (the long axis is
        # never quite perpendicular to the planes) and per-slice breath-hold jitter.
        room = np.maximum(fov / 2.0 - extent - 6.0, 0.0)
        mid = rng.uniform(-0.7, 0.7, 2) * room
        tilt = rng.normal(0.0, 0.08, 2)
        rel = heart.d_slices - heart.d_slices.mean()
        centers = mid[None, :] + rel[:, None] * tilt[None, :] + rng.normal(0, 0.7, (rel.size, 2))
        if np.any(np.abs(centers) + extent > fov[None, :] / 2.0 - 2.0):
            continue
        heart = dataclasses.replace(heart, centers=centers)
        n_frames = int(rng.choice([30, 28, 25, 35, 20, 15, 13], p=[.45, .15, .08, .1, .1, .07, .05]))
        es_frame = int(np.clip(round(1 + n_frames * uniform(rng, 0.3, 0.42)), 2, n_frames))
        dtype = str(rng.choice(["int16", "float32", "uint8"], p=[0.55, 0.4, 0.05]))
        targets = dict(targets, bsa=bsa)
        return PatientSpec(pid=pid, subset=subset, group=group, height_cm=height,
                           weight_kg=weight, n_frames=n_frames, es_frame=es_frame, shape=shape,
                           spacing=spacing, dtype=dtype, heart=heart, targets=targets)
    raise RuntimeError(f"{pid}: could not draw a plausible {group} heart in 200 tries")
