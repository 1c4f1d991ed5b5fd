"""DICOM SEG output: round trip, references to the source instances, no PHI, the CLI path.

Source series are written with :func:`conftest.write_dicom_series` (single-frame MR, shuffled
file order, an oblique orientation) and then given identifying values that must never reach a SEG.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest

from cardioclr.data.store import SliceStore
from cardioclr.errors import DataError
from cardioclr.io.dicom_seg import (
    REFERENCES_FORMAT,
    headers_from_references,
    read_seg_labels,
    read_source_headers,
    references_path,
    seg_roundtrip_ok,
    write_seg,
)
from cardioclr.io.volume import read_volume
from conftest import synthetic_heart, write_dicom_series

OBLIQUE = (0.8, 0.6, 0.0, -0.36, 0.48, 0.8)  # unit row and column cosines, orthogonal
PHI = {"PatientName": "Doe^Jane", "PatientID": "MRN-0042", "PatientBirthDate": "19610203",
       "InstitutionName": "St Elsewhere Hospital", "AccessionNumber": "ACC-998877",
       "ReferringPhysicianName": "House^Gregory", "StudyDescription": "Cardiac Jane Doe"}
PHI_BYTES = [b"Doe", b"Jane", b"MRN-0042", b"19610203", b"Elsewhere", b"ACC-998877", b"House"]


def _dicom_patient(folder: Path, phase: str = "ed", seed: int = 0,
                   orientation: tuple[float, ...] = OBLIQUE) -> tuple[list[Path], np.ndarray]:
    """A short-axis stack as DICOM with identifying headers; returns (files in slice order, labels)."""
    rng = np.random.default_rng(seed)
    image, labels = synthetic_heart("NOR", phase, rng, (5, 40, 36), (8.0, 1.5, 1.25))
    paths = write_dicom_series(folder, image, orientation=orientation, shuffle_seed=seed)
    for p in paths:
        ds = pydicom.dcmread(p)
        for key, value in PHI.items():
            setattr(ds, key, value)
        ds.save_as(p, enforce_file_format=True)
    return paths, labels.astype(np.uint8)


def _mask_nifti(path: Path, labels: np.ndarray, affine: np.ndarray) -> Path:
    img = nib.Nifti1Image(np.ascontiguousarray(labels.transpose(2, 1, 0)), affine)
    nib.save(img, str(path))
    return path


def test_seg_round_trip_references_and_no_phi(tmp_path: Path) -> None:
    paths, labels = _dicom_patient(tmp_path / "ed")
    vol = read_volume(tmp_path / "ed")
    assert vol.shape == labels.shape and set(np.unique(labels)) == {0, 1, 2, 3}
    mask = _mask_nifti(tmp_path / "mask.nii.gz", labels, vol.affine)
    out = write_seg(labels, vol.affine, read_source_headers(tmp_path / "ed", "anon-007"),
                    tmp_path / "seg" / "ed.dcm", "cardioclr ED segmentation")
    assert seg_roundtrip_ok(out, mask)
    np.testing.assert_array_equal(read_seg_labels(out, vol.affine, vol.shape), labels)

    seg = pydicom.dcmread(out)
    sources = [pydicom.dcmread(p) for p in paths]  # slice order
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    assert seg.StudyInstanceUID == sources[0].StudyInstanceUID
    (series,) = seg.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == sources[0].SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in series.ReferencedInstanceSequence} == \
        {s.SOPInstanceUID for s in sources}
    # Each frame is derived from the source image at its position (3 segments x 5 slices).
    assert int(seg.NumberOfFrames) == 3 * len(paths)
    by_uid = {s.SOPInstanceUID: s for s in sources}
    for frame in seg.PerFrameFunctionalGroupsSequence:
        (ref,) = frame.DerivationImageSequence[0].SourceImageSequence
        src = by_uid[ref.ReferencedSOPInstanceUID]
        position = frame.PlanePositionSequence[0].ImagePositionPatient
        np.testing.assert_allclose([float(v) for v in position],
                                   [float(v) for v in src.ImagePositionPatient], atol=1e-3)
    # Segments with SNOMED CT concepts, in cardioclr's label order.
    segs = {int(s.SegmentNumber): s for s in seg.SegmentSequence}
    assert segs[1].SegmentLabel == "RV cavity" and segs[3].SegmentLabel == "LV cavity"
    assert segs[2].SegmentedPropertyTypeCodeSequence[0].CodeValue == "49848007"
    assert segs[3].AnatomicRegionSequence[0].CodeValue == "87878005"
    assert all(s.SegmentedPropertyCategoryCodeSequence[0].CodingSchemeDesignator == "SCT"
               for s in segs.values())
    # PS3.15 Annex E: pseudonym, recorded method, nothing of the source patient.
    assert seg.PatientID == "anon-007" and str(seg.PatientName) == "anon-007"
    assert seg.PatientIdentityRemoved == "YES" and "Annex E" in seg.DeidentificationMethod
    assert {c.CodeValue for c in seg.DeidentificationMethodCodeSequence} == {"113100", "113110"}
    raw = out.read_bytes()
    assert not [b for b in PHI_BYTES if b in raw]
    assert "InstitutionName" not in seg and not seg.get("PatientBirthDate")


def test_roundtrip_check_can_fail_and_off_grid_mask_is_refused(tmp_path: Path) -> None:
    _, labels = _dicom_patient(tmp_path / "ed", orientation=(1, 0, 0, 0, 1, 0))
    vol = read_volume(tmp_path / "ed")
    out = write_seg(labels, vol.affine, read_source_headers(tmp_path / "ed", "anon"),
                    tmp_path / "seg.dcm", "ED")
    changed = labels.copy()
    changed[2, 20, 18] = (changed[2, 20, 18] + 1) % 4  # one voxel differs
    assert not seg_roundtrip_ok(out, _mask_nifti(tmp_path / "other.nii.gz", changed, vol.affine))
    shifted = vol.affine.copy()
    shifted[2, 3] += 4.0  # half a slice gap along z: on no source slice
    with pytest.raises(DataError, match="does not lie on the source DICOM images"):
        write_seg(labels, shifted, read_source_headers(tmp_path / "ed", "anon"), tmp_path / "bad.dcm",
                  "ED")
    assert not (tmp_path / "bad.dcm").exists()
    flipped = vol.affine @ np.diag([-1.0, 1.0, 1.0, 1.0])
    with pytest.raises(DataError, match="in-plane axes"):
        write_seg(labels, flipped, read_source_headers(tmp_path / "ed", "anon"), tmp_path / "bad.dcm",
                  "ED")


def test_seg_from_reference_sidecar_of_an_imported_nifti(tmp_path: Path) -> None:
    paths, labels = _dicom_patient(tmp_path / "ed")
    vol = read_volume(tmp_path / "ed")
    frame = tmp_path / "data" / "p1_frame01.nii.gz"
    frame.parent.mkdir()
    _mask_nifti(frame, labels, vol.affine)  # stands for the imported image frame
    first = pydicom.dcmread(paths[0])
    refs = {"format": REFERENCES_FORMAT, "study_instance_uid": first.StudyInstanceUID,
            "frame_of_reference_uid": first.FrameOfReferenceUID, "modality": "MR",
            "rows": int(first.Rows), "columns": int(first.Columns),
            "pixel_spacing": [float(v) for v in first.PixelSpacing],
            "image_orientation_patient": [float(v) for v in first.ImageOrientationPatient],
            "instances": [{"sop_class_uid": d.SOPClassUID, "sop_instance_uid": d.SOPInstanceUID,
                           "series_instance_uid": d.SeriesInstanceUID, "frame_number": None,
                           "image_position_patient": [float(v) for v in d.ImagePositionPatient]}
                          for d in (pydicom.dcmread(p) for p in reversed(paths))]}
    sidecar = references_path(frame)
    assert sidecar.name == "p1_frame01.dicom.json"
    sidecar.write_text(json.dumps(refs))
    out = write_seg(labels, vol.affine, headers_from_references(sidecar, "p1"), tmp_path / "seg.dcm", "ED")
    assert seg_roundtrip_ok(out, frame)
    seg = pydicom.dcmread(out)
    refs_in_seg = {f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
                   for f in seg.PerFrameFunctionalGroupsSequence}
    assert refs_in_seg == {pydicom.dcmread(p).SOPInstanceUID for p in paths}
    refs["instances"][0]["frame_number"] = 3  # frames of a multi-frame image mixed with single images
    sidecar.write_text(json.dumps(refs))
    with pytest.raises(DataError, match="several enhanced multi-frame images"):
        write_seg(labels, vol.affine, headers_from_references(sidecar, "p1"), tmp_path / "bad.dcm", "ED")
    assert not (tmp_path / "bad.dcm").exists()


def _fake_segmentation_model(work: Path) -> None:
    """An untrained tiny U-Net saved as WORK/segmentation/model/model.pt (any labels will do)."""
    import torch

    from cardioclr.segment.model import NetworkConfig, build_network, network_config_dict
    from cardioclr.segment.train import MODEL_FORMAT

    torch.manual_seed(0)
    cfg = NetworkConfig(channels=(4, 8, 16), num_res_units=0)
    info = json.loads((work / "dataset.json").read_text())
    d = work / "segmentation" / "model"
    d.mkdir(parents=True)
    torch.save({"format": MODEL_FORMAT, "state_dict": build_network(cfg).state_dict(),
                "network": network_config_dict(cfg), "image_size": info["image_size"],
                "spacing_mm": info["spacing_mm"]}, d / "model.pt")


def test_segment_predict_dicom_seg_cli(tmp_path: Path) -> None:
    from cardioclr.cli import main
    from cardioclr.data.prepare import PrepareConfig, prepare
    from conftest import write_nifti

    data = tmp_path / "data"
    _dicom_patient(data / "dcm1" / "ed", "ed", seed=1)
    _dicom_patient(data / "dcm1" / "es", "es", seed=2)
    rng = np.random.default_rng(3)
    for phase in ("ed", "es"):
        image, _ = synthetic_heart("NOR", phase, rng, (5, 40, 36), (8.0, 1.5, 1.25))
        write_nifti(data / "nii1" / f"{phase}.nii.gz", image, (8.0, 1.5, 1.25))
    (data / "manifest.csv").write_text(
        "patient_id,label,ed_image,es_image\n"
        "dcm1,,dcm1/ed,dcm1/es\n"
        "nii1,,nii1/ed.nii.gz,nii1/es.nii.gz\n")
    work = tmp_path / "work"
    prepare(PrepareConfig(data=str(data / "manifest.csv"), out=str(work), spacing_mm=2.0,
                          image_size=32, unlabelled=True, workers=1))
    _fake_segmentation_model(work)
    assert main(["segment", "predict", str(work), "--dicom-seg", "--no-png", "--no-evaluate",
                 "--accelerator", "cpu"]) == 0
    table = pd.read_csv(work / "segmentation" / "dicom_seg" / "dicom_seg.csv", keep_default_na=False)
    rows = {(r.patient_id, r.phase): r for r in table.itertuples()}
    for phase in ("ED", "ES"):
        written = rows[("dcm1", phase)]
        assert written.status == "written" and str(written.roundtrip_ok) == "True"
        seg = pydicom.dcmread(written.file)
        folder = data / "dcm1" / phase.lower()
        sources = {pydicom.dcmread(p).SOPInstanceUID for p in folder.iterdir()}
        assert {i.ReferencedSOPInstanceUID for i in seg.ReferencedSeriesSequence[0]
                .ReferencedInstanceSequence} == sources
        assert seg.PatientID == "dcm1"
        assert not [b for b in PHI_BYTES if b in Path(written.file).read_bytes()]
        skipped = rows[("nii1", phase)]
        assert skipped.status == "skipped" and "without DICOM references" in skipped.reason
    assert rows[("dcm1", "report")].status == "written" and rows[("nii1", "report")].status == "skipped"
    assert not (work / "segmentation" / "dicom_seg" / "nii1").exists()


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["per_slice", "per_phase", "enhanced"])
def test_imported_export_gets_segs_over_the_pacs_images(tmp_path: Path, layout: str) -> None:
    """PACS export -> ``cardioclr import`` -> prepare -> ``segment predict --dicom-seg``: the SEGs
    reference the exported instances (enhanced MR: the frames of the one instance) through the
    import's sidecars, one source image of one cardiac phase per slice."""
    from cardioclr.cli import main
    from cardioclr.data.prepare import PrepareConfig, prepare
    from cardioclr.dicomimport.importer import ImportConfig, import_dicom
    from dicom_export import phantom_patient, write_export

    truth = write_export(tmp_path / "export", [phantom_patient(0, 1, phase_step=4)], layout=layout)
    import_dicom(ImportConfig(root=str(tmp_path / "export"), out=str(tmp_path / "data")))
    work = tmp_path / "work"
    prepare(PrepareConfig(data=str(tmp_path / "data"), out=str(work), spacing_mm=4.0, image_size=32,
                          unlabelled=True, workers=1))
    (patient,) = truth.patients.values()
    # Every imported cine frame is in the store (for pretraining on all frames).
    store = SliceStore(work)
    (pid,) = store.patient_ids
    cine = store.load(pid, with_cine=True).cine
    assert cine is not None and cine.shape[0] == patient.cine_xyzt.shape[3]
    _fake_segmentation_model(work)
    assert main(["segment", "predict", str(work), "--dicom-seg", "--no-png", "--no-evaluate",
                 "--accelerator", "cpu"]) == 0
    table = pd.read_csv(work / "segmentation" / "dicom_seg" / "dicom_seg.csv", keep_default_na=False)
    assert list(table["phase"]) == ["ED", "ES", "report"] and (table["status"] == "written").all()
    table = table[table["phase"] != "report"]
    assert (table["roundtrip_ok"].astype(str) == "True").all()
    exported = {}
    for p in (tmp_path / "export").rglob("*"):
        if p.is_file() and p.name != "DICOMDIR":
            ds = pydicom.dcmread(p, stop_before_pixels=True)
            exported[ds.SOPInstanceUID] = ds
    nz = patient.cine_xyzt.shape[2]
    for row in table.itertuples():
        seg = pydicom.dcmread(row.file)
        sources, phases = set(), set()
        for frame in seg.PerFrameFunctionalGroupsSequence:
            (ref,) = frame.DerivationImageSequence[0].SourceImageSequence
            src = exported[ref.ReferencedSOPInstanceUID]
            assert src.SeriesInstanceUID in patient.sax_series_uids
            if layout == "enhanced":  # the referenced frame lies where the SEG frame does
                n = int(ref.ReferencedFrameNumber)
                fg = src.PerFrameFunctionalGroupsSequence[n - 1]
                where = fg.PlanePositionSequence[0].ImagePositionPatient
                phases.add(int(fg.FrameContentSequence[0].TemporalPositionIndex))
                sources.add(n)
            else:
                where = src.ImagePositionPatient
                phases.add(float(src.TriggerTime))
                sources.add(ref.ReferencedSOPInstanceUID)
            np.testing.assert_allclose([float(v) for v in where], [
                float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient], atol=1e-3)
        assert len(sources) == nz and len(phases) == 1  # one image per slice, all of one phase
        assert seg.FrameOfReferenceUID == src.FrameOfReferenceUID
        raw = Path(row.file).read_bytes()
        assert not [s for s in truth.phi if len(s) > 3 and s.encode() in raw]


