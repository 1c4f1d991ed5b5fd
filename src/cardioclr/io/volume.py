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
from pathlib import Path
from typing import cast

import nibabel as nib
import numpy as np

from cardioclr.clinical.labels import LABEL_MEANINGS, MAX_LABEL
from cardioclr.errors import DataError
from cardioclr.io.dicom import read_dicom_series
from cardioclr.io.types import Volume
from cardioclr.io.validate import (
    check_claimed_size,
    check_direction,
    nifti_spacing_mm,
    nifti_stored_bytes,
)

#: Same-grid tolerances: positions and voxel sizes in mm, direction cosines (unitless). Loose
#: enough for float32 NIfTI headers and DICOM's decimal strings, far below any real misplacement.
GRID_TOLERANCE_MM = 1e-3
GRID_TOLERANCE_COSINE = 1e-4
_AXIS_NAMES = ("x (array axis 2, NIfTI i)", "y (array axis 1, NIfTI j)", "z (array axis 0, NIfTI k)")


def read_volume(path: str | os.PathLike[str]) -> Volume:
    """Read an image: a NIfTI file (.nii / .nii.gz) or a folder holding one DICOM series.

    Returns float32 (z, y, x) and spacing (z, y, x) in mm. Raises :class:`DataError` naming the
    file for: a missing, corrupt or truncated file, an image that is not a 3D stack (a 2-D NIfTI
    array, or 4D where 3D is expected), and NaN or infinite intensities. A one-slice stack is
    accepted from both sources: a NIfTI of shape (x, y, 1) and a DICOM series of one image
    (see :func:`cardioclr.io.dicom.read_dicom_series`) both give shape (1, y, x).
    """
    p = Path(path)
    if p.is_dir():
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
                        f"(expected {LABEL_MEANINGS})")
    return Volume(rounded.astype(np.uint8), vol.spacing, vol.affine, vol.path, vol.affine_known)


def grid_difference(reference: Volume, other: Volume) -> str | None:
    """Why ``other`` is not on ``reference``'s voxel grid, or None when it is (or can't be told).

    Both must have the same (z, y, x) shape (checked by the caller). Their 4x4 affines are
    compared column by column: direction cosines within :data:`GRID_TOLERANCE_COSINE`, voxel
    sizes and origin within :data:`GRID_TOLERANCE_MM`. None as well when either affine is
    unknown (a NIfTI without sform/qform). The text names the first kind of difference found
    (a flipped or swapped axis, a voxel size, a shift) and the largest absolute difference of
    the two affines.
    """
    axes = _axes(reference, other)
    if axes is None:
        return None
    (size_a, size_b), a, b = axes
    problems = orientation_problems(reference, other)
    if not problems:
        size_diff = np.abs(size_a - size_b)
        for axis in np.nonzero(size_diff > GRID_TOLERANCE_MM)[0]:
            problems.append(f"voxel size along {_AXIS_NAMES[axis].split()[0]} is "
                            f"{size_b[axis]:.4g} mm vs {size_a[axis]:.4g} mm")
    shift = b[:3, 3] - a[:3, 3]
    if not problems and np.abs(shift).max() > GRID_TOLERANCE_MM:
        problems.append(f"origin shifted by {np.linalg.norm(shift):.4g} mm "
                        f"({', '.join(f'{v:+.4g}' for v in shift)} mm in world x, y, z)")
    if not problems:
        return None
    return (f"{' and '.join(problems)} relative to the image; max abs affine difference "
            f"{np.abs(b - a).max():.4g}")


def orientation_problems(reference: Volume, other: Volume) -> list[str]:
    """How ``other``'s voxel axes point differently from ``reference``'s (flipped, swapped or
    rotated axes), one phrase per axis; empty when they agree or either affine is unknown.
    Voxel sizes and origins are not compared (see :func:`grid_difference`)."""
    axes = _axes(reference, other)
    if axes is None:
        return []
    (size_a, size_b), a, b = axes
    dir_a, dir_b = a[:3, :3] / size_a, b[:3, :3] / size_b
    cos_diff = np.abs(dir_a - dir_b).max(axis=0)
    problems: list[str] = []
    for axis in range(3):
        if cos_diff[axis] <= GRID_TOLERANCE_COSINE:
            continue
        dots = dir_b[:, axis] @ dir_a  # which reference axis this one now runs along
        best = int(np.argmax(np.abs(dots)))
        name = _AXIS_NAMES[axis].split()[0]
        if best == axis and dots[best] < -1 + GRID_TOLERANCE_COSINE:
            problems.append(f"flipped along {_AXIS_NAMES[axis]}")
        elif abs(dots[best]) > 1 - GRID_TOLERANCE_COSINE:
            sign = "-" if dots[best] < 0 else ""
            problems.append(f"its {name} axis runs along the image's {sign}"
                            f"{_AXIS_NAMES[best].split()[0]} axis (axes swapped)")
        else:
            angle = float(np.degrees(np.arccos(np.clip(dir_b[:, axis] @ dir_a[:, axis], -1, 1))))
            problems.append(f"its {name} axis is rotated by {angle:.3g} degrees")
    return problems


