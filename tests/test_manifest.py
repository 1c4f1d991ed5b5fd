"""CSV manifests of institutional data (NIfTI files and DICOM folders) and prepare on them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cardioclr.cli import main
from cardioclr.data.discover import discover_cases
from cardioclr.data.manifest import read_manifest
from cardioclr.data.prepare import PrepareConfig, prepare
from cardioclr.data.store import SliceStore
from cardioclr.errors import DataError
from conftest import synthetic_heart, write_dicom_series, write_nifti

HEADER = "patient_id,label,ed_image,es_image"


def _nifti_patient(root: Path, name: str, group: str = "NOR", seed: int = 0,
                   masks: bool = True) -> dict[str, str]:
    """Write one patient's ED/ES NIfTI (and masks); returns manifest fields (relative paths)."""
    rng = np.random.default_rng(seed)
    fields = {}
    for phase in ("ed", "es"):
        image, labels = synthetic_heart(group, phase, rng)
        write_nifti(root / name / f"{phase}.nii.gz", image)
        fields[f"{phase}_image"] = f"{name}/{phase}.nii.gz"
        if masks:
            write_nifti(root / name / f"{phase}_gt.nii.gz", labels)
            fields[f"{phase}_mask"] = f"{name}/{phase}_gt.nii.gz"
    return fields


def _dicom_patient(root: Path, name: str, group: str = "NOR", seed: int = 0,
                   patient_name: str = "Doe^Jane") -> dict[str, str]:
    rng = np.random.default_rng(seed)
    fields = {}
    for phase in ("ed", "es"):
        image, _ = synthetic_heart(group, phase, rng)
        write_dicom_series(root / name / phase, image, spacing_zyx=(10.0, 3.5, 3.5),
                           patient_name=patient_name, shuffle_seed=seed)
        fields[f"{phase}_image"] = f"{name}/{phase}"
    return fields


def _write_csv(path: Path, rows: list[dict[str, object]]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_minimal_manifest_relative_and_absolute_paths(tmp_path: Path) -> None:
    f = _nifti_patient(tmp_path, "a", masks=False)
    absolute = str((tmp_path / f["es_image"]).resolve())
    csv = tmp_path / "m.csv"
    csv.write_text(f"{HEADER}\nP-01,ICM,{f['ed_image']},{absolute}\n")
    cases, skipped = read_manifest(csv)
    assert skipped == []
    (case,) = cases
    assert case.patient_id == "P-01" and case.label == "ICM"
    assert case.ed_image == tmp_path.resolve() / "a" / "ed.nii.gz"
    assert str(case.es_image) == absolute
    assert case.ed_mask is None and case.height_cm is None and case.subset is None
    assert case.source.endswith("m.csv:row 2")


def test_optional_columns_semicolons_bom_and_case(tmp_path: Path) -> None:
    f = _nifti_patient(tmp_path, "a")
    csv = tmp_path / "m.csv"
    # European Excel: semicolons, decimal comma, byte-order mark, capitalised headers.
    csv.write_text(f"\ufeffPatient_ID;Label;ED_image;ES_image;ed_mask;es_mask;height_cm;weight_kg;"
                   f"subset;comment\n x7 ; amyloid ;{f['ed_image']};{f['es_image']};"
                   f"{f['ed_mask']};{f['es_mask']};172,5;70;test;free text\n\n", encoding="utf-8")
    (case,), skipped = read_manifest(csv)
    assert skipped == []
    assert (case.patient_id, case.label, case.subset) == ("x7", "amyloid", "testing")
    assert case.height_cm == 172.5 and case.weight_kg == 70.0
    assert case.ed_mask is not None and case.ed_mask.name == "ed_gt.nii.gz"


def test_missing_required_column_names_csv_and_column(tmp_path: Path) -> None:
    csv = tmp_path / "bad.csv"
    csv.write_text("patient_id,diagnosis,ed_image,es_image\nP1,ICM,a,b\n")
    with pytest.raises(DataError, match="missing required column.*label") as info:
        read_manifest(csv)
    assert info.value.path == str(csv)


def test_duplicate_patient_ids_are_an_error(tmp_path: Path) -> None:
    f = _nifti_patient(tmp_path, "a", masks=False)
    csv = tmp_path / "m.csv"
    row = f"{f['ed_image']},{f['es_image']}"
    csv.write_text(f"{HEADER}\nP1,ICM,{row}\nP2,NICM,{row}\np1,NICM,{row}\n")
    with pytest.raises(DataError, match=r"duplicate patient_id: 'p1' \(rows 2 and 4\)"):
        read_manifest(csv)


def test_empty_manifest_and_header_only(tmp_path: Path) -> None:
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="manifest is empty"):
        read_manifest(tmp_path / "empty.csv")
    (tmp_path / "header.csv").write_text(HEADER + "\n")
    with pytest.raises(DataError, match="no patient rows"):
        read_manifest(tmp_path / "header.csv")


