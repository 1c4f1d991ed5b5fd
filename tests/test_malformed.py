"""The malformed-input suite: every class of bad input, generated here (no committed data).

Each case damages one patient (patient001) of a tiny six-patient ACDC-layout cohort (or of a
CSV manifest over the same files) and checks, through the command line:

* ``prepare``: exit code 0, the bad patient listed in ``skipped.csv`` with the offending file
  and a reason naming the problem, the five good patients in the store, no temporary file or
  folder left behind;
* ``prepare --strict``: exit code 1, one message naming the file and the problem, no store;
* ``verify``: exit code 1 and a line naming the patient, file and problem (0 when clean).

Cases whose input is unusual but valid (units in metres, a UTF-16 Info.cfg, Arabic-Indic
digits) must prepare every patient. The size-guard cases run in a subprocess under an address
space limit (``RLIMIT_AS``), so an allocation the guard failed to stop fails the test.
Unexpected exceptions propagate in tests (``CARDIOCLR_RAISE_UNEXPECTED``, conftest.py): a
case passes only when its problem is handled at the root, by a check that names it.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from cardioclr.cli import main
from conftest import REPO, write_dicom_series, write_nifti, write_tiny_acdc

pytestmark = [pytest.mark.filterwarnings("ignore:The least populated class:UserWarning"),
              # the DICOM orientation case writes an invalid DS value on purpose
              pytest.mark.filterwarnings("ignore:Invalid value for VR DS:UserWarning")]

SHAPE_ZYX = (4, 32, 32)
SPACING_ZYX = (10.0, 3.5, 3.5)
GROUPS = ("DCM", "NOR")
PATIENTS = [f"patient{i:03d}" for i in range(1, 7)]
PREPARE_ARGS = ["--size", "32", "--spacing", "3.5", "--workers", "1"]


@dataclass
class Expect:
    """What a case expects: ``bad`` (offending path) and ``phrase`` for a skipped patient001,
    or ``bad=None`` when every patient must be prepared. ``data`` overrides the dataset path
    (a manifest); ``args`` are extra prepare/verify options; ``check`` inspects the work dir."""

    bad: Path | None
    phrase: str = ""
    data: Path | None = None
    args: list[str] = field(default_factory=list)
    check: Callable[[Path], None] | None = None
    patient: str = "patient001"


@pytest.fixture(scope="module")
def base_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("malformed") / "cohort"
    write_tiny_acdc(root, n_per_class=3, seed=3, groups=GROUPS, shape_zyx=SHAPE_ZYX,
                    spacing_zyx=SPACING_ZYX)
    return root


# ----------------------------------------------------------------------------- helpers


def _p1(data: Path) -> Path:
    return data / "training" / "patient001"


def _frames(d: Path) -> tuple[Path, Path]:
    info = dict(line.split(": ") for line in (d / "Info.cfg").read_text().splitlines())
    return tuple(d / f"{d.name}_frame{int(info[k]):02d}.nii.gz" for k in ("ED", "ES"))  # type: ignore


def _gt(image: Path) -> Path:
    return image.with_name(image.name.replace(".nii.gz", "_gt.nii.gz"))


def _set_info(d: Path, key: str, value: str | None) -> Path:
    """Set (or with None remove) one Info.cfg field; returns the Info.cfg path."""
    cfg = d / "Info.cfg"
    lines = [x for x in cfg.read_text().splitlines() if not x.startswith(f"{key}:")]
    if value is not None:
        lines.append(f"{key}: {value}")
    cfg.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return cfg


def _patch_header(path: Path, edit: Callable[[nib.Nifti1Header], None],
                  data: bytes | None = None) -> Path:
    """Rewrite a NIfTI file's raw 348-byte header (nibabel's writer would re-derive pixdim and
    dims from the affine and the array); ``data`` replaces the voxel bytes."""
    raw = path.read_bytes()
    gz = raw[:2] == b"\x1f\x8b"
    if gz:
        raw = gzip.decompress(raw)
    header = nib.Nifti1Header.from_fileobj(io.BytesIO(raw[:348]), check=False)
    edit(header)
    offset = int(header["vox_offset"])
    body = raw[348:offset] + (raw[offset:] if data is None else data)
    out = header.binaryblock + body
    path.write_bytes(gzip.compress(out) if gz else out)
    return path


def _set_pixdim(index: int, value: float) -> Callable[[nib.Nifti1Header], None]:
    def edit(h: nib.Nifti1Header) -> None:
        h["pixdim"][index] = value
    return edit


def _scale_pixdim_units(unit: str, factor: float) -> Callable[[nib.Nifti1Header], None]:
    def edit(h: nib.Nifti1Header) -> None:
        h["pixdim"][1:4] = h["pixdim"][1:4] * factor
        h.set_xyzt_units(xyz=unit)
    return edit


def _both_frames(d: Path, edit: Callable[[nib.Nifti1Header], None], masks: bool = True) -> Path:
    ed, es = _frames(d)
    for p in (ed, es, *((_gt(ed), _gt(es)) if masks else ())):
        _patch_header(p, edit)
    return ed


def _manifest(data: Path) -> Path:
    """A CSV manifest over the cohort's files (absolute paths)."""
    rows = []
    for pid in PATIENTS:
        d = data / "training" / pid
        ed, es = _frames(d)
        info = dict(line.split(": ") for line in (d / "Info.cfg").read_text().splitlines())
        rows.append({"patient_id": pid, "label": info["Group"], "ed_image": str(ed),
                     "es_image": str(es), "ed_mask": str(_gt(ed)), "es_mask": str(_gt(es)),
                     "height_cm": info["Height"], "weight_kg": info["Weight"]})
    csv = data / "manifest.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    return csv


