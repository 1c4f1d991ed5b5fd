"""Post-processing of predicted label volumes: one connected piece per structure, no holes.

Labels (z, S, S) uint8: 0 background, 1 RV cavity, 2 LV myocardium, 3 LV cavity.

1. Per structure, keep the largest 3D connected component. Slices are 5-10 mm apart, so the
   connectivity is 8-neighbour in-plane and face-only across slices (a diagonal step across a
   10 mm gap is not evidence of continuity). A one-slice volume simply becomes 2D.
2. Per slice, fill holes: background enclosed by the RV or by the LV cavity becomes that
   structure, and anything enclosed by the LV (myocardium + cavity) becomes LV cavity, so the
   cavity is closed inside its wall (papillary muscles are cavity in the ACDC convention).

The heart mask (union of structures, dilated by a margin) is built by
:func:`cardioclr.data.views.heart_mask`; this module only returns labels.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import binary_fill_holes, label

from cardioclr.clinical.labels import LV_CAVITY, LV_MYOCARDIUM, RV_CAVITY, STRUCTURES

# 8-connected in-plane, 6-connected (face) across slices.
_CONNECTIVITY = np.zeros((3, 3, 3), dtype=bool)
_CONNECTIVITY[1] = True
_CONNECTIVITY[0, 1, 1] = _CONNECTIVITY[2, 1, 1] = True


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest connected component of a boolean (z, y, x) mask (empty stays empty)."""
    lab, n = label(mask, structure=_CONNECTIVITY)
    if n <= 1:
        return mask.astype(bool, copy=True)
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    largest: np.ndarray = lab == int(sizes.argmax())
    return largest


def largest_components(labels: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
    """Step 1 only: the largest 3D component of each structure of (z, S, S) labels.

    Returns uint8 labels and, per structure name, the fraction of its voxels removed (0-1).
    Enough to find where the heart is (filling holes never moves a bounding box).
    """
    if labels.ndim != 3:
        raise ValueError(f"expected (z, y, x) labels, got shape {labels.shape}")
    src = np.asarray(labels)
    out = np.zeros(src.shape, dtype=np.uint8)
    removed: dict[str, float] = {}
    for name, value in STRUCTURES.items():
        m = src == value
        n = int(m.sum())
        keep = largest_component(m) if n else m
        removed[name] = float((n - int(keep.sum())) / n) if n else 0.0
        out[keep] = value
    return out, removed


def postprocess_with_stats(labels: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
    """Clean a predicted (z, S, S) label volume; see the module docstring.

    Returns the cleaned uint8 labels and, per structure name (``LV``, ``MYO``, ``RV``), the
    fraction of its predicted voxels that sat in smaller components and were removed (0-1;
    0 when the structure is absent). A large fraction means a fragmented, suspicious mask.
    """
    out, removed = largest_components(labels)
    for sl in out:  # each slice is a view: filling it fills out
        for value in (RV_CAVITY, LV_CAVITY):  # not MYO: what a ring encloses is cavity
            m = sl == value
            if m.any():
                sl[binary_fill_holes(m) & (sl == 0)] = value
        lv = (sl == LV_MYOCARDIUM) | (sl == LV_CAVITY)
        if lv.any():
            sl[binary_fill_holes(lv) & ~lv] = LV_CAVITY
    return out, removed


def postprocess(labels: np.ndarray) -> np.ndarray:
    """Cleaned labels (uint8, same shape) of :func:`postprocess_with_stats`."""
    return postprocess_with_stats(labels)[0]
