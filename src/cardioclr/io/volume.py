"""Read image and label volumes from NIfTI files or DICOM series folders.

IO contract: every reader returns a :class:`Volume` whose ``array`` is float32 (z, y, x) for
images or uint8 (z, y, x) for label maps, and ``spacing`` is (z, y, x) in millimetres.
``affine`` is the 4x4 voxel-to-world matrix of the *source file's own axis order* (NIfTI:
i, j, k = x, y, z), kept so derived masks can be written back with the same geometry.
NIfTI spacing comes from the header's voxel size (pixdim), never from the affine: the ACDC files
have an sform of diag(-1, -1, 1) whatever their true 1.4-1.7 x 5-10 mm voxels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from cardioclr.errors import DataError

MAX_LABEL = 3  # ACDC: 1 = RV cavity, 2 = LV myocardium, 3 = LV cavity


@dataclass(frozen=True)
class Volume:
    """A 3D volume: ``array`` (z, y, x), ``spacing`` (z, y, x) mm, source ``affine`` (4, 4)."""

    array: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    path: str

    @property
    def shape(self) -> tuple[int, int, int]:
        """(z, y, x) voxels."""
        return tuple(self.array.shape)  # type: ignore[return-value]


def read_volume(path: str | os.PathLike[str]) -> Volume:
    """Read an image: a NIfTI file (.nii / .nii.gz) or a folder holding one DICOM series.

    Returns float32 (z, y, x) and spacing (z, y, x) in mm. Raises :class:`DataError` naming the
    file for: a missing, corrupt or truncated file, an image that is not a 3D stack (a 2D image,
    or 4D where 3D is expected), and NaN or infinite intensities.
    """
    p = Path(path)
    if p.is_dir():
        from cardioclr.io.dicom import read_dicom_series

        vol = read_dicom_series(p)
    else:
        vol = _read_nifti(p, expect_ndim=3)
    if not np.isfinite(vol.array).all():
        n_bad = int((~np.isfinite(vol.array)).sum())
        raise DataError(p, f"image contains {n_bad} NaN or infinite intensities")
    return vol


def read_label_volume(path: str | os.PathLike[str]) -> Volume:
    """Read a label map (NIfTI or DICOM folder) as uint8 (z, y, x) with values in 0..3.

    Raises :class:`DataError` for non-integer values or labels outside 0-3.
    """
    p = Path(path)
    if p.is_dir():
        from cardioclr.io.dicom import read_dicom_series

        vol = read_dicom_series(p)
    else:
        vol = _read_nifti(p, expect_ndim=3)
    arr = vol.array
    if not np.isfinite(arr).all():
        raise DataError(p, "label map contains NaN or infinite values")
    rounded = np.rint(arr)
    if not np.array_equal(rounded, arr):
        raise DataError(p, "label map has non-integer values; expected labels 0-3")
    values = np.unique(rounded)
    bad = values[(values < 0) | (values > MAX_LABEL)]
    if bad.size:
        raise DataError(p, f"label values {bad.astype(int).tolist()} outside 0-{MAX_LABEL} "
                        "(expected 0 background, 1 RV cavity, 2 LV myocardium, 3 LV cavity)")
    return Volume(rounded.astype(np.uint8), vol.spacing, vol.affine, vol.path)


def read_cine(path: str | os.PathLike[str]) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Read a 4D cine NIfTI (x, y, z, t) as float32 (t, z, y, x) and spacing (z, y, x) mm."""
    p = Path(path)
    img = _load_nifti_header(p)
    if len(img.shape) != 4:
        raise DataError(p, f"expected a 4D cine (x, y, z, t), found shape {tuple(img.shape)}")
    data = _nifti_data(p, img)
    if not np.isfinite(data).all():
        raise DataError(p, "cine contains NaN or infinite intensities")
    zooms = img.header.get_zooms()[:3]
    return np.ascontiguousarray(data.transpose(3, 2, 1, 0)), _spacing_zyx(p, zooms)


def _read_nifti(p: Path, expect_ndim: int) -> Volume:
    img = _load_nifti_header(p)
    shape = tuple(int(s) for s in img.shape)
    # Trailing singleton axes (x, y, z, 1[, 1]) -- time, or 5D vector exports -- hide a 3D volume.
    while len(shape) > expect_ndim and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != expect_ndim:
        kind = "a 2D image" if len(shape) == 2 else f"a {len(shape)}D array"
        raise DataError(p, f"expected a 3D stack (x, y, z), found {kind} of shape {shape}")
    data = _nifti_data(p, img).reshape(shape)
    zooms = img.header.get_zooms()[:3]
    arr = np.ascontiguousarray(data.transpose(2, 1, 0))  # (x, y, z) -> (z, y, x)
    return Volume(arr, _spacing_zyx(p, zooms), np.asarray(img.affine, dtype=np.float64), str(p))


def _load_nifti_header(p: Path) -> nib.Nifti1Image:
    if not p.exists():
        raise DataError(p, "file does not exist")
    if p.stat().st_size == 0:
        raise DataError(p, "file is empty")
    try:
        return nib.load(str(p))
    except Exception as err:  # nibabel raises many types for corrupt headers
        raise DataError(p, f"not a readable NIfTI file ({type(err).__name__}: {err})") from err


def _nifti_data(p: Path, img: nib.Nifti1Image) -> np.ndarray:
    dtype = img.get_data_dtype()
    # RGB (structured) and complex data cannot become intensities without losing information.
    if dtype.kind not in "biuf":
        raise DataError(p, f"unsupported NIfTI data type {dtype} (expected a real-valued "
                        "grey-level image: int, uint or float)")
    try:
        # dataobj applies scl_slope/inter; int16, uint8 and float32 files all become float32.
        return np.asarray(img.dataobj, dtype=np.float32)
    except Exception as err:  # truncated gzip -> EOFError, zlib.error, OSError, ValueError
        raise DataError(p, f"corrupt or truncated image data ({type(err).__name__}: {err})") from err


def _spacing_zyx(p: Path, zooms: tuple[float, ...]) -> tuple[float, float, float]:
    sx, sy, sz = (float(z) for z in zooms[:3])
    if not all(np.isfinite(v) and v > 0 for v in (sx, sy, sz)):
        raise DataError(p, f"invalid voxel spacing in header: {(sx, sy, sz)} mm")
    return (sz, sy, sx)
