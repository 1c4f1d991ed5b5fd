"""DICOM Segmentation (SEG) objects of cardioclr label maps, laid over the source DICOM images.

What a SEG written here holds
    One BINARY segmentation instance per cardiac phase (highdicom), three segments with SNOMED CT
    coded concepts, numbered as cardioclr's labels (see :data:`SEGMENTS`):

    ====  =============  =========================================================================
    1     RV cavity      category Tissue (85756007), type Blood (87612001), region Right ventricle
                         (53085002): the right-ventricular blood pool
    2     LV myocardium  category Anatomical Structure (91723000), type Left Ventricle Myocardium
                         (49848007)
    3     LV cavity      category Tissue, type Blood, region Left ventricle (87878005)
    ====  =============  =========================================================================

    Every slice of the mask becomes one frame per segment (empty frames kept, so the SEG is a
    complete regular volume). Frames are placed by the mask's own geometry (NIfTI affine) and
    matched to the source images by position, so each frame references the SOP instance it was
    derived from (DerivationImageSequence), the whole source series is listed in
    ReferencedSeriesSequence, and the SEG shares the source FrameOfReferenceUID and
    StudyInstanceUID: viewers (3D Slicer, OHIF) open it over the images. A mask that does not lie
    on the source slices (another grid, a missing slice) raises :class:`DataError` rather than
    writing a SEG that points at the wrong images.

Source images
    The headers (never pixels) of the source images are reduced to a whitelist of geometry and
    UID attributes (:func:`minimal_source_header`) before highdicom sees them, so no patient
    name, birth date, institution, accession number, date or description of the source can
    reach the SEG. They come from a DICOM series folder (:func:`read_source_headers`) or from a
    sidecar JSON of references written next to an imported NIfTI frame
    (:func:`headers_from_references`, format :data:`REFERENCES_FORMAT`), whose slices may be
    classic single-frame images (one series, or one series per slice) or frames of one enhanced
    MR image (each SEG frame then references its ReferencedFrameNumber). An enhanced image in a
    DICOM *folder* input is refused (the folder reader does not read it either).

De-identification (DICOM PS3.15 Annex E)
    The SEG goes through :func:`cardioclr.io.deid.apply_basic_profile` (Basic Application Level
    Confidentiality Profile with the Retain UIDs Option, recorded in PatientIdentityRemoved = YES,
    DeidentificationMethod and DeidentificationMethodCodeSequence 113100 + 113110): PatientID and
    PatientName are the cardioclr pseudonymous patient id; patient characteristics, study dates,
    accession number, study id, physician names and descriptions are empty or absent. The SEG's
    own ContentDate/ContentTime, type 1 in a SEG, get the profile's dummy value (action D). The
    study, series, instance and frame-of-reference UIDs of the source are kept on purpose:
    without them a viewer cannot lay the SEG over the images. A PACS that checks patient
    identity will see a pseudonymous patient in an existing study; load the SEG next to the
    images (3D Slicer, OHIF with local files).

highdicom is imported inside the functions: ``cardioclr --help`` and every command that writes
no SEG stay as fast as before (highdicom adds ~1 s of imports).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cardioclr.clinical.labels import LABEL_MEANINGS, LV_CAVITY, LV_MYOCARDIUM, MAX_LABEL, RV_CAVITY
from cardioclr.errors import DataError

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

log = logging.getLogger(__name__)

#: ``format`` value of a DICOM-reference sidecar (``<frame>.dicom.json`` beside a NIfTI frame).
REFERENCES_FORMAT = "cardioclr-dicom-refs/1"
#: Suffix of the sidecar beside ``<frame>.nii.gz``: ``<frame>.dicom.json``.
REFERENCES_SUFFIX = ".dicom.json"

MANUFACTURER = "cardioclr"
DEVICE_SERIAL = "none"  # the "device" is software: no serial number to identify anything by
DUMMY_DATE, DUMMY_TIME = "19000101", "000000"  # Annex E action D for type 1 dates
# Position tolerance (mm) when matching mask slices to source images: well above float32 NIfTI
# rounding (~1e-5 mm at 300 mm), far below any real slice gap.
_POSITION_TOLERANCE_MM = 1e-2

# Attributes kept from a source header; everything else (names, dates, institution, descriptions,
# private tags) is dropped before highdicom copies anything from it.
_GEOMETRY_AND_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
                      "FrameOfReferenceUID", "Modality", "Rows", "Columns", "PixelSpacing",
                      "ImageOrientationPatient", "ImagePositionPatient", "SliceThickness",
                      "SpacingBetweenSlices")
# Patient and study attributes highdicom copies from the source into the SEG (type 2: present,
# empty), replaced here by empty values or the pseudonym.
_EMPTIED = ("PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "StudyID",
            "AccessionNumber", "ReferringPhysicianName")
_MULTIFRAME_SOPS = {"1.2.840.10008.5.1.4.1.1.4.1", "1.2.840.10008.5.1.4.1.1.4.3",
                    "1.2.840.10008.5.1.4.1.1.4.4"}


@dataclass(frozen=True)
class SegmentSpec:
    """One segment: cardioclr label value, label text, SNOMED CT codes, display colour (RGB)."""

    label: int
    name: str
    category: tuple[str, str]  # (SCT code, meaning)
    property_type: tuple[str, str]
    region: tuple[str, str] | None
    rgb: tuple[int, int, int]


_TISSUE = ("85756007", "Tissue")
_ANATOMY = ("91723000", "Anatomical Structure")
_BLOOD = ("87612001", "Blood")
#: Segments in label order: segment number = cardioclr label value (:mod:`cardioclr.clinical.labels`).
SEGMENTS: tuple[SegmentSpec, ...] = (
    SegmentSpec(RV_CAVITY, "RV cavity", _TISSUE, _BLOOD, ("53085002", "Right ventricle"), (54, 118, 230)),
    SegmentSpec(LV_MYOCARDIUM, "LV myocardium", _ANATOMY, ("49848007", "Left Ventricle Myocardium"), None,
                (230, 180, 40)),
    SegmentSpec(LV_CAVITY, "LV cavity", _TISSUE, _BLOOD, ("87878005", "Left ventricle"), (220, 40, 40)),
)


# --------------------------------------------------------------------------------------------
# Source headers
# --------------------------------------------------------------------------------------------


def minimal_source_header(ds: Dataset, patient_id: str) -> Dataset:
    """A copy of a source image header holding only geometry, UIDs and the pseudonym.

    Raises ``ValueError`` when a needed attribute is missing (the caller names the file).
    """
    from pydicom.dataset import Dataset

    out = Dataset()
    missing = [k for k in _GEOMETRY_AND_UIDS[:11] if k not in ds]
    if missing:
        raise ValueError(f"source image lacks {', '.join(missing)}")
    for key in _GEOMETRY_AND_UIDS:
        if key in ds and ds[key].value not in (None, ""):
            setattr(out, key, ds[key].value)
    out.PatientID = patient_id
    out.PatientName = patient_id
    for key in _EMPTIED:
        setattr(out, key, "")
    return out


def read_source_headers(folder: str | os.PathLike[str], patient_id: str) -> list[Dataset]:
    """Minimal headers (:func:`minimal_source_header`) of the DICOM images in ``folder``.

    Pixel data is not read. Files that are not DICOM images are skipped (as
    :func:`cardioclr.io.dicom.read_dicom_series` does). Raises :class:`DataError` naming the
    folder when it holds no usable image, or a file when it is an enhanced multi-frame image.
    Messages never quote header values.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    d = Path(folder)
    headers: list[Dataset] = []
    for p in sorted(x for x in d.iterdir() if x.is_file() and not x.name.startswith(".")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warnings may quote header values
            try:
                ds = pydicom.dcmread(p, stop_before_pixels=True, force=True)
            except (InvalidDicomError, OSError, ValueError, EOFError, TypeError, AttributeError):
                continue
            if "ImagePositionPatient" not in ds or "SOPInstanceUID" not in ds:
                continue  # not an image placed in space (DICOMDIR, report, junk parsed by force)
            frames = int(ds.get("NumberOfFrames", 1) or 1)
            if str(ds.get("SOPClassUID", "")) in _MULTIFRAME_SOPS or frames > 1:
                raise DataError(p, "enhanced multi-frame source images are not supported for DICOM "
                                "SEG output yet")
            try:
                headers.append(minimal_source_header(ds, patient_id))
            except ValueError as err:
                raise DataError(p, str(err)) from None
    if not headers:
        raise DataError(d, "no DICOM image found to reference in the SEG")
    return headers


def references_path(nifti: str | os.PathLike[str]) -> Path:
    """The sidecar of references beside a NIfTI frame: ``X.nii.gz`` -> ``X.dicom.json``."""
    p = Path(nifti)
    stem = p.name[:-len(".nii.gz")] if p.name.endswith(".nii.gz") else p.stem
    return p.with_name(stem + REFERENCES_SUFFIX)


def headers_from_references(path: str | os.PathLike[str], patient_id: str) -> list[Dataset]:
    """Minimal source headers from a sidecar of DICOM references (:data:`REFERENCES_FORMAT`).

    The sidecar (written by ``cardioclr import`` for each NIfTI frame) is JSON::

        {"format": "cardioclr-dicom-refs/1", "study_instance_uid": ..., "frame_of_reference_uid": ...,
         "modality": "MR", "rows": R, "columns": C, "pixel_spacing": [row_mm, col_mm],
         "image_orientation_patient": [6 floats], "slice_thickness": mm or null (optional),
         "instances": [{"sop_class_uid": ..., "sop_instance_uid": ..., "series_instance_uid": ...,
                        "image_position_patient": [x, y, z], "frame_number": null}, ...]}

    one instance per slice, in any order; ``frame_number`` (1-based) for a frame of an enhanced
    multi-frame image (kept as ReferencedFrameNumber), null for a classic image. Raises
    :class:`DataError` naming the file when it is unreadable, of another format or lacks a field.
    """
    from pydicom.dataset import Dataset

    p = Path(path)
    try:
        refs = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(p, f"unreadable DICOM reference file ({type(err).__name__}: {err})") from None
    if not isinstance(refs, dict) or refs.get("format") != REFERENCES_FORMAT:
        raise DataError(p, f"not a DICOM reference file of format {REFERENCES_FORMAT}")
    headers = []
    try:
        for inst in refs["instances"]:
            ds = Dataset()
            if inst.get("frame_number") is not None:  # a frame of an enhanced multi-frame image
                ds.ReferencedFrameNumber = int(inst["frame_number"])
            ds.SOPClassUID = inst["sop_class_uid"]
            ds.SOPInstanceUID = inst["sop_instance_uid"]
            ds.SeriesInstanceUID = inst["series_instance_uid"]
            ds.StudyInstanceUID = refs["study_instance_uid"]
            ds.FrameOfReferenceUID = refs["frame_of_reference_uid"]
            ds.Modality = refs.get("modality", "MR")
            ds.Rows, ds.Columns = int(refs["rows"]), int(refs["columns"])
            ds.PixelSpacing = [float(v) for v in refs["pixel_spacing"]]
            ds.ImageOrientationPatient = [float(v) for v in refs["image_orientation_patient"]]
            ds.ImagePositionPatient = [float(v) for v in inst["image_position_patient"]]
            if refs.get("slice_thickness") is not None:
                ds.SliceThickness = float(refs["slice_thickness"])
            header = minimal_source_header(ds, patient_id)
            if "ReferencedFrameNumber" in ds:
                header.ReferencedFrameNumber = ds.ReferencedFrameNumber
            headers.append(header)
    except (KeyError, TypeError, ValueError) as err:
        raise DataError(p, f"DICOM reference file lacks or garbles a field ({type(err).__name__}: "
                        f"{err})") from None
    if not headers:
        raise DataError(p, "DICOM reference file lists no instance")
    return headers


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _hd_volume(labels: np.ndarray, affine_ras: np.ndarray, frame_of_reference_uid: str | None = None
               ) -> Any:
    """A highdicom Volume of ``labels`` (z, y, x) given the NIfTI affine over (x, y, z) in RAS.

    highdicom indexes (slice, row, column) = (z, y, x) and works in LPS: the affine columns are
    reordered and the RAS convention is declared (highdicom flips x and y).
    """
    import highdicom as hd

    affine = np.asarray(affine_ras, dtype=np.float64)[:, [2, 1, 0, 3]]
    return hd.Volume(np.ascontiguousarray(labels), affine, coordinate_system="PATIENT",
                     frame_of_reference_uid=frame_of_reference_uid,
                     from_reference_convention="RAS")


def _segment_descriptions(algorithm_version: str) -> list[Any]:
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    algorithm = hd.AlgorithmIdentificationSequence(
        name="cardioclr heart segmentation (2D U-Net)", version=algorithm_version,
        family=codes.cid7162.ArtificialIntelligence)
    out = []
    for s in SEGMENTS:
        out.append(hd.seg.SegmentDescription(
            segment_number=s.label, segment_label=s.name,
            segmented_property_category=Code(s.category[0], "SCT", s.category[1]),
            segmented_property_type=Code(s.property_type[0], "SCT", s.property_type[1]),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            anatomic_regions=[Code(s.region[0], "SCT", s.region[1])] if s.region else None,
            display_color=hd.color.CIELabColor.from_rgb(*s.rgb),
        ))
    return out


def _check_on_sources(volume: Any, sources: Sequence[Dataset], where: Path) -> None:
    """Every mask slice must coincide with a source image (same plane, pixel grid, position)."""
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in sources])
    first = sources[0]
    cosines = np.array([float(v) for v in first.ImageOrientationPatient])
    row_dir, col_dir = cosines[:3], cosines[3:]
    spacing = [float(v) for v in first.PixelSpacing]  # (between rows, between columns)
    affine = volume.affine  # LPS, (slice, row, column)
    problems = []
    if not (np.allclose(affine[:3, 2], row_dir * spacing[1], atol=1e-3)
            and np.allclose(affine[:3, 1], col_dir * spacing[0], atol=1e-3)):
        problems.append("its in-plane axes or pixel size differ from the source images'")
    elif volume.spatial_shape[1:] != (int(first.Rows), int(first.Columns)):
        problems.append(f"its slices are {volume.spatial_shape[1:]} pixels, the source images "
                        f"{int(first.Rows)} x {int(first.Columns)}")
    else:
        for k in range(volume.spatial_shape[0]):
            origin = affine[:3, :3] @ np.array([k, 0, 0]) + affine[:3, 3]
            if np.linalg.norm(positions - origin, axis=1).min() > _POSITION_TOLERANCE_MM:
                problems.append(f"no source image at the position of slice {k}")
                break
    if problems:
        raise DataError(where, f"the mask does not lie on the source DICOM images: {problems[0]}; "
                        "no SEG written")


