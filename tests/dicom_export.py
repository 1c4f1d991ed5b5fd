"""Test-fixture generator: realistic PACS/scanner DICOM exports of cine MRI (no committed data).

A patient's short-axis cine (x, y, z, t) -- from the synthetic phantom
(:func:`phantom_patient`) or re-wrapped from a real ACDC ``_4d.nii.gz`` (:func:`acdc_patient`)
-- is written by :func:`write_export` as a vendor would export it:

* layouts: ``single_series`` (one series holding every slice and phase), ``per_slice`` (one
  series per slice position, Siemens-style), ``per_phase`` (one series per cardiac phase, each
  holding the whole stack) or ``enhanced`` (one Enhanced MR multi-frame file);
* files without extensions in nested ``PAxx/STxx/SExx`` folders, in shuffled order (the file
  names say nothing about slice or phase), a DICOMDIR whose records point outside the root;
* optional missing TriggerTime (the importer must fall back to InstanceNumber);
* extra series in the same study: a 3-plane localiser, a 4-chamber long-axis cine, a PSIR LGE
  short-axis stack and a T1 map;
* patient-identifying values (name, ID, birth date, institution, accession number, referring
  physician) that tests assert absent from every output file and log.

The stack is placed in an oblique, plausible short-axis orientation in the patient (LPS) frame:
its normal is near the LV long axis (base to apex: left, anterior, inferior). Slice ``k`` of the
source lies at ``origin + k * dz * normal``, so an importer that sorts along the normal returns
the source order, and the RAS affine of the expected 4D NIfTI is returned in :class:`ExportTruth`.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

#: LV long axis, base -> apex, in the patient LPS frame (left, anterior = -y, inferior = -z).
LONG_AXIS_LPS = np.array([0.6, -0.45, -0.65]) / np.linalg.norm([0.6, -0.45, -0.65])
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
LAYOUTS = ("single_series", "per_slice", "enhanced", "per_phase")
EXTRAS = ("localizer", "long_axis", "lge", "t1_map")


@dataclass
class ExportPatient:
    """One patient to export. ``cine``: (x, y, z, t) integers (stored as int16)."""

    patient_id: str
    patient_name: str
    birth_date: str
    institution: str
    cine: np.ndarray
    spacing_xyz: tuple[float, float, float]
    ed_index: int  # 0-based frame of largest LV volume
    es_index: int  # 0-based frame of smallest LV volume
    frame_ms: float = 30.0
    layout: str = "single_series"
    trigger_time: bool = True
    extras: tuple[str, ...] = EXTRAS
    burned_in: bool = False
    height_m: float | None = 1.72
    weight_kg: float | None = 70.0
    accession: str = "ACC7781234"
    seed: int = 0
    ed_labels: np.ndarray | None = None  # (x, y, z) uint8 expert-like labels of the ED frame

    @property
    def phi(self) -> list[str]:
        """Identifying strings that must never appear in any output."""
        parts = [self.patient_id, self.patient_name, self.birth_date, self.institution,
                 self.accession, "REFDOC^HOUSE"]
        parts += [p for p in self.patient_name.split("^") if len(p) > 3]
        return parts


@dataclass
class PatientTruth:
    """What an importer must find for one exported patient."""

    patient_id: str
    sax_series_uids: list[str]
    cine_xyzt: np.ndarray
    affine_ras: np.ndarray  # (4, 4) voxel (i, j, k) -> RAS mm of the expected NIfTI
    ed_index: int
    es_index: int
    other_series: dict[str, str] = field(default_factory=dict)  # SeriesInstanceUID -> kind


@dataclass
class ExportTruth:
    """Per patient ID: :class:`PatientTruth`; ``phi``: every identifying string written."""

    patients: dict[str, PatientTruth]
    phi: list[str]
    files: int


def phantom_patient(seed: int, number: int, group: str = "NOR", matrix: int | None = 48,
                    phase_step: int = 1, **overrides: object) -> ExportPatient:
    """A phantom patient's 4D cine (ED = frame 0, ES = the phantom's ES frame), with identifiers.

    ``phase_step`` > 1 keeps every n-th phase (and the ES one): a coarser temporal resolution,
    fewer files for fast tests. The phantom's LV volume falls monotonically from frame 0 to its
    ES frame and rises after it, so ED/ES of the kept phases are known exactly.
    """
    from cardioclr.data.synthetic import generate_patient

    res = generate_patient(seed, number, group, matrix=matrix, cine=True)
    spec = res["spec"]
    cine = np.asarray(res["cine"])
    es = int(spec.es_frame) - 1
    keep = sorted(set(range(0, cine.shape[-1], phase_step)) | {es})
    cine = cine[..., keep]
    es_index = keep.index(es)
    frame_ms = round(1000.0 / spec.n_frames, 3) * phase_step
    if cine.dtype.kind == "f":  # float phantoms: scale to the int16 range a scanner stores
        cine = cine / max(float(np.abs(cine).max()), 1e-6) * 3000.0
    cine = np.clip(np.rint(cine), -32768, 32767).astype(np.int16)
    patient = ExportPatient(
        patient_id=f"MRN{seed:02d}{number:05d}X", patient_name=f"SMITHSON^JOHANNA{number:03d}^Q",
        birth_date=f"19{50 + number % 40:02d}0{1 + number % 9}1{number % 10}",
        institution="SAINT EXAMPLE HOSPITAL", cine=cine,
        spacing_xyz=tuple(float(s) for s in spec.spacing),  # type: ignore[arg-type]
        ed_index=0, es_index=es_index, frame_ms=frame_ms,
        height_m=round(spec.height_cm / 100.0, 2), weight_kg=round(spec.weight_kg, 1),
        seed=seed * 1000 + number, ed_labels=np.asarray(res["ed_gt"], dtype=np.uint8))
    return replace(patient, **overrides)  # type: ignore[arg-type]


def acdc_patient(patient_dir: str | os.PathLike[str], **overrides: object) -> ExportPatient:
    """Re-wrap a real ACDC patient as a cine export: its ``_4d.nii.gz`` when present, else (the
    shared snapshot has no 4D files) a two-phase cine of its ED and ES frames (ED = phase 0,
    ES = phase 1). Spacing and body size from the NIfTI header and Info.cfg."""
    import nibabel as nib

    d = Path(patient_dir)
    info = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in
            (d / "Info.cfg").read_text().splitlines() if ":" in line)}
    ed, es = int(info["ED"]), int(info["ES"])
    four_d = d / f"{d.name}_4d.nii.gz"
    if four_d.is_file():
        img = nib.load(str(four_d))
        data = np.asarray(img.dataobj, dtype=np.float32)
        ed_index, es_index = ed - 1, es - 1
    else:
        img = nib.load(str(d / f"{d.name}_frame{ed:02d}.nii.gz"))
        es_data = np.asarray(nib.load(str(d / f"{d.name}_frame{es:02d}.nii.gz")).dataobj,
                             dtype=np.float32)
        data = np.stack([np.asarray(img.dataobj, dtype=np.float32), es_data], axis=-1)
        ed_index, es_index = 0, 1
    cine = np.clip(np.rint(data), 0, 32767).astype(np.int16)
    zooms = img.header.get_zooms()
    number = int(d.name.replace("patient", ""))
    patient = ExportPatient(
        patient_id=f"ACDCMRN{number:05d}", patient_name=f"REALDATA^PERSON{number:03d}",
        birth_date="19610203", institution="UNIVERSITY HOSPITAL EXAMPLE", cine=cine,
        spacing_xyz=(float(zooms[0]), float(zooms[1]), float(zooms[2])),
        ed_index=ed_index, es_index=es_index,
        frame_ms=30.0 if cine.shape[-1] > 2 else 30.0 * (es - ed),
        height_m=float(info["Height"]) / 100.0, weight_kg=float(info["Weight"]), seed=number)
    return replace(patient, **overrides)  # type: ignore[arg-type]


def write_export(root: str | os.PathLike[str], patients: list[ExportPatient], *,
                 layout: str | None = None, extensions: bool = False, shuffle: bool = True,
                 extras: bool = True, dicomdir: bool = True, seed: int = 0) -> ExportTruth:
    """Write ``patients`` as one export tree under ``root``; returns what an importer must find.

    ``layout`` (if given) overrides every patient's own; ``extras=False`` drops the
    localiser/long-axis/LGE/map series; ``extensions`` names files ``*.dcm``.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    pending: list[tuple[str, object]] = []  # (relative folder, dataset)
    truths: dict[str, PatientTruth] = {}
    phi: list[str] = []
    for number, patient in enumerate(patients):
        if layout is not None:
            patient = replace(patient, layout=layout)
        if not extras:
            patient = replace(patient, extras=())
        prng = np.random.default_rng(patient.seed)
        truth, datasets = _patient_datasets(patient, prng)
        truths[patient.patient_id] = truth
        phi += patient.phi
        for folder_series, ds in datasets:
            pending.append((f"PA{number:06d}/ST000000/SE{folder_series:06d}", ds))
    order = rng.permutation(len(pending)) if shuffle else np.arange(len(pending))
    for n, i in enumerate(order):
        folder, ds = pending[int(i)]
        name = f"IM{n:06d}" if not shuffle else f"{rng.integers(1 << 40):010X}"
        path = root / "DICOM" / folder / (name + (".dcm" if extensions else ""))
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)  # type: ignore[attr-defined]
    if dicomdir:
        _write_untrusted_dicomdir(root / "DICOMDIR")
    return ExportTruth(truths, sorted(set(phi)), len(pending))