def _manifest_with(data: Path, column: str, value: str) -> Path:
    csv = _manifest(data)
    df = pd.read_csv(csv, dtype=str)
    df.loc[df["patient_id"] == "patient001", column] = value
    df.to_csv(csv, index=False)
    return csv


def _dicom_ed(data: Path, **kw: object) -> Path:
    """patient001's ED frame as a DICOM series folder (``kw``: write_dicom_series options)."""
    ed, _ = _frames(_p1(data))
    array = np.asarray(nib.load(ed).dataobj).transpose(2, 1, 0)
    folder = data / "dicom_ed"
    write_dicom_series(folder, array, spacing_zyx=SPACING_ZYX, **kw)  # type: ignore[arg-type]
    return folder


def _edit_dicom(folder: Path, edit: Callable[[object], None], which: int | None = None) -> Path:
    import pydicom

    files = sorted(folder.glob("*.dcm"))
    for p in files if which is None else [files[which]]:
        ds = pydicom.dcmread(p)
        edit(ds)
        ds.save_as(p)
    return files[0] if which is None else files[which]


# ----------------------------------------------------------------------------- the cases
# Each takes the copied dataset root and returns an Expect. Grouped by the class of failure
# of issue 12 (the comment above each group).

CASES: dict[str, Callable[[Path], Expect]] = {}


def case(name: str) -> Callable[[Callable[[Path], Expect]], Callable[[Path], Expect]]:
    def register(fn: Callable[[Path], Expect]) -> Callable[[Path], Expect]:
        assert name not in CASES, name
        CASES[name] = fn
        return fn
    return register


# --- 1. anything inside one patient's read becomes a skipped patient naming the file
@case("zero_slice_nifti")
def _(data: Path) -> Expect:
    ed, _ = _frames(_p1(data))
    write_nifti(ed, np.zeros((0, 32, 32), np.int16))
    return Expect(ed, "axis of size 0")


@case("not_a_nifti_at_all")
def _(data: Path) -> Expect:
    ed, _ = _frames(_p1(data))
    ed.write_bytes(b"this is a text file, not an image\n" * 20)
    return Expect(ed, "not a readable NIfTI file")