def _as_multiframe(sources: Sequence[Dataset]) -> Dataset:
    """One minimal multi-frame header standing for the frames of an enhanced MR image listed in
    ``sources`` (one per slice, each with its ReferencedFrameNumber), for highdicom to place the
    SEG frames; the real frame numbers are written afterwards (:func:`_reference_every_frame`).
    """
    from pydicom.dataset import Dataset as Item

    first = sources[0]
    if len({str(ds.SOPInstanceUID) for ds in sources}) != 1:
        raise ValueError("the slices come from several enhanced multi-frame images")
    mf = Item()
    for key in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
                "FrameOfReferenceUID", "Modality", "Rows", "Columns", "PatientID", "PatientName",
                *_EMPTIED):
        setattr(mf, key, first[key].value)
    mf.NumberOfFrames = len(sources)
    measures, orientation, shared = Item(), Item(), Item()
    measures.PixelSpacing = first.PixelSpacing
    measures.SliceThickness = first.SliceThickness
    orientation.ImageOrientationPatient = first.ImageOrientationPatient
    shared.PixelMeasuresSequence = [measures]
    shared.PlaneOrientationSequence = [orientation]
    mf.SharedFunctionalGroupsSequence = [shared]
    frames = []
    for ds in sources:
        position, frame = Item(), Item()
        position.ImagePositionPatient = ds.ImagePositionPatient
        frame.PlanePositionSequence = [position]
        frames.append(frame)
    mf.PerFrameFunctionalGroupsSequence = frames
    return mf


