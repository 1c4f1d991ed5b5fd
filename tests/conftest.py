"""Shared test fixtures and data writers for the whole suite.

* :func:`write_tiny_acdc` writes a tiny ACDC-layout dataset (NIfTI + Info.cfg) with full control
  over every patient, for bad-input tests.
* :func:`write_dicom_series` writes a synthetic single-frame MR DICOM series with pydicom.
* ``tiny_work`` (session): a prepared work directory of 20 synthetic phantoms (4 per ACDC group,
  :mod:`cardioclr.data.synthetic`) at ``image_size=64``, ``spacing_mm=3.0``. Treat it as read-only.
* ``acdc_root`` (session): the real ACDC data at ``<repo>/../shared/data/acdc``; skips when absent.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import nibabel as nib
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
ACDC_GROUPS = ("DCM", "HCM", "MINF", "NOR", "RV")
TINY_SHAPE_ZYX = (6, 48, 48)
TINY_SPACING_ZYX = (10.0, 3.5, 3.5)  # mm: ACDC-like slice gap, coarse pixels to stay tiny

# Per group: LV cavity radius (mm) at ED, wall thickness (mm), RV radius (mm), ES/ED LV radius.
# Rough caricatures of each pathology so that a classifier has something to find.
_GROUP_SHAPE = {
    "NOR": (24.0, 8.0, 20.0, 0.70),
    "DCM": (34.0, 6.0, 20.0, 0.92),
    "HCM": (18.0, 15.0, 18.0, 0.55),
    "MINF": (28.0, 7.0, 20.0, 0.85),
    "RV": (24.0, 8.0, 32.0, 0.72),
}


def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as a module (the scripts are not a package), for testing its
    functions without running it."""
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _disk(shape_yx: tuple[int, int], centre_yx: tuple[float, float], radius_px: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape_yx[0], : shape_yx[1]]
    return (yy - centre_yx[0]) ** 2 + (xx - centre_yx[1]) ** 2 <= radius_px**2


def synthetic_heart(group: str, phase: str, rng: np.random.Generator,
                    shape_zyx: tuple[int, int, int] = TINY_SHAPE_ZYX,
                    spacing_zyx: tuple[float, float, float] = TINY_SPACING_ZYX,
                    ) -> tuple[np.ndarray, np.ndarray]:
    """A cartoon short-axis stack: (image int16 (z, y, x), labels uint8 (z, y, x) in 0-3).

    Labels: 1 RV cavity, 2 LV myocardium, 3 LV cavity. Radii shrink from base (z=0) to apex;
    ``phase='es'`` contracts the LV by the group's ES/ED ratio.
    """
    r_lv, wall, r_rv, es_ratio = _GROUP_SHAPE[group]
    jitter = rng.uniform(0.9, 1.1)
    nz, ny, nx = shape_zyx
    px = spacing_zyx[1]
    centre = (ny / 2 + rng.uniform(-2, 2), nx / 2 + 3 + rng.uniform(-2, 2))
    labels = np.zeros(shape_zyx, np.uint8)
    for k in range(nz):
        taper = 1.0 - 0.6 * k / max(nz - 1, 1)
        lv = r_lv * jitter * taper * (es_ratio if phase == "es" else 1.0) / px
        epi = lv + wall * (1.15 if phase == "es" else 1.0) / px
        rv = r_rv * jitter * taper * (0.8 if phase == "es" else 1.0) / px
        rv_centre = (centre[0], centre[1] - epi - 0.4 * rv)
        if k < nz - 1:  # the RV does not reach the apex
            labels[k][_disk((ny, nx), rv_centre, rv)] = 1
        labels[k][_disk((ny, nx), centre, epi)] = 2
        labels[k][_disk((ny, nx), centre, lv)] = 3
    body = _disk((ny, nx), (ny / 2, nx / 2), 0.45 * min(ny, nx))
    intensity = np.array([0.0, 600.0, 250.0, 600.0], np.float32)[labels]
    intensity[:, body] += 150.0  # surrounding tissue
    intensity[(labels == 0) & ~body[None]] = 20.0  # air
    image = intensity + rng.normal(0.0, 25.0, size=shape_zyx)
    return np.clip(image, 0, 4000).astype(np.int16), labels


