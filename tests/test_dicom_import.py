"""``cardioclr import``: DICOM exports (tests/dicom_export.py) -> ACDC-layout dataset."""

from __future__ import annotations

import csv
import gzip
import io
import logging
import os
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cardioclr.cli import main
from cardioclr.data.acdc import find_acdc_cases
from cardioclr.dicomimport.importer import ImportConfig, import_dicom
from cardioclr.errors import CardioclrError
from dicom_export import acdc_patient, phantom_patient, write_export


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def _mapping(path: Path) -> dict[str, str]:
    return {r["original_patient_id"]: r["pseudonym"] for r in _read_csv(path)}


def _info(path: Path) -> dict[str, str]:
    return dict((k.strip(), v.strip()) for k, v in
                (line.split(":", 1) for line in path.read_text().splitlines()))


def _assert_no_phi(folder: Path, phi: list[str], extra_text: str = "") -> None:
    """No identifying string in any file under ``folder`` (gzip members decompressed)."""
    needles = [p.encode() for p in phi if len(p) >= 4]
    for p in folder.rglob("*"):
        if not p.is_file():
            continue
        data = p.read_bytes()
        if p.suffix == ".gz":
            data = gzip.decompress(data)
        for n in needles:
            assert n.lower() not in data.lower(), f"{n!r} found in {p}"
    for n in needles:
        assert n.decode().lower() not in extra_text.lower(), f"{n!r} found in the log"


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory):
    """Four phantom patients in one tree: one series with every slice and phase, one series
    per slice without TriggerTime, enhanced multi-frame (burned-in annotation flagged), one
    series per phase without TriggerTime; each
    with a localiser, a 4-chamber cine, an LGE stack and a T1 map; shuffled, no extensions."""
    root = tmp_path_factory.mktemp("export")
    patients = [
        phantom_patient(3, 1, "NOR", phase_step=3, layout="single_series"),
        phantom_patient(3, 2, "DCM", phase_step=3, layout="per_slice", trigger_time=False),
        phantom_patient(3, 3, "HCM", phase_step=3, layout="enhanced", burned_in=True),
        phantom_patient(3, 4, "RV", phase_step=3, layout="per_phase", trigger_time=False),
    ]
    truth = write_export(root, patients)
    (root / "DICOM" / "README.TXT").write_text("exported by PACS\n")
    return root, truth


@pytest.fixture(scope="module")
def imported(export, tmp_path_factory: pytest.TempPathFactory):
    """The export imported by the command line; (folder, summary, mapping, log text)."""
    import json

    root, truth = export
    out = tmp_path_factory.mktemp("imported")
    mapping = out / "secret" / "mapping.csv"
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logging.getLogger().addHandler(handler)
    old_level = logging.getLogger().level
    logging.getLogger().setLevel(logging.DEBUG)
    try:
        code = main(["import", str(root), "--out", str(out / "data"), "--keep-mapping",
                     str(mapping)])
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(old_level)
    assert code == 0
    summary = json.loads((out / "data" / "import_summary.json").read_text())
    return out, summary, _mapping(mapping), stream.getvalue()


def test_every_layout_gives_the_source_cine_with_its_affine(export, imported) -> None:
    root, truth = export
    out, summary, mapping, _ = imported
    assert summary["patients_imported"] == 4 and summary["patients_skipped"] == 0
    for pid, t in truth.patients.items():
        folder = out / "data" / "training" / mapping[pid]
        img = nib.load(folder / f"{mapping[pid]}_4d.nii.gz")
        np.testing.assert_array_equal(np.asarray(img.dataobj), t.cine_xyzt)
        np.testing.assert_allclose(img.affine, t.affine_ras, atol=1e-3)
        info = _info(folder / "Info.cfg")
        assert int(info["ED"]) - 1 == t.ed_index
        assert abs(int(info["ES"]) - 1 - t.es_index) <= 1
        assert info["EDESProvisional"] == "yes" and info["NbFrame"] == str(t.cine_xyzt.shape[-1])
        es_img = nib.load(folder / f"{mapping[pid]}_frame{int(info['ES']):02d}.nii.gz")
        np.testing.assert_array_equal(np.asarray(es_img.dataobj),
                                      t.cine_xyzt[..., int(info["ES"]) - 1])