def test_measurement_report_references_the_seg_segments(tmp_path: Path) -> None:
    import highdicom as hd

    from cardioclr.clinical.indices import compute_indices
    from cardioclr.io.dicom_sr import write_measurement_report

    segs, labels = {}, {}
    for phase, seed in (("ED", 1), ("ES", 2)):
        _, labels[phase] = _dicom_patient(tmp_path / phase, phase.lower(), seed=seed)
        vol = read_volume(tmp_path / phase)
        segs[phase] = write_seg(labels[phase], vol.affine, read_source_headers(tmp_path / phase, "anon-9"),
                                tmp_path / f"{phase}.dcm", phase)
    indices = compute_indices(labels["ED"], labels["ES"], vol.spacing)
    out = write_measurement_report(segs, indices, tmp_path / "sr.dcm")
    sr = hd.sr.srread(out)
    seg_uids = {phase: pydicom.dcmread(p).SOPInstanceUID for phase, p in segs.items()}
    found = {}
    for group in sr.content.get_volumetric_roi_measurement_groups():
        for m in group.get_measurements():
            found[(str(group.tracking_identifier), m.name.value)] = (m.value, m.unit.value)
    assert found[("LV cavity ED", "18026-5")] == (pytest.approx(indices["lv_edv_ml"]), "mL")
    assert found[("LV cavity ES", "18148-7")] == (pytest.approx(indices["lv_esv_ml"]), "mL")
    assert found[("LV cavity ED", "8811-2")] == (pytest.approx(indices["lv_ef_pct"]), "%")
    assert found[("RV cavity ES", "118565006")] == (pytest.approx(indices["rv_esv_ml"]), "mL")
    assert found[("LV myocardium ED", "4147007")] == (pytest.approx(indices["myo_mass_ed_g"]), "g")

    def segment_refs(items: pydicom.Sequence) -> set[tuple[str, int]]:
        out: set[tuple[str, int]] = set()
        for item in items:
            for ref in item.get("ReferencedSOPSequence", []):
                if "ReferencedSegmentNumber" in ref:
                    out.add((ref.ReferencedSOPInstanceUID, int(ref.ReferencedSegmentNumber)))
            out |= segment_refs(item.get("ContentSequence", []))
        return out

    refs = segment_refs(pydicom.dcmread(out).ContentSequence)
    assert refs == {(seg_uids["ED"], 3), (seg_uids["ES"], 3), (seg_uids["ED"], 1), (seg_uids["ES"], 1),
                    (seg_uids["ED"], 2)}
    ds = pydicom.dcmread(out)
    evidence = {i.ReferencedSOPInstanceUID for s in ds.CurrentRequestedProcedureEvidenceSequence
                for series in s.ReferencedSeriesSequence for i in series.ReferencedSOPSequence}
    assert set(seg_uids.values()) <= evidence
    assert ds.PatientID == "anon-9" and ds.PatientIdentityRemoved == "YES"
    assert not [b for b in PHI_BYTES if b in out.read_bytes()]


def test_seg_table_summary_counts_segs_and_reports_apart() -> None:
    from cardioclr.segment.cli import seg_table_summary

    table = pd.DataFrame({"patient_id": ["a", "a", "a", "b", "b", "b"],
                          "phase": ["ED", "ES", "report", "ED", "ES", "report"],
                          "status": ["written", "written", "written", "skipped", "skipped", "skipped"],
                          "roundtrip_ok": [True, False, "", "", "", ""]})
    line = seg_table_summary(table, "x.csv")
    assert line.startswith("DICOM SEG: 2 written, 2 skipped, 0 failed; 1 measurement reports")
    assert "1 do NOT read back equal" in line
