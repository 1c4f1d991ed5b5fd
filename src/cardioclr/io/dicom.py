"""Read one DICOM series (a folder of single-frame MR slices) as a :class:`Volume`.

Geometry convention
-------------------
DICOM positions are in the patient LPS frame (x to the patient's Left, y Posterior, z Superior).
The returned ``affine`` maps voxel indices ``(i, j, k)`` = (column, row, slice) to **RAS**
millimetres, the NIfTI world frame, i.e. it is the DICOM LPS affine with its first two rows
negated. ``array[k, j, i]`` is row ``j``, column ``i`` of slice ``k``, slices sorted by position
along the slice normal ``cross(row, col)`` of ImageOrientationPatient. A label map written as
``nib.Nifti1Image(mask.transpose(2, 1, 0), affine)`` therefore overlays the series in NIfTI and
DICOM-aware viewers (the same affine nibabel/dcm2niix-style converters report for the array in
this index order).

Privacy
-------
Patient-identifying header values (PatientName, PatientID, birth date, ...) are never put in
errors or logs: messages name the file path only, and library messages are scrubbed of any
identifying value read from the headers. pydicom warnings (which can quote header values) are
silenced while reading.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cardioclr.errors import DataError
from cardioclr.io.deid import phi_values, scrub
from cardioclr.io.types import Volume
from cardioclr.io.validate import (
    check_claimed_size,
    check_direction,
    check_pixel_spacing,
    check_spacing,
    max_image_bytes,
)

log = logging.getLogger(__name__)

_MULTIFRAME_SOP = {
    "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.3": "Enhanced MR Color Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.4": "Legacy Converted Enhanced MR Image Storage",
}
_DIRECTORY_SOP = "1.2.840.10008.1.3.10"  # Media Storage Directory (DICOMDIR)
# Relative deviation of one slice gap from the median gap tolerated before calling the stack
# uneven (scanners round positions to ~0.01 mm; a missing slice doubles one gap).
_GAP_TOLERANCE = 0.1
_ORIENTATION_TOLERANCE = 1e-3


@dataclass
class _Slice:
    path: Path
    position: np.ndarray  # ImagePositionPatient (3,) mm, LPS
    orientation: np.ndarray  # ImageOrientationPatient (6,): row cosines, column cosines
    pixel_spacing: tuple[float, float]  # (between rows, between columns) mm
    pixels: np.ndarray  # float32 (rows, columns), rescaled
    series: str
    series_number: str
    # Header slice spacing (mm) or None when absent/invalid; used only for a one-slice series,
    # where there is no second position to measure the gap from.
    spacing_between_slices: float | None = None
    slice_thickness: float | None = None


def read_dicom_series(folder: str | os.PathLike[str]) -> Volume:
    """Read the single DICOM series in ``folder`` as float32 (z, y, x) with spacing (z, y, x) mm.

    Files that are not DICOM images (DICOMDIR, README, hidden files, non-image objects) are
    skipped quietly. Raises :class:`DataError` naming the folder or file when: the folder has no
    DICOM image, holds several series, a DICOM file is corrupt or truncated, the series is
    multi-frame/enhanced (not supported), has repeated slice positions (e.g. several cine
    phases in one folder), uneven slice gaps, or slices disagreeing in orientation, size or
    pixel spacing. RescaleSlope/Intercept are applied. The affine is voxel (column, row,
    slice) -> RAS mm (see the module docstring).

    A series of a single image is a stack of one slice, shape (1, rows, columns), as a NIfTI
    file of shape (x, y, 1) is: its slice spacing (needed for volumes in mL) is taken from
    SpacingBetweenSlices, else SliceThickness (logged, since a thickness can be smaller than
    the real gap); a single image with neither raises :class:`DataError`.
    """
    d = Path(folder)
    if not d.is_dir():
        raise DataError(d, "DICOM folder does not exist")
    files = sorted(p for p in d.iterdir() if p.is_file() and not p.name.startswith("."))
    slices: list[_Slice] = []
    total, limit = 0, max_image_bytes()
    for p in files:
        s = _read_slice(p)
        if s is None:
            continue
        total += s.pixels.size * 4
        if total > limit:  # the stack, as float32, would pass the per-image ceiling
            check_claimed_size(d, (len(slices) + 1, *s.pixels.shape), 4, max_bytes=limit,
                               what="DICOM series (so far)")
        slices.append(s)
    if not slices:
        raise DataError(d, f"no DICOM image files found in the folder ({len(files)} other files)")
    slices = _single_series(d, slices)
    return _assemble(d, slices)


def _read_slice(p: Path) -> _Slice | None:
    """One file -> :class:`_Slice`; None for files that are not DICOM images."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    has_magic = has_dicom_magic(p)
    secrets: list[str] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warnings may quote header values
            try:
                ds = pydicom.dcmread(p, force=not has_magic)
            except InvalidDicomError:
                return None
            except Exception:
                if not has_magic:
                    return None  # a text or binary file that merely failed to parse as DICOM
                raise
            secrets = phi_values(ds)
            if not has_magic and not ("PixelData" in ds and "Rows" in ds):
                return None  # force-parsing a non-DICOM file yields junk without pixel data
            sop = str(ds.get("SOPClassUID", ""))
            if sop == _DIRECTORY_SOP:
                return None
            if sop in _MULTIFRAME_SOP or int(ds.get("NumberOfFrames", 1) or 1) > 1:
                kind = _MULTIFRAME_SOP.get(sop, "multi-frame DICOM")
                raise DataError(p, f"{kind} (one file holding many frames) is not supported; "
                                "export the series as single-frame (classic) MR images")
            if "PixelData" not in ds:
                if _is_image_object(ds):  # an image without pixels = a truncated file
                    raise DataError(p, "corrupt or truncated DICOM image: no pixel data")
                log.debug("skipping %s: DICOM object without pixel data", p)
                return None
            for tag in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
                if tag not in ds:
                    raise DataError(p, f"DICOM image lacks {tag}; cannot place the slice in space")
            if int(ds.get("SamplesPerPixel", 1)) != 1:
                raise DataError(p, "colour DICOM images are not supported (expected MONOCHROME)")
            raw_spacing = [float(v) for v in np.atleast_1d(ds.PixelSpacing)]
            if len(raw_spacing) != 2:
                raise DataError(p, f"PixelSpacing needs 2 values (rows, columns), found "
                                f"{len(raw_spacing)}")
            spacing = check_pixel_spacing(p, (raw_spacing[0], raw_spacing[1]))
            orientation = np.array([float(v) for v in ds.ImageOrientationPatient], np.float64)
            position = np.array([float(v) for v in ds.ImagePositionPatient], np.float64)
            if orientation.shape != (6,) or position.shape != (3,):
                raise DataError(p, "ImageOrientationPatient needs 6 values and "
                                "ImagePositionPatient 3")
            if not (np.isfinite(orientation).all() and np.isfinite(position).all()):
                raise DataError(p, "ImageOrientationPatient or ImagePositionPatient has NaN or "
                                "infinite values; cannot place the slice in space")
            _check_pixel_data_size(p, ds)
            pixels = np.asarray(ds.pixel_array, dtype=np.float32)
            if pixels.ndim != 2:
                raise DataError(p, f"expected one 2D frame per file, found pixel shape "
                                f"{pixels.shape}")
            slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
            intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
            pixels = pixels * np.float32(slope) + np.float32(intercept)
            if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
                pixels = pixels.max() + pixels.min() - pixels  # 1 = inverted grey scale
            return _Slice(
                path=p,
                position=position,
                orientation=orientation,
                pixel_spacing=(spacing[0], spacing[1]),
                pixels=pixels,
                series=str(ds.get("SeriesInstanceUID", "")),
                series_number=str(ds.get("SeriesNumber", "?")),
                spacing_between_slices=_positive_mm(ds.get("SpacingBetweenSlices")),
                slice_thickness=_positive_mm(ds.get("SliceThickness")),
            )
    except DataError:
        raise
    except Exception as err:  # pydicom raises many types for truncated or corrupt files
        detail = scrub(str(err), secrets)
        # `from None`: the chained traceback could carry header values into a log.
        raise DataError(p, f"corrupt or unreadable DICOM file ({type(err).__name__}: "
                        f"{detail[:200]})") from None