def test_other_series_are_recognised_and_reported(export, imported) -> None:
    root, truth = export
    out, _, mapping, _ = imported
    rows = _read_csv(out / "data" / "import_report.csv")
    for pid, t in truth.patients.items():
        mine = [r for r in rows if r["patient"] == mapping[pid]]
        used = [r for r in mine if r["used"] == "yes"]
        assert {r["kind"] for r in used} == {"sax_cine"}
        assert len(used) == len(t.sax_series_uids)
        left_out = {r["kind"] for r in mine if r["used"] == "no"}
        assert left_out == {"localizer", "long_axis", "lge", "map"}
        assert all(r["reason"] for r in mine)
    patients = {r["patient"]: r for r in _read_csv(out / "data" / "import_patients.csv")}
    orders = {p["phase_order"] for p in patients.values()}
    # TriggerTime missing: InstanceNumber (one series per slice), SeriesNumber (per phase)
    assert {"TriggerTime", "InstanceNumber", "SeriesNumber"} <= orders
    burned = [r for r in rows if r["burned_in_annotation"] == "yes"]
    assert burned and all("BurnedInAnnotation" in r["reason"] for r in burned)


def test_no_identifier_in_any_output_or_log(export, imported) -> None:
    _, truth = export
    out, _, _, log_text = imported
    assert "patient00" in log_text  # the log was captured
    _assert_no_phi(out / "data", truth.phi, log_text)


def test_mapping_only_when_asked_private_and_reused(tmp_path: Path) -> None:
    root, _ = _one_patient_export(tmp_path)
    import_dicom(ImportConfig(str(root), str(tmp_path / "plain")))
    assert not [p for p in tmp_path.rglob("*") if "map" in p.name.lower()]
    mapping = tmp_path / "private" / "mapping.csv"
    import_dicom(ImportConfig(str(root), str(tmp_path / "first"), keep_mapping=str(mapping)))
    assert (os.stat(mapping).st_mode & 0o077) == 0
    first = _mapping(mapping)
    import_dicom(ImportConfig(str(root), str(tmp_path / "again"), keep_mapping=str(mapping)))
    assert _mapping(mapping) == first and list(first.values()) == ["patient001"]


def test_imported_dataset_is_read_by_prepare_with_its_cine(export, imported,
                                                           tmp_path: Path) -> None:
    out, _, mapping, _ = imported
    cases, skipped = find_acdc_cases(out / "data", require_label=False)
    assert not skipped and len(cases) == 4 and all(c.cine is not None for c in cases)
    from cardioclr.data.prepare import prepare_case

    row = prepare_case(cases[0], tmp_path, spacing_mm=6.0, size=32)
    assert row["cine_frames"] == nib.load(cases[0].cine).shape[-1]


def test_labels_csv_sets_group_and_overrides_ed_es(tmp_path: Path) -> None:
    root = tmp_path / "export"
    truth = write_export(root, [phantom_patient(5, 1, "NOR", phase_step=4),
                                phantom_patient(5, 2, "DCM", phase_step=4)], extras=False)
    ids = sorted(truth.patients)
    labels = tmp_path / "labels.csv"
    labels.write_text("patient_id;label;ed_frame;es_frame;height_cm\n"
                      f"{ids[0]};NOR;2;4;180\n{ids[1]};DCM;;;\nNOT_IN_EXPORT;HCM;;;\n")
    mapping = tmp_path / "map.csv"
    import_dicom(ImportConfig(str(root), str(tmp_path / "data"), labels=str(labels),
                              keep_mapping=str(mapping)))
    m = _mapping(mapping)
    first = _info(tmp_path / "data" / "training" / m[ids[0]] / "Info.cfg")
    assert (first["ED"], first["ES"], first["Group"], first["Height"]) == ("2", "4", "NOR",
                                                                           "180.0")
    assert first["EDESMethod"] == "labels-csv" and first["EDESProvisional"] == "no"
    second = _info(tmp_path / "data" / "training" / m[ids[1]] / "Info.cfg")
    assert second["Group"] == "DCM" and second["EDESMethod"] == "image-content"
    summary = (tmp_path / "data" / "import_summary.json").read_text()
    assert '"labels_unmatched_rows": [\n    4\n  ]' in summary


