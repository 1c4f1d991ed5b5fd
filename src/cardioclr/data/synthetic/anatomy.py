"""Phantom anatomy: the patient description (:class:`Heart`, :class:`PatientSpec`) and the
polar boundary tables r(phi) of the LV cavity, LV epicardium and RV crescent at any phase.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Angular resolution of the polar boundary tables (0.5 degree): fine enough that linear
# interpolation between table entries is far below the pixel size at any radius in the heart.
N_PHI = 720
PHI = -np.pi + np.arange(N_PHI) * (2.0 * np.pi / N_PHI)
DPHI = 2.0 * np.pi / N_PHI


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


def wrap_angle(a: np.ndarray | float) -> np.ndarray:
    """Angle(s) wrapped to [-pi, pi)."""
    return (np.asarray(a) + np.pi) % (2.0 * np.pi) - np.pi


def bump(x: np.ndarray, plateau: float, ramp: float) -> np.ndarray:
    """1 for |x| <= plateau, raised-cosine down to 0 at plateau + ramp, 0 beyond."""
    t: np.ndarray = np.clip((np.abs(x) - plateau) / max(ramp, 1e-6), 0.0, 1.0)
    return 0.5 * (1.0 + np.cos(np.pi * t))


@dataclass(frozen=True)
class _Parts:
    """Phase-dependent pieces of the boundary tables, each (nz, n_phi)."""

    re_ed: np.ndarray  # ED endocardial radius of the material shown by the slice
    repi_ed: np.ndarray  # ED epicardial radius of that material (0: no myocardium)
    winf: np.ndarray  # infarct weight (1 in the core)
    cc: np.ndarray  # axial compression of the wall (c, or 1 in the akinetic infarct)
    rv_unit: np.ndarray  # RV crescent depth per mm of ``rv_w`` (0 where there is no RV)


def phase_parts(h: Heart, alpha: float, d: np.ndarray | None = None,
           phi: np.ndarray = PHI) -> _Parts:
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

    winf = h.inf_on * bump(wrap_angle(phi - h.inf_angle), h.inf_plateau, h.inf_ramp) \
        * bump(dm - h.inf_mid, h.inf_half, h.inf_ramp_d)
    dmc = np.clip(dm, 0.0, h.d_base)
    wall = h.t0 * (1.0 - h.taper * (1.0 - dmc / h.d_base) ** 2)
    if h.hcm_extra > 0:
        wall = wall + h.hcm_extra * bump(wrap_angle(phi - h.hcm_angle), h.hcm_plateau, h.hcm_ramp) \
            * bump(dmc - h.hcm_mid, h.hcm_half, h.hcm_ramp_d)
    wall = wall * (1.0 - winf) + h.t_inf * winf
    cap = (dm < 0.0) & (dm > -h.t_apex)
    capfrac = np.sqrt(np.clip(1.0 - (dm / h.t_apex) ** 2, 0.0, None))
    repi_ed = np.where(in_lv, re_ed + wall, np.where(cap, wall * capfrac, 0.0))
    # The myocardial slab is compressed by c along the axis (so it thickens), except in the
    # akinetic infarct, which neither shortens nor thickens.
    cc = c + (1.0 - c) * winf

    t = np.clip((dm - h.rv_d_apex) / max(h.d_base - h.rv_d_apex, 1e-6), 0.0, 1.0)
    g = np.sqrt(1.0 - (1.0 - t) ** 2) * (dm <= h.d_base)
    dphi = wrap_angle(phi - h.septum)
    half = np.where(dphi >= 0, h.rv_half_pos, h.rv_half_neg)
    shape = np.cos(0.5 * np.pi * np.clip(np.abs(dphi) / half, 0.0, 1.0)) ** h.rv_pow
    unit = np.where((repi_ed > 0) & (shape > 1e-4), g * shape, 0.0)
    return _Parts(re_ed=re_ed, repi_ed=repi_ed, winf=np.broadcast_to(winf, re_ed.shape),
                  cc=np.broadcast_to(cc, re_ed.shape), rv_unit=unit)


def k_table(h: Heart, alpha: float, p: _Parts, k_es: float | None = None) -> np.ndarray:
    """Radial endocardial factor per (slice, angle): 1 at ED, ``k_es`` at ES, 1 in an infarct."""
    k = h.k_es if k_es is None else k_es
    factor: np.ndarray = 1.0 - alpha * (1.0 - (k * (1.0 - p.winf) + p.winf))
    return factor


def epi_radius(p: _Parts, re: np.ndarray) -> np.ndarray:
    """Epicardial radius conserving each sector's myocardial volume for endocardium ``re``."""
    return np.where(p.repi_ed > 0,
                    np.sqrt(re**2 + np.maximum(p.repi_ed**2 - p.re_ed**2, 0.0) / p.cc), 0.0)


def boundary_radii(h: Heart, alpha: float, d: np.ndarray | None = None,
           phi: np.ndarray = PHI) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Polar boundary tables of the heart at cardiac phase ``alpha`` (0 = ED, 1 = ES).

    ``d``: (nz,) slice levels in mm from the apex (default: the heart's slices); ``phi``: (n,)
    angles. Returns ``(r_endo, r_epi, r_rv)``, each (nz, n) in mm around the slice's LV axis:
    LV cavity for rho < r_endo, myocardium for r_endo <= rho < r_epi, RV cavity for
    r_epi <= rho < r_rv. A structure absent from a slice has radius 0.
    """
    p = phase_parts(h, alpha, d, phi)
    re = k_table(h, alpha, p) * p.re_ed
    repi = epi_radius(p, re)
    w = h.rv_w_ed + alpha * (h.rv_w_es - h.rv_w_ed)
    rrv = np.where(p.rv_unit > 0, repi + w * p.rv_unit, 0.0)
    return re, repi, rrv


def positive_root(a: float, b: float, c: float) -> float | None:
    """Largest real root of a x^2 + b x + c = 0 (a > 0), None if there is none."""
    disc = b * b - 4.0 * a * c
    if a <= 0 or disc < 0:
        return None
    return (-b + math.sqrt(disc)) / (2.0 * a)