def _reference_every_frame(seg: Dataset, sources: Sequence[Dataset]) -> None:
    """Fill the DerivationImageSequence of frames highdicom left empty with the source image at
    the frame's position.

    highdicom matches frames to source images series by series and only when a whole series
    matches, so a one-series-per-slice export gets no per-frame references; every frame lies
    on a source image (checked by :func:`_check_on_sources`), found here by position.
    """
    from pydicom.dataset import Dataset as Item
    from pydicom.sr.codedict import codes

    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in sources])

    def coded(code: Any) -> Item:
        item = Item()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = (
            code.value, code.scheme_designator, code.meaning)
        return item

    for frame in seg.PerFrameFunctionalGroupsSequence:
        if frame.get("DerivationImageSequence"):
            continue
        where = np.array([float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient])
        src = sources[int(np.argmin(np.linalg.norm(positions - where, axis=1)))]
        ref = Item()
        ref.ReferencedSOPClassUID = src.SOPClassUID
        ref.ReferencedSOPInstanceUID = src.SOPInstanceUID
        if "ReferencedFrameNumber" in src:  # a frame of an enhanced multi-frame image
            ref.ReferencedFrameNumber = src.ReferencedFrameNumber
        ref.PurposeOfReferenceCodeSequence = [
            coded(codes.cid7202.SourceImageForImageProcessingOperation)]
        ref.SpatialLocationsPreserved = "YES"
        derivation = Item()
        derivation.DerivationCodeSequence = [coded(codes.cid7203.SegmentationImageDerivation)]
        derivation.SourceImageSequence = [ref]
        frame.DerivationImageSequence = [derivation]


