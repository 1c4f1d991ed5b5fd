"""The volume type every reader returns (kept apart from the readers so that each reader
module, NIfTI or DICOM, imports it without importing the other).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Volume:
    """A 3D volume: ``array`` (z, y, x), ``spacing`` (z, y, x) mm, source ``affine`` (4, 4).

    ``affine_known`` is False for a NIfTI file whose header has neither an sform nor a qform
    (codes 0): nibabel then makes up an affine from the voxel size, which says nothing about
    where the voxels are, so it must not be compared with another file's.
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    path: str
    affine_known: bool = True

    @property
    def shape(self) -> tuple[int, int, int]:
        """(z, y, x) voxels."""
        z, y, x = self.array.shape
        return z, y, x