def test_refuses_existing_output_and_output_inside_export(export, tmp_path: Path) -> None:
    root, _ = export
    (tmp_path / "data").mkdir()
    with pytest.raises(CardioclrError, match="--overwrite"):
        import_dicom(ImportConfig(str(root), str(tmp_path / "data")))
    with pytest.raises(CardioclrError, match="outside the DICOM export"):
        import_dicom(ImportConfig(str(root), str(root / "out")))
    with pytest.raises(CardioclrError, match="outside the DICOM export"):  # would delete it
        import_dicom(ImportConfig(str(root), str(root.parent), overwrite=True))
    (tmp_path / "data" / "thesis.docx").write_text("not mine to delete")
    with pytest.raises(CardioclrError, match="not a dataset written by cardioclr import"):
        import_dicom(ImportConfig(str(root), str(tmp_path / "data"), overwrite=True))
    assert (tmp_path / "data" / "thesis.docx").is_file()
    with pytest.raises(CardioclrError, match="keep the mapping outside"):
        import_dicom(ImportConfig(str(root), str(tmp_path / "new"),
                                  keep_mapping=str(tmp_path / "new" / "map.csv")))


# ------------------------------------------------------------------------------------------
# Bad input: each patient is skipped with a message naming the series, or the choice explained


def _one_patient_export(tmp_path: Path, **kw: object):
    root = tmp_path / "export"
    truth = write_export(root, [phantom_patient(5, 1, "NOR", phase_step=4, **kw)], extras=False,
                         dicomdir=False, shuffle=False)
    return root, truth


