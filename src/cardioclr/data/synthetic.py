"""Built-in synthetic cohort: ACDC-layout cine-MRI phantoms with a known diagnosis.

:func:`write_synthetic_cohort` writes a folder laid out exactly like the ACDC challenge data
(Bernard et al., IEEE TMI 2018)::

    OUT/README.txt                                    what this is (not patient data)
    OUT/synthetic_cohort.csv                          per patient: group, BSA, measured indices
    OUT/training/patientNNN/Info.cfg                  ED, ES, Group, Height, NbFrame, Weight
    OUT/training/patientNNN/patientNNN_frameEE.nii.gz     ED image (x, y, z)
    OUT/training/patientNNN/patientNNN_frameEE_gt.nii.gz  ED labels, uint8
    OUT/training/patientNNN/patientNNN_frameSS.nii.gz     ES image
    OUT/training/patientNNN/patientNNN_frameSS_gt.nii.gz  ES labels
    OUT/training/patientNNN/patientNNN_4d.nii.gz          optional cine (x, y, z, t)
    OUT/testing/patientNNN/...                            same layout, numbered after training

Labels follow ACDC: 0 background, 1 RV cavity, 2 LV myocardium, 3 LV cavity (papillary muscles
inside the cavity label, as the ACDC experts drew them).

The phantom is built in millimetres and rasterised directly at the target grid:

* **Heart.** The LV cavity is a truncated prolate ellipsoid (apex at distance ``d = 0`` along the
  long axis, base at ``d = d_base``) with an elliptic cross-section; the wall is a shell of
  angle- and level-dependent thickness (thinner toward the apex, with an apical cap). The RV
  cavity is a crescent wrapped around the septal side of the LV epicardium whose depth shrinks
  toward the RV apex. Every boundary is a polar radius ``r(phi)`` around the LV long axis, so
  volumes used to *design* a patient (``0.5 * sum r^2 dphi`` per slice times the slice spacing)
  match the voxel counts of the rasterised masks to within the pixelisation error.
* **Contraction.** At ES the base descends toward the (fixed) apex by the longitudinal factor
  ``c`` (slice ``d`` shows the ED material from ``d / c``), the endocardium moves inward by a
  radial factor ``k`` and the epicardium follows from conservation of myocardial area per
  angular sector (so the wall thickens). An infarct sector keeps ``k = 1`` (akinesia).
* **Surroundings.** Body outline, subcutaneous fat, chest-wall muscle, lungs with vessels, liver
  (apical slices), stomach, spine with canal and paraspinal muscles, descending aorta, sternum,
  epicardial fat, pericardium, atria above the base; SSFP-like contrast (blood and fat bright,
  myocardium and muscle dark, lungs black).
* **Scanner nuisance.** Matrix, field of view, in-plane spacing, slice count and spacing, heart
  position/rotation/tilt, per-slice breath-hold jitter, tissue contrasts, gamma, smooth coil bias,
  slight blur, Rician noise, intensity scale and stored dtype (int16, float32 or uint8).

The five groups follow the ACDC diagnostic criteria, checked on the *written masks* by
:func:`phantom_indices` and :func:`diagnose` (a patient whose masks do not meet its group's
criteria is re-drawn): NOR, DCM (LV EDV > 100 mL/m2 and LVEF < 40 %), HCM (LV mass > 110 g/m2,
wall > 15 mm, LVEF > 55 %), MINF (LVEF < 40 % with a thin, akinetic sector) and RV (RV EDV >
110 mL/m2 or RVEF < 40 %). Scanner and body parameters are drawn independently of the group, so
the diagnosis is carried by anatomy and function only.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from cardioclr.atomic import atomic_dir
from cardioclr.errors import DataError

GROUPS: tuple[str, ...] = ("NOR", "DCM", "HCM", "MINF", "RV")
LABEL_RV, LABEL_MYO, LABEL_LV = 1, 2, 3
MYOCARDIUM_DENSITY_G_PER_ML = 1.05
README_MARKER = "cardioclr synthetic cohort"
GENERATOR_VERSION = "1"

# Angular resolution of the polar boundary tables (0.5 degree): fine enough that linear
# interpolation between table entries is far below the pixel size at any radius in the heart.
N_PHI = 720
_PHI = -np.pi + np.arange(N_PHI) * (2.0 * np.pi / N_PHI)
_DPHI = 2.0 * np.pi / N_PHI

# Diagnostic thresholds (ACDC, Bernard et al. 2018) and the "normal" limits used for NOR.
DCM_LV_EDVI_MIN = 100.0  # mL/m2
LOW_EF = 40.0  # %, LVEF (DCM, MINF) and RVEF (RV)
HCM_MASS_INDEX_MIN = 110.0  # g/m2
HCM_WALL_MIN_MM = 15.0
HCM_EF_MIN = 55.0
RV_EDVI_MIN = 110.0
NOR_LIMITS = {"lv_edvi_max": 95.0, "rv_edvi_max": 105.0, "lv_ef_min": 50.0, "rv_ef_min": 45.0,
              "wall_max_mm": 12.0, "mass_index_max": 100.0}
# A sector counts as infarcted (MINF) when its ED thickness is at most this fraction of the
# median sector thickness and it thickens by less than this fraction from ED to ES.
MINF_THIN_RATIO = 0.6
MINF_AKINETIC_THICKENING = 0.2


# --------------------------------------------------------------------------------------------
# Patient description
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Heart:
    """Geometry of one phantom heart (all lengths in mm, angles in radians, image frame).

    The long axis runs through ``centers`` (one in-plane position per slice); ``d`` is the
    distance from the endocardial apex toward the base. Angles are measured in the image plane
    with x to the right and y down (the array's first and second axes), so ``-pi/2`` is
    anterior (image top) and ``pi`` points to image left (patient right, where the RV is).
    """

    d_slices: np.ndarray  # (nz,) slice positions along the long axis, mm from the apex
    centers: np.ndarray  # (nz, 2) LV axis (x, y) in mm from the image centre, per slice
    septum: float  # direction LV centre -> RV
    ell_angle: float  # orientation of the elliptic LV cross-section
    ell_eps: float  # ellipticity: semi-axes r0*(1+eps), r0/(1+eps)
    r0: float  # LV cavity equatorial radius at ED
    d_eq: float  # apex-to-equator distance of the cavity ellipsoid
    d_base: float  # apex-to-base distance (cavity length) at ED
    t0: float  # basal wall thickness
    taper: float  # fractional wall thinning at the apex
    t_apex: float  # apical cap thickness
    hcm_extra: float = 0.0  # extra thickness of the hypertrophied region
    hcm_angle: float = 0.0
    hcm_plateau: float = 1.0
    hcm_ramp: float = 0.5
    hcm_mid: float = 0.0  # level (mm from apex) of the hypertrophied band
    hcm_half: float = 1e3
    hcm_ramp_d: float = 1.0
    inf_on: float = 0.0  # 1 for a myocardial infarction
    inf_angle: float = 0.0
    inf_plateau: float = 0.5
    inf_ramp: float = 0.3
    inf_mid: float = 0.0
    inf_half: float = 1.0
    inf_ramp_d: float = 1.0
    t_inf: float = 3.0  # wall thickness in the infarct core
    c_es: float = 0.88  # longitudinal ES factor (distance from apex shrinks to c * d)
    k_es: float = 0.6  # radial ES factor of the endocardium outside an infarct
    rv_half_pos: float = 1.6  # angular half-extent of the RV crescent, anterior side
    rv_half_neg: float = 1.2  # inferior side
    rv_pow: float = 0.5  # crescent shape exponent (<1: fuller)
    rv_d_apex: float = 20.0  # RV apex level (mm from LV apex)
    rv_w_ed: float = 20.0  # RV depth at the base, ED
    rv_w_es: float = 12.0
    rv_wall: float = 3.5  # RV free wall thickness (image only, not labelled)
    pap_angles: tuple[float, float] = (0.0, 0.0)  # papillary muscles (image only)
    pap_radius: float = 3.0


@dataclass(frozen=True)
class PatientSpec:
    """Everything drawn for one patient (enough to re-render it)."""

    pid: str
    subset: str
    group: str
    height_cm: float
    weight_kg: float
    n_frames: int
    es_frame: int  # 1-based, ED is frame 1
    shape: tuple[int, int, int]  # (nx, ny, nz)
    spacing: tuple[float, float, float]  # (dx, dy, dz) mm
    dtype: str
    heart: Heart
    targets: dict[str, float]


def mosteller_bsa(height_cm: float, weight_kg: float) -> float:
    """Body surface area in m^2 (Mosteller): sqrt(height[cm] * weight[kg] / 3600)."""
    return math.sqrt(height_cm * weight_kg / 3600.0)


# --------------------------------------------------------------------------------------------
# Geometry: polar boundary tables
# --------------------------------------------------------------------------------------------


def _wrap(a: np.ndarray | float) -> np.ndarray:
    """Angle(s) wrapped to [-pi, pi)."""
    return (np.asarray(a) + np.pi) % (2.0 * np.pi) - np.pi


def _bump(x: np.ndarray, plateau: float, ramp: float) -> np.ndarray:
    """1 for |x| <= plateau, raised-cosine down to 0 at plateau + ramp, 0 beyond."""
    t = np.clip((np.abs(x) - plateau) / max(ramp, 1e-6), 0.0, 1.0)
    return 0.5 * (1.0 + np.cos(np.pi * t))


@dataclass(frozen=True)
class _Parts:
    """Phase-dependent pieces of the boundary tables, each (nz, n_phi)."""

    re_ed: np.ndarray  # ED endocardial radius of the material shown by the slice
    repi_ed: np.ndarray  # ED epicardial radius of that material (0: no myocardium)
    winf: np.ndarray  # infarct weight (1 in the core)
    cc: np.ndarray  # axial compression of the wall (c, or 1 in the akinetic infarct)
    rv_unit: np.ndarray  # RV crescent depth per mm of ``rv_w`` (0 where there is no RV)


def _parts(h: Heart, alpha: float, d: np.ndarray | None = None,
           phi: np.ndarray = _PHI) -> _Parts:
    """Geometry of the slices at phase ``alpha`` that does not depend on ``k_es`` or ``rv_w``."""
    d = (h.d_slices if d is None else np.asarray(d, float))[:, None]
    phi = phi[None, :]
    c = 1.0 - alpha * (1.0 - h.c_es)
    dm = d / c  # ED material level shown by this slice (the apex stays put)
    in_lv = (dm >= 0.0) & (dm <= h.d_base)
    prof = np.sqrt(np.clip(1.0 - ((dm - h.d_eq) / h.d_eq) ** 2, 0.0, None))
    th = phi - h.ell_angle
    # polar radius of an ellipse with semi-axes (1+eps, 1/(1+eps)): area pi, like a unit disk
    q = 1.0 / np.sqrt((np.cos(th) / (1.0 + h.ell_eps)) ** 2 + (np.sin(th) * (1.0 + h.ell_eps)) ** 2)
    re_ed = np.where(in_lv, h.r0 * prof * q, 0.0)

    winf = h.inf_on * _bump(_wrap(phi - h.inf_angle), h.inf_plateau, h.inf_ramp) \
        * _bump(dm - h.inf_mid, h.inf_half, h.inf_ramp_d)
    dmc = np.clip(dm, 0.0, h.d_base)
    wall = h.t0 * (1.0 - h.taper * (1.0 - dmc / h.d_base) ** 2)
    if h.hcm_extra > 0:
        wall = wall + h.hcm_extra * _bump(_wrap(phi - h.hcm_angle), h.hcm_plateau, h.hcm_ramp) \
            * _bump(dmc - h.hcm_mid, h.hcm_half, h.hcm_ramp_d)
    wall = wall * (1.0 - winf) + h.t_inf * winf
    cap = (dm < 0.0) & (dm > -h.t_apex)
    capfrac = np.sqrt(np.clip(1.0 - (dm / h.t_apex) ** 2, 0.0, None))
    repi_ed = np.where(in_lv, re_ed + wall, np.where(cap, wall * capfrac, 0.0))
    # The myocardial slab is compressed by c along the axis (so it thickens), except in the
    # akinetic infarct, which neither shortens nor thickens.
    cc = c + (1.0 - c) * winf

    t = np.clip((dm - h.rv_d_apex) / max(h.d_base - h.rv_d_apex, 1e-6), 0.0, 1.0)
    g = np.sqrt(1.0 - (1.0 - t) ** 2) * (dm <= h.d_base)
    dphi = _wrap(phi - h.septum)
    half = np.where(dphi >= 0, h.rv_half_pos, h.rv_half_neg)
    shape = np.cos(0.5 * np.pi * np.clip(np.abs(dphi) / half, 0.0, 1.0)) ** h.rv_pow
    unit = np.where((repi_ed > 0) & (shape > 1e-4), g * shape, 0.0)
    return _Parts(re_ed=re_ed, repi_ed=repi_ed, winf=np.broadcast_to(winf, re_ed.shape),
                  cc=np.broadcast_to(cc, re_ed.shape), rv_unit=unit)


def _k_table(h: Heart, alpha: float, p: _Parts, k_es: float | None = None) -> np.ndarray:
    """Radial endocardial factor per (slice, angle): 1 at ED, ``k_es`` at ES, 1 in an infarct."""
    k = h.k_es if k_es is None else k_es
    return 1.0 - alpha * (1.0 - (k * (1.0 - p.winf) + p.winf))


def _epi(p: _Parts, re: np.ndarray) -> np.ndarray:
    """Epicardial radius conserving each sector's myocardial volume for endocardium ``re``."""
    return np.where(p.repi_ed > 0,
                    np.sqrt(re**2 + np.maximum(p.repi_ed**2 - p.re_ed**2, 0.0) / p.cc), 0.0)


def _radii(h: Heart, alpha: float, d: np.ndarray | None = None,
           phi: np.ndarray = _PHI) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Polar boundary tables of the heart at cardiac phase ``alpha`` (0 = ED, 1 = ES).

    ``d``: (nz,) slice levels in mm from the apex (default: the heart's slices); ``phi``: (n,)
    angles. Returns ``(r_endo, r_epi, r_rv)``, each (nz, n) in mm around the slice's LV axis:
    LV cavity for rho < r_endo, myocardium for r_endo <= rho < r_epi, RV cavity for
    r_epi <= rho < r_rv. A structure absent from a slice has radius 0.
    """
    p = _parts(h, alpha, d, phi)
    re = _k_table(h, alpha, p) * p.re_ed
    repi = _epi(p, re)
    w = h.rv_w_ed + alpha * (h.rv_w_es - h.rv_w_ed)
    rrv = np.where(p.rv_unit > 0, repi + w * p.rv_unit, 0.0)
    return re, repi, rrv


def _positive_root(a: float, b: float, c: float) -> float | None:
    """Largest real root of a x^2 + b x + c = 0 (a > 0), None if there is none."""
    disc = b * b - 4.0 * a * c
    if a <= 0 or disc < 0:
        return None
    return (-b + math.sqrt(disc)) / (2.0 * a)


# --------------------------------------------------------------------------------------------
# Sampling a patient
# --------------------------------------------------------------------------------------------


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
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
    t["c_es"] = _u(rng, 0.82, 0.9)
    t["length_factor"] = 1.0
    if group == "NOR":
        t.update(lv_edvi=_u(rng, 62, 92), lv_ef=_u(rng, 56, 72), t0=_u(rng, 7.0, 10.0),
                 rv_edvi=_u(rng, 60, 100), rv_ef=_u(rng, 47, 65))
    elif group == "DCM":
        # Often biventricular failure, so the RV may be large or weak too (LV rules come first).
        t.update(lv_edvi=_u(rng, 112, 175), lv_ef=_u(rng, 12, 35), t0=_u(rng, 6.0, 9.0),
                 rv_edvi=_u(rng, 60, 125), rv_ef=_u(rng, 25, 58), c_es=_u(rng, 0.9, 0.97),
                 length_factor=_u(rng, 1.05, 1.18))
    elif group == "HCM":
        t.update(lv_edvi=_u(rng, 52, 85), lv_ef=_u(rng, 60, 80), rv_edvi=_u(rng, 55, 95),
                 rv_ef=_u(rng, 47, 66), length_factor=_u(rng, 0.88, 0.98))
        kind = rng.choice(["septal", "concentric", "apical"], p=[0.6, 0.25, 0.15])
        t["hcm_kind"] = {"septal": 0.0, "concentric": 1.0, "apical": 2.0}[str(kind)]
        if kind == "septal":
            t.update(t0=_u(rng, 11.5, 14.5), hcm_extra=_u(rng, 4.0, 10.0))
        elif kind == "concentric":
            t.update(t0=_u(rng, 15.5, 19.0), hcm_extra=_u(rng, 0.0, 3.0))
        else:
            t.update(t0=_u(rng, 12.0, 14.5), hcm_extra=_u(rng, 5.0, 9.0))
    elif group == "MINF":
        t.update(lv_edvi=_u(rng, 72, 125), lv_ef=_u(rng, 18, 36), t0=_u(rng, 7.5, 10.5),
                 rv_edvi=_u(rng, 55, 100), rv_ef=_u(rng, 43, 60), c_es=_u(rng, 0.9, 0.96),
                 inf_on=1.0, length_factor=_u(rng, 1.0, 1.1))
        t["t_inf_ratio"] = _u(rng, 0.3, 0.48)
        t["territory"] = float(rng.integers(3))  # 0 LAD, 1 RCA, 2 LCX
    elif group == "RV":
        t.update(lv_edvi=_u(rng, 60, 90), lv_ef=_u(rng, 53, 68), t0=_u(rng, 6.5, 9.5))
        if rng.random() < 0.6:  # dilated RV (volume overload, ARVC, ...)
            t.update(rv_edvi=_u(rng, 118, 175), rv_ef=_u(rng, 25, 52))
        else:  # failing RV of near-normal size (pressure overload)
            t.update(rv_edvi=_u(rng, 80, 108), rv_ef=_u(rng, 18, 36))
    else:
        raise ValueError(f"unknown group {group!r}; expected one of {GROUPS}")
    return t


def _design_heart(rng: np.random.Generator, group: str, bsa: float, dz: float,
                  targets: dict[str, float]) -> Heart | None:
    """Heart geometry whose slice-sampled volumes hit ``targets``; None if implausible."""
    rot = _u(rng, -0.45, 0.45)  # in-plane rotation of the whole heart
    length = rng.normal(86.0, 5.0) * (1.0 + 0.12 * (bsa - 1.85)) * targets["length_factor"]
    beta = _u(rng, 1.1, 1.35)  # base beyond the equator: widest cavity near the base
    d_base = float(length)
    t0 = targets["t0"]
    t_apex = t0 * _u(rng, 0.6, 0.9)
    # Slice stack: the first slice sits at or just below the base, the stack runs to the apex
    # and sometimes one slice beyond it.
    d_top = d_base + _u(rng, -0.6, 0.15) * dz
    n_in = int(math.floor((d_top + t_apex) / dz)) + 1
    nz = n_in + int(rng.random() < 0.4)
    d_slices = d_top - dz * np.arange(nz)

    septum = math.pi + rot + _u(rng, -0.15, 0.15)
    h = Heart(d_slices=d_slices, centers=np.zeros((nz, 2)), septum=septum,
              ell_angle=_u(rng, 0, math.pi), ell_eps=_u(rng, 0.0, 0.1), r0=1.0,
              d_eq=d_base / beta, d_base=d_base, t0=t0, taper=_u(rng, 0.1, 0.25),
              t_apex=t_apex, c_es=targets["c_es"], rv_wall=_u(rng, 2.5, 4.5),
              rv_half_pos=math.radians(_u(rng, 75, 115)),
              rv_half_neg=math.radians(_u(rng, 50, 85)), rv_pow=_u(rng, 0.3, 0.8),
              rv_d_apex=d_base * _u(rng, 0.12, 0.35), pap_radius=_u(rng, 2.5, 4.5),
              pap_angles=(-math.pi / 4 + rot + _u(rng, -0.25, 0.25),
                          1.75 + rot + _u(rng, -0.25, 0.25)))
    if group == "HCM":
        kind = targets["hcm_kind"]
        if kind == 0.0:  # asymmetric septal hypertrophy, mid-ventricular band
            h = dataclasses.replace(h, hcm_extra=targets["hcm_extra"],
                                    hcm_angle=septum + _u(rng, -0.45, 0.45),
                                    hcm_plateau=math.radians(_u(rng, 35, 70)),
                                    hcm_ramp=math.radians(_u(rng, 25, 45)),
                                    hcm_mid=d_base * _u(rng, 0.45, 0.75),
                                    hcm_half=d_base * _u(rng, 0.25, 0.45), hcm_ramp_d=0.2 * d_base)
        elif kind == 1.0:  # concentric, slightly more at the septum
            h = dataclasses.replace(h, hcm_extra=targets["hcm_extra"], hcm_angle=septum,
                                    hcm_plateau=math.radians(40), hcm_ramp=math.radians(60),
                                    hcm_mid=0.5 * d_base, hcm_half=d_base, hcm_ramp_d=1.0)
        else:  # apical
            h = dataclasses.replace(h, hcm_extra=targets["hcm_extra"], hcm_angle=0.0,
                                    hcm_plateau=4.0, hcm_ramp=1.0, hcm_mid=0.0,
                                    hcm_half=d_base * _u(rng, 0.2, 0.35), hcm_ramp_d=0.2 * d_base)
    if targets["inf_on"]:
        territory = int(targets["territory"])
        anterior = -math.pi / 2 + rot
        if territory == 0:  # LAD: anterior / anteroseptal, mid to apex
            angle, mid, half = anterior + _u(rng, -0.9, 0.2), 0.3, _u(rng, 0.15, 0.3)
        elif territory == 1:  # RCA: inferior / inferoseptal, base to mid
            angle, mid, half = anterior + math.pi + _u(rng, -0.1, 0.8), 0.65, _u(rng, 0.2, 0.35)
        else:  # LCX: lateral / inferolateral, base to mid
            angle, mid, half = anterior + math.pi / 2 + _u(rng, -0.3, 0.9), 0.6, _u(rng, 0.2, 0.35)
        h = dataclasses.replace(h, inf_on=1.0, inf_angle=angle,
                                inf_plateau=math.radians(_u(rng, 28, 55)),
                                inf_ramp=math.radians(_u(rng, 12, 25)), inf_mid=mid * d_base,
                                inf_half=half * d_base, inf_ramp_d=0.12 * d_base,
                                t_inf=max(3.0, t0 * targets["t_inf_ratio"]))

    # Volumes are f * sum(r^2) over the tables; every unknown below enters r linearly, so
    # each one solves a quadratic exactly (no iteration).
    f = 0.5 * _DPHI * dz / 1000.0  # mm^2 sums -> mL
    edv = targets["lv_edvi"] * bsa
    p0 = _parts(h, 0.0)  # r0 = 1 here: the cavity area scales with r0^2
    r0 = math.sqrt(edv / (f * float(np.sum(p0.re_ed**2))))
    if not 15.0 <= r0 <= 48.0 or r0 / d_base > 0.55:
        return None
    h = dataclasses.replace(h, r0=r0)

    # Radial ES factor outside the infarct, from the target ESV: r_es = (k (1-w) + w) r_ed.
    p1 = _parts(h, 1.0)
    re2, wi = p1.re_ed**2, p1.winf
    esv = edv * (1.0 - targets["lv_ef"] / 100.0)
    k_es = _positive_root(float(np.sum((1 - wi) ** 2 * re2)), float(np.sum(2 * wi * (1 - wi) * re2)),
                          float(np.sum(wi**2 * re2)) - esv / f)
    if k_es is None or not 0.15 <= k_es <= 1.0:
        return None
    h = dataclasses.replace(h, k_es=k_es)

    # RV crescent depth: RV volume = f * sum(2 w u r_epi + w^2 u^2) at each phase.
    p0 = _parts(h, 0.0)
    p1 = _parts(h, 1.0)
    rv_edv = targets["rv_edvi"] * bsa
    rv_esv = rv_edv * (1.0 - targets["rv_ef"] / 100.0)
    ws = []
    for p, alpha, vol in ((p0, 0.0, rv_edv), (p1, 1.0, rv_esv)):
        repi = _epi(p, _k_table(h, alpha, p) * p.re_ed)
        ws.append(_positive_root(float(np.sum(p.rv_unit**2)),
                                 float(np.sum(2 * p.rv_unit * repi)), -vol / f))
    w_ed, w_es = ws
    if w_ed is None or w_es is None or not 8.0 <= w_ed <= 90.0 or not 0 < w_es < 1.3 * w_ed:
        return None
    return dataclasses.replace(h, rv_w_ed=w_ed, rv_w_es=w_es)


def _heart_extent(h: Heart) -> float:
    """Largest distance (mm) of any heart tissue (incl. fat margin) from the LV axis at ED."""
    _, repi, rrv = _radii(h, 0.0)
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
        dx = _u(rng, 1.2, 1.9)
        fov_short = max(_u(rng, 250.0, 360.0), need)
        n_short = int(np.clip(round(fov_short / dx / 2.0) * 2, 160, 256))
        if n_short * dx < need:  # coarser pixels rather than a matrix beyond ACDC's
            dx = min(1.9, need / n_short)
            n_short = max(n_short, int(math.ceil(need / dx / 2.0)) * 2)
        n_long = max(n_short, int(rng.choice(np.arange(192, 257, 8))))
        nx, ny = (n_short, n_long) if rng.random() < 0.8 else (n_long, n_short)
    else:
        fov = max(_u(rng, 300.0, 400.0), need)
        dx = fov / matrix
        nx = ny = matrix
    return (nx, ny, nz), (float(np.float32(dx)), float(np.float32(dx)), float(dz))


def _sample_patient(rng: np.random.Generator, pid: str, subset: str, group: str,
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
        extent = _heart_extent(heart)
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
        es_frame = int(np.clip(round(1 + n_frames * _u(rng, 0.3, 0.42)), 2, n_frames))
        dtype = str(rng.choice(["int16", "float32", "uint8"], p=[0.55, 0.4, 0.05]))
        targets = dict(targets, bsa=bsa)
        return PatientSpec(pid=pid, subset=subset, group=group, height_cm=height,
                           weight_kg=weight, n_frames=n_frames, es_frame=es_frame, shape=shape,
                           spacing=spacing, dtype=dtype, heart=heart, targets=targets)
    raise RuntimeError(f"{pid}: could not draw a plausible {group} heart in 200 tries")


# --------------------------------------------------------------------------------------------
# Rasterisation
# --------------------------------------------------------------------------------------------


@dataclass
class _Box:
    """Pixel sub-grid around the heart with polar coordinates of every pixel per slice."""

    sl: tuple[slice, slice]
    rho: np.ndarray  # (bx, by, nz) float32, mm from the slice's LV axis
    flat: np.ndarray  # (bx, by, nz) index into a raveled (nz, N_PHI) table: slice, angle bin
    dxy: np.ndarray  # (2, bx, by, nz) offsets (x, y) in mm from the LV axis


def _pixel_coords(shape: tuple[int, int, int], spacing: tuple[float, float, float]
                  ) -> tuple[np.ndarray, np.ndarray]:
    """x (nx,) and y (ny,) pixel-centre coordinates in mm, origin at the image centre."""
    nx, ny, _ = shape
    x = (np.arange(nx) - (nx - 1) / 2.0) * spacing[0]
    y = (np.arange(ny) - (ny - 1) / 2.0) * spacing[1]
    return x, y


def _make_box(spec: PatientSpec, extent: float) -> _Box:
    h = spec.heart
    x, y = _pixel_coords(spec.shape, spec.spacing)
    lo = h.centers.min(axis=0) - extent
    hi = h.centers.max(axis=0) + extent
    ix = np.nonzero((x >= lo[0]) & (x <= hi[0]))[0]
    iy = np.nonzero((y >= lo[1]) & (y <= hi[1]))[0]
    sl = (slice(int(ix[0]), int(ix[-1]) + 1), slice(int(iy[0]), int(iy[-1]) + 1))
    ddx = (x[sl[0]][:, None, None] - h.centers[None, None, :, 0]).astype(np.float32)
    ddy = (y[sl[1]][None, :, None] - h.centers[None, None, :, 1]).astype(np.float32)
    ddx, ddy = np.broadcast_arrays(ddx, ddy)
    # Nearest 0.5-degree bin: at most 0.3 mm off the boundary at 70 mm from the axis, well
    # under a pixel, and one gather per table instead of two plus interpolation.
    b = np.rint((np.arctan2(ddy, ddx) + np.pi) / _DPHI).astype(np.int32) % N_PHI
    flat = b + (np.arange(h.d_slices.size, dtype=np.int32) * N_PHI)[None, None, :]
    return _Box(sl=sl, rho=np.hypot(ddx, ddy), flat=flat, dxy=np.stack([ddx, ddy]))


def _gather(box: _Box, table: np.ndarray) -> np.ndarray:
    """Per-pixel value (bx, by, nz) of a (nz, N_PHI) polar table."""
    return np.take(table.astype(np.float32).ravel(), box.flat)


def _labels_in_box(box: _Box, tables: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """ACDC label map (bx, by, nz) uint8 from the polar tables (r_endo, r_epi, r_rv)."""
    re, repi, rrv = (_gather(box, t) for t in tables)
    lab = np.zeros(box.rho.shape, np.uint8)
    lab[box.rho < rrv] = LABEL_RV
    lab[box.rho < repi] = LABEL_MYO
    lab[box.rho < re] = LABEL_LV
    return lab


def _labels(spec: PatientSpec, box: _Box, alpha: float) -> np.ndarray:
    """Full (nx, ny, nz) uint8 label volume at phase ``alpha``."""
    lab = np.zeros(spec.shape, np.uint8)
    lab[box.sl] = _labels_in_box(box, _radii(spec.heart, alpha))
    return lab


# --------------------------------------------------------------------------------------------
# Indices from masks (the check that every phantom meets its group's criteria)
# --------------------------------------------------------------------------------------------


def _bbox(mask: np.ndarray, margin: int = 2) -> tuple[slice, ...]:
    idx = np.nonzero(mask)
    return tuple(slice(max(int(i.min()) - margin, 0), int(i.max()) + margin + 1) for i in idx)


def _max_wall_thickness(lab2d: np.ndarray, dx: float, dy: float) -> float:
    """Largest LV wall thickness (mm) of one (x, y) slice, 0 without cavity and myocardium.

    Thickness at an epicardial pixel (myocardium 4-adjacent to anything but LV) is its distance
    to the nearest cavity pixel centre; for a wall n pixels thick that is n pixel widths.
    """
    cav, myo = lab2d == LABEL_LV, lab2d == LABEL_MYO
    if not cav.any() or not myo.any():
        return 0.0
    sl = _bbox(cav | myo)
    cav, myo = cav[sl], myo[sl]
    lv = np.pad(cav | myo, 1)
    out_nb = ~lv[:-2, 1:-1] | ~lv[2:, 1:-1] | ~lv[1:-1, :-2] | ~lv[1:-1, 2:]
    epi = myo & out_nb
    if not epi.any():
        return 0.0
    dist = ndimage.distance_transform_edt(~cav, sampling=(dx, dy))
    return float(dist[epi].max())


def _sector_thickness(lab2d: np.ndarray, center: np.ndarray, dx: float, dy: float,
                      n_sectors: int) -> np.ndarray:
    """Area-based wall thickness (mm) in each angular sector around ``center`` (pixel x, y).

    In a sector of angle dphi, cavity area A_c and LV area A_c + A_m give radii
    sqrt(2 A / dphi); their difference is the mean wall thickness, with sub-pixel precision
    because the counts average over many pixels. NaN where a sector has no myocardium.
    """
    ii, jj = np.nonzero((lab2d == LABEL_LV) | (lab2d == LABEL_MYO))
    ang = np.arctan2((jj - center[1]) * dy, (ii - center[0]) * dx)
    sec = np.minimum(((ang + np.pi) / (2 * np.pi) * n_sectors).astype(int), n_sectors - 1)
    is_cav = lab2d[ii, jj] == LABEL_LV
    a_cav = np.bincount(sec[is_cav], minlength=n_sectors) * dx * dy
    a_all = np.bincount(sec, minlength=n_sectors) * dx * dy
    dphi = 2 * np.pi / n_sectors
    t = np.sqrt(2 * a_all / dphi) - np.sqrt(2 * a_cav / dphi)
    return np.where(a_all > a_cav, t, np.nan)


def phantom_indices(ed: np.ndarray, es: np.ndarray, spacing: Sequence[float], height_cm: float,
                    weight_kg: float, n_sectors: int = 12) -> dict[str, float]:
    """Clinical indices of one patient from its ED and ES ACDC label volumes.

    ``ed``, ``es``: integer label arrays (x, y, z) with 1 RV cavity, 2 LV myocardium, 3 LV
    cavity; ``spacing``: (dx, dy, dz) in mm. Volumes are voxel count x voxel volume (mL); mass
    is myocardial volume x 1.05 g/mL; ``*_index`` values are divided by the Mosteller BSA (m2).

    Returns ``lv_edv``, ``lv_esv``, ``lv_ef`` (%), ``rv_edv``, ``rv_esv``, ``rv_ef`` (%),
    ``lv_mass`` (g), ``bsa``, ``lv_edv_index``, ``rv_edv_index``, ``lv_mass_index``,
    ``max_wall_mm`` (largest ED wall thickness over slices with a cavity), and the regional
    measures ``thin_ratio`` (thinnest ED sector / median sector thickness, over mid-ventricular
    slices with a cavity at ED and ES) and ``thin_thickening`` (fractional ED->ES thickening of
    that sector; about 0 for an akinetic sector, 0.3-1 for healthy myocardium).
    """
    dx, dy, dz = (float(s) for s in spacing[:3])
    vox_ml = dx * dy * dz / 1000.0
    bsa = mosteller_bsa(height_cm, weight_kg)
    r: dict[str, float] = {"bsa": bsa}
    for name, lab in (("lv", LABEL_LV), ("rv", LABEL_RV)):
        r[f"{name}_edv"] = float(np.count_nonzero(ed == lab)) * vox_ml
        r[f"{name}_esv"] = float(np.count_nonzero(es == lab)) * vox_ml
        edv = r[f"{name}_edv"]
        r[f"{name}_ef"] = 100.0 * (edv - r[f"{name}_esv"]) / edv if edv > 0 else math.nan
    r["lv_mass"] = float(np.count_nonzero(ed == LABEL_MYO)) * vox_ml * MYOCARDIUM_DENSITY_G_PER_ML
    r["lv_edv_index"] = r["lv_edv"] / bsa
    r["rv_edv_index"] = r["rv_edv"] / bsa
    r["lv_mass_index"] = r["lv_mass"] / bsa
    r["max_wall_mm"] = max((_max_wall_thickness(ed[:, :, k], dx, dy)
                            for k in range(ed.shape[2])), default=0.0)

    # Regional wall: sectors around the ED cavity centroid, on slices whose cavity is large
    # enough at both phases for sector areas to be meaningful (not the apex).
    min_px_ed = math.pi * 8.0**2 / (dx * dy)
    min_px_es = math.pi * 4.0**2 / (dx * dy)
    t_ed, t_es = [], []
    for k in range(ed.shape[2]):
        cav = ed[:, :, k] == LABEL_LV
        if cav.sum() < min_px_ed or (es[:, :, k] == LABEL_LV).sum() < min_px_es:
            continue
        center = np.array([c.mean() for c in np.nonzero(cav)])
        a = _sector_thickness(ed[:, :, k], center, dx, dy, n_sectors)
        b = _sector_thickness(es[:, :, k], center, dx, dy, n_sectors)
        if np.all(np.isfinite(a)) and np.all(np.isfinite(b)):
            t_ed.append(a)
            t_es.append(b)
    if t_ed:
        a, b = np.array(t_ed), np.array(t_es)
        ratio = a / np.median(a)
        s, j = np.unravel_index(int(np.argmin(ratio)), ratio.shape)
        r["thin_ratio"] = float(ratio[s, j])
        r["thin_thickening"] = float(b[s, j] / a[s, j] - 1.0)
    else:
        r["thin_ratio"] = r["thin_thickening"] = math.nan
    return r


def class_criteria(ind: dict[str, float], group: str) -> list[str]:
    """Which of ``group``'s diagnostic criteria the indices fail (empty list: all met)."""
    fails: list[str] = []

    def need(ok: bool, text: str) -> None:
        if not ok:
            fails.append(text)

    ef, edvi = ind["lv_ef"], ind["lv_edv_index"]
    regional = ind["thin_ratio"] <= MINF_THIN_RATIO \
        and ind["thin_thickening"] < MINF_AKINETIC_THICKENING
    if group == "NOR":
        lim = NOR_LIMITS
        need(edvi <= lim["lv_edvi_max"], f"LV EDV index {edvi:.0f} > {lim['lv_edvi_max']}")
        need(ind["rv_edv_index"] <= lim["rv_edvi_max"],
             f"RV EDV index {ind['rv_edv_index']:.0f} > {lim['rv_edvi_max']}")
        need(ef >= lim["lv_ef_min"], f"LVEF {ef:.0f} < {lim['lv_ef_min']}")
        need(ind["rv_ef"] >= lim["rv_ef_min"], f"RVEF {ind['rv_ef']:.0f} < {lim['rv_ef_min']}")
        need(ind["max_wall_mm"] <= lim["wall_max_mm"],
             f"max wall {ind['max_wall_mm']:.1f} mm > {lim['wall_max_mm']}")
        need(ind["lv_mass_index"] <= lim["mass_index_max"],
             f"LV mass index {ind['lv_mass_index']:.0f} > {lim['mass_index_max']}")
        need(not regional, "regional wall thinning")
    elif group == "DCM":
        need(edvi > DCM_LV_EDVI_MIN, f"LV EDV index {edvi:.0f} <= {DCM_LV_EDVI_MIN}")
        need(ef < LOW_EF, f"LVEF {ef:.0f} >= {LOW_EF}")
        need(not regional, "regional wall thinning (looks like MINF)")
    elif group == "HCM":
        need(ind["lv_mass_index"] > HCM_MASS_INDEX_MIN,
             f"LV mass index {ind['lv_mass_index']:.0f} <= {HCM_MASS_INDEX_MIN}")
        need(ind["max_wall_mm"] > HCM_WALL_MIN_MM,
             f"max wall {ind['max_wall_mm']:.1f} mm <= {HCM_WALL_MIN_MM}")
        need(ef > HCM_EF_MIN, f"LVEF {ef:.0f} <= {HCM_EF_MIN}")
    elif group == "MINF":
        need(ef < LOW_EF, f"LVEF {ef:.0f} >= {LOW_EF}")
        need(ind["thin_ratio"] <= MINF_THIN_RATIO,
             f"no thin sector (ratio {ind['thin_ratio']:.2f} > {MINF_THIN_RATIO})")
        need(ind["thin_thickening"] < MINF_AKINETIC_THICKENING,
             f"thin sector thickens by {ind['thin_thickening']:.2f}")
    elif group == "RV":
        need(ind["rv_edv_index"] > RV_EDVI_MIN or ind["rv_ef"] < LOW_EF,
             f"RV EDV index {ind['rv_edv_index']:.0f} <= {RV_EDVI_MIN} and "
             f"RVEF {ind['rv_ef']:.0f} >= {LOW_EF}")
    else:
        raise ValueError(f"unknown group {group!r}")
    return fails


def diagnose(ind: dict[str, float]) -> str:
    """Rule-based ACDC diagnosis from :func:`phantom_indices`, or ``"?"`` when none fits.

    Order: reduced LVEF (MINF if a thin akinetic sector, else DCM), then HCM, then abnormal
    RV, then normal.
    """
    for group in ("MINF", "DCM", "HCM", "RV", "NOR"):
        if not class_criteria(ind, group):
            return group
    return "?"


def read_patient_indices(patient_dir: str | os.PathLike[str]) -> tuple[str, dict[str, float]]:
    """(Group, :func:`phantom_indices`) of one ACDC-layout patient folder."""
    d = Path(patient_dir)
    info = read_info(d / "Info.cfg")
    pid = d.name
    ed = nib.load(d / f"{pid}_frame{int(info['ED']):02d}_gt.nii.gz")
    es = nib.load(d / f"{pid}_frame{int(info['ES']):02d}_gt.nii.gz")
    return info["Group"], phantom_indices(np.asarray(ed.dataobj), np.asarray(es.dataobj),
                                          ed.header.get_zooms()[:3], float(info["Height"]),
                                          float(info["Weight"]))


def read_info(path: str | os.PathLike[str]) -> dict[str, str]:
    """``Key: value`` lines of an ACDC Info.cfg as a dict of strings."""
    fields = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


# --------------------------------------------------------------------------------------------
# Rendering the MR image
# --------------------------------------------------------------------------------------------


def _rot(v: Sequence[float], a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([c * v[0] - s * v[1], s * v[0] + c * v[1]])


def _ellipse(x: np.ndarray, y: np.ndarray, c: np.ndarray, ax: np.ndarray | float,
             ay: np.ndarray | float, ang: float, shape: tuple[int, ...]) -> np.ndarray:
    """Boolean ``shape`` mask of points inside a rotated ellipse (lengths in mm).

    ``x`` (nx, 1, 1) and ``y`` (1, ny, 1) are pixel coordinates; ``ax``/``ay`` may vary per
    slice as (1, 1, nz) arrays.
    """
    ca, sa = math.cos(ang), math.sin(ang)
    u = (x - c[0]) * ca + (y - c[1]) * sa
    v = -(x - c[0]) * sa + (y - c[1]) * ca
    return np.broadcast_to((u / ax) ** 2 + (v / ay) ** 2 <= 1.0, shape)


def _disc(img: np.ndarray, k: int, x: np.ndarray, y: np.ndarray, c: np.ndarray, r: float,
          value: float, where: np.ndarray | None = None) -> None:
    """Paint a disc of radius r mm centred at c into slice k, touching only its bounding box."""
    ix = np.searchsorted(x, [c[0] - r, c[0] + r])
    iy = np.searchsorted(y, [c[1] - r, c[1] + r])
    if ix[1] <= ix[0] or iy[1] <= iy[0]:
        return
    sx, sy = slice(ix[0], ix[1]), slice(iy[0], iy[1])
    m = (x[sx, None] - c[0]) ** 2 + (y[None, sy] - c[1]) ** 2 <= r * r
    if where is not None:
        m &= where[sx, sy] if where.ndim == 2 else where[sx, sy, k]
    img[sx, sy, k][m] = value


def _sample_tissue(rng: np.random.Generator) -> dict[str, float]:
    """SSFP-like relative intensities (LV blood = 1), drawn independently of the group.

    A global contrast gamma is applied here, to the tissue values: the clean image is piecewise
    constant, so this equals applying it to the image before blur, at no per-voxel cost.
    """
    myo = _u(rng, 0.22, 0.45)
    gamma = _u(rng, 0.75, 1.3)
    tis = {"blood": 1.0, "rv_blood": _u(rng, 0.82, 1.0), "myo": myo, "fat": _u(rng, 0.8, 1.15),
            "muscle": myo * _u(rng, 0.8, 1.15), "liver": _u(rng, 0.3, 0.55),
            "lung": _u(rng, 0.02, 0.08), "thorax": _u(rng, 0.15, 0.4),
            "marrow": _u(rng, 0.4, 0.7), "csf": _u(rng, 0.7, 1.0), "cortex": 0.06,
            "aorta": _u(rng, 0.7, 1.05), "vessel": _u(rng, 0.25, 0.7),
            "pericardium": _u(rng, 0.08, 0.2), "stomach": _u(rng, 0.6, 0.95)
            if rng.random() < 0.5 else 0.03}
    tis = {k: v**gamma for k, v in tis.items()}
    tis["apex_blood"] = _u(rng, 0.0, 0.15)  # fractional darkening of blood toward the apex
    return tis


def _background(rng: np.random.Generator, spec: PatientSpec, tis: dict[str, float]
                ) -> np.ndarray:
    """Static anatomy around the heart, (nx, ny, nz) float32 relative intensities.

    Structures that do not change along the stack (body, chest wall, spine, aorta, sternum) are
    drawn once in 2D; lungs shrink and liver and stomach grow toward the apex, slice by slice.
    """
    nx, ny, nz = spec.shape
    x, y = _pixel_coords(spec.shape, spec.spacing)
    X, Y = x[:, None], y[None, :]

    def ell(c: np.ndarray, ax: float, ay: float, ang: float) -> np.ndarray:
        return _ellipse(X, Y, c, ax, ay, ang, (nx, ny))

    h = spec.heart
    hc = h.centers.mean(axis=0)
    rot = h.septum - math.pi
    bmi = spec.weight_kg / (spec.height_cm / 100.0) ** 2
    # Subcutaneous fat grows with BMI; the body outline grows with it.
    f_sub = float(np.clip(6.0 + 2.2 * (bmi - 20.0) + rng.normal(0, 3.0), 3.0, 45.0))
    muscle = _u(rng, 8.0, 15.0)
    body_c = hc + _rot((_u(rng, -45, -15), _u(rng, 20, 45)), rot)
    ax_in, ay_in = _u(rng, 130, 170), max(_u(rng, 90, 120), abs(body_c[1] - hc[1]) + 80.0)
    body_ang = 0.5 * rot + _u(rng, -0.1, 0.1)
    base = np.zeros((nx, ny), np.float32)
    base[ell(body_c, ax_in + muscle + f_sub, ay_in + muscle + f_sub, body_ang)] = tis["fat"]
    base[ell(body_c, ax_in + muscle, ay_in + muscle, body_ang)] = tis["muscle"]
    thorax = ell(body_c, ax_in, ay_in, body_ang)
    base[thorax] = tis["thorax"]

    # Spine (paraspinal muscles, cortex, vertebral body, canal), aorta and sternum: drawn over
    # lungs and liver in every slice.
    front = np.full((nx, ny), np.nan, np.float32)
    sp = body_c + _rot((_u(rng, -8, 8), ay_in - _u(rng, 28, 38)), body_ang)
    rv = _u(rng, 13.0, 18.0)
    post = _rot((0.0, 1.0), body_ang)
    lat = _rot((1.0, 0.0), body_ang)
    for side in (1.0, -1.0):
        front[ell(sp + post * (rv + 6) + lat * side * 28, 20.0, 16.0, body_ang)] = tis["muscle"]
    front[ell(sp, rv + 2.0, rv + 2.0, 0.0)] = tis["cortex"]
    front[ell(sp, rv, rv * _u(rng, 0.85, 1.0), body_ang)] = tis["marrow"]
    front[ell(sp + post * (rv + 9.0), 7.0, 6.0, body_ang)] = tis["csf"]
    ra = _u(rng, 9.0, 14.0)
    ao = sp + lat * _u(rng, 18, 30) - post * _u(rng, 22, 32)
    front[ell(ao, ra + 1.5, ra + 1.5, 0.0)] = tis["pericardium"]
    front[ell(ao, ra, ra, 0.0)] = tis["aorta"]
    st = body_c - post * (ay_in - 6.0) + lat * _u(rng, -10, 10)
    front[ell(st, 13.0, 6.0, body_ang)] = tis["marrow"]
    has_front = np.isfinite(front)

    # Lungs flank the heart (left lung behind the LV lateral wall, right lung beyond the RV).
    lungs = [(hc + _rot((side * _u(rng, 75, 95) - (25 if side < 0 else 0), _u(rng, 0, 35)),
                        rot), _u(rng, 50, 72), _u(rng, 80, 110), rot + _u(rng, -0.3, 0.3))
             for side in (1.0, -1.0)]
    z0 = _u(rng, 0.2, 0.6)  # where the liver dome enters the stack
    liver = (hc + _rot((_u(rng, -90, -50), _u(rng, 55, 95)), rot), _u(rng, 70, 110),
             _u(rng, 50, 80), rot + _u(rng, -0.4, 0.4))
    stomach = (hc + _rot((_u(rng, 40, 80), _u(rng, 60, 100)), rot), _u(rng, 25, 45),
               _u(rng, 20, 35)) if rng.random() < 0.6 else None

    # Lungs, liver and stomach scale about fixed centres along the stack, so one quadratic
    # form per organ (2D) serves every slice: inside when q <= scale^2.
    def qform(c: np.ndarray, ax: float, ay: float, ang: float) -> np.ndarray:
        ca, sa = math.cos(ang), math.sin(ang)
        u = (X - c[0]) * ca + (Y - c[1]) * sa
        v = -(X - c[0]) * sa + (Y - c[1]) * ca
        return ((u / ax) ** 2 + (v / ay) ** 2).astype(np.float32)

    q_lungs = [qform(*lung) for lung in lungs]
    q_liver = qform(*liver)
    q_stomach = qform(*stomach, rot) if stomach is not None else None

    img = np.repeat(base[:, :, None], nz, axis=2)
    for k in range(nz):
        zf = k / max(nz - 1, 1)  # 0 at the base, 1 at the apex
        sl = img[:, :, k]
        shrink = 1.0 - 0.35 * zf
        for (c, ax, ay, _), q in zip(lungs, q_lungs, strict=True):
            m = (q <= shrink * shrink) & thorax
            sl[m] = tis["lung"]
            for _ in range(int(rng.integers(4, 10))):  # pulmonary vessels
                a, rr = rng.uniform(0, 2 * np.pi), math.sqrt(rng.random()) * 0.9
                p = c + shrink * rr * np.array([ax * math.cos(a), ay * math.sin(a)])
                _disc(img, k, x, y, p, _u(rng, 0.8, 2.5), tis["vessel"], where=m)
        grow = math.sqrt(min(max((zf - z0) / (1.0 - z0 + 0.25), 0.0), 1.0))
        if grow > 0:
            sl[(q_liver <= grow * grow) & thorax] = tis["liver"]
        grow = math.sqrt(min(max((zf - z0 - 0.2) / 0.6, 0.0), 1.0))
        if q_stomach is not None and grow > 0:
            sl[(q_stomach <= grow * grow) & thorax] = tis["stomach"]
        sl[has_front] = front[has_front]
    # Mild smooth tissue texture (+-5 %), so organs are not perfectly flat: coarse noise
    # interpolated bilinearly by two small matrix products.
    cx, cy = max(nx // 12, 2), max(ny // 12, 2)
    coarse = rng.normal(0.0, 0.05, (cx, cy, nz)).astype(np.float32)
    along_x = np.tensordot(_interp_matrix(nx, cx), coarse, axes=(1, 0))  # (nx, cy, nz)
    texture = np.matmul(along_x.transpose(0, 2, 1), _interp_matrix(ny, cy).T)  # (nx, nz, ny)
    img *= 1.0 + texture.transpose(0, 2, 1)
    return img


def _interp_matrix(n: int, m: int) -> np.ndarray:
    """(n, m) float32 matrix mapping m coarse samples to n fine ones by linear interpolation."""
    pos = np.linspace(0.0, m - 1.0, n)
    lo = np.minimum(np.floor(pos).astype(int), m - 2)
    w = (pos - lo).astype(np.float32)
    mat = np.zeros((n, m), np.float32)
    mat[np.arange(n), lo] = 1.0 - w
    mat[np.arange(n), lo + 1] = w
    return mat


def _fat_table(rng: np.random.Generator, h: Heart) -> np.ndarray:
    """Epicardial fat thickness (mm) per polar angle, (N_PHI,).

    Patchy (absent over much of the free walls) and thickest in the anterior and inferior
    interventricular grooves, where the RV crescent meets the LV.
    """
    f = np.full(N_PHI, -0.3)
    for m in (1, 2, 3):
        f += rng.normal(0, 0.5) * np.cos(m * _PHI + rng.uniform(0, 2 * np.pi))
    f = _u(rng, 0.5, 4.0) * np.clip(f, 0.0, 2.0)
    groove = _u(rng, 2.0, 7.0)
    for edge in (h.septum + h.rv_half_pos, h.septum - h.rv_half_neg):
        f += groove * _bump(_wrap(_PHI - edge), 0.1, 0.35)
    return f


def _paint_heart(img: np.ndarray, spec: PatientSpec, box: _Box, alpha: float,
                 lab_box: np.ndarray, tis: dict[str, float], fat: np.ndarray) -> None:
    """Paint the heart (and atria above the base) into ``img`` inside the box, in place."""
    h = spec.heart
    re, repi, rrv = _radii(h, alpha)
    rv_depth = np.where(rrv > 0, rrv - repi, 0.0)
    rv_out = np.where(rrv > 0, rrv + h.rv_wall * np.clip(rv_depth / 3.0, 0, 1), 0.0)
    outer = np.maximum(repi, rv_out)
    r_fat = np.where(outer > 0, outer + fat[None, :], 0.0)
    sub = img[box.sl]
    rho = box.rho
    r_fat_px = _gather(box, r_fat)
    heart = rho < r_fat_px + 1.3
    sub[heart] = tis["pericardium"]
    sub[rho < r_fat_px] = tis["fat"]
    sub[rho < _gather(box, rv_out)] = tis["myo"]
    # Blood gets slightly darker toward the apex (slower flow, less inflow enhancement).
    nz = spec.shape[2]
    apex_dim = (1.0 - tis["apex_blood"] * np.arange(nz) / max(nz - 1, 1))[None, None, :]
    blood = np.broadcast_to(tis["blood"] * apex_dim, sub.shape)
    rv_blood = np.broadcast_to(tis["rv_blood"] * apex_dim, sub.shape)
    m = lab_box == LABEL_RV
    sub[m] = rv_blood[m]
    sub[lab_box == LABEL_MYO] = tis["myo"]
    m = lab_box == LABEL_LV
    sub[m] = blood[m]
    # Papillary muscles: dark discs inside the cavity (labelled cavity, as in ACDC).
    c = 1.0 - alpha * (1.0 - h.c_es)
    dm = h.d_slices / c
    for k in np.nonzero((dm > 0.2 * h.d_base) & (dm < 0.7 * h.d_base))[0]:
        for a in h.pap_angles:
            r_at = re[k, int(((a + np.pi) % (2 * np.pi)) / _DPHI) % N_PHI]
            if r_at > 3.0 * h.pap_radius:
                p = (r_at - 1.6 * h.pap_radius) * np.array([math.cos(a), math.sin(a)])
                dxy = box.dxy[:, :, :, k]
                m = (np.hypot(dxy[0] - p[0], dxy[1] - p[1]) < h.pap_radius) \
                    & (lab_box[:, :, k] == LABEL_LV)
                sub[:, :, k][m] = tis["myo"]
    # Atria above the LV base (no labels, as in ACDC): LA behind the LV axis, RA on the RV side.
    u = np.array([math.cos(h.septum), math.sin(h.septum)])
    post = _rot((0.0, 1.0), h.septum - math.pi)
    for k in np.nonzero(dm > h.d_base)[0]:
        la_c = post * 0.3 * h.r0
        ra_c = u * 1.5 * h.r0
        dxy = box.dxy[:, :, :, k]
        for c0, r in ((la_c, 0.9 * h.r0), (ra_c, 0.75 * h.r0)):
            d2 = np.hypot(dxy[0] - c0[0], dxy[1] - c0[1])
            sl = sub[:, :, k]
            sl[d2 < r + 5.0] = tis["fat"]
            sl[d2 < r + 2.5] = tis["myo"]
            sl[d2 < r] = tis["blood"] * apex_dim[0, 0, 0]


def _scanner(rng: np.random.Generator, spec: PatientSpec) -> dict[str, object]:
    """Per-patient acquisition nuisance: bias field, blur, SNR, intensity scale, zero wedge."""
    nx, ny, nz = spec.shape
    u = np.linspace(-1.0, 1.0, nx)[:, None]
    v = np.linspace(-1.0, 1.0, ny)[None, :]
    # Smooth receive-coil bias in the plane (log-quadratic), a gentle trend along the stack and
    # a per-slice gain (each slice is a separate breath-hold acquisition).
    a = rng.normal(0, [0.25, 0.25, 0.15, 0.15, 0.1])
    bias2d = np.exp(a[0] * u + a[1] * v + a[2] * u**2 + a[3] * v**2 + a[4] * u * v)
    gain = np.exp(rng.normal(0, 0.05) * np.linspace(-1.0, 1.0, nz)) * rng.normal(1.0, 0.03, nz)
    if spec.dtype == "int16":
        level = float(np.exp(rng.uniform(np.log(120.0), np.log(1500.0))))
    else:
        level = _u(rng, 110.0, 220.0)
    keep = None
    if rng.random() < 0.15:  # zero corner left by an in-plane rotation at reconstruction
        ang = rng.uniform(0, 2 * np.pi)
        keep = ((np.cos(ang) * u + np.sin(ang) * v) <= _u(rng, 0.8, 1.2)).astype(np.float32)
    # The signal scale folds into the bias so the image is multiplied once.
    return {"bias": (bias2d * level).astype(np.float32)[:, :, None],
            "gain": gain.astype(np.float32)[None, None, :], "blur": _u(rng, 0.3, 0.9),
            "sigma": np.float32(level / _u(rng, 10.0, 35.0)), "keep": keep}


def _acquire(clean: np.ndarray, sc: dict[str, object], dtype: str,
             rng: np.random.Generator) -> np.ndarray:
    """Relative-intensity tissue map (x, y, z) -> stored MR magnitude image of ``dtype``.

    Blur (partial volume, k-space apodisation), bias x scale, then Rician noise: the magnitude
    of the signal plus complex Gaussian noise of standard deviation ``sigma`` per channel.
    """
    img = ndimage.gaussian_filter(clean, sigma=(sc["blur"], sc["blur"], 0.0), mode="nearest")
    img *= sc["bias"]
    img *= sc["gain"]
    sigma = sc["sigma"]
    re = rng.standard_normal(img.shape, dtype=np.float32)
    im = rng.standard_normal(img.shape, dtype=np.float32)
    re *= sigma
    re += img
    np.square(re, out=re)
    im *= sigma
    np.square(im, out=im)
    re += im
    img = np.sqrt(re, out=re)
    if sc["keep"] is not None:
        img *= sc["keep"][:, :, None]
    if dtype == "int16":
        return np.clip(np.rint(img), 0, 32767).astype(np.int16)
    if dtype == "uint8":
        return np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return np.minimum(img, 255.0).astype(np.float32)  # ACDC's float volumes are 0-255


# --------------------------------------------------------------------------------------------
# One patient end to end
# --------------------------------------------------------------------------------------------


def _phase(t: int, es_index: int, n_frames: int) -> float:
    """Contraction phase (0 ED .. 1 ES) of 0-based cine frame ``t``: systole then filling."""
    if t <= es_index:
        return 0.5 * (1.0 - math.cos(math.pi * t / max(es_index, 1)))
    fill = (t - es_index) / max(0.6 * (n_frames - es_index), 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * min(fill, 1.0)))


def _affine(shape: Sequence[int], spacing: Sequence[float]) -> np.ndarray:
    """Voxel -> mm affine, ACDC axis signs (-x, -y, +z), centred on the volume."""
    aff = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    aff[:3, 3] = -aff[:3, :3] @ ((np.asarray(shape[:3], float) - 1.0) / 2.0)
    return aff


def _save(path: Path, arr: np.ndarray, spacing: Sequence[float],
          frame_ms: float | None = None) -> None:
    img = nib.Nifti1Image(arr, _affine(arr.shape, spacing))
    img.header.set_data_dtype(arr.dtype)
    if frame_ms is not None:
        img.header.set_zooms(tuple(spacing[:3]) + (frame_ms,))
        img.header.set_xyzt_units("mm", "msec")
    else:
        img.header.set_xyzt_units("mm")
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    nib.save(img, path)


def _rasterize_checked(spec: PatientSpec
                       ) -> tuple[np.ndarray, np.ndarray, _Box, dict[str, float]] | None:
    """(ED labels, ES labels, heart box, indices), or None when the masks miss the group's criteria."""
    box = _make_box(spec, _heart_extent(spec.heart) + 6.0)
    ed_lab = _labels(spec, box, 0.0)
    es_lab = _labels(spec, box, 1.0)
    for lab in (ed_lab, es_lab):
        # labels live only in the box; every structure must be present at both phases
        if np.count_nonzero(np.bincount(lab[box.sl].ravel(), minlength=4)[1:]) != 3:
            return None
    ind = phantom_indices(ed_lab, es_lab, spec.spacing, spec.height_cm, spec.weight_kg)
    if diagnose(ind) != spec.group:
        return None
    return ed_lab, es_lab, box, ind


def generate_patient(seed: int, number: int, group: str, subset: str = "training",
                     matrix: int | None = None, cine: bool = False) -> dict[str, object]:
    """Draw and render one phantom patient; deterministic in (seed, number, group, matrix).

    Returns a dict with ``spec`` (:class:`PatientSpec`), ``ed``/``es`` images (x, y, z),
    ``ed_gt``/``es_gt`` uint8 labels, ``indices`` (:func:`phantom_indices` of the labels),
    ``attempts`` (draws needed until the masks met the group's criteria) and, with ``cine``,
    ``cine`` (x, y, z, t) holding every frame, the ED and ES ones equal to ``ed``/``es``.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, number, GROUPS.index(group)]))
    pid = f"patient{number:03d}"
    attempts, out = 0, None
    while out is None:
        if attempts == 50:  # the ranges in _sample_targets are meant to make this unreachable
            raise RuntimeError(f"{pid}: no {group} phantom met its criteria in 50 tries")
        attempts += 1
        spec = _sample_patient(rng, pid, subset, group, matrix)
        out = _rasterize_checked(spec)
    ed_lab, es_lab, box, indices = out
    # Everything below uses its own generators so that the cine flag (which draws more noise)
    # cannot change the ED/ES volumes.
    anat_rng, ed_rng, es_rng, cine_rng = rng.spawn(4)
    tis = _sample_tissue(anat_rng)
    bg = _background(anat_rng, spec, tis)
    fat = _fat_table(anat_rng, spec.heart)
    sc = _scanner(anat_rng, spec)

    def frame(alpha: float, lab_full: np.ndarray | None, frng: np.random.Generator
              ) -> np.ndarray:
        lab_box = (_labels_in_box(box, _radii(spec.heart, alpha)) if lab_full is None
                   else lab_full[box.sl])
        clean = bg.copy()
        _paint_heart(clean, spec, box, alpha, lab_box, tis, fat)
        return _acquire(clean, sc, spec.dtype, frng)

    ed_img = frame(0.0, ed_lab, ed_rng)
    es_img = frame(1.0, es_lab, es_rng)
    result: dict[str, object] = {
        "spec": spec, "ed": ed_img, "ed_gt": ed_lab, "es": es_img, "es_gt": es_lab,
        "indices": indices, "attempts": attempts}
    if cine:
        es_index = spec.es_frame - 1
        frames = []
        for t in range(spec.n_frames):
            if t == 0:
                frames.append(ed_img)
            elif t == es_index:
                frames.append(es_img)
            else:
                frames.append(frame(_phase(t, es_index, spec.n_frames), None, cine_rng))
        result["cine"] = np.stack(frames, axis=-1)
    return result


def _write_patient(root: Path, res: dict[str, object]) -> None:
    spec: PatientSpec = res["spec"]  # type: ignore[assignment]
    d = root / spec.subset / spec.pid
    d.mkdir(parents=True)
    (d / "Info.cfg").write_text(
        f"ED: 1\nES: {spec.es_frame}\nGroup: {spec.group}\nHeight: {spec.height_cm:.1f}\n"
        f"NbFrame: {spec.n_frames}\nWeight: {spec.weight_kg:.1f}\n", encoding="utf-8")
    for frame, key in ((1, "ed"), (spec.es_frame, "es")):
        _save(d / f"{spec.pid}_frame{frame:02d}.nii.gz", res[key], spec.spacing)  # type: ignore[arg-type]
        _save(d / f"{spec.pid}_frame{frame:02d}_gt.nii.gz", res[f"{key}_gt"], spec.spacing)  # type: ignore[arg-type]
    if "cine" in res:
        # ~1 s cardiac cycle spread over the frames
        _save(d / f"{spec.pid}_4d.nii.gz", res["cine"], spec.spacing,  # type: ignore[arg-type]
              frame_ms=round(1000.0 / spec.n_frames, 3))


# --------------------------------------------------------------------------------------------
# Cohort
# --------------------------------------------------------------------------------------------


def assign_cohort(n_patients: int, seed: int, test_fraction: float
                  ) -> list[tuple[int, str, str]]:
    """(patient number, subset, group) for every patient, classes balanced in each subset.

    Groups cycle over :data:`GROUPS` (counts differ by at most one); ``round(n * fraction)``
    patients go to ``testing`` spread over the groups as evenly as possible. Training patients
    are numbered first (1..n_train), testing after, like ACDC (001-100 / 101-150); the group
    order inside each subset is shuffled so a number does not reveal its group.
    """
    if n_patients < 1:
        raise ValueError("n_patients must be at least 1")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError("test_fraction must be in [0, 1)")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5E7]))
    groups = list(rng.permutation(GROUPS))
    counts = {g: n_patients // 5 + (i < n_patients % 5) for i, g in enumerate(groups)}
    n_test = int(round(n_patients * test_fraction))
    # Testing patients go to the groups with the most patients first, round-robin.
    order = sorted(groups, key=lambda g: -counts[g])
    test = dict.fromkeys(groups, 0)
    for i in range(n_test):
        test[order[i % 5]] += 1
    train_list = [g for g in groups for _ in range(counts[g] - test[g])]
    test_list = [g for g in groups for _ in range(test[g])]
    train_list = [str(g) for g in rng.permutation(train_list)] if train_list else []
    test_list = [str(g) for g in rng.permutation(test_list)] if test_list else []
    out = [(i + 1, "training", g) for i, g in enumerate(train_list)]
    out += [(len(train_list) + i + 1, "testing", g) for i, g in enumerate(test_list)]
    return out


_CSV_FIELDS = ("patient", "subset", "group", "height_cm", "weight_kg", "bsa", "lv_edv",
               "lv_esv", "lv_ef", "rv_edv", "rv_esv", "rv_ef", "lv_mass", "lv_edv_index",
               "rv_edv_index", "lv_mass_index", "max_wall_mm", "thin_ratio", "thin_thickening")


def _readme(n: int, seed: int, test_fraction: float, cine: bool, matrix: int | None,
            rows: list[dict[str, object]]) -> str:
    lines = [
        f"{README_MARKER} (generator version {GENERATOR_VERSION})",
        "",
        "SYNTHETIC DATA - NOT PATIENT DATA. Every image and mask here is a computer-generated",
        "phantom of a short-axis cine SSFP cardiac MRI study; no real person was scanned.",
        "",
        f"Written by `cardioclr synth` with --patients {n} --seed {seed} "
        f"--test-fraction {test_fraction}" + (" --cine" if cine else "")
        + (f" --size {matrix}" if matrix else "") + ".",
        "The same arguments reproduce byte-identical files.",
        "",
        "Layout (as the ACDC challenge, Bernard et al., IEEE TMI 2018):",
        "  training/patientNNN/, testing/patientNNN/ (numbered after training)",
        "  Info.cfg: ED, ES, Group (NOR, DCM, HCM, MINF, RV), Height (cm), NbFrame, Weight (kg)",
        "  patientNNN_frameMM.nii.gz     image at frame MM (ED and ES), (x, y, z), base at z = 0",
        "  patientNNN_frameMM_gt.nii.gz  labels uint8: 0 background, 1 RV cavity,",
        "                                2 LV myocardium, 3 LV cavity (papillary muscles included)",
        "  patientNNN_4d.nii.gz          (with --cine) every frame, (x, y, z, t)",
        "  synthetic_cohort.csv          per patient: group and indices measured on the masks",
        "",
        "Groups follow the ACDC criteria, verified on each patient's masks (BSA: Mosteller;",
        "mass: myocardial volume x 1.05 g/mL; volumes: voxel count x voxel volume):",
        "  NOR  normal volumes, LVEF >= 50 %, max wall <= 12 mm",
        "  DCM  LV EDV > 100 mL/m2 and LVEF < 40 %",
        "  HCM  LV mass > 110 g/m2, max wall > 15 mm, LVEF > 55 %",
        "  MINF LVEF < 40 % with a thin (<= 0.6 x median) akinetic sector",
        "  RV   RV EDV > 110 mL/m2 or RVEF < 40 %",
        "",
        "Mean measured indices per group:",
        f"  {'group':6s} {'n':>3s} {'LVEF%':>6s} {'LVEDVi':>7s} {'LVMi':>6s} {'RVEDVi':>7s} "
        f"{'RVEF%':>6s} {'wall mm':>8s}",
    ]
    for g in GROUPS:
        sel = [r for r in rows if r["group"] == g]
        if not sel:
            continue

        def m(key: str, sel: list[dict[str, object]] = sel) -> float:
            return float(np.mean([float(r[key]) for r in sel]))  # type: ignore[arg-type]

        lines.append(f"  {g:6s} {len(sel):3d} {m('lv_ef'):6.1f} {m('lv_edv_index'):7.1f} "
                     f"{m('lv_mass_index'):6.1f} {m('rv_edv_index'):7.1f} {m('rv_ef'):6.1f} "
                     f"{m('max_wall_mm'):8.1f}")
    return "\n".join(lines) + "\n"


def _is_replaceable(out: Path) -> bool:
    """An output folder may be replaced when absent, empty or an earlier synthetic cohort."""
    if not out.exists():
        return True
    if not out.is_dir():
        return False
    if not any(out.iterdir()):
        return True
    readme = out / "README.txt"
    try:
        return readme.read_text(encoding="utf-8").startswith(README_MARKER)
    except OSError:
        return False


def write_synthetic_cohort(out_dir: str | os.PathLike[str], n_patients: int, seed: int = 0,
                           test_fraction: float = 0.2, cine: bool = False,
                           matrix: int | None = None,
                           progress: Callable[[int, int], None] | None = None) -> list[str]:
    """Write an ACDC-layout synthetic cohort to ``out_dir``; returns the patient ids.

    ``n_patients`` phantoms, groups balanced, ``test_fraction`` of them under ``testing/``.
    ``matrix``: fixed square in-plane matrix (pixels) instead of ACDC-like varying ones (the
    pixel spacing then follows from a 300-400 mm field of view). ``cine`` adds the 4D file with
    all ``NbFrame`` frames (about 10x slower). The folder is built under a temporary name and
    renamed when complete; an existing ``out_dir`` is replaced only if it is empty or an earlier
    synthetic cohort (:class:`DataError` otherwise). Deterministic: same arguments, same bytes.
    """
    out = Path(out_dir)
    if not _is_replaceable(out):
        raise DataError(out, "exists and is not a cardioclr synthetic cohort; refusing to "
                        "replace it (choose another folder or delete it)")
    if matrix is not None and not 64 <= matrix <= 512:
        raise ValueError("matrix must be between 64 and 512 pixels")
    plan = assign_cohort(n_patients, seed, test_fraction)
    rows: list[dict[str, object]] = []
    with atomic_dir(out) as tmp:
        # gzip (zlib releases the GIL) runs in a thread while the next patient is drawn.
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending: list[Future[None]] = []
            for i, (number, subset, group) in enumerate(plan):
                res = generate_patient(seed, number, group, subset, matrix=matrix, cine=cine)
                pending.append(pool.submit(_write_patient, tmp, res))
                if len(pending) > 2:  # bound the memory held by queued patients
                    pending.pop(0).result()
                spec: PatientSpec = res["spec"]  # type: ignore[assignment]
                ind: dict[str, float] = res["indices"]  # type: ignore[assignment]
                rows.append({"patient": spec.pid, "subset": subset, "group": group,
                             "height_cm": spec.height_cm, "weight_kg": spec.weight_kg,
                             **{k: round(ind[k], 4) for k in _CSV_FIELDS[5:]}})
                if progress is not None:
                    progress(i + 1, len(plan))
            for fut in pending:
                fut.result()
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=_CSV_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        (tmp / "synthetic_cohort.csv").write_text(buf.getvalue(), encoding="utf-8")
        (tmp / "README.txt").write_text(_readme(n_patients, seed, test_fraction, cine, matrix,
                                                rows), encoding="utf-8")
    return [str(r["patient"]) for r in rows]