# ---------------------------------------------------------------------------------------------


def sax_orientation(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row cosines, column cosines, normal) of an oblique short-axis plane, normal near the
    LV long axis (within ~12 degrees) and cross(row, col) = normal."""
    n = LONG_AXIS_LPS + rng.normal(0, 0.12, 3)
    n /= np.linalg.norm(n)
    row = np.cross([0.0, 0.0, 1.0], n)  # horizontal-ish, perpendicular to the normal
    row /= np.linalg.norm(row)
    col = np.cross(n, row)
    return row, col, n


def _patient_datasets(p: ExportPatient, rng: np.random.Generator
                      ) -> tuple[PatientTruth, list[tuple[int, object]]]:
    from pydicom.uid import generate_uid

    nx, ny, nz, nt = p.cine.shape
    dx, dy, dz = p.spacing_xyz
    row, col, normal = sax_orientation(rng)
    centre = np.array([10.0, 30.0, 60.0]) + rng.normal(0, 5, 3)
    origin = centre - row * dx * (nx - 1) / 2 - col * dy * (ny - 1) / 2 - normal * dz * (nz - 1) / 2
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = row * dx, col * dy, normal * dz, origin
    study = _Study(p, generate_uid(), generate_uid(), rng)
    out: list[tuple[int, object]] = []
    sax_uids: list[str] = []
    # cine[x, y, z, t] -> DICOM frame rows = y, columns = x
    frames = {(k, t): np.ascontiguousarray(p.cine[:, :, k, t].T) for k in range(nz)
              for t in range(nt)}
    positions = {k: origin + normal * dz * k for k in range(nz)}
    geo = dict(row=row, col=col, spacing=(dy, dx), thickness=dz)
    if p.layout == "single_series":
        uid = generate_uid()
        sax_uids.append(uid)
        n = 0
        for k in range(nz):
            for t in range(nt):
                n += 1
                out.append((10, study.image(uid, 10, "cine_retro_sax", n, frames[k, t],
                                            positions[k], t, nt, geo)))
    elif p.layout == "per_slice":
        for k in range(nz):
            uid = generate_uid()
            sax_uids.append(uid)
            number = 20 + k
            for t in range(nt):
                out.append((number, study.image(uid, number, f"CINE_SAX_SL{k + 1}", t + 1,
                                                frames[k, t], positions[k], t, nt, geo)))
    elif p.layout == "per_phase":
        for t in range(nt):
            uid = generate_uid()
            sax_uids.append(uid)
            number = 100 + t
            for k in range(nz):
                out.append((number, study.image(uid, number, f"sa cine ph{t + 1}", k + 1,
                                                frames[k, t], positions[k], t, nt, geo)))
    elif p.layout == "enhanced":
        uid = generate_uid()
        sax_uids.append(uid)
        out.append((10, study.enhanced(uid, 10, "sa_cine_mf", frames, positions, nz, nt, geo)))
    else:
        raise ValueError(f"unknown layout {p.layout!r}; use one of {LAYOUTS}")
    others: dict[str, str] = {}
    if "localizer" in p.extras:
        uid = generate_uid()
        others[uid] = "localizer"
        planes = [(np.array([1.0, 0, 0]), np.array([0, 1.0, 0])),  # axial
                  (np.array([1.0, 0, 0]), np.array([0, 0, -1.0])),  # coronal
                  (np.array([0, 1.0, 0]), np.array([0, 0, -1.0]))]  # sagittal
        for i, (r, c) in enumerate(planes):
            img = rng.integers(0, 800, (ny, nx)).astype(np.int16)
            out.append((1, study.image(uid, 1, "3-plane loc", i + 1, img, centre, None, None,
                                       dict(row=r, col=c, spacing=(dy * 2, dx * 2),
                                            thickness=8.0), image_type="LOCALIZER")))
    if "long_axis" in p.extras:
        uid = generate_uid()
        others[uid] = "long_axis"
        # 4-chamber plane: contains the long axis (its normal is perpendicular to it)
        r = LONG_AXIS_LPS
        c = np.cross(r, [0.0, 0.0, 1.0])
        c /= np.linalg.norm(c)
        for t in range(nt):
            out.append((5, study.image(uid, 5, "cine 4ch", t + 1, frames[nz // 2, t], centre, t,
                                       nt, dict(row=r, col=c, spacing=(dy, dx), thickness=dz))))
    if "lge" in p.extras:
        uid = generate_uid()
        others[uid] = "lge"
        for k in range(nz):
            out.append((40, study.image(uid, 40, "PSIR sax", k + 1, frames[k, p.es_index],
                                        positions[k], None, None, geo, inversion_ms=300.0)))
    if "t1_map" in p.extras:
        uid = generate_uid()
        others[uid] = "map"
        for k in (nz // 3, nz // 2, 2 * nz // 3):
            out.append((50, study.image(uid, 50, "MOLLI T1 map", k + 1, frames[k, 0],
                                        positions[k], None, None, geo,
                                        image_type="T1 MAP", derived=True)))
    truth = PatientTruth(p.patient_id, sax_uids, p.cine, _LPS_TO_RAS @ lps, p.ed_index,
                         p.es_index, others)
    return truth, out


class _Study:
    """Writes the common patient/study attributes into every dataset of one study."""

    def __init__(self, p: ExportPatient, study_uid: str, frame_uid: str,
                 rng: np.random.Generator) -> None:
        self.p, self.study_uid, self.frame_uid, self.rng = p, study_uid, frame_uid, rng

    def _base(self, sop_class: str, series_uid: str, number: int, description: str):  # noqa: ANN202
        from pydicom.dataset import Dataset, FileMetaDataset
        from pydicom.uid import ExplicitVRLittleEndian, generate_uid

        p = self.p
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = p.patient_name, p.patient_id, p.birth_date
        ds.PatientSex = "F"
        if p.height_m is not None:
            ds.PatientSize = f"{p.height_m:.2f}"
        if p.weight_kg is not None:
            ds.PatientWeight = f"{p.weight_kg:.1f}"
        ds.InstitutionName, ds.AccessionNumber = p.institution, p.accession
        ds.ReferringPhysicianName = "REFDOC^HOUSE"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = self.study_uid, series_uid
        ds.FrameOfReferenceUID = self.frame_uid
        ds.StudyDate, ds.StudyTime, ds.StudyID = "20240315", "101500", "1"
        ds.Modality, ds.Manufacturer = "MR", "EXAMPLE"
        ds.SeriesNumber, ds.SeriesDescription = number, description
        ds.BurnedInAnnotation = "YES" if p.burned_in else "NO"
        return ds

    @staticmethod
    def _pixels(ds: object, img: np.ndarray) -> None:
        d = ds  # type: ignore[assignment]
        d.SamplesPerPixel, d.PhotometricInterpretation = 1, "MONOCHROME2"
        d.BitsAllocated, d.BitsStored, d.HighBit, d.PixelRepresentation = 16, 16, 15, 1
        d.PixelData = np.ascontiguousarray(img, dtype="<i2").tobytes()

    def image(self, series_uid: str, number: int, description: str, instance: int,
              img: np.ndarray, position: np.ndarray, t: int | None, nt: int | None,
              geo: dict, image_type: str = "NONE", inversion_ms: float | None = None,
              derived: bool = False):  # noqa: ANN201
        from pydicom.uid import MRImageStorage

        ds = self._base(MRImageStorage, series_uid, number, description)
        ds.ImageType = ["DERIVED" if derived else "ORIGINAL", "PRIMARY", "M", image_type]
        ds.InstanceNumber = instance
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*geo["row"], *geo["col"])]
        ds.PixelSpacing = [f"{geo['spacing'][0]:.6f}", f"{geo['spacing'][1]:.6f}"]
        ds.SliceThickness = f"{geo['thickness']:.4f}"
        ds.Rows, ds.Columns = img.shape
        if t is not None and nt is not None:
            ds.CardiacNumberOfImages = nt
            if self.p.trigger_time:
                ds.TriggerTime = f"{t * self.p.frame_ms:.2f}"
        if inversion_ms is not None:
            ds.InversionTime = f"{inversion_ms:.1f}"
        self._pixels(ds, img)
        return ds

    def enhanced(self, series_uid: str, number: int, description: str,
                 frames: dict[tuple[int, int], np.ndarray], positions: dict[int, np.ndarray],
                 nz: int, nt: int, geo: dict):  # noqa: ANN201
        from pydicom.dataset import Dataset
        from pydicom.sequence import Sequence
        from pydicom.uid import EnhancedMRImageStorage

        ds = self._base(EnhancedMRImageStorage, series_uid, number, description)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
        ds.InstanceNumber = 1
        order = [(k, t) for k in range(nz) for t in range(nt)]
        self.rng.shuffle(order)  # frame order in the file need not be slice-major
        shared = Dataset()
        pm = Dataset()
        pm.PixelSpacing = [f"{geo['spacing'][0]:.6f}", f"{geo['spacing'][1]:.6f}"]
        pm.SliceThickness = f"{geo['thickness']:.4f}"
        po = Dataset()
        po.ImageOrientationPatient = [f"{v:.8f}" for v in (*geo["row"], *geo["col"])]
        shared.PixelMeasuresSequence = Sequence([pm])
        shared.PlaneOrientationSequence = Sequence([po])
        ds.SharedFunctionalGroupsSequence = Sequence([shared])
        per = []
        for k, t in order:
            f = Dataset()
            pp = Dataset()
            pp.ImagePositionPatient = [f"{v:.6f}" for v in positions[k]]
            f.PlanePositionSequence = Sequence([pp])
            fc = Dataset()
            fc.InStackPositionNumber, fc.TemporalPositionIndex = k + 1, t + 1
            f.FrameContentSequence = Sequence([fc])
            if self.p.trigger_time:
                cs = Dataset()
                cs.NominalCardiacTriggerDelayTime = round(t * self.p.frame_ms, 2)
                f.CardiacSynchronizationSequence = Sequence([cs])
            per.append(f)
        ds.PerFrameFunctionalGroupsSequence = Sequence(per)
        ds.NumberOfFrames = len(order)
        ds.CardiacNumberOfImages = nt
        first = frames[order[0]]
        ds.Rows, ds.Columns = first.shape
        self._pixels(ds, np.stack([frames[o] for o in order]))
        return ds


def _write_untrusted_dicomdir(path: Path) -> None:
    """A DICOMDIR whose one record points outside the export root (must never be followed)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.FileSetID = "EXPORT"
    rec = Dataset()
    rec.DirectoryRecordType = "IMAGE"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rec.ReferencedFileID = ["..", "..", "..", "ETC", "PASSWD"]
    ds.DirectoryRecordSequence = Sequence([rec])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # '..' is not a valid CS value: that is the point
        ds.save_as(path, enforce_file_format=True)
