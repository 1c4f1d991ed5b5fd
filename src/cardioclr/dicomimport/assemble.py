"""Build the 4D cine (t, z, y, x) of a short-axis candidate, checking its geometry.

Slices are ordered by position along the plane normal ``cross(row, column)`` of
ImageOrientationPatient (file names, InstanceNumber and series numbers are unreliable); phases
within a slice by TriggerTime (NominalCardiacTriggerDelayTime for enhanced MR), else
TemporalPositionIndex, else InstanceNumber (SeriesNumber for a cine exported as one series per
phase) -- the fallback used is recorded. Phases are paired
across slices by rank (slices of a per-slice export are triggered slightly differently).

Refused with a :class:`~cardioclr.errors.DataError` naming the series: parallel planes that
disagree in matrix size or pixel spacing (mixed geometries), uneven slice gaps (a missing
slice), slices with different phase counts or fewer than CardiacNumberOfImages (missing
phases), two images at one position and trigger time, and unreadable pixel data.

The affine follows :mod:`cardioclr.io.dicom`: voxel (i, j, k) = (column, row, slice) -> RAS mm,
the DICOM LPS matrix with its first two rows negated, so the NIfTI written from
``array.transpose(3, 2, 1, 0)`` overlays the DICOM series in any viewer.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cardioclr.dicomimport.scan import Frame, Series
from cardioclr.dicomimport.select import Candidate, normal_of, slice_positions
from cardioclr.errors import DataError
from cardioclr.io.deid import scrub
from cardioclr.io.validate import MAX_IMAGE_BYTES_ENV, check_spacing, max_image_bytes

_GAP_TOLERANCE = 0.1  # relative deviation of one slice gap from the median gap
_POSITION_TOLERANCE_MM = 0.1
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class Cine:
    """A short-axis cine. ``array`` float32 (t, z, y, x); ``affine`` (4, 4) voxel -> RAS mm;
    ``frames[t][z]`` the DICOM frame each image came from."""

    array: np.ndarray
    affine: np.ndarray
    spacing_zyx: tuple[float, float, float]
    frame_ms: float | None
    phase_order: str  # TriggerTime, TemporalPositionIndex or InstanceNumber
    frames: list[list[Frame]]


def plan_cine(c: Candidate, where: str) -> tuple[list[list[Frame]], np.ndarray, str]:
    """Frames ordered ``[t][z]``, the LPS voxel->mm matrix (4, 4), and the phase-order source.

    Headers only; raises :class:`DataError` (path ``where``) on inconsistent geometry.
    """
    frames = [f for s in c.series for f in s.frames]
    series_of = {id(f): s for s in c.series for f in s.frames}
    ref = frames[0]
    for f in frames[1:]:
        if (np.abs(np.subtract(f.orientation, ref.orientation)).max() > 1e-3
                or (f.rows, f.columns) != (ref.rows, ref.columns)
                or not np.allclose(f.pixel_spacing, ref.pixel_spacing, rtol=1e-3)):
            raise DataError(where, f"mixed geometries in {c.label}: {_geo(series_of[id(f)], f)} "
                            f"but {_geo(series_of[id(ref)], ref)}; the slices cannot form one "
                            "stack")
    normal = normal_of(ref.orientation)
    positions = slice_positions(frames, normal)
    by_slice: dict[int, list[Frame]] = defaultdict(list)
    for f in frames:
        along = float(np.asarray(f.position) @ normal)
        k = int(np.argmin([abs(along - p) for p in positions]))
        by_slice[k].append(f)
    order = _phase_order(frames, c.per_phase)
    counts = {k: len(v) for k, v in by_slice.items()}
    expected = max(counts.values())
    declared = max((s.cardiac_images or 0) for s in c.series)
    if declared > expected:
        expected = declared
    short = [k for k, n in counts.items() if n != expected]
    if short:
        k = short[0]
        raise DataError(where, f"missing phases in {c.label}: the slice at {positions[k]:.1f} mm "
                        f"({_series_text(by_slice[k], series_of)}) has {counts[k]} phases, "
                        f"expected {expected}"
                        + (" (CardiacNumberOfImages)" if declared == expected else "")
                        + f"; {len(short)} of {len(positions)} slices affected")
    ordered: list[list[Frame]] = []
    for k in range(len(positions)):
        phases = sorted(by_slice[k], key=lambda f: _phase_key(f, order, series_of))
        keys = [_phase_key(f, order, series_of) for f in phases]
        if len(set(keys)) != len(keys):
            raise DataError(where, f"two images at the slice at {positions[k]:.1f} mm share one "
                            f"{order} in {c.label}: duplicated or mixed acquisitions")
        ordered.append(phases)
    if len(positions) > 1:
        gaps = np.diff(positions)
        median = float(np.median(gaps))
        worst = int(np.argmax(np.abs(gaps - median)))
        if abs(gaps[worst] - median) > _GAP_TOLERANCE * median:
            raise DataError(where, f"uneven slice spacing in {c.label}: gap {gaps[worst]:.2f} mm "
                            f"between the slices at {positions[worst]:.1f} and "
                            f"{positions[worst + 1]:.1f} mm vs median {median:.2f} mm (missing "
                            "slice?)")
    first = ordered[0][0]
    row, col = np.asarray(ref.orientation[:3]), np.asarray(ref.orientation[3:])
    dy, dx = ref.pixel_spacing
    if len(positions) > 1:
        step = (np.asarray(ordered[-1][0].position) - np.asarray(first.position)) / (
            len(positions) - 1)
    else:
        step = normal * max(dx, dy)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2] = row * dx, col * dy, step
    lps[:3, 3] = first.position
    by_phase = [[ordered[k][t] for k in range(len(positions))] for t in range(expected)]
    return by_phase, lps, order


def read_cine(c: Candidate, where: str) -> Cine:
    """Read the pixels of candidate ``c`` as a :class:`Cine` (memory: one float32 4D array)."""
    by_phase, lps, order = plan_cine(c, where)
    nt, nz = len(by_phase), len(by_phase[0])
    ref = by_phase[0][0]
    claimed = nt * nz * ref.rows * ref.columns * 4
    if claimed > max_image_bytes():  # the readers' size guard: one limit for every image
        raise DataError(where, f"{c.label}: a {nt} x {nz} x {ref.rows} x {ref.columns} cine needs "
                        f"{claimed / 2**30:.1f} GiB as float32, above the limit of "
                        f"{max_image_bytes() / 2**30:.1f} GiB ({MAX_IMAGE_BYTES_ENV}); not read")
    spacing_zyx = (float(np.linalg.norm(lps[:3, 2])), ref.pixel_spacing[0], ref.pixel_spacing[1])
    check_spacing(where, spacing_zyx, source=f"DICOM geometry of {c.label}")
    array = np.zeros((nt, nz, ref.rows, ref.columns), np.float32)
    index = {(f.path, f.frame): (t, z) for t, row in enumerate(by_phase)
             for z, f in enumerate(row)}
    by_file: dict[Path, list[Frame]] = defaultdict(list)
    for row in by_phase:
        for f in row:
            by_file[f.path].append(f)
    secrets = [v for s in c.series for v in s.secrets]
    for path, frames in by_file.items():
        pixels = _read_pixels(path, frames, where, c.label, secrets)
        for f, img in zip(frames, pixels, strict=True):
            array[index[(f.path, f.frame)]] = img
    triggers = [f.trigger_ms for f in (row[0] for row in by_phase) if f.trigger_ms is not None]
    frame_ms = float(np.median(np.diff(triggers))) if nt > 1 and len(triggers) == nt else None
    return Cine(array, _LPS_TO_RAS @ lps, spacing_zyx, frame_ms, order, by_phase)


def _read_pixels(path: Path, frames: list[Frame], where: str, label: str,
                 secrets: list[str]) -> list[np.ndarray]:
    """Rescaled float32 (rows, columns) images of ``frames`` (all from ``path``)."""
    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warnings may quote header values
            ds = pydicom.dcmread(path)
            data = np.asarray(ds.pixel_array, dtype=np.float32)
            if int(ds.get("SamplesPerPixel", 1)) != 1:
                raise ValueError("colour image (expected MONOCHROME)")
            out = []
            for f in frames:
                img = data if f.frame is None else data[f.frame - 1]
                if img.shape != (f.rows, f.columns):
                    raise ValueError(f"pixel shape {img.shape} differs from Rows x Columns")
                slope, intercept = _rescale(ds, f.frame)
                img = img * np.float32(slope) + np.float32(intercept)
                if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
                    img = img.max() + img.min() - img
                out.append(img)
            return out
    except Exception as err:  # truncated or corrupt pixel data: name the series, not the patient
        detail = scrub(f"{type(err).__name__}: {err}", secrets)[:160]
        raise DataError(where, f"{label}: unreadable pixel data in one file ({detail})") from None


def _rescale(ds: Any, frame: int | None) -> tuple[float, float]:
    """RescaleSlope/Intercept of a frame (per-frame or shared functional group, else top level)."""
    sources = []
    if frame is not None:
        per = ds.get("PerFrameFunctionalGroupsSequence")
        if per:
            sources.append(per[frame - 1])
        shared = ds.get("SharedFunctionalGroupsSequence")
        if shared:
            sources.append(shared[0])
    for g in sources:
        seq = g.get("PixelValueTransformationSequence")
        if seq:
            return float(seq[0].get("RescaleSlope", 1) or 1), float(
                seq[0].get("RescaleIntercept", 0) or 0)
    return float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)


def _phase_order(frames: list[Frame], per_phase: bool) -> str:
    if all(f.trigger_ms is not None for f in frames):
        return "TriggerTime"
    if all(f.temporal_index is not None for f in frames):
        return "TemporalPositionIndex"
    # One series per phase: InstanceNumber counts slices within a series, not phases.
    return "SeriesNumber" if per_phase else "InstanceNumber"


def _phase_key(f: Frame, order: str, series_of: dict[int, Series]) -> float:
    if order == "TriggerTime":
        return float(f.trigger_ms)  # type: ignore[arg-type]
    if order == "TemporalPositionIndex":
        return float(f.temporal_index)  # type: ignore[arg-type]
    if order == "SeriesNumber":
        return float(series_of[id(f)].series_number)
    return float(f.instance if f.instance is not None else 0)


def _geo(s: Series, f: Frame) -> str:
    return (f"series {s.series_number} has {f.rows}x{f.columns} pixels of "
            f"{f.pixel_spacing[0]:.3g}x{f.pixel_spacing[1]:.3g} mm")


def _series_text(frames: list[Frame], series_of: dict[int, Series]) -> str:
    numbers = sorted({series_of[id(f)].series_number for f in frames})
    return "series " + ", ".join(str(n) for n in numbers)
