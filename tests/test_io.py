"""Readers: NIfTI volumes and label maps, and DICOM series (synthetic files written in the test)."""

from __future__ import annotations

import gzip
import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cardioclr.errors import DataError
from cardioclr.io.dicom import read_dicom_series
from cardioclr.io.volume import read_cine, read_label_volume, read_volume
from conftest import write_dicom_series, write_nifti

# ---------------------------------------------------------------- NIfTI


def test_nifti_read_is_zyx_with_spacing(tmp_path: Path) -> None:
    arr = np.arange(3 * 4 * 5, dtype=np.int16).reshape(3, 4, 5)  # (z, y, x)
    p = write_nifti(tmp_path / "a.nii.gz", arr, spacing_zyx=(8.0, 1.25, 1.5))
    vol = read_volume(p)
    assert vol.array.dtype == np.float32
    assert vol.shape == (3, 4, 5)
    np.testing.assert_array_equal(vol.array, arr)
    assert vol.spacing == (8.0, 1.25, 1.5)
    np.testing.assert_allclose(np.diag(vol.affine), [1.5, 1.25, 8.0, 1.0])


def test_nifti_trailing_singleton_time_axis_is_3d(tmp_path: Path) -> None:
    data = np.ones((5, 4, 3, 1), np.float32)  # (x, y, z, t=1)
    data[0, 0, 0, 0] = 7
    p = tmp_path / "t1.nii"
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(p))
    vol = read_volume(p)
    assert vol.shape == (3, 4, 5)
    assert vol.array[0, 0, 0] == 7


@pytest.mark.parametrize("shape", [(5, 4, 3, 1), (5, 4, 3, 1, 1)])
def test_nifti_trailing_singleton_axes_are_3d(tmp_path: Path, shape: tuple[int, ...]) -> None:
    p = tmp_path / "t.nii.gz"
    nib.save(nib.Nifti1Image(np.ones(shape, np.float32), np.eye(4)), str(p))
    assert read_volume(p).shape == (3, 4, 5)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
def test_nifti_stored_types_become_float32_with_scaling(tmp_path: Path, dtype: type) -> None:
    stored = np.arange(2 * 3 * 4).reshape(4, 3, 2).astype(dtype)  # (x, y, z)
    img = nib.Nifti1Image(stored, np.diag([1.5, 1.5, 8.0, 1.0]))
    img.header.set_data_dtype(dtype)
    img.header.set_slope_inter(2.0, -1.0)  # scanners store scaled integers
    p = tmp_path / "s.nii.gz"
    nib.save(img, str(p))
    vol = read_volume(p)
    assert vol.array.dtype == np.float32 and vol.shape == (2, 3, 4)
    np.testing.assert_allclose(vol.array, stored.transpose(2, 1, 0).astype(np.float32) * 2 - 1)


