"""Rendering the MR image: surroundings (body, lungs, liver, spine...), SSFP-like tissue
contrast, the painted heart, and scanner nuisance (bias, blur, Rician noise, dtype).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from cardioclr.clinical.labels import LV_CAVITY, LV_MYOCARDIUM, RV_CAVITY
from cardioclr.data.synthetic.anatomy import (
    DPHI,
    N_PHI,
    PHI,
    Heart,
    PatientSpec,
    boundary_radii,
    bump,
    wrap_angle,
)
from cardioclr.data.synthetic.raster import (
    PixelBox,
    gather_table,
    pixel_coords,
)
from cardioclr.data.synthetic.sampling import (
    uniform,
)


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


def sample_tissue(rng: np.random.Generator) -> dict[str, float]:
    """SSFP-like relative intensities (LV blood = 1), drawn independently of the group.

    A global contrast gamma is applied here, to the tissue values: the clean image is piecewise
    constant, so this equals applying it to the image before blur, at no per-voxel cost.
    """
    myo = uniform(rng, 0.22, 0.45)
    gamma = uniform(rng, 0.75, 1.3)
    tis = {"blood": 1.0, "rv_blood": uniform(rng, 0.82, 1.0), "myo": myo, "fat": uniform(rng, 0.8, 1.15),
            "muscle": myo * uniform(rng, 0.8, 1.15), "liver": uniform(rng, 0.3, 0.55),
            "lung": uniform(rng, 0.02, 0.08), "thorax": uniform(rng, 0.15, 0.4),
            "marrow": uniform(rng, 0.4, 0.7), "csf": uniform(rng, 0.7, 1.0), "cortex": 0.06,
            "aorta": uniform(rng, 0.7, 1.05), "vessel": uniform(rng, 0.25, 0.7),
            "pericardium": uniform(rng, 0.08, 0.2), "stomach": uniform(rng, 0.6, 0.95)
            if rng.random() < 0.5 else 0.03}
    tis = {k: v**gamma for k, v in tis.items()}
    tis["apex_blood"] = uniform(rng, 0.0, 0.15)  # fractional darkening of blood toward the apex
    return tis


def paint_background(rng: np.random.Generator, spec: PatientSpec, tis: dict[str, float]
                ) -> np.ndarray:
    """Static anatomy around the heart, (nx, ny, nz) float32 relative intensities.

    Structures that do not change along the stack (body, chest wall, spine, aorta, sternum) are
    drawn once in 2D; lungs shrink and liver and stomach grow toward the apex, slice by slice.
    """
    nx, ny, nz = spec.shape
    x, y = pixel_coords(spec.shape, spec.spacing)
    X, Y = x[:, None], y[None, :]

    def ell(c: np.ndarray, ax: float, ay: float, ang: float) -> np.ndarray:
        return _ellipse(X, Y, c, ax, ay, ang, (nx, ny))

    h = spec.heart
    hc = h.centers.mean(axis=0)
    rot = h.septum - math.pi
    bmi = spec.weight_kg / (spec.height_cm / 100.0) ** 2
    # Subcutaneous fat grows with BMI; the body outline grows with it.
    f_sub = float(np.clip(6.0 + 2.2 * (bmi - 20.0) + rng.normal(0, 3.0), 3.0, 45.0))
    muscle = uniform(rng, 8.0, 15.0)
    body_c = hc + _rot((uniform(rng, -45, -15), uniform(rng, 20, 45)), rot)
    ax_in, ay_in = uniform(rng, 130, 170), max(uniform(rng, 90, 120), abs(body_c[1] - hc[1]) + 80.0)
    body_ang = 0.5 * rot + uniform(rng, -0.1, 0.1)
    base = np.zeros((nx, ny), np.float32)
    base[ell(body_c, ax_in + muscle + f_sub, ay_in + muscle + f_sub, body_ang)] = tis["fat"]
    base[ell(body_c, ax_in + muscle, ay_in + muscle, body_ang)] = tis["muscle"]
    thorax = ell(body_c, ax_in, ay_in, body_ang)
    base[thorax] = tis["thorax"]

    # Spine (paraspinal muscles, cortex, vertebral body, canal), aorta and sternum: drawn over
    # lungs and liver in every slice.
    front = np.full((nx, ny), np.nan, np.float32)
    sp = body_c + _rot((uniform(rng, -8, 8), ay_in - uniform(rng, 28, 38)), body_ang)
    rv = uniform(rng, 13.0, 18.0)
    post = _rot((0.0, 1.0), body_ang)
    lat = _rot((1.0, 0.0), body_ang)
    for side in (1.0, -1.0):
        front[ell(sp + post * (rv + 6) + lat * side * 28, 20.0, 16.0, body_ang)] = tis["muscle"]
    front[ell(sp, rv + 2.0, rv + 2.0, 0.0)] = tis["cortex"]
    front[ell(sp, rv, rv * uniform(rng, 0.85, 1.0), body_ang)] = tis["marrow"]
    front[ell(sp + post * (rv + 9.0), 7.0, 6.0, body_ang)] = tis["csf"]
    ra = uniform(rng, 9.0, 14.0)
    ao = sp + lat * uniform(rng, 18, 30) - post * uniform(rng, 22, 32)
    front[ell(ao, ra + 1.5, ra + 1.5, 0.0)] = tis["pericardium"]
    front[ell(ao, ra, ra, 0.0)] = tis["aorta"]
    st = body_c - post * (ay_in - 6.0) + lat * uniform(rng, -10, 10)
    front[ell(st, 13.0, 6.0, body_ang)] = tis["marrow"]
    has_front = np.isfinite(front)

    # Lungs flank the heart (left lung behind the LV lateral wall, right lung beyond the RV).
    lungs = [(hc + _rot((side * uniform(rng, 75, 95) - (25 if side < 0 else 0), uniform(rng, 0, 35)),
                        rot), uniform(rng, 50, 72), uniform(rng, 80, 110), rot + uniform(rng, -0.3, 0.3))
             for side in (1.0, -1.0)]
    z0 = uniform(rng, 0.2, 0.6)  # where the liver dome enters the stack
    liver = (hc + _rot((uniform(rng, -90, -50), uniform(rng, 55, 95)), rot), uniform(rng, 70, 110),
             uniform(rng, 50, 80), rot + uniform(rng, -0.4, 0.4))
    stomach = (hc + _rot((uniform(rng, 40, 80), uniform(rng, 60, 100)), rot), uniform(rng, 25, 45),
               uniform(rng, 20, 35)) if rng.random() < 0.6 else None

    # Lungs, liver and stomach scale about fixed centres along the stack, so one quadratic
    # form per organ (2D) serves every slice: inside when q <= scale^2.
    def qform(c: np.ndarray, ax: float, ay: float, ang: float) -> np.ndarray:
        ca, sa = math.cos(ang), math.sin(ang)
        u = (X - c[0]) * ca + (Y - c[1]) * sa
        v = -(X - c[0]) * sa + (Y - c[1]) * ca
        q: np.ndarray = ((u / ax) ** 2 + (v / ay) ** 2).astype(np.float32)
        return q

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
                _disc(img, k, x, y, p, uniform(rng, 0.8, 2.5), tis["vessel"], where=m)
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


def fat_table(rng: np.random.Generator, h: Heart) -> np.ndarray:
    """Epicardial fat thickness (mm) per polar angle, (N_PHI,).

    Patchy (absent over much of the free walls) and thickest in the anterior and inferior
    interventricular grooves, where the RV crescent meets the LV.
    """
    f: np.ndarray = np.full(N_PHI, -0.3)
    for m in (1, 2, 3):
        f += rng.normal(0, 0.5) * np.cos(m * PHI + rng.uniform(0, 2 * np.pi))
    f = uniform(rng, 0.5, 4.0) * np.clip(f, 0.0, 2.0)
    groove = uniform(rng, 2.0, 7.0)
    for edge in (h.septum + h.rv_half_pos, h.septum - h.rv_half_neg):
        f += groove * bump(wrap_angle(PHI - edge), 0.1, 0.35)
    return f


def paint_heart(img: np.ndarray, spec: PatientSpec, box: PixelBox, alpha: float,
                 lab_box: np.ndarray, tis: dict[str, float], fat: np.ndarray) -> None:
    """Paint the heart (and atria above the base) into ``img`` inside the box, in place."""
    h = spec.heart
    re, repi, rrv = boundary_radii(h, alpha)
    rv_depth = np.where(rrv > 0, rrv - repi, 0.0)
    rv_out = np.where(rrv > 0, rrv + h.rv_wall * np.clip(rv_depth / 3.0, 0, 1), 0.0)
    outer = np.maximum(repi, rv_out)
    r_fat = np.where(outer > 0, outer + fat[None, :], 0.0)
    sub = img[box.sl]
    rho = box.rho
    r_fat_px = gather_table(box, r_fat)
    heart = rho < r_fat_px + 1.3
    sub[heart] = tis["pericardium"]
    sub[rho < r_fat_px] = tis["fat"]
    sub[rho < gather_table(box, rv_out)] = tis["myo"]
    # Blood gets slightly darker toward the apex (slower flow, less inflow enhancement).
    nz = spec.shape[2]
    apex_dim = (1.0 - tis["apex_blood"] * np.arange(nz) / max(nz - 1, 1))[None, None, :]
    blood = np.broadcast_to(tis["blood"] * apex_dim, sub.shape)
    rv_blood = np.broadcast_to(tis["rv_blood"] * apex_dim, sub.shape)
    m = lab_box == RV_CAVITY
    sub[m] = rv_blood[m]
    sub[lab_box == LV_MYOCARDIUM] = tis["myo"]
    m = lab_box == LV_CAVITY
    sub[m] = blood[m]
    # Papillary muscles: dark discs inside the cavity (labelled cavity, as in ACDC).
    c = 1.0 - alpha * (1.0 - h.c_es)
    dm = h.d_slices / c
    for k in np.nonzero((dm > 0.2 * h.d_base) & (dm < 0.7 * h.d_base))[0]:
        for a in h.pap_angles:
            r_at = re[k, int(((a + np.pi) % (2 * np.pi)) / DPHI) % N_PHI]
            if r_at > 3.0 * h.pap_radius:
                p = (r_at - 1.6 * h.pap_radius) * np.array([math.cos(a), math.sin(a)])
                dxy = box.dxy[:, :, :, k]
                m = (np.hypot(dxy[0] - p[0], dxy[1] - p[1]) < h.pap_radius) \
                    & (lab_box[:, :, k] == LV_CAVITY)
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


def sample_scanner(rng: np.random.Generator, spec: PatientSpec) -> dict[str, object]:
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
        level = uniform(rng, 110.0, 220.0)
    keep = None
    if rng.random() < 0.15:  # zero corner left by an in-plane rotation at reconstruction
        ang = rng.uniform(0, 2 * np.pi)
        keep = ((np.cos(ang) * u + np.sin(ang) * v) <= uniform(rng, 0.8, 1.2)).astype(np.float32)
    # The signal scale folds into the bias so the image is multiplied once.
    return {"bias": (bias2d * level).astype(np.float32)[:, :, None],
            "gain": gain.astype(np.float32)[None, None, :], "blur": uniform(rng, 0.3, 0.9),
            "sigma": np.float32(level / uniform(rng, 10.0, 35.0)), "keep": keep}


def acquire(clean: np.ndarray, sc: dict[str, Any], dtype: str,
             rng: np.random.Generator) -> np.ndarray:
    """Relative-intensity tissue map (x, y, z) -> stored MR magnitude image of ``dtype``.

    Blur (partial volume, k-space apodisation), bias x scale, then Rician noise: the magnitude
    of the signal plus complex Gaussian noise of standard deviation ``sigma`` per channel.
    """
    img: np.ndarray = ndimage.gaussian_filter(clean, sigma=(sc["blur"], sc["blur"], 0.0), mode="nearest")
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
    keep = sc["keep"]
    if isinstance(keep, np.ndarray):
        img *= keep[:, :, None]
    stored: np.ndarray
    if dtype == "int16":
        stored = np.clip(np.rint(img), 0, 32767).astype(np.int16)
    elif dtype == "uint8":
        stored = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    else:
        stored = np.minimum(img, 255.0).astype(np.float32)  # ACDC's float volumes are 0-255
    return stored
