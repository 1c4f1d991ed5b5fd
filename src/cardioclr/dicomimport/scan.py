"""Walk a DICOM export and read only headers: files -> series records grouped by patient/study.

Every regular file under the root is tried as DICOM whatever its name (exports often have no
extensions); file content decides. The walk never leaves the root: symbolic links are not
followed, and DICOMDIR files are skipped (their records can point anywhere, so they are never
used to find files). Headers are read with ``stop_before_pixels`` so memory stays bounded by
the headers, whatever the export's size; pixels are read later, for the chosen series only.

Nothing read here reaches a message unscrubbed: records keep the patient's original ID only in
memory (to group files and match a labels CSV), and reasons name files by their path relative
to the root with identifying header values removed.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cardioclr.io.deid import phi_values, scrub
from cardioclr.io.dicom import has_dicom_magic

log = logging.getLogger(__name__)

_DIRECTORY_SOP = "1.2.840.10008.1.3.10"  # Media Storage Directory (DICOMDIR)
_IMAGE_WORDS = ("Image Storage",)


@dataclass(frozen=True)
class Frame:
    """One 2D image: a single-frame file, or frame ``frame`` (1-based) of a multi-frame file."""

    path: Path
    frame: int | None
    position: tuple[float, float, float]  # ImagePositionPatient, LPS mm
    orientation: tuple[float, ...]  # ImageOrientationPatient (6): row then column cosines
    pixel_spacing: tuple[float, float]  # (between rows, between columns) mm
    rows: int
    columns: int
    trigger_ms: float | None  # TriggerTime / NominalCardiacTriggerDelayTime
    instance: int | None  # InstanceNumber (single-frame) or frame number
    temporal_index: int | None  # TemporalPositionIndex of an enhanced frame
    sop_instance_uid: str
    sop_class_uid: str


@dataclass
class Series:
    """One series as found in the export (headers only)."""

    patient_key: str  # original PatientID (memory only, never written)
    study_uid: str
    series_uid: str
    series_number: int
    description: str  # scrubbed of identifying values
    image_type: tuple[str, ...]
    sop_class_uid: str
    frame_of_reference: str
    has_inversion_time: bool
    burned_in: bool
    cardiac_images: int | None  # CardiacNumberOfImages
    height_m: float | None
    weight_kg: float | None
    folder: str  # relative folder of the first file, scrubbed
    frames: list[Frame] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list)  # identifying values (for scrubbing)

    @property
    def is_enhanced(self) -> bool:
        return any(f.frame is not None for f in self.frames)


@dataclass
class ScanResult:
    """Series grouped by patient key, and files that could not be used (relative path, reason)."""

    patients: dict[str, list[Series]]
    problems: list[tuple[str, str]]
    files_seen: int
    not_dicom: int


def scan_export(root: str | os.PathLike[str]) -> ScanResult:
    """Read the header of every file under ``root`` and group the images into series."""
    base = Path(root).resolve()
    pydicom_log = logging.getLogger("pydicom")
    level = pydicom_log.level
    pydicom_log.setLevel(logging.ERROR)  # its warnings can quote header values
    try:
        return _scan(base)
    finally:
        pydicom_log.setLevel(level)


def _scan(base: Path) -> ScanResult:
    series: dict[str, Series] = {}
    problems: list[tuple[str, str]] = []
    seen = not_dicom = 0
    for path in _walk(base):
        seen += 1
        rel = str(path.relative_to(base))
        try:
            found = _read_header(path)
        except _Unreadable as err:
            problems.append((rel, str(err)))
            continue
        if found is None:
            not_dicom += 1
            continue
        ds, secrets = found
        try:
            _add(series, ds, path, base, secrets)
        except _Unreadable as err:
            problems.append((scrub(rel, secrets), str(err)))
    patients: dict[str, list[Series]] = defaultdict(list)
    for s in series.values():
        patients[s.patient_key].append(s)
    for items in patients.values():
        items.sort(key=lambda s: (s.study_uid, s.series_number, s.series_uid))
    return ScanResult(dict(patients), problems, seen, not_dicom)


class _Unreadable(Exception):
    """A file that claims to be DICOM but cannot be used (message already scrubbed)."""


def _walk(base: Path) -> Iterator[Path]:
    """Regular files under ``base``, sorted, hidden ones skipped, links never followed."""
    for folder, dirs, files in os.walk(base, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            p = Path(folder) / name
            if name.startswith(".") or p.is_symlink() or not p.is_file():
                continue
            yield p



def _read_header(p: Path) -> tuple[Any, list[str]] | None:
    """(dataset without pixels, identifying values), or None for a file that is not a DICOM
    image (text, DICOMDIR, presentation state...). Raises :class:`_Unreadable` for a corrupt
    DICOM file."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.uid import UID

    magic = has_dicom_magic(p)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warnings may quote header values
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True, force=not magic)
        except InvalidDicomError:
            return None
        except Exception as err:  # many exception types for corrupt files
            if not magic:
                return None
            raise _Unreadable(f"corrupt DICOM header ({type(err).__name__})") from None
        secrets = phi_values(ds)
        try:
            sop = str(ds.get("SOPClassUID", "") or
                      getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "") or "")
        except Exception:
            raise _Unreadable("corrupt DICOM header (SOP class unreadable)") from None
        if sop == _DIRECTORY_SOP or p.name.upper() == "DICOMDIR":
            return None
        if not magic and not ("Rows" in ds and "SOPClassUID" in ds):
            return None  # force-parsing a non-DICOM file yields junk
        if not sop and magic:
            raise _Unreadable("DICOM file without a SOP class (corrupt or truncated header)")
        if not sop or not any(w in UID(sop).name for w in _IMAGE_WORDS):
            return None  # structured reports, presentation states, raw data...
    return ds, secrets


