"""The 8 in-plane orientations of a square slice, for models trained in one orientation.

Stores keep the source's voxel order (ACDC's NIfTI affines carry no orientation, so nothing can
be reoriented to one anatomical view from the headers), and a hospital export may show the heart
mirrored, transposed or turned by quarter turns relative to ACDC. A segmentation model trained
with mirroring and full rotation does not care; one trained without mirroring (on ACDC: +0.005
mean Dice and +0.015 ES RV at equal time, benchmarks/README.md) fails on a mirrored heart (RV
Dice ~0.1). ``segment predict`` therefore segments such a patient in whichever of these
orientations its test-time views agree on best (segment/predict.py).

An orientation is ``(transpose, quarter_turns)``: swap the two slice axes first (when
``transpose``), then turn by ``quarter_turns`` x 90 degrees (:func:`numpy.rot90` on the last
two axes). The 8 of them are the symmetries of the square (the dihedral group D4).
"""

from __future__ import annotations

import numpy as np

from cardioclr.segment.crop import Box

Orientation = tuple[bool, int]

#: The orientation of the stored slices themselves.
AS_STORED: Orientation = (False, 0)
#: Every orientation, the stored one first.
ORIENTATIONS: tuple[Orientation, ...] = tuple((t, k) for t in (False, True) for k in range(4))


def orient(a: np.ndarray, o: Orientation, inverse: bool = False) -> np.ndarray:
    """``a`` (..., S, S) in orientation ``o`` or (``inverse``) brought back from it, C-contiguous:
    a copy, except for :data:`AS_STORED` on a contiguous ``a`` (a view of it: no copy on the
    common path)."""
    transpose, turns = o
    if inverse:
        a = np.rot90(a, -turns, axes=(-2, -1))
        a = a.swapaxes(-1, -2) if transpose else a
    else:
        a = a.swapaxes(-1, -2) if transpose else a
        a = np.rot90(a, turns, axes=(-2, -1))
    return np.ascontiguousarray(a)


def _pixel(y: int, x: int, o: Orientation, side: int, inverse: bool) -> tuple[int, int]:
    """Where pixel (y, x) of a ``side``-pixel square lands under :func:`orient` (any integers)."""
    transpose, turns = o

    def turn(y: int, x: int, k: int) -> tuple[int, int]:
        for _ in range(k % 4):  # np.rot90 by one quarter: new[i, j] = old[j, side - 1 - i]
            y, x = side - 1 - x, y
        return y, x

    if inverse:
        y, x = turn(y, x, -turns)
        return (x, y) if transpose else (y, x)
    y, x = (x, y) if transpose else (y, x)
    return turn(y, x, turns)


def orient_box(box: Box, o: Orientation, side: int, inverse: bool = False) -> Box:
    """The window ``box`` of a ``side``-pixel square slice under :func:`orient` (it may reach
    past the border, as any :class:`~cardioclr.segment.crop.Box`)."""
    corners = [_pixel(y, x, o, side, inverse) for y, x in ((box.y0, box.x0),
                                                           (box.y0 + box.size - 1, box.x0 + box.size - 1))]
    return Box(min(c[0] for c in corners), min(c[1] for c in corners), box.size)


#: Names of the orientations (:func:`describe`): quarter turns counterclockwise, as
#: :func:`numpy.rot90`; a transposition followed by 1, 2 or 3 of them mirrors the slice up-down,
#: about its anti-diagonal, or left-right.
_NAMES: dict[Orientation, str] = {
    (False, 0): "as_stored", (False, 1): "turned_90", (False, 2): "turned_180", (False, 3): "turned_270",
    (True, 0): "transposed", (True, 1): "mirrored_up_down", (True, 2): "anti_transposed",
    (True, 3): "mirrored_left_right",
}


def describe(o: Orientation) -> str:
    """A name for ``quality.csv``: ``as_stored``, ``turned_90``, ``mirrored_left_right``, ..."""
    return _NAMES[o]