@case("gzip_data_corrupted_inside")
def _(data: Path) -> Expect:
    _, es = _frames(_p1(data))
    raw = bytearray(es.read_bytes())
    raw[len(raw) // 2: len(raw) // 2 + 64] = b"\x00" * 64
    es.write_bytes(bytes(raw))
    return Expect(es, "corrupt or truncated")


@case("truncated_gzip")
def _(data: Path) -> Expect:
    ed, _ = _frames(_p1(data))
    ed.write_bytes(ed.read_bytes()[: ed.stat().st_size // 2])
    return Expect(ed, "corrupt or truncated")


@case("empty_file")
def _(data: Path) -> Expect:
    ed, _ = _frames(_p1(data))
    ed.write_bytes(b"")
    return Expect(ed, "file is empty")


@case("image_is_an_empty_folder")
def _(data: Path) -> Expect:
    ed, _ = _frames(_p1(data))
    ed.unlink()
    ed.mkdir()  # a folder named like the frame file is not the frame file
    return Expect(ed, "ED frame 1 named in Info.cfg does not exist")


@case("four_d_frame")
def _(data: Path) -> Expect:
    ed, _ = _frames(_p1(data))
    write_nifti(ed, np.ones((32, 32, 4, 2), np.int16))
    return Expect(ed, "expected a 3D stack")


@case("rgb_nifti")
def _(data: Path) -> Expect:
    ed, _ = _frames(_p1(data))
    rgb = np.zeros((32, 32, 4), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), str(ed))
    return Expect(ed, "unsupported NIfTI data type")


@case("nan_intensity")
def _(data: Path) -> Expect:
    ed, _ = _frames(_p1(data))
    arr = np.asarray(nib.load(ed).dataobj, np.float32).transpose(2, 1, 0)
    arr[1, 3, 3] = np.nan
    write_nifti(ed, arr, SPACING_ZYX)
    return Expect(ed, "NaN or infinite")


@case("mask_label_7")
def _(data: Path) -> Expect:
    ed, _ = _frames(_p1(data))
    arr = np.asarray(nib.load(_gt(ed)).dataobj).transpose(2, 1, 0).copy()
    arr[0, 0, 0] = 7
    write_nifti(_gt(ed), arr.astype(np.uint8), SPACING_ZYX)
    return Expect(_gt(ed), "label values [7] outside 0-3")


@case("mask_fractional_values")
def _(data: Path) -> Expect:
    _, es = _frames(_p1(data))
    arr = np.asarray(nib.load(_gt(es)).dataobj, np.float32).transpose(2, 1, 0) * 0.5
    write_nifti(_gt(es), arr, SPACING_ZYX)
    return Expect(_gt(es), "non-integer values")


@case("info_cfg_is_a_folder")
def _(data: Path) -> Expect:
    cfg = _p1(data) / "Info.cfg"
    cfg.unlink()
    cfg.mkdir()
    return Expect(cfg, "Info.cfg is missing")


@case("info_cfg_binary_garbage")
def _(data: Path) -> Expect:
    cfg = _p1(data) / "Info.cfg"
    cfg.write_bytes(bytes(range(256)) * 4)
    return Expect(cfg, "missing field(s) ED, ES, Group")


# --- 2a. geometry and physical units (NIfTI pixdim / xyzt_units, DICOM PixelSpacing)
@case("pixdim_x_zero")
def _(data: Path) -> Expect:
    ed, _ = _frames(_p1(data))
    _patch_header(ed, _set_pixdim(1, 0.0))
    return Expect(ed, "pixel width is 0 mm")


@case("pixdim_z_zero")
def _(data: Path) -> Expect:
    _, es = _frames(_p1(data))
    _patch_header(es, _set_pixdim(3, 0.0))
    return Expect(es, "slice spacing is 0 mm")


@case("pixdim_nan")
def _(data: Path) -> Expect:
    ed, _ = _frames(_p1(data))
    _patch_header(ed, _set_pixdim(2, float("nan")))
    return Expect(ed, "pixel height is nan mm")


@case("pixdim_inf")
def _(data: Path) -> Expect:
    ed, _ = _frames(_p1(data))
    _patch_header(ed, _set_pixdim(3, float("inf")))
    return Expect(ed, "slice spacing is inf mm")


@case("micrometre_values_labelled_mm")
def _(data: Path) -> Expect:
    ed = _both_frames(_p1(data), _scale_pixdim_units("mm", 1000.0))
    return Expect(ed, "implausible voxel size")


@case("millimetre_values_labelled_metre")
def _(data: Path) -> Expect:
    ed = _both_frames(_p1(data), _scale_pixdim_units("meter", 1.0))
    return Expect(ed, "converted from meter")


@case("millimetre_values_labelled_micron")
def _(data: Path) -> Expect:
    ed = _both_frames(_p1(data), _scale_pixdim_units("micron", 1.0))
    return Expect(ed, "converted from micron")


@case("pixdim_too_small_unknown_unit")
def _(data: Path) -> Expect:
    ed = _both_frames(_p1(data), _scale_pixdim_units("unknown", 0.001))
    return Expect(ed, "implausible voxel size")


def _spacing_is(expected_zyx: tuple[float, float, float]) -> Callable[[Path], None]:
    def check(work: Path) -> None:
        row = pd.read_csv(work / "manifest.csv").set_index("patient_id").loc["patient001"]
        assert row["slice_spacing_mm"] == pytest.approx(expected_zyx[0], rel=1e-5)
        assert row["source_pixel_mm"] == pytest.approx(expected_zyx[1], rel=1e-5)
    return check


@case("valid_units_metre_converted")
def _(data: Path) -> Expect:
    _both_frames(_p1(data), _scale_pixdim_units("meter", 0.001))
    return Expect(None, check=_spacing_is(SPACING_ZYX))


@case("valid_units_micron_converted")
def _(data: Path) -> Expect:
    _both_frames(_p1(data), _scale_pixdim_units("micron", 1000.0))
    return Expect(None, check=_spacing_is(SPACING_ZYX))


@case("sform_nan")
def _(data: Path) -> Expect:
    ed, _ = _frames(_p1(data))

    def edit(h: nib.Nifti1Header) -> None:
        h["srow_x"][0] = np.nan
        h["qform_code"] = 0
    _patch_header(ed, edit)
    return Expect(ed, "NaN or infinite entries")


@case("sform_degenerate")
def _(data: Path) -> Expect:
    ed, _ = _frames(_p1(data))

    def edit(h: nib.Nifti1Header) -> None:
        h["srow_x"][:3] = 0.0
        h["qform_code"] = 0
    _patch_header(ed, edit)
    return Expect(ed, "degenerate")


@case("es_spacing_differs")
def _(data: Path) -> Expect:
    _, es = _frames(_p1(data))
    _patch_header(es, _set_pixdim(3, 8.0))
    return Expect(es, "differs from the ED frame's")


@case("dicom_pixel_spacing_zero")
def _(data: Path) -> Expect:
    folder = _dicom_ed(data)
    bad = _edit_dicom(folder, lambda ds: setattr(ds, "PixelSpacing", [0.0, 0.0]), which=1)
    return Expect(bad, "pixel height is 0 mm",
                  data=_manifest_with(data, "ed_image", str(folder)))


@case("dicom_pixel_spacing_one_value")
def _(data: Path) -> Expect:
    folder = _dicom_ed(data)
    bad = _edit_dicom(folder, lambda ds: setattr(ds, "PixelSpacing", [3.5]), which=0)
    return Expect(bad, "PixelSpacing needs 2 values",
                  data=_manifest_with(data, "ed_image", str(folder)))


@case("dicom_pixel_spacing_metres")
def _(data: Path) -> Expect:
    folder = _dicom_ed(data)
    bad = _edit_dicom(folder, lambda ds: setattr(ds, "PixelSpacing", [0.0035, 0.0035]), which=2)
    return Expect(bad, "implausible voxel size",
                  data=_manifest_with(data, "ed_image", str(folder)))


@case("dicom_orientation_nan")
def _(data: Path) -> Expect:
    folder = _dicom_ed(data)
    bad = _edit_dicom(folder, lambda ds: setattr(ds, "ImageOrientationPatient",
                                                 [1, 0, 0, 0, "NaN", 0]), which=0)
    return Expect(bad, "NaN or infinite values",
                  data=_manifest_with(data, "ed_image", str(folder)))


@case("valid_dicom_frames")
def _(data: Path) -> Expect:
    _, es = _frames(_p1(data))
    es_array = np.asarray(nib.load(es).dataobj).transpose(2, 1, 0)
    es_folder = data / "dicom_es"
    write_dicom_series(es_folder, es_array, spacing_zyx=SPACING_ZYX)
    csv = _manifest_with(data, "ed_image", str(_dicom_ed(data)))
    df = pd.read_csv(csv, dtype=str)
    df.loc[df["patient_id"] == "patient001", "es_image"] = str(es_folder)
    df.loc[df["patient_id"] == "patient001", ["ed_mask", "es_mask"]] = ""
    df.to_csv(csv, index=False)
    return Expect(None, data=csv)


# --- 2b. values of Info.cfg and manifest fields
@case("unknown_group")
def _(data: Path) -> Expect:
    return Expect(_set_info(_p1(data), "Group", "XYZ"), "Group 'XYZ' is not a known class")


@case("lowercase_group")
def _(data: Path) -> Expect:
    return Expect(_set_info(_p1(data), "Group", "dcm"), "Group 'dcm' is not a known class")


@case("group_outside_explicit_classes")
def _(data: Path) -> Expect:
    return Expect(_set_info(_p1(data), "Group", "HCM"), "Group 'HCM' is not a known class",
                  args=["--classes", "DCM", "NOR"])


@case("valid_custom_group_with_classes")
def _(data: Path) -> Expect:
    for pid in ("patient001", "patient003", "patient005"):
        _set_info(data / "training" / pid, "Group", "AMY")
    return Expect(None, args=["--classes", "AMY", "NOR"])


@case("height_zero")
def _(data: Path) -> Expect:
    return Expect(_set_info(_p1(data), "Height", "0"), "field Height is 0 cm")


@case("height_negative")
def _(data: Path) -> Expect:
    return Expect(_set_info(_p1(data), "Height", "-170"), "field Height is -170 cm")


@case("height_in_metres")
def _(data: Path) -> Expect:
    return Expect(_set_info(_p1(data), "Height", "1.72"), "outside the plausible")


@case("height_not_a_number")
def _(data: Path) -> Expect:
    return Expect(_set_info(_p1(data), "Height", "tall"), "field Height 'tall' is not a number")


@case("weight_zero")
def _(data: Path) -> Expect:
    return Expect(_set_info(_p1(data), "Weight", "0"), "field Weight is 0 kg")


@case("weight_in_grams")
def _(data: Path) -> Expect:
    return Expect(_set_info(_p1(data), "Weight", "72000"), "field Weight is 72000 kg")


@case("weight_nan")
def _(data: Path) -> Expect:
    return Expect(_set_info(_p1(data), "Weight", "nan"), "not a finite number")


@case("es_beyond_nbframe")
def _(data: Path) -> Expect:
    return Expect(_set_info(_p1(data), "NbFrame", "5"), "but NbFrame is 5")


@case("ed_frame_zero")
def _(data: Path) -> Expect:
    return Expect(_set_info(_p1(data), "ED", "0"), "frames are numbered from 1")


@case("ed_frame_decimal")
def _(data: Path) -> Expect:
    return Expect(_set_info(_p1(data), "ED", "1.5"), "field ED must be a frame number")


@case("ed_frame_mixed_script_junk")
def _(data: Path) -> Expect:
    return Expect(_set_info(_p1(data), "ED", "\u0661x"), "field ED must be a frame number")


@case("nbframe_not_a_number")
def _(data: Path) -> Expect:
    return Expect(_set_info(_p1(data), "NbFrame", "thirty"), "field NbFrame must be a frame number")


@case("missing_group")
def _(data: Path) -> Expect:
    return Expect(_set_info(_p1(data), "Group", None), "missing field(s) Group")


@case("ed_equals_es")
def _(data: Path) -> Expect:
    return Expect(_set_info(_p1(data), "ES", "1"), "ED and ES name the same frame (1)")


@case("valid_info_utf8_bom")
def _(data: Path) -> Expect:
    cfg = _p1(data) / "Info.cfg"
    cfg.write_bytes(b"\xef\xbb\xbf" + cfg.read_bytes())
    return Expect(None)


@case("valid_info_utf16")
def _(data: Path) -> Expect:
    cfg = _p1(data) / "Info.cfg"
    cfg.write_text(cfg.read_text(), encoding="utf-16")
    return Expect(None)


@case("valid_info_utf16_crlf")
def _(data: Path) -> Expect:
    cfg = _p1(data) / "Info.cfg"
    cfg.write_bytes(cfg.read_text().replace("\n", "\r\n").encode("utf-16"))
    return Expect(None)


@case("valid_info_arabic_indic_digits")
def _(data: Path) -> Expect:
    _set_info(_p1(data), "ED", "\u0661")  # Arabic-Indic 1
    return Expect(None, check=lambda w: _frame_is(w, "ed_frame", 1))


@case("valid_info_fullwidth_digits")
def _(data: Path) -> Expect:
    d = _p1(data)
    _, es = _frames(d)
    number = int(es.name.split("frame")[1][:2])
    full = "".join(chr(0xFF10 + int(c)) for c in str(number))
    _set_info(d, "ES", full)
    return Expect(None, check=lambda w: _frame_is(w, "es_frame", number))


def _frame_is(work: Path, column: str, value: int) -> None:
    row = pd.read_csv(work / "manifest.csv").set_index("patient_id").loc["patient001"]
    assert int(row[column]) == value


@case("ed_frame_all_zero")
def _(data: Path) -> Expect:
    ed, _ = _frames(_p1(data))
    write_nifti(ed, np.zeros(SHAPE_ZYX, np.int16), SPACING_ZYX)
    return Expect(ed, "ED frame has constant intensity")


@case("es_frame_all_zero")
def _(data: Path) -> Expect:
    _, es = _frames(_p1(data))
    write_nifti(es, np.zeros(SHAPE_ZYX, np.int16), SPACING_ZYX)
    return Expect(es, "ES frame has constant intensity")


@case("manifest_height_zero")
def _(data: Path) -> Expect:
    csv = _manifest_with(data, "height_cm", "0")
    return Expect(csv, "field height_cm is 0 cm", data=csv)


@case("manifest_weight_negative")
def _(data: Path) -> Expect:
    csv = _manifest_with(data, "weight_kg", "-60")
    return Expect(csv, "field weight_kg is -60 kg", data=csv)


@case("manifest_label_not_in_classes")
def _(data: Path) -> Expect:
    csv = _manifest_with(data, "label", "HCM")
    return Expect(csv, "label 'HCM' is not a known class", data=csv,
                  args=["--classes", "DCM", "NOR"])


@case("valid_manifest_utf16")
def _(data: Path) -> Expect:
    csv = _manifest(data)
    csv.write_text(csv.read_text(), encoding="utf-16")
    return Expect(None, data=csv)


# --- 3. size guard (in-process: the claimed size is refused before any allocation)
def _claim_shape(shape_xyz: tuple[int, ...]) -> Callable[[nib.Nifti1Header], None]:
    def edit(h: nib.Nifti1Header) -> None:
        h["dim"][0] = len(shape_xyz)
        h["dim"][1: 1 + len(shape_xyz)] = shape_xyz
    return edit


@case("claims_more_slices_than_stored")
def _(data: Path) -> Expect:
    ed, _ = _frames(_p1(data))
    _patch_header(ed, _claim_shape((32, 32, 40)))
    return Expect(ed, "but the file holds only")


@case("real_size_above_ceiling")
def _(data: Path) -> Expect:
    # patient001 at twice the matrix (64 KiB as float32) under a 40 KiB ceiling; others 16 KiB.
    ed, es = _frames(_p1(data))
    for p in (ed, es, _gt(ed), _gt(es)):
        arr = np.asarray(nib.load(p).dataobj).transpose(2, 1, 0)
        write_nifti(p, arr.repeat(2, axis=1).repeat(2, axis=2),
                    (SPACING_ZYX[0], SPACING_ZYX[1] / 2, SPACING_ZYX[2] / 2))
    os.environ["CARDIOCLR_MAX_IMAGE_BYTES"] = str(40 * 1024)  # restored by the runner
    return Expect(ed, "above the limit of 40.0 KiB")


# --- 4. every input file or folder used or reported
@case("unmatched_folder_notes")
def _(data: Path) -> Expect:
    (data / "training" / "notes").mkdir()
    return Expect(data / "training" / "notes", "does not match patientNNN", patient="notes")


@case("unmatched_folder_capitalised")
def _(data: Path) -> Expect:
    d = data / "training" / "Patient007"
    shutil.copytree(_p1(data), d)
    return Expect(d, "does not match patientNNN", patient="Patient007")


@case("unmatched_folder_underscore")
def _(data: Path) -> Expect:
    d = data / "training" / "patient_008"
    d.mkdir()
    return Expect(d, "does not match patientNNN", patient="patient_008")


def _masks_are(ed: bool, es: bool) -> Callable[[Path], None]:
    def check(work: Path) -> None:
        row = pd.read_csv(work / "manifest.csv").set_index("patient_id").loc["patient001"]
        assert bool(row["has_ed_mask"]) is ed and bool(row["has_es_mask"]) is es
        assert not bool(row["has_expert_mask"])
        with np.load(work / "store" / "patient001.npz") as z:
            assert bool(z["has_ed_mask"]) is ed and bool(z["has_es_mask"]) is es
            kept = z["ed_mask"] if ed else z["es_mask"]
            assert kept.any()  # the mask present is kept, not dropped
    return check


@case("only_es_mask_missing")
def _(data: Path) -> Expect:
    _, es = _frames(_p1(data))
    _gt(es).unlink()
    return Expect(None, check=_masks_are(True, False))


@case("only_ed_mask_missing")
def _(data: Path) -> Expect:
    ed, _ = _frames(_p1(data))
    _gt(ed).unlink()
    return Expect(None, check=_masks_are(False, True))


@case("single_phase_mask_still_checked")
def _(data: Path) -> Expect:
    ed, es = _frames(_p1(data))
    _gt(es).unlink()
    write_nifti(_gt(ed), np.ones((4, 30, 32), np.uint8), SPACING_ZYX)
    return Expect(_gt(ed), "mask shape (4, 30, 32) differs")


# ----------------------------------------------------------------------------- the runner


def _leftovers(work: Path) -> list[str]:
    """Temporary files or folders (atomic writes, store builds) left in a work dir."""
    return sorted(str(p.relative_to(work)) for p in work.rglob(".*")
                  if p.name != ".gitignore")


@pytest.mark.parametrize("name", list(CASES))
def test_malformed_case(name: str, base_cohort: Path, tmp_path: Path,
                        capsys: pytest.CaptureFixture[str],
                        monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    shutil.copytree(base_cohort, data)
    monkeypatch.setenv("CARDIOCLR_MAX_IMAGE_BYTES", str(4 * 1024**3))
    expect = CASES[name](data)
    if "CARDIOCLR_MAX_IMAGE_BYTES" in os.environ:  # a case may lower the ceiling
        monkeypatch.setenv("CARDIOCLR_MAX_IMAGE_BYTES", os.environ["CARDIOCLR_MAX_IMAGE_BYTES"])
    source = str(expect.data or data)
    work = tmp_path / "work"
    capsys.readouterr()
    assert main(["prepare", source, "--out", str(work), *PREPARE_ARGS, *expect.args]) == 0
    out = capsys.readouterr()
    skipped = pd.read_csv(work / "skipped.csv", dtype=str).fillna("")
    stored = sorted(p.stem for p in (work / "store").glob("*.npz"))
    manifest = pd.read_csv(work / "manifest.csv", dtype={"patient_id": str})
    assert sorted(manifest["patient_id"]) == stored
    assert _leftovers(work) == []
    if expect.bad is None:
        assert skipped.empty, skipped.to_dict("records")
        assert stored == PATIENTS
    else:
        assert len(skipped) == 1, skipped.to_dict("records")
        row = skipped.iloc[0]
        assert row["patient_id"] == expect.patient
        assert row["path"] == str(expect.bad)
        assert expect.phrase in row["reason"], row["reason"]
        good = [p for p in PATIENTS if p != expect.patient]
        assert stored == good  # the good patients are all prepared
        assert "Traceback" not in out.err
    if expect.check is not None:
        expect.check(work)

    # verify: the same checks, every problem listed, exit 1 (0 when clean); nothing written.
    before = sorted(str(p) for p in data.rglob("*"))
    code = main(["verify", source, *expect.args])
    printed = capsys.readouterr().out
    assert sorted(str(p) for p in data.rglob("*")) == before
    if expect.bad is None:
        assert code == 0, printed
    else:
        assert code == 1, printed
        assert any(line.startswith(f"{expect.patient}: {expect.bad}: ") and expect.phrase in line
                   for line in printed.splitlines()), printed

    # --strict: exit 1 with one message naming the file and the problem; no store.
    if expect.bad is not None:
        strict = tmp_path / "strict"
        assert main(["prepare", source, "--out", str(strict), "--strict", *PREPARE_ARGS,
                     *expect.args]) == 1
        err = capsys.readouterr().err
        assert f"{expect.bad}: " in err and expect.phrase in err, err
        assert "Traceback" not in err
        assert not (strict / "dataset.json").exists()
        assert not (strict / "store").exists()


# ----------------------------------------------------------------------------- size guard
# In a subprocess under an address-space limit of its baseline + 400 MiB: an allocation of the
# claimed size (gigabytes) would raise MemoryError, which propagates in tests and fails them.

_LIMITED_RUN = textwrap.dedent("""
    import json, resource, sys
    import cardioclr.cli, cardioclr.data.prepare, cardioclr.data.verify  # imports before the limit
    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    # Baseline: the peak RSS so far (imports included). Current RSS can be lower than that peak
    # when the kernel drops file-backed library pages under memory pressure, which made
    # ``peak - current`` count the imports' own peak as growth on a loaded machine.
    base_vm = status("VmSize:")
    base_rss = max(status("VmRSS:"), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    limit = base_vm + 400 * 1024**2
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    code = cardioclr.cli.main(sys.argv[1:])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"code": code, "peak_over_baseline": peak - base_rss}))
""")


def _huge_claim_gz(data: Path) -> tuple[Path, str]:
    ed, _ = _frames(_p1(data))
    _patch_header(ed, _claim_shape((4000, 4000, 100)), data=b"\\x00" * 600)
    assert ed.stat().st_size < 2048  # a 1-2 KB file claiming 3.2 GB
    return ed, "but the file holds only"


def _huge_claim_plain(data: Path) -> tuple[Path, str]:
    ed, _ = _frames(_p1(data))
    plain = ed.with_name(ed.name.replace(".nii.gz", ".nii"))
    plain.write_bytes(gzip.decompress(ed.read_bytes()))
    ed.unlink()
    _patch_header(plain, _claim_shape((4000, 4000, 100)))
    return plain, "but the file holds only"


def _huge_claim_float64(data: Path) -> tuple[Path, str]:
    _, es = _frames(_p1(data))

    def edit(h: nib.Nifti1Header) -> None:
        _claim_shape((2048, 2048, 64))(h)
        h.set_data_dtype(np.float64)
    _patch_header(es, edit, data=b"\\x00" * 4096)
    return es, "but the file holds only"


def _huge_claim_cine(data: Path) -> tuple[Path, str]:
    d = _p1(data)
    ed, _ = _frames(d)
    arr = np.asarray(nib.load(ed).dataobj)
    cine = d / "patient001_4d.nii.gz"
    nib.save(nib.Nifti1Image(np.stack([arr] * 2, axis=-1), nib.load(ed).affine), str(cine))
    _patch_header(cine, _claim_shape((32, 32, 4, 30000)))
    return cine, "but the file holds only"


def _huge_claim_dicom(data: Path) -> tuple[Path, str]:
    folder = _dicom_ed(data)

    def edit(ds: object) -> None:
        ds.Rows, ds.Columns = 40000, 40000  # type: ignore[attr-defined]
    bad = _edit_dicom(folder, edit, which=0)
    csv = _manifest_with(data, "ed_image", str(folder))
    os.environ["_MALFORMED_DATA"] = str(csv)
    return bad, "but the file holds only"


SIZE_CASES = {"gzip_1kb_claims_3gb": _huge_claim_gz, "plain_claims_3gb": _huge_claim_plain,
              "float64_claims_2gb": _huge_claim_float64, "cine_claims_30000_frames": _huge_claim_cine,
              "dicom_rows_columns_40000": _huge_claim_dicom}


@pytest.mark.parametrize("name", list(SIZE_CASES))
def test_size_guard_under_memory_limit(name: str, base_cohort: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    shutil.copytree(base_cohort, data)
    monkeypatch.delenv("_MALFORMED_DATA", raising=False)
    bad, phrase = SIZE_CASES[name](data)
    source = os.environ.pop("_MALFORMED_DATA", str(data))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "CARDIOCLR_RAISE_UNEXPECTED": "1",
           "OMP_NUM_THREADS": "1"}
    env.pop("CARDIOCLR_MAX_IMAGE_BYTES", None)
    work = tmp_path / "work"
    for command in (["prepare", source, "--out", str(work), *PREPARE_ARGS],
                    ["verify", source]):
        run = subprocess.run([sys.executable, "-c", _LIMITED_RUN, *command], env=env,
                             capture_output=True, text=True, timeout=120)
        assert "MemoryError" not in run.stderr, run.stderr[-2000:]
        result = json.loads(run.stdout.strip().splitlines()[-1])
        assert result["code"] == (0 if command[0] == "prepare" else 1), run.stderr[-2000:]
        assert result["peak_over_baseline"] < 150 * 1024**2  # bounded by the real files
        if command[0] == "verify":
            assert f"patient001: {bad}: " in run.stdout and phrase in run.stdout
    skipped = pd.read_csv(work / "skipped.csv")
    assert list(skipped["patient_id"]) == ["patient001"]
    assert skipped.loc[0, "path"] == str(bad) and phrase in skipped.loc[0, "reason"]
    assert sorted(p.stem for p in (work / "store").glob("*.npz")) == PATIENTS[1:]
    assert _leftovers(work) == []


# ----------------------------------------------------------------------------- boundary


def test_unexpected_error_becomes_a_skipped_patient_naming_the_file(
        base_cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    import cardioclr.data.prepare as prep

    data = tmp_path / "data"
    shutil.copytree(base_cohort, data)
    ed, _ = _frames(_p1(data))
    real = prep.read_volume

    def flaky(path: Path) -> object:
        if Path(path) == ed:
            raise ValueError("a library choked\non two lines")
        return real(path)

    monkeypatch.setattr(prep, "read_volume", flaky)
    # In tests, programming errors are not hidden: the exception propagates...
    with pytest.raises(ValueError, match="a library choked"):
        prep.prepare(prep.PrepareConfig(data=str(data), out=str(tmp_path / "w1"),
                                        spacing_mm=3.5, image_size=32, workers=1))
    # ...and for users it is one skipped patient, a one-line reason naming the file, the
    # traceback in the debug log.
    monkeypatch.setenv("CARDIOCLR_RAISE_UNEXPECTED", "0")
    caplog.set_level("DEBUG")
    work = tmp_path / "w2"
    summary = prep.prepare(prep.PrepareConfig(data=str(data), out=str(work), spacing_mm=3.5,
                                              image_size=32, workers=1))
    assert summary["patients"] == 5 and summary["skipped"] == 1
    row = pd.read_csv(work / "skipped.csv").iloc[0]
    assert row["path"] == str(ed)
    assert row["reason"] == "could not be read (ValueError: a library choked)"
    assert "Traceback" in caplog.text and "flaky" in caplog.text
    # --strict still fails fast, with the same one-line message.
    with pytest.raises(Exception, match="could not be read"):
        prep.prepare(prep.PrepareConfig(data=str(data), out=str(tmp_path / "w3"), spacing_mm=3.5,
                                        image_size=32, workers=1, strict=True))


@pytest.mark.parametrize("target", ["file", "parent_file"])
def test_out_naming_an_existing_file(tmp_path: Path, base_cohort: Path, target: str,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    existing = tmp_path / "results.txt"
    existing.write_text("keep me")
    out = existing if target == "file" else existing / "work"
    for command in (["prepare", str(base_cohort), "--out", str(out), *PREPARE_ARGS],
                    ["study", "--out", str(out)]):
        assert main(command) == 1
        err = capsys.readouterr().err
        assert str(existing) in err and "is an existing file, not a folder" in err
        assert "Traceback" not in err
    assert existing.read_text() == "keep me"


# ----------------------------------------------------------------------------- splits


@pytest.mark.parametrize(("n_per_class", "fraction", "phrase"), [
    (2, "0.3", "it needs at least 5"),
    (1, "0.3", "fewer than 2 patients"),
    (3, "0.05", "use --test-fraction between"),
    (3, "0.9", "use --test-fraction between"),
])
def test_small_cohort_split_errors_with_advice_that_works(
        tmp_path: Path, n_per_class: int, fraction: str, phrase: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    write_tiny_acdc(data, n_per_class=n_per_class, groups=GROUPS, shape_zyx=SHAPE_ZYX,
                    spacing_zyx=SPACING_ZYX)
    work = tmp_path / "work"
    assert main(["prepare", str(data), "--out", str(work), "--test-fraction", fraction,
                 *PREPARE_ARGS]) == 1
    err = capsys.readouterr().err
    assert phrase in err and "Traceback" not in err and "ValueError" not in err
    assert not (work / "dataset.json").exists() and _leftovers(work) == []
    if "between" in phrase:  # the advice works: both ends of the advised range split
        import re

        low, high = re.search(r"between ([0-9.]+) and ([0-9.]+)", err).groups()  # type: ignore
        for advised in (low, high):
            assert main(["prepare", str(data), "--out", str(tmp_path / advised),
                         "--test-fraction", advised, *PREPARE_ARGS]) == 0


# ----------------------------------------------------------------------------- debris, workers


def test_stale_partial_folders_of_dead_runs_are_removed(base_cohort: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    dead = work / ".store.dead1234.partial"
    dead.mkdir()
    (dead / "patient001.npz").write_bytes(b"half")
    (work / ".store.dead1234.partial.owner").write_text(f"{os.uname().nodename} 999999999\n")
    orphan = work / ".store.noowner.partial"  # from a version without owner records
    orphan.mkdir()
    old = work / ".store.old"
    old.mkdir()
    live = work / ".store.live.partial"  # a run still building (this very process)
    live.mkdir()
    (work / ".store.live.partial.owner").write_text(f"{os.uname().nodename} {os.getppid()}\n")
    dead_file = work / ".manifest.csv.999999999.abcd.tmp.csv"  # atomic_path of a killed writer
    dead_file.write_text("half")
    live_file = work / f".manifest.csv.{os.getpid()}.efgh.tmp.csv"
    live_file.write_text("being written")
    assert main(["prepare", str(base_cohort), "--out", str(work), *PREPARE_ARGS]) == 0
    assert not dead_file.exists() and live_file.exists()
    live_file.unlink()
    assert not dead.exists() and not orphan.exists() and not old.exists()
    assert not (work / ".store.dead1234.partial.owner").exists()
    assert live.exists()  # its owner is alive: not ours to remove
    assert sorted(p.stem for p in (work / "store").glob("*.npz")) == PATIENTS


_SLOW_PREPARE = textwrap.dedent("""
    import sys, time
    import cardioclr.data.prepare as prep
    real = prep.prepare_case
    def slow(*args, **kw):
        time.sleep(1.5)  # every patient takes a while: the run is killed mid-way
        return real(*args, **kw)
    prep.prepare_case = slow
    print("started", flush=True)
    prep.prepare(prep.PrepareConfig(data=sys.argv[1], out=sys.argv[2], spacing_mm=3.5,
                                    image_size=32, workers=2))
""")


def test_killed_prepare_takes_its_workers_along(base_cohort: Path, tmp_path: Path) -> None:
    import signal
    import time

    work = tmp_path / "work"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_PREPARE, str(base_cohort), str(work)],
                            env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "started"
        children: list[int] = []
        deadline = time.monotonic() + 60
        while len(children) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
            try:
                text = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text()
            except OSError:
                text = ""
            children = [int(c) for c in text.split()]
        assert len(children) >= 2, "the worker pool did not start"
        time.sleep(0.3)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 5
        alive = children
        while alive and time.monotonic() < deadline:
            time.sleep(0.1)
            alive = [c for c in alive if _running(c)]
        assert alive == [], "worker processes outlived the killed prepare"
        partial = sorted(work.glob(".store.*.partial"))
        written = sorted(p.name for d in partial for p in d.iterdir())
        time.sleep(2)  # nothing writes into the dead run's store afterwards
        assert sorted(p.name for d in partial for p in d.iterdir()) == written
    finally:
        if proc.poll() is None:
            proc.kill()
    # The next run removes the debris and completes.
    assert main(["prepare", str(base_cohort), "--out", str(work), *PREPARE_ARGS]) == 0
    assert _leftovers(work) == []
    assert sorted(p.stem for p in (work / "store").glob("*.npz")) == PATIENTS


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


# ----------------------------------------------------------------------------- verify


def test_verify_lists_every_problem_of_every_patient(base_cohort: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    shutil.copytree(base_cohort, data)
    d1, d2, d3 = (data / "training" / p for p in PATIENTS[:3])
    ed1, es1 = _frames(d1)
    write_nifti(_gt(ed1), np.full(SHAPE_ZYX, 9, np.uint8), SPACING_ZYX)  # problem 1 of 1
    _patch_header(es1, _set_pixdim(1, 0.0))  # problem 2 of patient001
    cfg2 = _set_info(d2, "Height", "0")
    ed3, _ = _frames(d3)
    ed3.write_bytes(b"")
    (data / "training" / "misc").mkdir()
    before = sorted(str(p) for p in data.rglob("*"))
    assert main(["verify", str(data)]) == 1
    printed = capsys.readouterr().out.splitlines()
    expected = [f"patient001: {_gt(ed1)}: label values [9]", f"patient001: {es1}: invalid voxel",
                f"patient002: {cfg2}: field Height is 0 cm", f"patient003: {ed3}: file is empty",
                f"misc: {data / 'training' / 'misc'}: folder name does not match",
                f"*: {data}: the 3 usable labelled patients"]
    for start in expected:
        assert sum(line.startswith(start) for line in printed) == 1, (start, printed)
    assert printed[-1].startswith(f"verify {data}: 5 patients read, 3 without problems; "
                                  "6 problem(s) in 4 patient(s)")
    assert sorted(str(p) for p in data.rglob("*")) == before  # nothing written
