"""Checks shared by the NIfTI and DICOM readers: geometry, physical units and claimed size.

Every check raises :class:`DataError` naming the file and the problem, *before* the voxels are
read, so that a header that lies (zero or absurd voxel sizes, metres or micrometres taken for
millimetres, a 1 KB file claiming a 4000 x 4000 x 100 volume) never reaches the resampling
code or an allocation.

* :func:`check_spacing` / :func:`check_pixel_spacing` -- voxel sizes finite, positive and
  physically plausible for cardiac MRI.
* :func:`nifti_spacing_mm` -- NIfTI ``pixdim`` in mm from ``xyzt_units`` (m, mm, um converted;
  ``unknown`` read as mm, as every cardiac NIfTI converter writes mm).
* :func:`check_direction` -- a finite, invertible voxel-to-world matrix.
* :func:`check_claimed_size` / :func:`nifti_stored_bytes` -- the size guard: shape x dtype must
  fit in what the file really holds (decompressed) and under :func:`max_image_bytes`.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from cardioclr.errors import DataError

#: Plausible voxel sizes (mm) of a cardiac MR stack. In-plane pixels are 0.5-3 mm in practice,
#: slice gaps 2-20 mm; the bounds are wide on purpose and still refuse a unit mix-up (metres
#: read as mm give 0.0015, micrometres read as mm give 1562).
IN_PLANE_MM = (0.05, 20.0)
SLICE_MM = (0.05, 100.0)
#: Default ceiling on the memory one image may take once read as float32 (bytes).
DEFAULT_MAX_IMAGE_BYTES = 4 * 1024**3
MAX_IMAGE_BYTES_ENV = "CARDIOCLR_MAX_IMAGE_BYTES"
#: Deflate cannot expand data by more than ~1032:1, so a gzip file of n bytes holds at most
#: this many times n bytes once decompressed: a hard bound that needs no decompression.
_DEFLATE_MAX_RATIO = 1032
_NIFTI_UNITS_TO_MM = {"mm": 1.0, "meter": 1000.0, "micron": 0.001, "unknown": 1.0}


def max_image_bytes() -> int:
    """The size ceiling of one image read as float32: ``$CARDIOCLR_MAX_IMAGE_BYTES`` or 4 GiB."""
    text = os.environ.get(MAX_IMAGE_BYTES_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_IMAGE_BYTES
    try:
        value = int(float(text))
    except ValueError:
        raise DataError(MAX_IMAGE_BYTES_ENV, f"environment variable is not a number: {text!r}"
                        ) from None
    if value <= 0:
        raise DataError(MAX_IMAGE_BYTES_ENV, f"environment variable must be positive: {text!r}")
    return value


def check_spacing(path: str | os.PathLike[str], spacing_zyx: tuple[float, float, float],
                  source: str = "header") -> tuple[float, float, float]:
    """Return ``spacing_zyx`` (mm) as floats; raise :class:`DataError` naming ``path`` when a
    value is not finite, not positive, or outside :data:`SLICE_MM` (z) / :data:`IN_PLANE_MM`
    (y, x). ``source`` names where the values came from (``pixdim``, ``PixelSpacing``)."""
    values = tuple(float(v) for v in spacing_zyx)
    shown = "(" + ", ".join(f"{v:.6g}" for v in values) + ") mm (z, y, x)"
    _check_lengths(path, values, ("slice spacing", "pixel height", "pixel width"),
                   (SLICE_MM, IN_PLANE_MM, IN_PLANE_MM), shown, source)
    return values  # type: ignore[return-value]


def check_pixel_spacing(path: str | os.PathLike[str], spacing_yx: tuple[float, float],
                        source: str = "DICOM PixelSpacing") -> tuple[float, float]:
    """In-plane pixel size (between rows, between columns) in mm, checked like
    :func:`check_spacing` (for a slice whose slice gap is not known yet)."""
    values = tuple(float(v) for v in spacing_yx)
    shown = "(" + ", ".join(f"{v:.6g}" for v in values) + ") mm (rows, columns)"
    _check_lengths(path, values, ("pixel height", "pixel width"), (IN_PLANE_MM, IN_PLANE_MM),
                   shown, source)
    return values  # type: ignore[return-value]


def _check_lengths(path: str | os.PathLike[str], values: tuple[float, ...], names: tuple[str, ...],
                   bounds: tuple[tuple[float, float], ...], shown: str, source: str) -> None:
    for v, name, (low, high) in zip(values, names, bounds, strict=True):
        if not np.isfinite(v) or v <= 0:
            raise DataError(path, f"invalid voxel size in the {source}: {name} is {v:.6g} mm "
                            f"{shown}; a zero, negative or non-finite voxel size cannot place "
                            "the voxels (fix the header)")
        if not low <= v <= high:
            raise DataError(path, f"implausible voxel size in the {source}: {name} {v:.6g} mm "
                            f"{shown}, expected {low:g}-{high:g} mm for cardiac MRI (units in "
                            "metres or micrometres mislabelled as mm?)")


def nifti_spacing_mm(path: str | os.PathLike[str], header: object) -> tuple[float, float, float]:
    """Voxel size (z, y, x) in mm from a NIfTI header's raw ``pixdim`` and ``xyzt_units``.

    ``pixdim`` is read directly (nibabel's ``get_zooms`` turns a 0 into 1 with a warning that
    names no file). Metres and micrometres are converted; other spatial units are refused.
    Then :func:`check_spacing`.
    """
    pixdim = np.asarray(header["pixdim"], dtype=np.float64)  # type: ignore[index]
    unit = header.get_xyzt_units()[0]  # type: ignore[attr-defined]
    if unit not in _NIFTI_UNITS_TO_MM:
        raise DataError(path, f"NIfTI spatial unit {unit!r} (xyzt_units) is not a length unit "
                        "cardioclr can convert (mm, meter, micron)")
    scale = _NIFTI_UNITS_TO_MM[unit]
    dims = int(np.asarray(header["dim"])[0])  # type: ignore[index]
    sx, sy, sz = (float(pixdim[i]) if i <= max(dims, 3) else 1.0 for i in (1, 2, 3))
    # pixdim may be negative in some writers (the sign belongs to the qform); its size counts.
    sx, sy, sz = abs(sx) * scale, abs(sy) * scale, abs(sz) * scale
    source = "NIfTI header pixdim" + (f" (converted from {unit})" if scale != 1.0 else "")
    return check_spacing(path, (sz, sy, sx), source)


def check_direction(path: str | os.PathLike[str], affine: np.ndarray) -> None:
    """Refuse a voxel-to-world matrix with non-finite entries or degenerate (zero-volume) axes."""
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4) or not np.isfinite(a).all():
        raise DataError(path, "orientation (voxel-to-world matrix) has NaN or infinite entries")
    if abs(float(np.linalg.det(a[:3, :3]))) < 1e-12:
        raise DataError(path, "orientation (voxel-to-world matrix) is degenerate: its axes do not "
                        "span 3D space (zero or parallel direction vectors)")


def check_claimed_size(path: str | os.PathLike[str], shape: tuple[int, ...], itemsize: int,
                       available_bytes: int | None = None, max_bytes: int | None = None,
                       what: str = "header") -> None:
    """The size guard, before any voxel is read.

    ``shape`` x ``itemsize`` (bytes per stored voxel) must not exceed ``available_bytes`` (what
    the file really holds, when known) and, read as float32, not exceed ``max_bytes``
    (default :func:`max_image_bytes`). Zero-sized axes are refused too.
    """
    dims = [int(s) for s in shape]
    if any(s <= 0 for s in dims):
        raise DataError(path, f"the {what} claims an empty image of shape {tuple(dims)} "
                        "(an axis of size 0)")
    n = 1
    for s in dims:
        n *= s
    stored = n * int(itemsize)
    if available_bytes is not None and stored > available_bytes:
        raise DataError(path, f"corrupt or truncated file: the {what} claims {tuple(dims)} "
                        f"voxels x {itemsize} bytes = {_human(stored)}, but the file holds only "
                        f"{_human(available_bytes)} of image data")
    limit = max_image_bytes() if max_bytes is None else max_bytes
    needed = n * max(int(itemsize), 4)
    if needed > limit:
        raise DataError(path, f"the {what} claims {tuple(dims)} voxels: {_human(needed)} in "
                        f"memory, above the limit of {_human(limit)} per image (raise it with "
                        f"{MAX_IMAGE_BYTES_ENV}=BYTES if the image is real)")


def nifti_stored_bytes(path: str | os.PathLike[str], offset: int, needed: int) -> int:
    """Bytes of voxel data the NIfTI file at ``path`` really holds after ``offset``, read in
    64 KiB chunks (memory stays bounded whatever the header claims).

    Plain files: the file size. Gzip: first the hard bound of ``_DEFLATE_MAX_RATIO`` x the
    compressed size (no decompression needed to refuse a 1 KB file claiming gigabytes), then
    the whole stream is decompressed and counted, which also checks its CRC: a damaged
    compressed file is refused here (nibabel reads only the bytes it needs and never reaches
    the checksum, so damage inside the stream would otherwise become a silently wrong image).
    Raises :class:`DataError` for a damaged gzip stream.
    """
    p = Path(path)
    size = p.stat().st_size
    with open(p, "rb") as fh:
        magic = fh.read(2)
    if magic != b"\x1f\x8b":
        return max(size - offset, 0)
    bound = size * _DEFLATE_MAX_RATIO
    if offset + needed > bound:
        return max(bound - offset, 0)
    total = 0
    try:
        with gzip.open(p, "rb") as gz:
            while chunk := gz.read(1 << 16):
                total += len(chunk)
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(p, f"corrupt or truncated gzip data after {_human(total)} "
                        f"({type(err).__name__}: {err})") from None
    return max(total - offset, 0)


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"