def write_nifti(path: str | os.PathLike[str], array_zyx: np.ndarray,
                spacing_zyx: tuple[float, float, float] = TINY_SPACING_ZYX) -> Path:
    """Write a (z, y, x) array (or any ndim, stored transposed) as NIfTI with a diagonal affine."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    data = np.asarray(array_zyx)
    if data.ndim == 3:
        data = data.transpose(2, 1, 0)  # (z, y, x) -> NIfTI (x, y, z)
    sz, sy, sx = spacing_zyx
    nib.save(nib.Nifti1Image(data, np.diag([sx, sy, sz, 1.0])), str(p))
    return p


def write_tiny_acdc(root: str | os.PathLike[str], n_per_class: int = 2, seed: int = 0,
                    subset: str | None = "training", groups: tuple[str, ...] = ACDC_GROUPS,
                    start_index: int = 1, shape_zyx: tuple[int, int, int] = TINY_SHAPE_ZYX,
                    spacing_zyx: tuple[float, float, float] = TINY_SPACING_ZYX) -> list[Path]:
    """Write a tiny ACDC-layout dataset under ``root/subset`` (``root`` itself when None).

    ``n_per_class`` patients per group, numbered from ``start_index`` (patient001, ...), each with
    Info.cfg (ED 1, ES 8-12, Group, Height, Weight, NbFrame), ED/ES int16 frames and uint8 masks
    of ``shape_zyx`` voxels at ``spacing_zyx`` mm. Returns the patient folders in order.
    """
    rng = np.random.default_rng(seed)
    base = Path(root) / subset if subset else Path(root)
    dirs: list[Path] = []
    index = start_index
    for _ in range(n_per_class):
        for group in groups:
            pid = f"patient{index:03d}"
            d = base / pid
            d.mkdir(parents=True, exist_ok=True)
            es = int(rng.integers(8, 13))
            (d / "Info.cfg").write_text(
                f"ED: 1\nES: {es}\nGroup: {group}\nHeight: {rng.uniform(150, 190):.1f}\n"
                f"NbFrame: 30\nWeight: {rng.uniform(50, 100):.1f}\n")
            for frame, phase in ((1, "ed"), (es, "es")):
                image, labels = synthetic_heart(group, phase, rng, shape_zyx, spacing_zyx)
                write_nifti(d / f"{pid}_frame{frame:02d}.nii.gz", image, spacing_zyx)
                write_nifti(d / f"{pid}_frame{frame:02d}_gt.nii.gz", labels, spacing_zyx)
            dirs.append(d)
            index += 1
    return dirs


def write_dicom_series(folder: str | os.PathLike[str], volume_zyx: np.ndarray,
                       spacing_zyx: tuple[float, float, float] = (8.0, 1.5, 1.25),
                       origin_lps: tuple[float, float, float] = (-100.0, -80.0, 40.0),
                       orientation: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
                       slope: float = 1.0, intercept: float = 0.0, shuffle_seed: int | None = 0,
                       patient_name: str = "Doe^Jane", patient_id: str = "MRN-0042",
                       series_uid: str | None = None, first_number: int = 1) -> list[Path]:
    """Write ``volume_zyx`` (stored values, int16) as single-frame MR DICOM files in ``folder``.

    Slice k sits at ``origin + k * spacing_z * normal`` (LPS mm), normal = cross(row, col).
    Files are named ``IM####.dcm`` in a shuffled order (``shuffle_seed``; None keeps the slice
    order), so readers must sort by position. Returns the paths in slice order.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    vol = np.asarray(volume_zyx).astype(np.int16)
    nz, ny, nx = vol.shape
    row, col = np.array(orientation[:3]), np.array(orientation[3:])
    normal = np.cross(row, col)
    series = series_uid or generate_uid()
    numbers = list(range(nz))
    if shuffle_seed is not None:
        np.random.default_rng(shuffle_seed).shuffle(numbers)
    paths: list[Path] = []
    for k in range(nz):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.Modality = "MR"
        ds.PatientName = patient_name
        ds.PatientID = patient_id
        ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
        ds.SeriesInstanceUID = series
        ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.2"  # mandatory in the MR image IOD
        ds.SeriesNumber = 7
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [float(v) for v in np.array(origin_lps) + k * spacing_zyx[0] * normal]
        ds.ImageOrientationPatient = [float(v) for v in orientation]
        ds.PixelSpacing = [spacing_zyx[1], spacing_zyx[2]]  # (between rows, between columns)
        ds.SliceThickness = spacing_zyx[0] * 0.8  # thinner than the gap, as on real scanners
        ds.Rows, ds.Columns = ny, nx
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 1  # signed
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.PixelData = np.ascontiguousarray(vol[k]).tobytes()
        p = d / f"IM{numbers[k] + first_number:04d}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    return paths


@pytest.fixture(scope="session")
def tiny_work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared work directory (dataset.json, store/, manifest.csv, splits.json) of 20 synthetic
    phantoms (:func:`cardioclr.data.synthetic.write_synthetic_cohort`, 4 per ACDC group, 64 x 64
    source matrix, seed 0), store grid 64 x 64 at 3.0 mm, random stratified split (seed 0).
    Shared by the whole session: treat it as read-only."""
    from cardioclr.data.prepare import PrepareConfig, prepare
    from cardioclr.data.synthetic import write_synthetic_cohort

    root = tmp_path_factory.mktemp("tiny_data") / "cohort"
    write_synthetic_cohort(root, n_patients=20, seed=0, matrix=64)
    work = tmp_path_factory.mktemp("tiny_work")
    prepare(PrepareConfig(data=str(root), out=str(work), spacing_mm=3.0, image_size=64,
                          workers=1, seed=0))
    return work


@pytest.fixture(scope="session")
def acdc_root() -> Path:
    """The real ACDC data (``<repo>/../shared/data/acdc``); skips the test when it is absent."""
    root = (REPO / ".." / "shared" / "data" / "acdc").resolve()
    if not (root / "training").is_dir():
        pytest.skip(f"real ACDC data not found at {root}")
    return root


# Programming errors must fail the tests, not become skipped patients (see
# cardioclr.data.boundary): unexpected exceptions inside the per-patient boundary propagate.
os.environ.setdefault("CARDIOCLR_RAISE_UNEXPECTED", "1")
