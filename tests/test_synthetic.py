"""The built-in synthetic cohort: ACDC layout, credible phantoms, class criteria, determinism."""

from __future__ import annotations

import argparse
import hashlib
import math
import re
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cardioclr.clinical.criteria import class_criteria, diagnose
from cardioclr.clinical.labels import DIAGNOSES, LV_CAVITY, LV_MYOCARDIUM, RV_CAVITY
from cardioclr.data import cli_synth
from cardioclr.data.acdc import read_info_cfg
from cardioclr.data.synthetic import (
    assign_cohort,
    generate_patient,
    phantom_indices,
    read_patient_indices,
    write_synthetic_cohort,
)
from cardioclr.errors import DataError

N_PATIENTS = 10
INFO_LINE = {
    "ED": r"1",
    "ES": r"\d+",
    "Group": r"(NOR|DCM|HCM|MINF|RV)",
    "Height": r"\d{3}\.\d",
    "NbFrame": r"\d+",
    "Weight": r"\d{2,3}\.\d",
}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    out = tmp_path_factory.mktemp("synth") / "cohort"
    ids = write_synthetic_cohort(out, N_PATIENTS, seed=3, test_fraction=0.2)
    return out, ids


def patient_dirs(root: Path) -> list[Path]:
    return sorted(root.glob("*/patient*"), key=lambda p: p.name)


def test_layout_matches_acdc(cohort):
    root, ids = cohort
    assert sorted(p.name for p in root.iterdir()) == ["README.txt", "synthetic_cohort.csv",
                                                      "testing", "training"]
    assert (root / "README.txt").read_text().startswith("cardioclr synthetic cohort")
    assert "NOT PATIENT DATA" in (root / "README.txt").read_text()
    dirs = patient_dirs(root)
    assert [d.name for d in dirs] == ids == [f"patient{i:03d}" for i in range(1, N_PATIENTS + 1)]
    # ACDC numbering: training first, testing after.
    subsets = [d.parent.name for d in dirs]
    assert subsets == sorted(subsets, key=lambda s: s != "training")
    assert subsets.count("testing") == round(0.2 * N_PATIENTS)
    for d in dirs:
        lines = (d / "Info.cfg").read_text().splitlines()
        assert [ln.split(":")[0] for ln in lines] == list(INFO_LINE)
        for line, (key, pattern) in zip(lines, INFO_LINE.items(), strict=True):
            assert re.fullmatch(rf"{key}: {pattern}", line), line
        info = read_info_cfg(d / "Info.cfg")
        es, n_frames = int(info["ES"]), int(info["NbFrame"])
        assert 1 < es <= n_frames
        expected = {"Info.cfg"} | {f"{d.name}_frame{f:02d}{s}.nii.gz"
                                   for f in (1, es) for s in ("", "_gt")}
        assert {p.name for p in d.iterdir()} == expected


def test_nifti_geometry_dtypes_and_labels(cohort):
    root, _ = cohort
    for d in patient_dirs(root):
        info = read_info_cfg(d / "Info.cfg")
        shapes = set()
        for frame in (1, int(info["ES"])):
            img = nib.load(d / f"{d.name}_frame{frame:02d}.nii.gz")
            gt = nib.load(d / f"{d.name}_frame{frame:02d}_gt.nii.gz")
            for vol in (img, gt):
                zooms = np.array(vol.header.get_zooms()[:3])
                assert np.allclose(np.linalg.norm(vol.affine[:3, :3], axis=0), zooms, rtol=1e-5)
                assert int(vol.header["sform_code"]) == 1 and int(vol.header["qform_code"]) == 1
                shapes.add(vol.shape)
            dx, dy, dz = img.header.get_zooms()[:3]
            assert dx == dy and 1.2 <= dx <= 1.9 + 1e-6 and 5.0 <= dz <= 10.0
            assert 160 <= min(img.shape[:2]) and max(img.shape[:2]) <= 256 + 64
            assert img.get_data_dtype() in (np.int16, np.float32, np.uint8)
            assert gt.get_data_dtype() == np.uint8
            labels = np.asarray(gt.dataobj)
            assert set(np.unique(labels).tolist()) == {0, RV_CAVITY, LV_MYOCARDIUM, LV_CAVITY}
            assert np.asarray(img.dataobj).min() >= 0
        assert len(shapes) == 1  # ED, ES, images and masks share one grid