def _float(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _add(series: dict[str, Series], ds: Any, path: Path, base: Path, secrets: list[str]) -> None:
    uid = str(ds.get("SeriesInstanceUID", "") or "")
    if not uid:
        raise _Unreadable("DICOM image without SeriesInstanceUID")
    s = series.get(uid)
    if s is None:
        key = str(ds.get("PatientID", "") or "").strip() or \
            f"{ds.get('PatientName', '')}|{ds.get('PatientBirthDate', '')}"
        image_type = tuple(str(v).upper() for v in (ds.get("ImageType") or []))
        s = Series(
            patient_key=key,
            study_uid=str(ds.get("StudyInstanceUID", "") or ""),
            series_uid=uid,
            series_number=_int(ds.get("SeriesNumber")) or 0,
            description=scrub(str(ds.get("SeriesDescription", "") or ""), secrets)[:64],
            image_type=image_type,
            sop_class_uid=str(ds.get("SOPClassUID", "")),
            frame_of_reference=str(ds.get("FrameOfReferenceUID", "") or ""),
            has_inversion_time=_float(ds.get("InversionTime")) is not None,
            burned_in=str(ds.get("BurnedInAnnotation", "")).upper() == "YES",
            cardiac_images=_int(ds.get("CardiacNumberOfImages")),
            height_m=_float(ds.get("PatientSize")),
            weight_kg=_float(ds.get("PatientWeight")),
            folder=scrub(str(path.parent.relative_to(base)), secrets),
            secrets=secrets,
        )
        series[uid] = s
    s.burned_in |= str(ds.get("BurnedInAnnotation", "")).upper() == "YES"
    s.has_inversion_time |= _float(ds.get("InversionTime")) is not None
    n_frames = _int(ds.get("NumberOfFrames")) or 1
    if "PerFrameFunctionalGroupsSequence" in ds or n_frames > 1:
        s.frames.extend(_enhanced_frames(ds, path, n_frames))
    else:
        s.frames.append(_single_frame(ds, path))


def _geometry(ds: Any, where: str
              ) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, float]]:
    try:
        pos = tuple(float(v) for v in ds.ImagePositionPatient)
        ori = tuple(float(v) for v in ds.ImageOrientationPatient)
        sp = tuple(float(v) for v in ds.PixelSpacing)
    except Exception:
        raise _Unreadable(f"{where}: lacks ImagePositionPatient, ImageOrientationPatient or "
                          "PixelSpacing; the image cannot be placed in space") from None
    if len(pos) != 3 or len(ori) != 6 or len(sp) != 2 or min(sp) <= 0:
        raise _Unreadable(f"{where}: invalid image geometry values")
    return pos, ori, (sp[0], sp[1])


def _single_frame(ds: Any, path: Path) -> Frame:
    pos, ori, sp = _geometry(ds, "image")
    return Frame(path, None, pos, ori, sp, int(ds.get("Rows", 0) or 0),  # type: ignore[arg-type]
                 int(ds.get("Columns", 0) or 0), _float(ds.get("TriggerTime")),
                 _int(ds.get("InstanceNumber")), None, str(ds.get("SOPInstanceUID", "")),
                 str(ds.get("SOPClassUID", "")))


def _enhanced_frames(ds: Any, path: Path, n_frames: int) -> list[Frame]:
    """One :class:`Frame` per frame of an enhanced (multi-frame) MR object."""
    shared = ds.get("SharedFunctionalGroupsSequence")
    shared = shared[0] if shared else None
    per = ds.get("PerFrameFunctionalGroupsSequence") or []
    if len(per) != n_frames:
        raise _Unreadable(f"multi-frame image: {len(per)} per-frame groups for NumberOfFrames "
                          f"{n_frames}")

    def item(group: Any, name: str) -> Any:
        for source in (group, shared):
            if source is not None and name in source and len(source[name].value):
                return source[name].value[0]
        return None

    out = []
    for i, g in enumerate(per):
        where = f"frame {i + 1}"
        try:
            pos = tuple(float(v) for v in item(g, "PlanePositionSequence").ImagePositionPatient)
            ori = tuple(float(v) for v in
                        item(g, "PlaneOrientationSequence").ImageOrientationPatient)
            sp = tuple(float(v) for v in item(g, "PixelMeasuresSequence").PixelSpacing)
        except Exception:
            raise _Unreadable(f"{where}: lacks plane position, orientation or pixel measures") \
                from None
        sync = item(g, "CardiacSynchronizationSequence")
        content = item(g, "FrameContentSequence")
        trigger = _float(sync.get("NominalCardiacTriggerDelayTime")) if sync is not None else None
        temporal = _int(content.get("TemporalPositionIndex")) if content is not None else None
        out.append(Frame(path, i + 1, pos, ori, (sp[0], sp[1]),  # type: ignore[arg-type]
                         int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0), trigger,
                         i + 1, temporal, str(ds.get("SOPInstanceUID", "")),
                         str(ds.get("SOPClassUID", ""))))
    return out
