"""Clinical indices measured on phantom masks (volumes, EF, mass, wall thickness, regional
thinning): the check that every phantom meets its group's ACDC criteria
(:mod:`cardioclr.clinical.criteria`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from cardioclr.clinical.indices import ejection_fraction_pct, mosteller_bsa, myocardial_mass_g
from cardioclr.clinical.labels import LV_CAVITY, LV_MYOCARDIUM, RV_CAVITY
from cardioclr.data.acdc import read_info_cfg


def _bbox(mask: np.ndarray, margin: int = 2) -> tuple[slice, ...]:
    idx = np.nonzero(mask)
    return tuple(slice(max(int(i.min()) - margin, 0), int(i.max()) + margin + 1) for i in idx)


def _max_wall_thickness(lab2d: np.ndarray, dx: float, dy: float) -> float:
    """Largest LV wall thickness (mm) of one (x, y) slice, 0 without cavity and myocardium.

    Thickness at an epicardial pixel (myocardium 4-adjacent to anything but LV) is its distance
    to the nearest cavity pixel centre; for a wall n pixels thick that is n pixel widths.
    """
    cav, myo = lab2d == LV_CAVITY, lab2d == LV_MYOCARDIUM
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
    ii, jj = np.nonzero((lab2d == LV_CAVITY) | (lab2d == LV_MYOCARDIUM))
    ang = np.arctan2((jj - center[1]) * dy, (ii - center[0]) * dx)
    sec = np.minimum(((ang + np.pi) / (2 * np.pi) * n_sectors).astype(int), n_sectors - 1)
    is_cav = lab2d[ii, jj] == LV_CAVITY
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
    for name, lab in (("lv", LV_CAVITY), ("rv", RV_CAVITY)):
        r[f"{name}_edv"] = float(np.count_nonzero(ed == lab)) * vox_ml
        r[f"{name}_esv"] = float(np.count_nonzero(es == lab)) * vox_ml
        r[f"{name}_ef"] = ejection_fraction_pct(r[f"{name}_edv"], r[f"{name}_esv"])
    r["lv_mass"] = myocardial_mass_g(float(np.count_nonzero(ed == LV_MYOCARDIUM)) * vox_ml)
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
        cav = ed[:, :, k] == LV_CAVITY
        if cav.sum() < min_px_ed or (es[:, :, k] == LV_CAVITY).sum() < min_px_es:
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


def read_patient_indices(patient_dir: str | os.PathLike[str]) -> tuple[str, dict[str, float]]:
    """(Group, :func:`phantom_indices`) of one ACDC-layout patient folder."""
    d = Path(patient_dir)
    info = read_info_cfg(d / "Info.cfg")
    pid = d.name
    # nibabel's stubs type load() as a generic image without dataobj / get_zooms.
    ed: Any = nib.load(d / f"{pid}_frame{int(info['ED']):02d}_gt.nii.gz")
    es: Any = nib.load(d / f"{pid}_frame{int(info['ES']):02d}_gt.nii.gz")
    return info["Group"], phantom_indices(np.asarray(ed.dataobj), np.asarray(es.dataobj),
                                          ed.header.get_zooms()[:3], float(info["Height"]),
                                          float(info["Weight"]))