def test_classes_balanced(cohort):
    root, _ = cohort
    groups = {s: Counter(read_info_cfg(d / "Info.cfg")["Group"] for d in (root / s).iterdir())
              for s in ("training", "testing")}
    total = groups["training"] + groups["testing"]
    assert sorted(total) == sorted(DIAGNOSES) and set(total.values()) == {N_PATIENTS // 5}
    for subset, counts in groups.items():
        per_group = [counts.get(g, 0) for g in DIAGNOSES]
        assert max(per_group) - min(per_group) <= 1, subset
    plan = assign_cohort(150, seed=0, test_fraction=0.2)
    for subset, n in (("training", 24), ("testing", 6)):
        assert Counter(g for _, s, g in plan if s == subset) == dict.fromkeys(DIAGNOSES, n)


def test_every_patient_meets_its_class_criteria(cohort):
    root, _ = cohort
    csv_lines = (root / "synthetic_cohort.csv").read_text().splitlines()
    assert len(csv_lines) == N_PATIENTS + 1
    for d in patient_dirs(root):
        group, ind = read_patient_indices(d)
        assert class_criteria(ind, group) == [], (d.name, group, ind)
        assert diagnose(ind) == group, (d.name, group, ind)
        if group == "DCM":
            assert ind["lv_edv_index"] > 100 and ind["lv_ef"] < 40
        if group == "HCM":
            assert ind["lv_mass_index"] > 110 and ind["max_wall_mm"] > 15 and ind["lv_ef"] > 55
        if group == "NOR":
            assert ind["lv_ef"] > 50 and ind["max_wall_mm"] <= 12
        if group == "MINF":
            assert ind["lv_ef"] < 40 and ind["thin_ratio"] <= 0.6
        if group == "RV":
            assert ind["rv_edv_index"] > 110 or ind["rv_ef"] < 40


def test_contraction_from_ed_to_es(cohort):
    root, _ = cohort
    for d in patient_dirs(root):
        info = read_info_cfg(d / "Info.cfg")
        ed = np.asarray(nib.load(d / f"{d.name}_frame01_gt.nii.gz").dataobj)
        es = np.asarray(nib.load(d / f"{d.name}_frame{int(info['ES']):02d}_gt.nii.gz").dataobj)
        assert (es == LV_CAVITY).sum() < (ed == LV_CAVITY).sum()
        assert (es == RV_CAVITY).sum() < (ed == RV_CAVITY).sum()
        # The myocardium is (nearly) incompressible: its volume is conserved while it thickens.
        myo_ed, myo_es = (ed == LV_MYOCARDIUM).sum(), (es == LV_MYOCARDIUM).sum()
        assert abs(myo_es / myo_ed - 1.0) < 0.15
        # Wall thickening: myocardium per unit of LV cavity grows on a mid-ventricular slice
        # (the base moves toward the apex at ES, so pick the middle of the ES cavity slices).
        with_cavity = np.nonzero((es == LV_CAVITY).any(axis=(0, 1)))[0]
        k = int(with_cavity[len(with_cavity) // 2])
        ratio_ed = (ed[:, :, k] == LV_MYOCARDIUM).sum() / (ed[:, :, k] == LV_CAVITY).sum()
        ratio_es = (es[:, :, k] == LV_MYOCARDIUM).sum() / (es[:, :, k] == LV_CAVITY).sum()
        assert ratio_es > 1.1 * ratio_ed


def test_images_have_mr_like_contrast(cohort):
    root, _ = cohort
    for d in patient_dirs(root):
        img = np.asarray(nib.load(d / f"{d.name}_frame01.nii.gz").dataobj, dtype=np.float64)
        lab = np.asarray(nib.load(d / f"{d.name}_frame01_gt.nii.gz").dataobj)
        blood = np.median(img[lab == LV_CAVITY])
        myo = np.median(img[lab == LV_MYOCARDIUM])
        assert blood > 1.4 * myo  # SSFP: bright blood, dark myocardium
        assert np.median(img[lab == RV_CAVITY]) > 1.3 * myo
        # Air in the corners is dark (Rician noise floor), far below the blood pool.
        corners = np.concatenate([img[:8, :8].ravel(), img[-8:, -8:].ravel()])
        assert np.median(corners) < 0.25 * blood


def test_same_seed_same_arrays_other_seed_differs():
    a = generate_patient(7, 4, "MINF", matrix=128)
    b = generate_patient(7, 4, "MINF", matrix=128)
    c = generate_patient(8, 4, "MINF", matrix=128)
    for key in ("ed", "es", "ed_gt", "es_gt"):
        assert a[key].dtype == b[key].dtype and a[key].tobytes() == b[key].tobytes()
    assert a["ed"].shape != c["ed"].shape or not np.array_equal(a["ed"], c["ed"])


def test_cohort_files_are_byte_identical_across_runs(tmp_path):
    digests = []
    for name in ("a", "b"):
        write_synthetic_cohort(tmp_path / name, 2, seed=5, matrix=96)
        files = sorted(p for p in (tmp_path / name).rglob("*") if p.is_file())
        digests.append({str(p.relative_to(tmp_path / name)): hashlib.sha256(p.read_bytes())
                        .hexdigest() for p in files})
    assert digests[0] == digests[1] and len(digests[0]) == 2 * 5 + 2


def test_cine_holds_ed_and_es_frames(tmp_path):
    ids = write_synthetic_cohort(tmp_path / "c", 1, seed=2, test_fraction=0.0, cine=True,
                                 matrix=64)
    d = tmp_path / "c" / "training" / ids[0]
    info = read_info_cfg(d / "Info.cfg")
    cine = nib.load(d / f"{ids[0]}_4d.nii.gz")
    ed = np.asarray(nib.load(d / f"{ids[0]}_frame01.nii.gz").dataobj)
    es_frame = int(info["ES"])
    es = np.asarray(nib.load(d / f"{ids[0]}_frame{es_frame:02d}.nii.gz").dataobj)
    data = np.asarray(cine.dataobj)
    assert data.shape == ed.shape + (int(info["NbFrame"]),)
    assert np.array_equal(data[..., 0], ed) and np.array_equal(data[..., es_frame - 1], es)
    assert not np.array_equal(data[..., 1], ed)  # in-between frames are rendered, not copies
    assert len(cine.header.get_zooms()) == 4 and cine.header.get_zooms()[3] > 0
    # The cine flag must not change the ED/ES volumes drawn without it.
    plain = generate_patient(2, 1, info["Group"], matrix=64)
    assert np.array_equal(plain["ed"], ed)


def test_phantom_indices_on_known_geometry():
    """Stacked annuli: cavity radius 20 mm, wall 8 mm; at ES cavity 14 mm, same myocardium."""
    n, dx, dz, nz = 96, 1.0, 10.0, 6
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2.0
    rho = np.hypot(xx, yy)

    def stack(r_cav: float, r_epi: float) -> np.ndarray:
        sl = np.zeros((n, n), np.uint8)
        sl[rho < r_epi] = LV_MYOCARDIUM
        sl[rho < r_cav] = LV_CAVITY
        sl[(xx < -r_epi) & (np.abs(yy) < 10) & (xx > -r_epi - 12)] = RV_CAVITY
        return np.repeat(sl[:, :, None], nz, axis=2)

    r_epi_es = math.sqrt(14.0**2 + 28.0**2 - 20.0**2)  # myocardial area conserved
    ed, es = stack(20.0, 28.0), stack(14.0, r_epi_es)
    ind = phantom_indices(ed, es, (dx, dx, dz), 180.0, 80.0)
    assert ind["bsa"] == pytest.approx(2.0)
    assert ind["lv_edv"] == pytest.approx((ed == LV_CAVITY).sum() * dz / 1000.0)
    assert ind["lv_edv"] == pytest.approx(math.pi * 20.0**2 * nz * dz / 1000.0, rel=0.03)
    assert ind["lv_ef"] == pytest.approx(100 * (1 - 14.0**2 / 20.0**2), abs=1.5)
    assert ind["lv_mass"] == pytest.approx(
        1.05 * math.pi * (28.0**2 - 20.0**2) * nz * dz / 1000.0, rel=0.03)
    assert ind["max_wall_mm"] == pytest.approx(8.0, abs=1.5)
    assert ind["thin_ratio"] > 0.85
    assert ind["thin_thickening"] == pytest.approx((r_epi_es - 14.0) / 8.0 - 1.0, abs=0.05)
    # The RV does not contract at all (RVEF 0): the rules call that an abnormal RV.
    assert ind["rv_ef"] == pytest.approx(0.0)
    assert diagnose(ind) == "RV"

    # Thin the wall in one 60-degree sector and freeze it at ES: an akinetic infarct.
    sector = (np.abs(np.arctan2(yy, xx)) < math.radians(30))[:, :, None]
    ed_inf = np.where(sector & (ed == LV_MYOCARDIUM) & (rho[:, :, None] >= 24.0), 0, ed)
    es_inf = np.where(sector, ed_inf, es)
    ind_inf = phantom_indices(ed_inf, es_inf, (dx, dx, dz), 180.0, 80.0)
    assert ind_inf["thin_ratio"] < 0.6
    assert abs(ind_inf["thin_thickening"]) < 0.1


def test_refuses_to_replace_foreign_folder(tmp_path):
    foreign = tmp_path / "real"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("not a synthetic cohort")
    with pytest.raises(DataError, match="refusing"):
        write_synthetic_cohort(foreign, 1, seed=0, matrix=64)
    assert (foreign / "keep.txt").exists()


def test_cli_synth_writes_and_summarises(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    cli_synth.register(parser.add_subparsers(dest="command"))
    out = tmp_path / "cli"
    args = parser.parse_args(["synth", str(out), "--patients", "5", "--seed", "1",
                              "--test-fraction", "0.4", "--size", "64"])
    assert args.func(args) == 0
    summary = capsys.readouterr().out.strip()
    assert summary.startswith(f"wrote 5 synthetic patients to {out}")
    assert "3 training, 2 testing" in summary
    assert len(list((out / "training").iterdir())) == 3
    with pytest.raises(SystemExit):
        parser.parse_args(["synth", str(out), "--test-fraction", "1.5"])
