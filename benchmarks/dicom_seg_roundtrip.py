"""DICOM SEG output on real data: ACDC frames re-wrapped as DICOM, expert masks written as SEG.

Usage::

    python benchmarks/dicom_seg_roundtrip.py [--data ACDC_DIR] [--patients N] [--oblique]

For every patient (default: all of ``training/``) and phase (ED, ES): the image frame is written
as a single-frame MR DICOM series (identifying header values set on purpose, shuffled file
order; ``--oblique``: tilted slice orientation), read back with cardioclr's DICOM reader, and
the expert mask -- on that DICOM grid -- is written as a DICOM SEG with
:func:`cardioclr.io.dicom_seg.write_seg` from the series headers. Then it checks what a viewer
relies on: the SEG read back with highdicom equals the mask voxel for voxel
(``seg_roundtrip_ok``), every SEG frame references the source instance at its own position
(``references_ok``), and no identifying value of the source reaches the SEG file (``phi_hits``).

The LAST output line is one JSON object: ``patients``, ``segs``, ``roundtrip_ok`` (count),
``roundtrip_ok_rate``, ``references_ok`` (count), ``phi_hits``, ``failed`` ({name: reason}),
``seconds`` (whole run), ``seg_seconds_mean`` (write_seg + read-back check per SEG),
``seg_kib_mean``, ``load_avg_1min``, ``oblique``. Data absent: ``{"skipped": ...}``, exit 0.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / ".." / "shared" / "data" / "acdc"
PHI = {"PatientName": "Doe^Jane", "PatientID": "MRN-0042", "PatientBirthDate": "19610203",
       "InstitutionName": "St Elsewhere Hospital", "AccessionNumber": "ACC-998877"}
PHI_BYTES = (b"Doe", b"Jane", b"MRN-0042", b"19610203", b"Elsewhere", b"ACC-998877")
OBLIQUE = (0.8, 0.6, 0.0, -0.36, 0.48, 0.8)


def _write_series(folder: Path, image_zyx: np.ndarray, spacing_zyx: tuple[float, float, float],
                  oblique: bool, seed: int) -> None:
    """The frame as DICOM (tests/conftest.py's writer), then the identifying values added."""
    import pydicom

    sys.path.insert(0, str(REPO / "tests"))
    from conftest import write_dicom_series

    orientation = OBLIQUE if oblique else (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    for p in write_dicom_series(folder, image_zyx, spacing_zyx=spacing_zyx, orientation=orientation,
                                shuffle_seed=seed):
        ds = pydicom.dcmread(p)
        for key, value in PHI.items():
            setattr(ds, key, value)
        ds.save_as(p, enforce_file_format=True)


def _references_ok(seg_path: Path, folder: Path) -> bool:
    """Each SEG frame derives from the source instance lying at the frame's position."""
    import pydicom

    sources = {}
    for p in folder.iterdir():
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        sources[ds.SOPInstanceUID] = np.array([float(v) for v in ds.ImagePositionPatient])
    seg = pydicom.dcmread(seg_path, stop_before_pixels=True)
    for frame in seg.PerFrameFunctionalGroupsSequence:
        refs = frame.DerivationImageSequence[0].SourceImageSequence
        position = np.array([float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient])
        if len(refs) != 1 or refs[0].ReferencedSOPInstanceUID not in sources:
            return False
        if np.abs(sources[refs[0].ReferencedSOPInstanceUID] - position).max() > 1e-3:
            return False
    return True


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit code (0 also when the data is absent)."""
    import nibabel as nib

    from cardioclr.data.acdc import find_acdc_cases
    from cardioclr.io.dicom_seg import read_source_headers, seg_roundtrip_ok, write_seg
    from cardioclr.io.volume import read_label_volume, read_volume

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="ACDC folder")
    parser.add_argument("--patients", type=int, default=None, help="first N patients (default all)")
    parser.add_argument("--oblique", action="store_true", help="tilted slice orientation")
    args = parser.parse_args(argv)
    data = Path(args.data).resolve()
    if not (data / "training").is_dir():
        print(json.dumps({"skipped": f"ACDC data not found at {data}"}))
        return 0
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    cases, _ = find_acdc_cases(data, require_label=False)
    cases = [c for c in cases if c.ed_mask is not None and c.es_mask is not None][:args.patients]
    tmp = Path(tempfile.mkdtemp(prefix="dicom_seg_roundtrip_"))
    start = time.perf_counter()
    counts = {"segs": 0, "roundtrip_ok": 0, "references_ok": 0, "phi_hits": 0}
    seg_seconds, seg_bytes, failed = [], [], {}
    try:
        for n, case in enumerate(cases):
            for phase, image, mask in (("ED", case.ed_image, case.ed_mask), ("ES", case.es_image,
                                                                              case.es_mask)):
                name = f"{case.patient_id}_{phase}"
                try:
                    nifti = read_volume(image)
                    labels = read_label_volume(mask).array
                    folder = tmp / name
                    _write_series(folder, np.asarray(nib.load(image).dataobj).transpose(2, 1, 0),
                                  nifti.spacing, args.oblique, seed=n)
                    vol = read_volume(folder)  # the DICOM grid: the mask goes on it as is
                    mask_path = tmp / f"{name}_mask.nii.gz"
                    nib.save(nib.Nifti1Image(labels.transpose(2, 1, 0), vol.affine), str(mask_path))
                    t = time.perf_counter()
                    seg = write_seg(labels, vol.affine, read_source_headers(folder, case.patient_id),
                                    tmp / f"{name}.dcm", f"ACDC {phase} expert")
                    ok = seg_roundtrip_ok(seg, mask_path)
                    seg_seconds.append(time.perf_counter() - t)
                    raw = seg.read_bytes()
                    seg_bytes.append(len(raw))
                    counts["segs"] += 1
                    counts["roundtrip_ok"] += int(ok)
                    counts["references_ok"] += int(_references_ok(seg, folder))
                    counts["phi_hits"] += sum(b in raw for b in PHI_BYTES)
                except Exception as err:  # noqa: BLE001 - a benchmark reports every failure
                    failed[name] = f"{type(err).__name__}: {err}"
                shutil.rmtree(tmp / name, ignore_errors=True)
            if (n + 1) % 10 == 0:
                print(f"{n + 1}/{len(cases)} patients, {counts['segs']} SEGs, "
                      f"{time.perf_counter() - start:.0f} s", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps({
        "patients": len(cases), **counts,
        "roundtrip_ok_rate": round(counts["roundtrip_ok"] / counts["segs"], 4) if counts["segs"] else None,
        "failed": failed, "seconds": round(time.perf_counter() - start, 1),
        "seg_seconds_mean": round(float(np.mean(seg_seconds)), 3) if seg_seconds else None,
        "seg_kib_mean": round(float(np.mean(seg_bytes)) / 1024, 1) if seg_bytes else None,
        "load_avg_1min": load, "oblique": args.oblique,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