def test_bad_rows_are_skipped_with_row_and_reason(tmp_path: Path) -> None:
    f = _nifti_patient(tmp_path, "a", masks=False)
    ok = f"{f['ed_image']},{f['es_image']}"
    (tmp_path / "notes.txt").write_text("x")
    csv = tmp_path / "m.csv"
    csv.write_text(
        f"{HEADER},ed_mask,height_cm\n"
        f"good,ICM,{ok},,\n"                           # row 2
        f"nofile,ICM,a/missing.nii.gz,{f['es_image']},,\n"  # row 3
        f"nolabel,,{ok},,\n"                           # row 4
        f"../evil,ICM,{ok},,\n"                        # row 5
        f"a/b,ICM,{ok},,\n"                            # row 6
        f"nomask,ICM,{ok},a/gone_gt.nii.gz,\n"         # row 7
        f"txt,ICM,notes.txt,{f['es_image']},,\n"       # row 8
        f"tall,ICM,{ok},,huge\n"                       # row 9
        f"same,ICM,{f['ed_image']},{f['ed_image']},,\n"  # row 10: ES = ED by mistake
    )
    cases, skipped = read_manifest(csv)
    assert [c.patient_id for c in cases] == ["good"]
    reasons = {s.patient_id: s for s in skipped}
    assert set(reasons) == {"nofile", "nolabel", "../evil", "a/b", "nomask", "txt", "tall", "same"}
    assert "row 10" in reasons["same"].reason
    assert "ed_image and es_image name the same file" in reasons["same"].reason
    assert reasons["nofile"].reason.startswith("row 3 of m.csv: ed_image")
    assert "does not exist" in reasons["nofile"].reason
    assert reasons["nofile"].path == str(tmp_path.resolve() / "a" / "missing.nii.gz")
    assert "row 4" in reasons["nolabel"].reason and "empty label" in reasons["nolabel"].reason
    assert reasons["nolabel"].path == str(csv)
    assert "not safe as a file name" in reasons["../evil"].reason
    assert "not safe as a file name" in reasons["a/b"].reason
    assert "row 7" in reasons["nomask"].reason and reasons["nomask"].path.endswith("gone_gt.nii.gz")
    assert "NIfTI file (.nii/.nii.gz) or a DICOM series folder" in reasons["txt"].reason
    assert "height_cm 'huge' is not a number" in reasons["tall"].reason
    # Unlabelled use: the empty label is fine, the rest still skipped.
    cases, _ = read_manifest(csv, require_label=False)
    assert sorted(c.patient_id for c in cases) == ["good", "nolabel"]
    assert next(c for c in cases if c.patient_id == "nolabel").label is None


def test_discover_dispatches_csv(tmp_path: Path) -> None:
    f = _nifti_patient(tmp_path, "a", masks=False)
    csv = tmp_path / "m.csv"
    csv.write_text(f"{HEADER}\nP1,ICM,{f['ed_image']},{f['es_image']}\n")
    cases, _ = discover_cases(csv)
    assert [c.patient_id for c in cases] == ["P1"]


def _binary_cohort(root: Path, n_per_class: int = 5, n_dicom: int = 3) -> Path:
    """ICM/NICM manifest; the first ``n_dicom`` patients as DICOM folders, the rest NIfTI."""
    rows = []
    for i in range(2 * n_per_class):
        label, group = ("ICM", "MINF") if i % 2 == 0 else ("NICM", "DCM")
        name = f"pt{i:02d}"
        fields = (_dicom_patient(root, name, group, seed=i, patient_name="Roe^Rita")
                  if i < n_dicom else _nifti_patient(root, name, group, seed=i))
        rows.append({"patient_id": f"H{i:03d}", "label": label, "height_cm": 170 + i,
                     "weight_kg": 70, **fields})
    return _write_csv(root / "cohort.csv", rows)