def _axes(reference: Volume, other: Volume
          ) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray, np.ndarray] | None:
    """((voxel sizes of reference, of other), affine a, affine b), or None when either affine is
    unknown or degenerate (a zero column cannot place voxels: nothing to compare)."""
    if not (reference.affine_known and other.affine_known):
        return None
    a, b = np.asarray(reference.affine, float), np.asarray(other.affine, float)
    size_a, size_b = np.linalg.norm(a[:3, :3], axis=0), np.linalg.norm(b[:3, :3], axis=0)
    if not ((size_a > 0).all() and (size_b > 0).all()):
        return None
    return (size_a, size_b), a, b


def read_cine(path: str | os.PathLike[str]) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Read a 4D cine NIfTI (x, y, z, t) as float32 (t, z, y, x) and spacing (z, y, x) mm."""
    p = Path(path)
    img = _load_nifti_header(p)
    if len(img.shape) != 4:
        raise DataError(p, f"expected a 4D cine (x, y, z, t), found shape {tuple(img.shape)}")
    spacing = nifti_spacing_mm(p, _raw_header(p, img))
    data = _nifti_data(p, img)
    if not np.isfinite(data).all():
        raise DataError(p, "cine contains NaN or infinite intensities")
    return np.ascontiguousarray(data.transpose(3, 2, 1, 0)), spacing


def _read_nifti(p: Path, expect_ndim: int) -> Volume:
    img = _load_nifti_header(p)
    shape = tuple(int(s) for s in img.shape)
    # Trailing singleton axes (x, y, z, 1[, 1]) -- time, or 5D vector exports -- hide a 3D volume.
    while len(shape) > expect_ndim and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != expect_ndim:
        kind = "a 2D image" if len(shape) == 2 else f"a {len(shape)}D array"
        # A 2-D array has no slice axis and so no slice spacing in pixdim: refuse it rather than
        # guess one (a one-slice stack is fine when stored as (x, y, 1) with its pixdim[3]).
        hint = ("; store a single slice as a 3D stack of shape (x, y, 1) with its slice spacing"
                if len(shape) == 2 else "")
        raise DataError(p, f"expected a 3D stack (x, y, z), found {kind} of shape {shape}{hint}")
    spacing = nifti_spacing_mm(p, _raw_header(p, img))
    known = int(img.header["sform_code"]) > 0 or int(img.header["qform_code"]) > 0
    if known:
        check_direction(p, img.affine)
    data = _nifti_data(p, img).reshape(shape)
    arr = np.ascontiguousarray(data.transpose(2, 1, 0))  # (x, y, z) -> (z, y, x)
    return Volume(arr, spacing, np.asarray(img.affine, dtype=np.float64), str(p),
                  affine_known=known)


def _load_nifti_header(p: Path) -> nib.Nifti1Image:
    if not p.exists():
        raise DataError(p, "file does not exist")
    if p.stat().st_size == 0:
        raise DataError(p, "file is empty")
    try:
        return cast(nib.Nifti1Image, nib.load(str(p)))  # nib.load's type is the base class
    except Exception as err:  # nibabel raises many types for corrupt headers
        raise DataError(p, f"not a readable NIfTI file ({type(err).__name__}: {err})") from err


def _raw_header(p: Path, img: nib.Nifti1Image) -> nib.Nifti1Header:
    """The header exactly as stored: ``nib.load`` "fixes" a pixdim of 0 into 1 (with a warning
    that names no file), which would hide a broken voxel size from the validator."""
    from nibabel.openers import ImageOpener

    with ImageOpener(str(p)) as fh:
        header: nib.Nifti1Header = type(img.header).from_fileobj(fh, check=False)
    return header


def _nifti_data(p: Path, img: nib.Nifti1Image) -> np.ndarray:
    dtype = img.get_data_dtype()
    # RGB (structured) and complex data cannot become intensities without losing information.
    if dtype.kind not in "biuf":
        raise DataError(p, f"unsupported NIfTI data type {dtype} (expected a real-valued "
                        "grey-level image: int, uint or float)")
    # The size guard: the header's shape x dtype is checked against the bytes the file really
    # holds (decompressed) and the per-image ceiling before nibabel allocates anything.
    shape = tuple(int(v) for v in img.shape)
    needed = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize if all(shape) else 0
    offset = int(img.header["vox_offset"]) if img.header["vox_offset"] else 352
    available = nifti_stored_bytes(p, offset, needed) if needed else 0
    check_claimed_size(p, shape, dtype.itemsize, available_bytes=available, what="NIfTI header")
    try:
        # dataobj applies scl_slope/inter; int16, uint8 and float32 files all become float32.
        return np.asarray(img.dataobj, dtype=np.float32)
    except Exception as err:  # truncated gzip -> EOFError, zlib.error, OSError, ValueError
        raise DataError(p, f"corrupt or truncated image data ({type(err).__name__}: {err})") from err