@pytest.mark.parametrize("dtype", [np.complex64, np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")])])
def test_nifti_complex_or_rgb_is_refused(tmp_path: Path, dtype: object) -> None:
    p = tmp_path / "c.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 2), dtype=dtype), np.eye(4)), str(p))
    with pytest.raises(DataError, match="unsupported NIfTI data type") as info:
        read_volume(p)
    assert info.value.path == str(p)


@pytest.mark.parametrize(("shape", "word"), [((8, 8), "2D image"), ((4, 4, 3, 2), "4D")])
def test_nifti_wrong_dimensionality(tmp_path: Path, shape: tuple[int, ...], word: str) -> None:
    p = tmp_path / "bad.nii.gz"
    nib.save(nib.Nifti1Image(np.ones(shape, np.float32), np.eye(4)), str(p))
    with pytest.raises(DataError, match=word) as info:
        read_volume(p)
    assert info.value.path == str(p)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nifti_non_finite_intensities(tmp_path: Path, bad: float) -> None:
    arr = np.ones((2, 4, 4), np.float32)
    arr[1, 2, 3] = bad
    p = write_nifti(tmp_path / "nan.nii.gz", arr)
    with pytest.raises(DataError, match="1 NaN or infinite") as info:
        read_volume(p)
    assert str(p) in str(info.value)


def test_nifti_truncated_missing_and_empty(tmp_path: Path) -> None:
    good = write_nifti(tmp_path / "good.nii.gz", np.random.default_rng(0).normal(size=(4, 32, 32)))
    truncated = tmp_path / "cut.nii.gz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DataError, match="corrupt or truncated") as info:
        read_volume(truncated)
    assert info.value.path == str(truncated)
    with pytest.raises(DataError, match="does not exist"):
        read_volume(tmp_path / "absent.nii.gz")
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        read_volume(tmp_path / "empty.nii.gz")
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(gzip.compress(b"not a nifti header" * 10))
    with pytest.raises(DataError, match="not a readable NIfTI"):
        read_volume(junk)


def test_label_volume_checks_values(tmp_path: Path) -> None:
    labels = np.zeros((2, 4, 4), np.uint8)
    labels[0, 1, 1], labels[1, 2, 2], labels[1, 3, 3] = 1, 2, 3
    vol = read_label_volume(write_nifti(tmp_path / "ok.nii.gz", labels))
    assert vol.array.dtype == np.uint8
    np.testing.assert_array_equal(vol.array, labels)
    labels[0, 0, 0] = 4
    with pytest.raises(DataError, match=r"label values \[4\] outside 0-3"):
        read_label_volume(write_nifti(tmp_path / "four.nii.gz", labels))
    frac = labels.astype(np.float32)
    frac[0, 0, 0] = 0.5
    with pytest.raises(DataError, match="non-integer"):
        read_label_volume(write_nifti(tmp_path / "frac.nii.gz", frac))


def test_cine_is_tzyx(tmp_path: Path) -> None:
    data = np.zeros((5, 4, 3, 7), np.float32)  # (x, y, z, t)
    data[4, 3, 2, 6] = 1.0
    p = tmp_path / "cine.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([1.5, 1.5, 9.0, 1.0])), str(p))
    cine, spacing = read_cine(p)
    assert cine.shape == (7, 3, 4, 5)
    assert cine[6, 2, 3, 4] == 1.0
    assert spacing == (9.0, 1.5, 1.5)
    with pytest.raises(DataError, match="expected a 4D cine"):
        read_cine(write_nifti(tmp_path / "three.nii.gz", np.zeros((2, 3, 3))))


# ---------------------------------------------------------------- DICOM


def _volume(shape: tuple[int, int, int] = (5, 6, 7)) -> np.ndarray:
    """(z, y, x) int16 whose every voxel differs, so any reordering or transposition shows."""
    return np.arange(np.prod(shape), dtype=np.int16).reshape(shape)


def test_dicom_shuffled_files_sorted_by_position(tmp_path: Path) -> None:
    vol = _volume()
    paths = write_dicom_series(tmp_path / "s", vol, spacing_zyx=(8.0, 1.5, 1.25), shuffle_seed=3)
    # File names do not follow slice order (otherwise the test would prove nothing).
    assert [p.name for p in paths] != sorted(p.name for p in paths)
    out = read_dicom_series(tmp_path / "s")
    assert out.array.dtype == np.float32
    np.testing.assert_array_equal(out.array, vol)
    # Slice spacing from positions (8 mm), not SliceThickness (6.4 mm); PixelSpacing is (row, col).
    assert out.spacing == pytest.approx((8.0, 1.5, 1.25))


def test_dicom_slices_ordered_along_normal_not_file_order(tmp_path: Path) -> None:
    """Slices written with decreasing position along the normal come back in increasing order."""
    vol = _volume((4, 3, 3))
    write_dicom_series(tmp_path / "s", vol, spacing_zyx=(-6.0, 2.0, 2.0), shuffle_seed=None)
    out = read_dicom_series(tmp_path / "s")
    np.testing.assert_array_equal(out.array, vol[::-1])
    assert out.spacing[0] == pytest.approx(6.0)


def test_dicom_rescale_applied(tmp_path: Path) -> None:
    vol = _volume((3, 4, 4))
    write_dicom_series(tmp_path / "s", vol, slope=2.5, intercept=-100.0)
    out = read_volume(tmp_path / "s")  # folders go through read_dicom_series
    np.testing.assert_allclose(out.array, vol * 2.5 - 100.0)


def test_dicom_affine_is_ras_and_matches_nibabel(tmp_path: Path) -> None:
    """An oblique series: our RAS affine agrees with nibabel's own DICOM geometry (in LPS)."""
    c, s = np.cos(0.3), np.sin(0.3)
    orientation = (c, s, 0.0, -0.5 * s, 0.5 * c, np.sqrt(0.75))
    origin = np.array([-100.0, -80.0, 40.0])
    paths = write_dicom_series(tmp_path / "s", _volume((4, 6, 7)), spacing_zyx=(8.0, 1.5, 1.25),
                               origin_lps=tuple(origin), orientation=orientation,
                               shuffle_seed=None)
    out = read_dicom_series(tmp_path / "s")
    to_lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    normal = np.cross(orientation[:3], orientation[3:])
    for i, j, k in [(0, 0, 0), (6, 0, 0), (0, 5, 0), (3, 2, 3)]:
        expected = (origin + i * 1.25 * np.array(orientation[:3])
                    + j * 1.5 * np.array(orientation[3:]) + k * 8.0 * normal)
        np.testing.assert_allclose((to_lps @ out.affine @ [i, j, k, 1])[:3], expected, atol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nibabel calls its DICOM readers experimental
        from nibabel.nicom import dicomwrappers

        ref = dicomwrappers.wrapper_from_file(str(paths[0])).affine  # voxel (row, col, .) -> LPS
    for i, j in [(0, 0), (6, 5), (2, 4)]:
        np.testing.assert_allclose(to_lps @ out.affine @ [i, j, 0, 1], ref @ [j, i, 0, 1], atol=1e-6)


def test_dicom_mask_written_with_affine_overlays(tmp_path: Path) -> None:
    """A mask saved as NIfTI with the series' affine reads back voxel-aligned with the series."""
    write_dicom_series(tmp_path / "s", _volume((3, 4, 5)), spacing_zyx=(7.0, 1.5, 1.25))
    img = read_dicom_series(tmp_path / "s")
    mask = (img.array % 4).astype(np.uint8)
    p = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(mask.transpose(2, 1, 0), img.affine), str(p))
    back = read_label_volume(p)
    np.testing.assert_array_equal(back.array, mask)
    np.testing.assert_allclose(back.affine, img.affine)
    assert back.spacing == pytest.approx(img.spacing)


def test_dicom_non_dicom_files_skipped_quietly(tmp_path: Path) -> None:
    vol = _volume((3, 4, 4))
    write_dicom_series(tmp_path / "s", vol)
    (tmp_path / "s" / "README").write_text("exported by the PACS\n")
    (tmp_path / "s" / ".DS_Store").write_bytes(b"\0\1\2")
    (tmp_path / "s" / "notes.bin").write_bytes(bytes(range(256)) * 4)
    np.testing.assert_array_equal(read_dicom_series(tmp_path / "s").array, vol)


def test_dicom_folder_without_dicom(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no DICOM image files"):
        read_dicom_series(tmp_path / "empty")
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "README").write_text("nothing here")
    with pytest.raises(DataError, match="no DICOM image files"):
        read_dicom_series(tmp_path / "text")


def test_dicom_corrupt_file_named_without_patient_identity(tmp_path: Path) -> None:
    paths = write_dicom_series(tmp_path / "s", _volume((4, 16, 16)), patient_name="Smith^Johanna",
                               patient_id="MRN-777123")
    victim = paths[2]
    victim.write_bytes(victim.read_bytes()[:-300])  # truncated pixel data
    with pytest.raises(DataError) as info:
        read_dicom_series(tmp_path / "s")
    message = str(info.value)
    assert info.value.path == str(victim)
    assert "corrupt or" in message and "DICOM" in message
    for secret in ("Smith", "Johanna", "MRN-777123"):
        assert secret not in message
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__ or info.value.__context__ is None


def test_dicom_two_series_error_names_series_not_patient(tmp_path: Path) -> None:
    write_dicom_series(tmp_path / "s", _volume((3, 4, 4)), patient_name="Roe^Richard")
    write_dicom_series(tmp_path / "s", _volume((2, 4, 4)), first_number=100,
                       patient_name="Roe^Richard")
    with pytest.raises(DataError, match="2 DICOM series") as info:
        read_dicom_series(tmp_path / "s")
    assert "Roe" not in str(info.value) and "Richard" not in str(info.value)


def test_dicom_single_slice_is_a_one_slice_stack_like_nifti(tmp_path: Path) -> None:
    # A one-image series reads as (1, rows, columns), as a NIfTI of shape (x, y, 1) does; the
    # slice spacing comes from the header (SliceThickness here: the writer sets 0.8 x 8 mm).
    vol = _volume((1, 4, 5))
    write_dicom_series(tmp_path / "s", vol)
    dicom = read_dicom_series(tmp_path / "s")
    nifti = read_volume(write_nifti(tmp_path / "one.nii.gz", vol, spacing_zyx=(6.4, 1.5, 1.25)))
    assert dicom.shape == nifti.shape == (1, 4, 5)
    np.testing.assert_array_equal(dicom.array, nifti.array)
    assert dicom.spacing == pytest.approx(nifti.spacing)
    np.testing.assert_allclose(np.linalg.norm(dicom.affine[:3, :3], axis=0), [1.25, 1.5, 6.4])
    write_dicom_series(tmp_path / "m", np.full((1, 4, 5), 2, np.int16))
    assert read_label_volume(tmp_path / "m").shape == (1, 4, 5)


def test_dicom_single_slice_prefers_spacing_between_slices(tmp_path: Path) -> None:
    import pydicom

    (path,) = write_dicom_series(tmp_path / "s", _volume((1, 4, 4)))
    ds = pydicom.dcmread(path)
    ds.SpacingBetweenSlices = -10.0  # some vendors sign it; the gap is its magnitude
    ds.save_as(path)
    assert read_dicom_series(tmp_path / "s").spacing[0] == pytest.approx(10.0)


def test_dicom_single_slice_without_slice_spacing_is_refused(tmp_path: Path) -> None:
    import pydicom

    (path,) = write_dicom_series(tmp_path / "s", _volume((1, 4, 4)))
    ds = pydicom.dcmread(path)
    del ds.SliceThickness
    ds.save_as(path)
    with pytest.raises(DataError, match="without SpacingBetweenSlices or SliceThickness") as info:
        read_dicom_series(tmp_path / "s")
    assert info.value.path == str(tmp_path / "s")


def test_dicom_repeated_positions_cine_in_one_folder(tmp_path: Path) -> None:
    uid = "1.2.826.0.1.3680043.8.498.99"
    write_dicom_series(tmp_path / "s", _volume((3, 4, 4)), series_uid=uid)
    write_dicom_series(tmp_path / "s", _volume((3, 4, 4)), series_uid=uid, first_number=50)
    with pytest.raises(DataError, match="same slice position"):
        read_dicom_series(tmp_path / "s")


def test_dicom_missing_slice_uneven_gap(tmp_path: Path) -> None:
    paths = write_dicom_series(tmp_path / "s", _volume((5, 4, 4)), shuffle_seed=None)
    paths[2].unlink()
    with pytest.raises(DataError, match="uneven slice spacing"):
        read_dicom_series(tmp_path / "s")


def test_dicom_multiframe_not_supported(tmp_path: Path) -> None:
    import pydicom

    paths = write_dicom_series(tmp_path / "s", _volume((2, 4, 4)))
    ds = pydicom.dcmread(paths[0])
    ds.NumberOfFrames = 2
    ds.PixelData = _volume((2, 4, 4)).tobytes()
    ds.save_as(paths[0])
    with pytest.raises(DataError, match="not supported") as info:
        read_dicom_series(tmp_path / "s")
    assert info.value.path == str(paths[0])


def test_dicom_folder_via_read_label_volume(tmp_path: Path) -> None:
    labels = np.zeros((3, 4, 4), np.int16)
    labels[1, 1:3, 1:3] = 3
    write_dicom_series(tmp_path / "m", labels)
    np.testing.assert_array_equal(read_label_volume(tmp_path / "m").array, labels)
    shutil.rmtree(tmp_path / "m")
    labels[0, 0, 0] = 9
    write_dicom_series(tmp_path / "m", labels)
    with pytest.raises(DataError, match="outside 0-3"):
        read_label_volume(tmp_path / "m")


@pytest.mark.parametrize("keep_bytes", [140, 200, 400, 900])
def test_dicom_truncated_anywhere_is_an_error_not_a_dropped_slice(tmp_path: Path,
                                                                  keep_bytes: int) -> None:
    """A slice cut short must fail loudly: silently dropping it would shift the stack geometry."""
    paths = write_dicom_series(tmp_path / "s", _volume((3, 8, 8)), shuffle_seed=None)
    paths[0].write_bytes(paths[0].read_bytes()[:keep_bytes])
    with pytest.raises(DataError, match="corrupt or") as info:
        read_dicom_series(tmp_path / "s")
    assert info.value.path == str(paths[0])


@pytest.mark.parametrize("sop", ["1.2.840.10008.1.3.10", "1.2.840.10008.5.1.4.1.1.88.11"])
def test_dicom_non_image_objects_skipped(tmp_path: Path, sop: str) -> None:
    """A DICOMDIR or a structured report beside the slices is not an image: skipped quietly."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    vol = _volume((3, 4, 4))
    write_dicom_series(tmp_path / "s", vol)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.save_as(tmp_path / "s" / "DICOMDIR", enforce_file_format=True)
    np.testing.assert_array_equal(read_dicom_series(tmp_path / "s").array, vol)