def test_prepare_binary_manifest_nifti_and_dicom(tmp_path: Path) -> None:
    csv = _binary_cohort(tmp_path / "data")
    work = tmp_path / "work"
    summary = prepare(PrepareConfig(data=str(csv), out=str(work), spacing_mm=3.0, image_size=64,
                                    workers=1, seed=1))
    assert summary["classes"] == ["ICM", "NICM"]
    assert summary["patients"] == 10 and summary["skipped"] == 0
    store = SliceStore(work)
    assert store.classes == ["ICM", "NICM"]
    splits = json.loads((work / "splits.json").read_text())
    assert len(splits["test"]) == 3 and len(splits["train"]) == 7
    labels = dict(zip(store.manifest["patient_id"], store.manifest["label"], strict=True))
    test_labels = sorted(labels[p] for p in splits["test"])
    assert test_labels in (["ICM", "ICM", "NICM"], ["ICM", "NICM", "NICM"])  # stratified
    dicom = store.load("H000")
    assert dicom.ed_image.shape == (6, 64, 64) and dicom.ed_mask is None
    assert dicom.spacing_zyx == pytest.approx((10.0, 3.0, 3.0))
    assert store.load("H005").ed_mask is not None
    # The DICOM patient name never leaks into anything prepare wrote.
    for p in work.rglob("*"):
        if p.is_file() and p.suffix in (".csv", ".json", ".yaml", ".txt"):
            assert "Roe" not in p.read_text(errors="replace") and "Rita" not in p.read_text()


def test_prepare_unreadable_dicom_skipped_or_strict_fails(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    csv = _binary_cohort(tmp_path / "data", n_per_class=3, n_dicom=1)
    # Patient H001 had NIfTI files; make its ED a DICOM folder with a corrupt slice instead.
    paths = write_dicom_series(tmp_path / "data" / "bad_ed", np.ones((3, 48, 48)),
                               patient_name="Secret^Sam", patient_id="ID-998877")
    paths[1].write_bytes(paths[1].read_bytes()[:-500])
    df = pd.read_csv(csv)
    df.loc[df["patient_id"] == "H001", "ed_image"] = "bad_ed"
    # Add a patient so NICM keeps 2 patients once H001 is skipped (splits need 2 per class).
    df = pd.concat([df, df[df["patient_id"] == "H003"].assign(patient_id="H099")])
    df.to_csv(csv, index=False)
    work = tmp_path / "work"
    prepare(PrepareConfig(data=str(csv), out=str(work), spacing_mm=3.0, image_size=64, workers=1))
    skipped = pd.read_csv(work / "skipped.csv")
    assert list(skipped["patient_id"]) == ["H001"]
    assert skipped.loc[0, "path"] == str(paths[1])
    assert "corrupt or" in skipped.loc[0, "reason"]
    rc = main(["prepare", str(csv), "--out", str(tmp_path / "strict"), "--strict", "--size", "64",
               "--spacing", "3", "--workers", "1"])
    err = capsys.readouterr().err
    assert rc == 1
    assert str(paths[1]) in err and "corrupt or" in err
    assert "Secret" not in err and "ID-998877" not in err
    assert not (tmp_path / "strict" / "dataset.json").exists()


def test_dicom_image_with_nifti_mask_must_share_its_grid(tmp_path: Path) -> None:
    import nibabel as nib

    from cardioclr.data.prepare import prepare_case
    from cardioclr.io.dicom import read_dicom_series

    rng = np.random.default_rng(3)
    fields: dict[str, str] = {}
    for phase in ("ed", "es"):
        image, labels = synthetic_heart("NOR", phase, rng)
        write_dicom_series(tmp_path / phase, image, spacing_zyx=(10.0, 3.5, 3.5))
        affine = read_dicom_series(tmp_path / phase).affine
        # Written as the reader's docstring says: array (x, y, z) with the series' RAS affine.
        nib.save(nib.Nifti1Image(labels.transpose(2, 1, 0).astype(np.uint8), affine),
                 str(tmp_path / f"{phase}_gt.nii.gz"))
        fields |= {f"{phase}_image": phase, f"{phase}_mask": f"{phase}_gt.nii.gz"}
    csv = _write_csv(tmp_path / "m.csv", [{"patient_id": "D1", "label": "ICM", **fields}])
    (case,) = read_manifest(csv)[0]
    row = prepare_case(case, tmp_path / "store", 3.0, 64)
    assert row["has_expert_mask"]
    # The same labels stored with rows reversed (as converters that flip y write them) and an
    # affine saying so: the same shape, so only the geometry check can catch it.
    gt = tmp_path / "es_gt.nii.gz"
    img = nib.load(gt)
    flip = np.diag([1.0, -1.0, 1.0, 1.0])
    flip[1, 3] = img.shape[1] - 1
    nib.save(nib.Nifti1Image(np.ascontiguousarray(np.asarray(img.dataobj)[:, ::-1]),
                             img.affine @ flip), str(gt))
    with pytest.raises(DataError, match="mask is flipped along y") as info:
        prepare_case(case, tmp_path / "store", 3.0, 64)
    assert info.value.path == str(gt) and str(tmp_path / "es") in str(info.value)