def _check_pixel_data_size(p: Path, ds: object) -> None:
    """The size guard for one file, before pixel_array decodes anything: Rows x Columns x
    BitsAllocated must fit in the stored PixelData (uncompressed) and under the ceiling."""
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)  # type: ignore[attr-defined]
    bits = int(ds.get("BitsAllocated", 16) or 16)  # type: ignore[attr-defined]
    itemsize = max(1, (bits + 7) // 8)
    meta = getattr(ds, "file_meta", None)
    syntax = getattr(meta, "TransferSyntaxUID", None)
    encapsulated = bool(syntax is not None and getattr(syntax, "is_encapsulated", False))
    available = None if encapsulated else len(ds.PixelData)  # type: ignore[attr-defined]
    check_claimed_size(p, (rows, cols), itemsize, available_bytes=available,
                       what="DICOM header (Rows x Columns x BitsAllocated)")


def _positive_mm(value: object) -> float | None:
    """A header length in mm as a positive float, or None when absent, empty or invalid.

    The absolute value is taken: some scanners write SpacingBetweenSlices negative to encode
    the slice direction, which the reader gets from the positions instead.
    """
    if value is None or value == "":
        return None
    try:
        v = abs(float(value))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) and v > 0 else None


def has_dicom_magic(p: Path) -> bool:
    """True when the file has the 128-byte preamble followed by ``DICM`` (DICOM Part 10)."""
    try:
        with open(p, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _is_image_object(ds: object) -> bool:
    """True when a dataset claims to be an image (image SOP class or image geometry tags), or
    says nothing of what it is (a Part-10 file cut short before its SOP class)."""
    from pydicom.uid import UID

    meta = getattr(ds, "file_meta", None)
    sop = str(getattr(ds, "SOPClassUID", "") or getattr(meta, "MediaStorageSOPClassUID", "") or "")
    if not sop or "Image Storage" in UID(sop).name:
        return True
    return any(tag in ds for tag in ("Rows", "ImagePositionPatient"))  # type: ignore[operator]





def _single_series(d: Path, slices: list[_Slice]) -> list[_Slice]:
    by_series: dict[str, list[_Slice]] = defaultdict(list)
    for s in slices:
        by_series[s.series].append(s)
    if len(by_series) == 1:
        return slices
    # Series are named by SeriesNumber and an example file, not by UID (UIDs can identify).
    parts = [f"SeriesNumber {v[0].series_number}: {len(v)} files, e.g. {v[0].path.name}"
             for v in sorted(by_series.values(), key=lambda v: -len(v))]
    raise DataError(d, f"folder holds {len(by_series)} DICOM series ({'; '.join(parts)}); put "
                    "exactly one series (one cardiac phase of the short-axis stack) per folder")


def _assemble(d: Path, slices: list[_Slice]) -> Volume:
    first = slices[0]
    for s in slices[1:]:
        if np.abs(s.orientation - first.orientation).max() > _ORIENTATION_TOLERANCE:
            raise DataError(s.path, f"ImageOrientationPatient differs from {first.path.name}; "
                            "slices of one stack must be parallel")
        if s.pixels.shape != first.pixels.shape:
            raise DataError(s.path, f"image size {s.pixels.shape} differs from "
                            f"{first.pixels.shape} of {first.path.name}")
        if not np.allclose(s.pixel_spacing, first.pixel_spacing, rtol=1e-3):
            raise DataError(s.path, f"PixelSpacing {s.pixel_spacing} differs from "
                            f"{first.pixel_spacing} of {first.path.name}")
    row_dir, col_dir = first.orientation[:3], first.orientation[3:]
    normal = np.cross(row_dir, col_dir)
    if not np.isclose(np.linalg.norm(normal), 1.0, atol=1e-2):
        raise DataError(first.path, "ImageOrientationPatient is not two orthogonal unit vectors")
    if len(slices) == 1:
        return _single_slice(d, first, row_dir, col_dir, normal)
    # Slice order = position along the normal; file names and InstanceNumber are unreliable.
    slices = sorted(slices, key=lambda s: float(s.position @ normal))
    along = np.array([float(s.position @ normal) for s in slices])
    gaps = np.diff(along)
    if (gaps < 1e-3).any():
        i = int(np.argmax(gaps < 1e-3))
        raise DataError(d, f"{slices[i].path.name} and {slices[i + 1].path.name} share the same "
                        "slice position: the folder seems to hold several time frames (cine); "
                        "put one cardiac phase per folder")
    median = float(np.median(gaps))
    worst = int(np.argmax(np.abs(gaps - median)))
    if abs(gaps[worst] - median) > _GAP_TOLERANCE * median:
        raise DataError(d, f"uneven slice spacing: gap {gaps[worst]:.2f} mm between "
                        f"{slices[worst].path.name} and {slices[worst + 1].path.name} vs median "
                        f"{median:.2f} mm (missing slice?)")
    n = len(slices)
    step = (slices[-1].position - slices[0].position) / (n - 1)  # keeps any gantry tilt
    return _volume(d, slices, row_dir, col_dir, step, (along[-1] - along[0]) / (n - 1))


def _volume(d: Path, slices: list[_Slice], row_dir: np.ndarray, col_dir: np.ndarray,
            step: np.ndarray, spacing_z: float) -> Volume:
    """The (z, y, x) float32 stack of ``slices`` (ordered) with its RAS affine.

    ``step``: LPS mm vector from one slice's origin to the next; ``spacing_z``: its length
    along the normal (mm).
    """
    first = slices[0]
    dy, dx = first.pixel_spacing  # DICOM: (between rows, between columns)
    lps = np.eye(4)
    lps[:3, 0] = row_dir * dx  # i: along a row (column index)
    lps[:3, 1] = col_dir * dy  # j: down a column (row index)
    lps[:3, 2] = step
    lps[:3, 3] = first.position
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # LPS -> RAS
    check_spacing(d, (spacing_z, dy, dx), "DICOM PixelSpacing and slice positions")
    check_direction(d, affine)
    array = np.stack([s.pixels for s in slices]).astype(np.float32, copy=False)
    return Volume(array, (float(spacing_z), float(dy), float(dx)), affine, str(d))


def _single_slice(d: Path, s: _Slice, row_dir: np.ndarray, col_dir: np.ndarray,
                  normal: np.ndarray) -> Volume:
    """A one-image series as a (1, rows, columns) stack, consistent with a one-slice NIfTI.

    The slice spacing cannot be measured from positions, so it comes from the header:
    SpacingBetweenSlices (centre-to-centre) when present, else SliceThickness.
    """
    if s.spacing_between_slices is not None:
        spacing_z, source = s.spacing_between_slices, "SpacingBetweenSlices"
    elif s.slice_thickness is not None:
        spacing_z, source = s.slice_thickness, "SliceThickness"
    else:
        raise DataError(d, f"a single DICOM slice ({s.path.name}) without SpacingBetweenSlices "
                        "or SliceThickness: its slice spacing (needed for volumes in mL) is "
                        "unknown; add one of the tags or provide the stack as NIfTI")
    log.info("%s: one-slice DICOM series; slice spacing %.3g mm from %s", d, spacing_z, source)
    # No tilt information with one position: the slice step runs along the normal.
    return _volume(d, [s], row_dir, col_dir, normal * spacing_z, spacing_z)