def write_seg(labels: np.ndarray, affine_ras: np.ndarray, sources: Sequence[Dataset],
              out: str | os.PathLike[str], description: str, series_number: int = 9000,
              software_version: str = "") -> Path:
    """Write ``labels`` uint8 (z, y, x) with values 0-3 as a DICOM SEG at ``out``.

    ``affine_ras``: the mask's NIfTI voxel (x, y, z) -> RAS mm affine (as :class:`Volume` holds).
    ``sources``: minimal headers of the source images (:func:`read_source_headers`,
    :func:`headers_from_references`), one per slice at least; their PatientID/Name is the
    pseudonym written. ``description``: ContentDescription (e.g. ``"cardioclr ED segmentation"``;
    the basic profile removes SeriesDescription).
    Written to a temporary name and renamed. Raises :class:`DataError` naming ``out`` when the
    mask is not on the source images or the labels are not 0-3.
    """
    import highdicom as hd
    from pydicom.valuerep import DA, TM

    from cardioclr.atomic import atomic_path
    from cardioclr.io.deid import apply_basic_profile

    out = Path(out)
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise DataError(out, f"expected a (z, y, x) label map, got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > MAX_LABEL):
        raise DataError(out, f"label values outside 0-{MAX_LABEL} ({LABEL_MEANINGS})")
    fors = {str(ds.FrameOfReferenceUID) for ds in sources}
    studies = {str(ds.StudyInstanceUID) for ds in sources}
    if len(fors) != 1 or len(studies) != 1:
        raise DataError(out, f"the source images span {len(studies)} studies and {len(fors)} frames "
                        "of reference; one SEG can reference one of each")
    volume = _hd_volume(labels.astype(np.uint8), affine_ras, fors.pop())
    _check_on_sources(volume, sources, out)
    sources = sorted((copy.deepcopy(ds) for ds in sources), key=lambda ds: str(ds.SOPInstanceUID))
    for ds in sources:
        if ds.get("SliceThickness") in (None, ""):
            # Optional in a sidecar, type 2 (may be empty) in MR headers, but highdicom needs it
            # for the SEG's pixel measures: the thickness each mask slice stands for is its gap.
            ds.SliceThickness = float(volume.spacing_between_slices)
    patient_id = str(sources[0].PatientID)
    # highdicom takes the source images of one series, the others as further source images
    # (one series per slice position is a common vendor layout).
    by_series: dict[str, list[Dataset]] = {}
    for ds in sources:
        by_series.setdefault(str(ds.SeriesInstanceUID), []).append(ds)
    main_series = max(sorted(by_series), key=lambda uid: len(by_series[uid]))
    further = [ds for uid in sorted(by_series) if uid != main_series for ds in by_series[uid]]
    enhanced = any("ReferencedFrameNumber" in ds for ds in sources)
    if enhanced:
        try:
            main_images, further = [_as_multiframe(sources)], []
        except ValueError as err:
            raise DataError(out, str(err)) from None
    else:
        main_images = by_series[main_series]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # highdicom's notes on optional attributes
        seg = hd.seg.Segmentation(
            source_images=main_images,
            further_source_images=further or None,
            pixel_array=volume,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=_segment_descriptions(software_version or "unknown"),
            series_instance_uid=hd.UID(),
            series_number=series_number,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer=MANUFACTURER,
            manufacturer_model_name="cardioclr segment predict",
            software_versions=software_version or "unknown",
            device_serial_number=DEVICE_SERIAL,
            content_description=description[:64],
            content_label="CARDIOCLR_SEG",
            omit_empty_frames=False,
        )
    if enhanced:  # highdicom numbered the frames of the stand-in header: reference the real ones
        for frame in seg.PerFrameFunctionalGroupsSequence:
            frame.DerivationImageSequence = []
    _reference_every_frame(seg, sources)
    # PS3.15 Annex E basic profile, Retain UIDs Option (recorded in PatientIdentityRemoved,
    # DeidentificationMethod and its code sequence): the project's one de-identification helper.
    apply_basic_profile(seg, patient_id)
    # Type 1 in the SEG IOD (multi-frame functional groups, enhanced general equipment) but
    # removed by the helper (action X); Annex E also allows D, a dummy value, which keeps the
    # object valid without saying when it was made.
    seg.ContentDate, seg.ContentTime = DA(DUMMY_DATE), TM(DUMMY_TIME)
    seg.DeviceSerialNumber = DEVICE_SERIAL
    with atomic_path(out) as tmp:
        seg.save_as(tmp, enforce_file_format=True)
    return out


# --------------------------------------------------------------------------------------------
# Reading back
# --------------------------------------------------------------------------------------------


def read_seg_labels(seg_path: str | os.PathLike[str], like_affine_ras: np.ndarray,
                    like_shape_zyx: tuple[int, int, int]) -> np.ndarray:
    """The label map (z, y, x) uint8 of a SEG on the grid of a (z, y, x) volume with NIfTI affine
    ``like_affine_ras``, read with highdicom (segments combined: value = segment number).

    Raises ``RuntimeError`` (highdicom) when the SEG's frames cannot be laid on that grid
    without resampling.
    """
    import highdicom as hd

    seg = hd.seg.segread(seg_path)
    vol = seg.get_volume(combine_segments=True, dtype=np.uint8)
    target = _hd_volume(np.zeros(like_shape_zyx, np.uint8), like_affine_ras)
    return np.asarray(vol.match_geometry(target.get_geometry()).array, dtype=np.uint8)


def seg_roundtrip_ok(seg_path: str | os.PathLike[str], nifti_mask: str | os.PathLike[str]) -> bool:
    """True when the SEG read back with highdicom equals the NIfTI label map voxel for voxel.

    Also False when the SEG cannot be read or laid on the NIfTI grid (the reason is logged).
    """
    from cardioclr.io.volume import read_label_volume

    mask = read_label_volume(nifti_mask)
    try:
        back = read_seg_labels(seg_path, mask.affine, mask.shape)
    except Exception as err:  # noqa: BLE001 - any failure to read back is a failed round trip
        log.warning("%s: SEG could not be read back onto %s (%s: %s)", seg_path, nifti_mask,
                    type(err).__name__, err)
        return False
    return bool(np.array_equal(back, mask.array))
