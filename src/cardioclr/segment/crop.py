"""Heart-centred square windows on the store grid: find one, cut it out, put a result back.

Localise-then-segment (as the ACDC challenge's best methods): a first pass over whole slices
finds the heart, a second pass segments a window around it, where the network sees the same
field of view as in training (heart-centred crops) and costs less than on the whole slice.

A window is ``Box(y0, x0, size)``: store pixels ``[y0, y0 + size) x [x0, x0 + size)``. It may
reach past the slice border (small stores, hearts near the edge); those pixels are zero in the
crop and dropped when un-cropping, so ``uncrop(crop(a, box), box, a.shape)`` equals ``a`` inside
the window and is background (0) outside it, on exactly the original grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Box:
    """A ``size`` x ``size`` window whose top-left pixel is (``y0``, ``x0``) (may be negative)."""

    y0: int
    x0: int
    size: int


def _overlap(start: int, size: int, length: int) -> tuple[slice, slice]:
    """(source slice on an axis of ``length``, destination slice in the window) of one axis."""
    lo, hi = max(start, 0), min(start + size, length)
    if hi <= lo:
        return slice(0, 0), slice(0, 0)
    return slice(lo, hi), slice(lo - start, hi - start)


def crop(a: np.ndarray, box: Box) -> np.ndarray:
    """The window of the last two axes of ``a`` (..., H, W) -> (..., size, size), zero outside."""
    h, w = a.shape[-2:]
    out = np.zeros(a.shape[:-2] + (box.size, box.size), dtype=a.dtype)
    sy, dy = _overlap(box.y0, box.size, h)
    sx, dx = _overlap(box.x0, box.size, w)
    out[..., dy, dx] = a[..., sy, sx]
    return out


def uncrop(c: np.ndarray, box: Box, shape_hw: tuple[int, int]) -> np.ndarray:
    """Put a window (..., size, size) back on a zero (..., H, W) grid; inverse of :func:`crop`."""
    h, w = shape_hw
    if c.shape[-2:] != (box.size, box.size):
        raise ValueError(f"window of shape {c.shape[-2:]} does not match box size {box.size}")
    out = np.zeros(c.shape[:-2] + (h, w), dtype=c.dtype)
    sy, dy = _overlap(box.y0, box.size, h)
    sx, dx = _overlap(box.x0, box.size, w)
    out[..., sy, sx] = c[..., dy, dx]
    return out


def heart_box(labels: np.ndarray, size: int, divisor: int, margin_px: int = 8,
              min_pixels: int = 20) -> Box | None:
    """A window around the labelled pixels of ``labels`` (z, H, W) (any value > 0), or None.

    Centred on the bounding box of the heart over all slices; at least ``size`` pixels, larger
    when the heart plus ``margin_px`` on each side does not fit, rounded up to a multiple of
    ``divisor`` (the network's down-sampling). None when fewer than ``min_pixels`` pixels are
    labelled: nothing was found, so there is no heart to centre on.
    """
    fg = (np.asarray(labels) > 0).any(axis=0)
    if int(fg.sum()) < min_pixels:
        return None
    ys, xs = np.nonzero(fg)
    y_lo, y_hi, x_lo, x_hi = int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())
    extent = max(y_hi - y_lo, x_hi - x_lo) + 1 + 2 * margin_px
    side = max(size, extent)
    side += (-side) % divisor
    cy, cx = (y_lo + y_hi + 1) // 2, (x_lo + x_hi + 1) // 2
    return Box(cy - side // 2, cx - side // 2, side)


def full_box(shape_hw: tuple[int, int], divisor: int) -> Box:
    """The whole slice (padded at the end up to a square multiple of ``divisor``) as a window."""
    side = max(shape_hw)
    side += (-side) % divisor
    return Box(0, 0, side)