def _files_of(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def _skip_reason(tmp_path: Path, root: Path) -> str:
    summary = import_dicom(ImportConfig(str(root), str(tmp_path / "data")))
    assert summary["patients_skipped"] == 1
    return _read_csv(tmp_path / "data" / "import_patients.csv")[0]["reason"]


def test_missing_slice_is_reported_with_the_series(tmp_path: Path) -> None:
    import pydicom

    root, truth = _one_patient_export(tmp_path, layout="per_slice")
    nz = truth.patients[next(iter(truth.patients))].cine_xyzt.shape[2]
    middle_series = 20 + nz // 2
    for p in _files_of(root):
        if int(pydicom.dcmread(p, stop_before_pixels=True).SeriesNumber) == middle_series:
            p.unlink()
    reason = _skip_reason(tmp_path, root)
    assert "uneven slice spacing" in reason and "missing slice" in reason
    assert reason.startswith("series 20-")


def test_missing_phase_is_reported(tmp_path: Path) -> None:
    root, _ = _one_patient_export(tmp_path)
    _files_of(root)[5].unlink()
    reason = _skip_reason(tmp_path, root)
    assert "missing phases in series 10" in reason and "CardiacNumberOfImages" in reason


def test_corrupt_pixel_data_names_the_series(tmp_path: Path) -> None:
    root, _ = _one_patient_export(tmp_path)
    victim = _files_of(root)[3]
    victim.write_bytes(victim.read_bytes()[:-500])  # truncated during the export
    reason = _skip_reason(tmp_path, root)
    assert "series 10: unreadable pixel data" in reason


def test_corrupt_header_is_listed_and_the_rest_imported(tmp_path: Path) -> None:
    root, _ = _one_patient_export(tmp_path, layout="per_slice")
    (root / "DICOM" / "noise").write_bytes(b"\0" * 128 + b"DICM" + os.urandom(300))
    victim = _files_of(root)[0]
    (root / "DICOM" / "broken").write_bytes(victim.read_bytes()[:300])  # cut in the header
    summary = import_dicom(ImportConfig(str(root), str(tmp_path / "data")))
    assert summary["patients_imported"] == 1 and summary["unreadable_files"] == 2
    rows = _read_csv(tmp_path / "data" / "import_report.csv")
    for name in ("noise", "broken"):
        assert any(r["kind"] == "unreadable" and name in r["reason"] for r in rows)


def test_cine_above_the_memory_limit_is_not_read(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    root, _ = _one_patient_export(tmp_path)
    monkeypatch.setenv("CARDIOCLR_MAX_IMAGE_BYTES", "100000")
    assert "above the limit" in _skip_reason(tmp_path, root)


def test_implausible_pixel_spacing_is_refused(tmp_path: Path) -> None:
    import pydicom

    root, _ = _one_patient_export(tmp_path)
    for p in _files_of(root):
        ds = pydicom.dcmread(p)
        ds.PixelSpacing = ["0.04", "0.04"]  # metres written as mm, scaled by 1/100
        ds.save_as(p)
    assert "implausible voxel size" in _skip_reason(tmp_path, root)


def test_mixed_geometries_name_both_series(tmp_path: Path) -> None:
    import pydicom

    root, _ = _one_patient_export(tmp_path, layout="per_slice")
    for p in _files_of(root):
        ds = pydicom.dcmread(p)
        if int(ds.SeriesNumber) == 22:  # one slice re-acquired at another resolution
            ds.PixelSpacing = [str(float(v) * 1.25) for v in ds.PixelSpacing]
            ds.save_as(p)
    reason = _skip_reason(tmp_path, root)
    assert "mixed geometries" in reason and "series 22" in reason


def test_two_cines_of_one_patient_choice_is_explained(tmp_path: Path) -> None:
    root = tmp_path / "export"
    full = phantom_patient(6, 1, "NOR", phase_step=4)
    partial = replace(full, cine=full.cine[:, :, 1:-1], seed=99)
    write_export(root / "a", [full], extras=False, dicomdir=False)
    write_export(root / "b", [partial], extras=False, dicomdir=False)  # same patient, 2nd study
    summary = import_dicom(ImportConfig(str(root), str(tmp_path / "data")))
    assert summary["patients_found"] == 1 and summary["patients_imported"] == 1
    rows = _read_csv(tmp_path / "data" / "import_report.csv")
    other = [r for r in rows if r["kind"] == "sax_cine" and r["used"] == "no"]
    assert other and "it has more slices" in other[0]["reason"]
    nz = _read_csv(tmp_path / "data" / "import_patients.csv")[0]["slices"]
    assert int(nz) == full.cine.shape[2]


def test_no_short_axis_cine_skips_the_patient_with_the_series_listed(tmp_path: Path) -> None:
    root = tmp_path / "export"
    write_export(root, [phantom_patient(5, 2, "NOR", phase_step=4, layout="per_slice")])
    import pydicom

    for p in _files_of(root / "DICOM"):
        if 20 <= int(pydicom.dcmread(p, stop_before_pixels=True).SeriesNumber) < 40:
            p.unlink()  # drop every short-axis slice series
    reason = _skip_reason(tmp_path, root)
    assert "no short-axis cine" in reason and "long_axis" in reason


# ------------------------------------------------------------------------------------------


def test_basic_profile_deidentifies_and_records_it() -> None:
    import pydicom
    from pydicom.dataset import Dataset

    from cardioclr.io.deid import apply_basic_profile

    ds = Dataset()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "DOE^JANE", "MRN123", "19700101"
    ds.InstitutionName, ds.StudyInstanceUID = "GENERAL HOSPITAL", "1.2.3.4"
    ds.add_new(0x00091001, "LO", "private secret")
    item = Dataset()
    item.ReferringPhysicianName = "DR^WHO"
    ds.ReferencedImageSequence = pydicom.sequence.Sequence([item])
    uid_map: dict[str, str] = {}
    apply_basic_profile(ds, "patient007", uid_map)
    assert ds.PatientName == "patient007" and ds.PatientID == "patient007"
    assert ds.PatientBirthDate == "" and "InstitutionName" not in ds
    assert ds.ReferencedImageSequence[0].ReferringPhysicianName == ""
    assert (0x0009, 0x1001) not in ds
    assert ds.StudyInstanceUID == uid_map["1.2.3.4"] != "1.2.3.4"
    assert ds.PatientIdentityRemoved == "YES"
    assert ds.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    kept = apply_basic_profile(Dataset(), "patient008")
    assert [c.CodeValue for c in kept.DeidentificationMethodCodeSequence] == ["113100", "113110"]


def test_acdc_rewrapped_as_dicom_imports_voxel_exact(acdc_root: Path, tmp_path: Path) -> None:
    """Real images: ACDC ED/ES frames re-wrapped as an enhanced and a per-slice export."""
    patients = [acdc_patient(acdc_root / "training" / "patient001", layout="enhanced"),
                acdc_patient(acdc_root / "training" / "patient042", layout="per_slice")]
    truth = write_export(tmp_path / "export", patients)
    mapping = tmp_path / "map.csv"
    summary = import_dicom(ImportConfig(str(tmp_path / "export"), str(tmp_path / "data"),
                                        keep_mapping=str(mapping)))
    assert summary["patients_imported"] == 2
    m = _mapping(mapping)
    for pid, t in truth.patients.items():
        folder = tmp_path / "data" / "training" / m[pid]
        img = nib.load(folder / f"{m[pid]}_4d.nii.gz")
        np.testing.assert_array_equal(np.asarray(img.dataobj), t.cine_xyzt)
        np.testing.assert_allclose(img.header.get_zooms()[:3],
                                   [float(v) for v in patients[0 if "00001" in pid else 1]
                                    .spacing_xyz], rtol=1e-4)
        info = _info(folder / "Info.cfg")
        assert (info["ED"], info["ES"]) == ("1", "2")
    _assert_no_phi(tmp_path / "data", truth.phi)


def test_segmentation_volumes_decide_ed_and_es(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """With --segmentation: ED = largest, ES = smallest LV volume over the stack, not provisional."""
    import cardioclr.dicomimport.importer as importer

    root, truth = _one_patient_export(tmp_path)
    nt = next(iter(truth.patients.values())).cine_xyzt.shape[-1]
    volumes = np.full(nt, 100.0)
    volumes[2], volumes[5] = 150.0, 40.0
    seen: dict[str, object] = {}

    def fake_curve(cine: np.ndarray, spacing_zyx: tuple, model_path: str, device: str
                   ) -> np.ndarray:
        seen.update(shape=cine.shape, model=model_path)
        return volumes

    monkeypatch.setattr(importer, "lv_volume_curve", fake_curve)
    model = tmp_path / "work" / "segmentation" / "model" / "model.pt"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"weights")
    import_dicom(ImportConfig(str(root), str(tmp_path / "data"),
                              segmentation=str(tmp_path / "work")))
    row = _read_csv(tmp_path / "data" / "import_patients.csv")[0]
    assert (row["ed_frame"], row["es_frame"]) == ("3", "6")
    assert row["ed_es_method"] == "segmentation" and row["ed_es_provisional"] == "no"
    assert seen["model"] == str(model) and seen["shape"][0] == nt  # type: ignore[index]
    with pytest.raises(CardioclrError, match="no trained segmentation model"):
        import_dicom(ImportConfig(str(root), str(tmp_path / "d2"), segmentation=str(tmp_path)))


def _series(description: str, n_pos: int, n_phases: int, image_type: tuple[str, ...] = (),
            trigger: bool = True):
    from cardioclr.dicomimport.scan import Frame, Series

    s = Series("P", "1.2", "1.2.3", 7, description, image_type, "1.2.840.10008.5.1.4.1.1.4",
               "1.9", False, False, n_phases, None, None, "DICOM")
    ori = (0.8, 0.6, 0.0, -0.36, 0.48, 0.8)
    for k in range(n_pos):
        for t in range(n_phases):
            s.frames.append(Frame(Path("f"), None, (0.0, 0.0, 8.0 * k), ori, (1.5, 1.5), 8, 8,
                                  30.0 * t if trigger else None, t + 1, None, "1", "1"))
    return s


@pytest.mark.parametrize(("description", "n_pos", "n_phases", "image_type", "kind"), [
    ("cine de sa", 8, 20, (), None),  # an LGE word in a real cine's name: still a cine
    ("cine_sax_block", 8, 20, (), None),  # 'loc' inside a word is not a localiser
    ("haste_loc", 8, 1, (), "localizer"),
    ("sax_de", 8, 1, (), "lge"),
    ("T1 MOLLI", 3, 8, (), "map"),
    ("anything", 3, 1, ("ORIGINAL", "PRIMARY", "T1 MAP"), "map"),
    ("sax", 8, 1, (), "single_phase"),
])
def test_series_are_recognised_by_images_and_words(description: str, n_pos: int, n_phases: int,
                                                    image_type: tuple[str, ...],
                                                    kind: str | None) -> None:
    from cardioclr.dicomimport.select import recognise

    found = recognise(_series(description, n_pos, n_phases, image_type))
    assert (found[0] if found else None) == kind


def test_lv_volume_curve_runs_a_model_file_on_every_frame(tmp_path: Path) -> None:
    """The model path of ED/ES: a (untrained) model file in the training format, one volume per
    frame, in mL (voxel counts x the model grid's voxel volume)."""
    import torch

    from cardioclr.dicomimport.edes import lv_volume_curve
    from cardioclr.segment.model import NetworkConfig, build_network, network_config_dict
    from cardioclr.segment.train import MODEL_FORMAT

    cfg = NetworkConfig(channels=(4, 8))
    torch.manual_seed(0)
    net = build_network(cfg)
    torch.save({"format": MODEL_FORMAT, "network": network_config_dict(cfg),
                "state_dict": net.state_dict(), "image_size": 32, "spacing_mm": 2.0},
               tmp_path / "model.pt")
    cine = np.random.default_rng(0).normal(100, 20, (4, 3, 40, 36)).astype(np.float32)
    volumes = lv_volume_curve(cine, (8.0, 1.6, 1.6), str(tmp_path / "model.pt"))
    assert volumes.shape == (4,) and (volumes >= 0).all()
    voxel_ml = 8.0 * 2.0 * 2.0 / 1000.0
    np.testing.assert_allclose(volumes / voxel_ml, np.rint(volumes / voxel_ml), atol=1e-6)
