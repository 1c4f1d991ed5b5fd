"""``prepare``: bad inputs (skip and list, or --strict), atomicity, and the store's content."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

import cardioclr.data.prepare as prep
from cardioclr.cli import main
from cardioclr.data.acdc import find_acdc_cases
from cardioclr.data.prepare import PrepareConfig, prepare
from cardioclr.data.store import SliceStore, to_source_grid
from cardioclr.errors import CardioclrError, DataError
from cardioclr.io.volume import read_label_volume, read_volume
from conftest import TINY_SPACING_ZYX, write_nifti, write_tiny_acdc

GROUPS = ("DCM", "NOR")  # 2 classes x 3 patients: still 2 per class after one is skipped
# With 5 patients, one class can have a single patient in a CV fold; sklearn says so, rightly.
pytestmark = pytest.mark.filterwarnings("ignore:The least populated class:UserWarning")


def _dataset(root: Path) -> Path:
    write_tiny_acdc(root, n_per_class=3, seed=1, groups=GROUPS)
    return root


def _cfg(data: Path, work: Path, **kw: object) -> PrepareConfig:
    settings: dict[str, object] = {"spacing_mm": 3.0, "image_size": 64, "workers": 1, **kw}
    return PrepareConfig(data=str(data), out=str(work), **settings)  # type: ignore[arg-type]


def _frames(d: Path) -> tuple[Path, Path]:
    """(ED, ES) image paths of a tiny ACDC patient folder."""
    info = dict(line.split(": ") for line in (d / "Info.cfg").read_text().splitlines())
    return tuple(d / f"{d.name}_frame{int(info[k]):02d}.nii.gz" for k in ("ED", "ES"))  # type: ignore


# Each corrupter damages patient001 and returns (offending file, phrase of the message).
def _truncated(d: Path) -> tuple[Path, str]:
    ed, _ = _frames(d)
    ed.write_bytes(ed.read_bytes()[: ed.stat().st_size // 2])
    return ed, "truncated"


def _missing_info_field(d: Path) -> tuple[Path, str]:
    cfg = d / "Info.cfg"
    cfg.write_text("\n".join(x for x in cfg.read_text().splitlines() if not x.startswith("Group")))
    return cfg, "missing field(s) Group"


def _same_ed_es(d: Path) -> tuple[Path, str]:
    cfg = d / "Info.cfg"
    cfg.write_text("\n".join("ES: 1" if x.startswith("ES:") else x
                             for x in cfg.read_text().splitlines()))
    return cfg, "ED and ES name the same frame (1)"


def _missing_ed_frame(d: Path) -> tuple[Path, str]:
    ed, _ = _frames(d)
    ed.unlink()
    return ed, "ED frame 1 named in Info.cfg does not exist"


def _missing_es_frame(d: Path) -> tuple[Path, str]:
    _, es = _frames(d)
    es.unlink()
    return es, "ES frame"


def _mask_shape(d: Path) -> tuple[Path, str]:
    ed, _ = _frames(d)
    gt = ed.with_name(ed.name.replace(".nii.gz", "_gt.nii.gz"))
    write_nifti(gt, np.zeros((6, 40, 48), np.uint8))
    return gt, "mask shape (6, 40, 48) differs from image shape (6, 48, 48)"


def _gt_of(d: Path) -> tuple[Path, nib.Nifti1Image]:
    ed, _ = _frames(d)
    gt = ed.with_name(ed.name.replace(".nii.gz", "_gt.nii.gz"))
    return gt, nib.load(gt)


def _mask_flipped(d: Path) -> tuple[Path, str]:
    # Same shape, stored with x reversed and an affine saying so: index-wise it is mirrored.
    gt, img = _gt_of(d)
    nx = img.shape[0]
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = nx - 1
    data = np.asarray(img.dataobj)[::-1]
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data), img.affine @ flip), str(gt))
    return gt, "mask is flipped along x"


def _mask_shifted(d: Path) -> tuple[Path, str]:
    gt, img = _gt_of(d)
    affine = img.affine.copy()
    affine[2, 3] += 5.0  # one slice gap off: same shape, another position
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), affine), str(gt))
    return gt, "origin shifted by 5 mm"


def _es_spacing(d: Path) -> tuple[Path, str]:
    _, es = _frames(d)
    write_nifti(es, read_volume(es).array, spacing_zyx=(8.0, 3.5, 3.5))
    return es, "voxel spacing (8.0, 3.5, 3.5) mm (z, y, x) differs from the ED frame's"


def _es_slices_reversed(d: Path) -> tuple[Path, str]:
    # ES stored apex-to-base while ED is base-to-apex: same shape and spacing, but pairing ED and
    # ES slices by index would pair different positions.
    _, es = _frames(d)
    img = nib.load(es)
    nz = img.shape[2]
    flip = np.diag([1.0, 1.0, -1.0, 1.0])
    flip[2, 3] = nz - 1
    data = np.asarray(img.dataobj)[:, :, ::-1]
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data), img.affine @ flip), str(es))
    return es, "oriented differently from the ED frame"


def _label_values(d: Path) -> tuple[Path, str]:
    _, es = _frames(d)
    gt = es.with_name(es.name.replace(".nii.gz", "_gt.nii.gz"))
    labels = read_label_volume(gt).array
    labels[0, 0, :2] = (5, 7)
    write_nifti(gt, labels)
    return gt, "label values [5, 7] outside 0-3"


def _nan(d: Path) -> tuple[Path, str]:
    ed, _ = _frames(d)
    arr = read_volume(ed).array
    arr[2, 10, 10] = np.nan
    write_nifti(ed, arr)
    return ed, "1 NaN or infinite intensities"


def _inf(d: Path) -> tuple[Path, str]:
    _, es = _frames(d)
    arr = read_volume(es).array
    arr[0, :, 0] = np.inf
    write_nifti(es, arr)
    return es, "48 NaN or infinite intensities"


def _empty_patient_folder(d: Path) -> tuple[Path, str]:
    for p in d.iterdir():
        p.unlink()
    return d / "Info.cfg", "Info.cfg is missing"


def _two_d(d: Path) -> tuple[Path, str]:
    ed, _ = _frames(d)
    write_nifti(ed, np.ones((48, 48), np.int16))
    return ed, "expected a 3D stack (x, y, z), found a 2D image"


def _constant(d: Path) -> tuple[Path, str]:
    ed, es = _frames(d)
    write_nifti(ed, np.full((6, 48, 48), 100, np.int16))
    write_nifti(es, np.full((6, 48, 48), 100, np.int16))
    return ed, "constant intensity"


BAD_INPUTS: dict[str, Callable[[Path], tuple[Path, str]]] = {
    "truncated_nifti": _truncated,
    "missing_info_field": _missing_info_field,
    "same_ed_es_frame": _same_ed_es,
    "missing_ed_frame": _missing_ed_frame,
    "missing_es_frame": _missing_es_frame,
    "mask_shape_differs": _mask_shape,
    "mask_flipped": _mask_flipped,
    "mask_shifted": _mask_shifted,
    "es_spacing_differs": _es_spacing,
    "es_slices_reversed": _es_slices_reversed,
    "labels_outside_0_3": _label_values,
    "nan_intensity": _nan,
    "inf_intensity": _inf,
    "empty_patient_folder": _empty_patient_folder,
    "2d_image": _two_d,
    "constant_image": _constant,
}


def test_mask_grid_check_names_both_files_and_tolerates_rounding(tmp_path: Path) -> None:
    d = _dataset(tmp_path / "data") / "training" / "patient001"
    ed, _ = _frames(d)
    gt, phrase = _mask_flipped(d)
    with pytest.raises(DataError, match=phrase) as info:
        prep._read_mask(gt, read_volume(ed))
    assert info.value.path == str(gt) and str(ed) in str(info.value)
    assert "max abs affine difference" in str(info.value)
    # float32 rounding of a header (far below 1e-3 mm) is the same grid.
    gt, img = _gt_of(d)
    affine = read_volume(ed).affine.copy()
    affine[:3, 3] += 2e-4
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[::-1], affine), str(gt))  # un-mirrored
    assert prep._read_mask(gt, read_volume(ed)) is not None
    # A mask without any sform/qform has no geometry to compare: the shape check alone applies.
    bare = nib.Nifti1Image(np.asarray(img.dataobj), None)
    nib.save(bare, str(gt))
    assert prep._read_mask(gt, read_volume(ed)) is not None


@pytest.mark.parametrize("kind", list(BAD_INPUTS))
def test_bad_input_skipped_and_listed_or_strict_fails(tmp_path: Path, kind: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    data = _dataset(tmp_path / "data")
    bad_file, phrase = BAD_INPUTS[kind](data / "training" / "patient001")
    work = tmp_path / "work"
    summary = prepare(_cfg(data, work))
    assert summary["patients"] == 5 and summary["skipped"] == 1
    skipped = pd.read_csv(work / "skipped.csv")
    assert len(skipped) == 1
    row = skipped.iloc[0]
    assert row["patient_id"] == "patient001"
    assert row["path"] == str(bad_file)
    assert phrase in row["reason"]
    assert "patient001" not in SliceStore(work).patient_ids
    # --strict through the CLI: exit code 1, one message naming the file and the problem.
    strict = tmp_path / "strict"
    rc = main(["prepare", str(data), "--out", str(strict), "--strict", "--size", "64",
               "--spacing", "3", "--workers", "1"])
    err = capsys.readouterr().err
    assert rc == 1
    assert f"{bad_file}: " in err and phrase in err
    assert "Traceback" not in err
    assert not (strict / "dataset.json").exists()


def test_strict_with_workers_pool(tmp_path: Path) -> None:
    """The process pool path reports the same DataError as the serial one."""
    data = _dataset(tmp_path / "data")
    bad, phrase = _nan(data / "training" / "patient004")
    with pytest.raises(DataError, match="NaN") as info:
        prepare(PrepareConfig(data=str(data), out=str(tmp_path / "w"), spacing_mm=3.0,
                              image_size=64, workers=2, strict=True))
    assert info.value.path == str(bad) and phrase in str(info.value)


def test_empty_dataset_folder_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="dataset folder is empty"):
        prepare(_cfg(tmp_path / "empty", tmp_path / "w"))
    assert main(["prepare", str(tmp_path / "empty"), "--out", str(tmp_path / "w")]) == 1
    assert "dataset folder is empty" in capsys.readouterr().err
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="not a dataset"):
        prepare(_cfg(tmp_path / "other", tmp_path / "w"))


def test_every_patient_bad_is_an_error(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for d in write_tiny_acdc(data, n_per_class=1, groups=GROUPS):
        _nan(d)
    with pytest.raises(CardioclrError, match="every patient was skipped"):
        prepare(_cfg(data, tmp_path / "w"))
    assert not (tmp_path / "w" / "dataset.json").exists()


# ---------------------------------------------------------------- atomicity


def _fail_after(monkeypatch: pytest.MonkeyPatch, n: int, exc: BaseException) -> None:
    """Make prepare_case raise ``exc`` once ``n`` patients have been written."""
    real = prep.prepare_case
    calls = {"n": 0}

    def flaky(*args: object, **kw: object) -> dict:
        if calls["n"] >= n:
            raise exc
        calls["n"] += 1
        return real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(prep, "prepare_case", flaky)


def _snapshot(work: Path) -> dict[str, bytes]:
    """Every file of a work dir except provenance, by relative path."""
    return {str(p.relative_to(work)): p.read_bytes() for p in sorted(work.rglob("*"))
            if p.is_file() and "prepare" not in p.relative_to(work).parts}


@pytest.mark.parametrize("exc", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_failure_midway_leaves_nothing_that_looks_complete(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           exc: BaseException) -> None:
    data = _dataset(tmp_path / "data")
    work = tmp_path / "work"
    _fail_after(monkeypatch, 3, exc)
    with pytest.raises(type(exc)):
        prepare(_cfg(data, work))
    assert not (work / "dataset.json").exists()
    assert not (work / "store").exists()
    assert not list(work.glob(".store*"))  # the partial store is cleaned up
    assert not (work / "manifest.csv").exists() and not (work / "splits.json").exists()


@pytest.mark.parametrize("exc", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_failed_overwrite_keeps_previous_complete_store(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        exc: BaseException) -> None:
    data = _dataset(tmp_path / "data")
    work = tmp_path / "work"
    prepare(_cfg(data, work))
    before = _snapshot(work)
    assert "dataset.json" in before and "store/patient001.npz" in before
    _fail_after(monkeypatch, 3, exc)
    with pytest.raises(type(exc)):
        prepare(_cfg(data, work, overwrite=True))
    assert _snapshot(work) == before
    assert not list(work.glob(".store*"))
    assert SliceStore(work).load("patient006").ed_image.shape == (6, 64, 64)


def test_strict_overwrite_failure_keeps_previous_store(tmp_path: Path) -> None:
    data = _dataset(tmp_path / "data")
    work = tmp_path / "work"
    prepare(_cfg(data, work))
    before = _snapshot(work)
    _nan(data / "training" / "patient002")
    with pytest.raises(DataError, match="NaN"):
        prepare(_cfg(data, work, overwrite=True, strict=True))
    assert _snapshot(work) == before


def test_overwrite_required_and_keeps_splits(tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    data = _dataset(tmp_path / "data")
    work = tmp_path / "work"
    prepare(_cfg(data, work, seed=0))
    splits = (work / "splits.json").read_bytes()
    with pytest.raises(CardioclrError, match="already prepared"):
        prepare(_cfg(data, work))
    # A rebuild with another seed and size rewrites the store but never re-splits, and says so.
    with caplog.at_level("WARNING", logger="cardioclr.data.prepare"):
        summary = prepare(_cfg(data, work, seed=5, overwrite=True, image_size=32))
    assert "seed: kept 0, asked 5" in caplog.text and "splits.json is kept" in caplog.text
    assert (work / "splits.json").read_bytes() == splits
    assert summary["image_size"] == 32
    assert SliceStore(work).load("patient001").ed_image.shape == (6, 32, 32)


def test_changed_patient_set_errors_and_keeps_previous(tmp_path: Path) -> None:
    data = _dataset(tmp_path / "data")
    work = tmp_path / "work"
    prepare(_cfg(data, work))
    before = _snapshot(work)
    write_tiny_acdc(data, n_per_class=1, seed=9, groups=GROUPS, start_index=50)
    with pytest.raises(CardioclrError, match="different set of patients"):
        prepare(_cfg(data, work, overwrite=True))
    assert _snapshot(work) == before


# ---------------------------------------------------------------- store content


def test_store_content(tiny_work: Path) -> None:
    store = SliceStore(tiny_work)
    info = json.loads((tiny_work / "dataset.json").read_text())
    assert info["patients"] == 20 and info["skipped"] == 0
    assert store.classes == ["DCM", "HCM", "MINF", "NOR", "RV"]
    assert store.image_size == 64 and store.spacing_mm == 3.0
    manifest = store.manifest
    assert manifest["label_index"].tolist() == [store.classes.index(c) for c in manifest["label"]]
    assert manifest["has_expert_mask"].all()
    for pid in store.patient_ids[:5]:
        p = store.load(pid)
        row = manifest.loc[pid]
        src = read_volume(Path(row["source"]) / f"{pid}_frame{int(row['ed_frame']):02d}.nii.gz")
        for img in (p.ed_image, p.es_image):
            assert img.dtype == np.float32 and img.shape == (src.shape[0], 64, 64)
            assert img.min() >= -0.5 and img.max() <= 1.5
            # Normalised contrast (exact mapping: test_normalisation_maps_percentiles): bright
            # blood pool and dark lung both inside the cropped window.
            assert (img > 0.5).any() and (img < 0.1).any()
        assert p.spacing_zyx == pytest.approx((src.spacing[0], 3.0, 3.0))
        assert row["slice_spacing_mm"] == pytest.approx(src.spacing[0])
        assert p.geometry.source_spacing_zyx == pytest.approx(src.spacing)
        assert p.geometry.source_shape_zyx == src.shape
        for mask in (p.ed_mask, p.es_mask):
            assert mask is not None and mask.dtype == np.uint8
            assert set(np.unique(mask)) == {0, 1, 2, 3}


def test_normalisation_maps_percentiles(tmp_path: Path) -> None:
    """A patient whose store grid covers its whole image: 1st/99th percentiles -> 0/1."""
    data = _dataset(tmp_path / "data")
    work = tmp_path / "work"
    prepare(_cfg(data, work, spacing_mm=3.5, image_size=48))  # same grid as the source
    d = data / "training" / "patient001"
    ed, es = (read_volume(f).array for f in _frames(d))
    low, high = np.percentile(np.concatenate([ed.ravel(), es.ravel()]), [1, 99])
    p = SliceStore(work).load("patient001")
    expected = np.clip((ed - low) / (high - low), -0.5, 1.5)
    np.testing.assert_allclose(p.ed_image, expected, atol=1e-5)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(1, int(a.sum() + b.sum()))


@pytest.mark.parametrize(("shape", "spacing"), [((6, 48, 48), (10.0, 3.5, 3.5)),  # padded
                                                ((3, 128, 112), (8.0, 1.5, 1.5))])  # cropped
def test_to_source_grid_round_trip(tmp_path: Path, shape: tuple[int, int, int],
                                   spacing: tuple[float, float, float]) -> None:
    data = tmp_path / "data"
    write_tiny_acdc(data, n_per_class=3, groups=GROUPS, shape_zyx=shape, spacing_zyx=spacing)
    work = tmp_path / "work"
    prepare(_cfg(data, work))
    store = SliceStore(work)
    for pid in ("patient001", "patient002"):
        p = store.load(pid)
        src = read_label_volume(Path(store.manifest.at[pid, "source"]) / f"{pid}_frame01_gt.nii.gz")
        back = to_source_grid(p.ed_mask, p.geometry)
        assert back.shape == src.shape and back.dtype == np.uint8
        for label in (1, 2, 3):
            # Two nearest-neighbour resamplings move edges by at most a pixel.
            assert _dice(back == label, src.array == label) > 0.85
        # Store-grid volumes (mm^3) match the source's within a few percent.
        store_mm3 = (p.ed_mask == 3).sum() * 10.0 * 3.0 * 3.0
        src_mm3 = (src.array == 3).sum() * np.prod(src.spacing)
        assert store_mm3 == pytest.approx(src_mm3 * 10.0 / spacing[0], rel=0.1)


def test_uncompressed_nifti_files_are_found(tmp_path: Path) -> None:
    data = _dataset(tmp_path / "data")
    d = data / "training" / "patient002"
    for p in sorted(d.glob("*.nii.gz")):
        nib.save(nib.load(p), str(p.with_name(p.name.removesuffix(".gz"))))
        p.unlink()
    cases, skipped = find_acdc_cases(data)
    assert skipped == []
    case = next(c for c in cases if c.patient_id == "patient002")
    assert case.ed_image.name == "patient002_frame01.nii" and case.ed_mask is not None
    assert case.es_mask is not None and case.es_mask.suffix == ".nii"


# ---------------------------------------------------------------- 4D cine


def _add_cine(d: Path, n_frames: int = 4, shape_zyx: tuple[int, int, int] | None = None) -> None:
    """Write ``PID_4d.nii.gz`` whose frames 0 and 2 are the ED and ES images (int16, x y z t)."""
    ed, es = (read_volume(p).array for p in _frames(d))
    mid = (ed + es) / 2
    frames = [ed, mid, es, ed][:n_frames] if shape_zyx is None else \
        [np.zeros(shape_zyx, np.float32) + k for k in range(n_frames)]
    cine = np.stack([f.transpose(2, 1, 0) for f in frames], axis=-1).astype(np.int16)
    sz, sy, sx = TINY_SPACING_ZYX
    nib.save(nib.Nifti1Image(cine, np.diag([sx, sy, sz, 1.0])), str(d / f"{d.name}_4d.nii.gz"))


def test_cine_every_frame_stored_and_bad_cine_skipped(tmp_path: Path) -> None:
    data = _dataset(tmp_path / "data")
    patients = sorted((data / "training").iterdir())
    for d in patients[1:]:
        _add_cine(d)
    _add_cine(patients[0], shape_zyx=(5, 48, 48))  # one slice fewer than the ED/ES frames
    work = tmp_path / "work"
    summary = prepare(_cfg(data, work))
    assert summary["patients"] == 5 and summary["skipped"] == 1
    skipped = pd.read_csv(work / "skipped.csv")
    assert skipped.loc[0, "path"] == str(patients[0] / "patient001_4d.nii.gz")
    assert "cine frames (5, 48, 48) differ from ED frame (6, 48, 48)" in skipped.loc[0, "reason"]
    store = SliceStore(work)
    assert (store.manifest["cine_frames"] == 4).all()
    p = store.load("patient002", with_cine=True)
    assert p.cine is not None and p.cine.shape == (4, 6, 64, 64) and p.cine.dtype == np.float16
    # Same resampling and normalisation as the ED/ES frames (up to float16 rounding).
    np.testing.assert_allclose(p.cine[0], p.ed_image, atol=2e-3)
    np.testing.assert_allclose(p.cine[2], p.es_image, atol=2e-3)
    assert store.load("patient002").cine is None  # only loaded when asked


def test_atomic_outputs_get_umask_permissions(tmp_path: Path) -> None:
    import os
    import stat

    from cardioclr.atomic import atomic_dir, write_text

    mask = os.umask(0o022)
    os.umask(mask)
    write_text(tmp_path / "report.md", "x")
    assert stat.S_IMODE((tmp_path / "report.md").stat().st_mode) == 0o666 & ~mask
    with atomic_dir(tmp_path / "store") as d:
        (d / "a").write_text("y")
    assert stat.S_IMODE((tmp_path / "store").stat().st_mode) == 0o777 & ~mask
