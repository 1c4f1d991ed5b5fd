"""The packed travelling store (cardioclr.data.pack): round trip, checksums, installation."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from cardioclr.cli import main as cli_main
from cardioclr.data.masks import load_labels
from cardioclr.data.pack import (
    IMAGE_HIGH,
    IMAGE_LOW,
    IMAGE_STEP,
    PackReader,
    _npz_arrays,
    _npz_bytes,
    decode_image,
    encode_image,
    install,
    is_pack,
)
from cardioclr.data.packing import pack
from cardioclr.data.prepare import PrepareConfig, prepare
from cardioclr.data.store import SliceStore
from cardioclr.errors import CardioclrError, DataError


def test_image_encoding_round_trip_within_half_a_step():
    rng = np.random.default_rng(0)
    x = rng.uniform(IMAGE_LOW, IMAGE_HIGH, size=(3, 16, 16)).astype(np.float32)
    x[0, 0, :4] = [IMAGE_LOW, IMAGE_HIGH, IMAGE_LOW, IMAGE_HIGH]  # wrap-around of the x-differences
    y = decode_image(encode_image(x))
    assert y.dtype == np.float32 and y.shape == x.shape
    assert np.abs(y - x).max() <= IMAGE_STEP / 2 + 1e-6


def test_packs_with_x_differences_still_decode():
    # Packs written before the "up" filter hold differences along x ("sub-x").
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 256, size=(2, 8, 8), dtype=np.uint8)
    sub_x = np.diff(codes, axis=-1, prepend=np.zeros((2, 8, 1), np.uint8))
    expected = codes.astype(np.float32) * np.float32(IMAGE_STEP) + np.float32(IMAGE_LOW)
    np.testing.assert_array_equal(decode_image(sub_x, "sub-x"), expected)
    assert not np.array_equal(decode_image(sub_x, "up"), expected)


def test_in_memory_npz_parsing_matches_np_load():
    arrays = {"ed_image": np.arange(24, dtype=np.uint8).reshape(2, 3, 4),
              "ed_mask": np.asfortranarray(np.arange(12, dtype=np.uint8).reshape(3, 4)),
              "has_mask": np.array(True), "source_affine": np.eye(4), "empty": np.zeros((0, 3))}
    parsed = _npz_arrays(_npz_bytes(arrays))
    assert set(parsed) == set(arrays)
    for k, a in arrays.items():
        assert parsed[k].dtype == a.dtype and parsed[k].shape == a.shape
        np.testing.assert_array_equal(parsed[k], a)
    parsed["ed_mask"][0, 0] = 9  # everything but the images (decoded into new arrays) is writable


@pytest.fixture(scope="module")
def packed(tiny_work: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pack") / "tiny.pack"
    summary = pack(tiny_work, out)
    assert summary["patients"] == len(SliceStore(tiny_work).patient_ids)
    return out


def test_pack_round_trip_through_prepare(tiny_work: Path, packed: Path, tmp_path: Path):
    assert is_pack(packed) and not is_pack(tiny_work)
    assert packed.with_name(packed.name + ".sha256").is_file()
    work = tmp_path / "work"
    info = prepare(PrepareConfig(data=str(packed), out=str(work), image_size=64, spacing_mm=3.0))
    assert not (work / "store").exists()  # read in place, nothing unpacked
    a, b = SliceStore(tiny_work), SliceStore(work)
    assert info["patients"] == len(a.patient_ids) and b.patient_ids == a.patient_ids
    assert b.splits == a.splits and b.image_size == 64 and b.classes == a.classes
    for pid in a.patient_ids[:4]:
        x, y = a.load(pid), b.load(pid)
        assert np.abs(x.ed_image - y.ed_image).max() <= IMAGE_STEP / 2 + 1e-6
        np.testing.assert_array_equal(x.es_mask, y.es_mask)
        np.testing.assert_allclose(x.geometry.source_affine, y.geometry.source_affine)
        assert y.cine is None and x.spacing_zyx == y.spacing_zyx
        ed, _ = load_labels(work, pid, "expert")
        np.testing.assert_array_equal(ed, x.ed_mask)


def test_unpacked_pack_is_read_from_the_store_with_the_same_arrays(packed: Path,
                                                                   tmp_path: Path):
    in_place, unpacked = tmp_path / "in_place", tmp_path / "unpacked"
    install(packed, in_place)
    assert cli_main(["prepare", str(packed), "--out", str(unpacked), "--unpack"]) == 0
    info = SliceStore(unpacked).info
    assert "pack" not in info and info["unpacked_from"] == str(packed.resolve())
    a, b = SliceStore(in_place), SliceStore(unpacked)
    assert b.patient_ids == a.patient_ids and b.splits == a.splits
    assert sorted(p.name for p in (unpacked / "store").iterdir()) == sorted(
        f"{pid}.npz" for pid in a.patient_ids)  # no temporary left behind
    for pid in a.patient_ids:
        assert b.path(pid) == unpacked / "store" / f"{pid}.npz"
        x, y = a.load(pid), b.load(pid)
        np.testing.assert_array_equal(x.ed_image, y.ed_image)  # the decoded arrays, exactly
        np.testing.assert_array_equal(x.es_image, y.es_image)
        np.testing.assert_array_equal(x.ed_mask, y.ed_mask)
        assert x.geometry.offset_yx == y.geometry.offset_yx and x.spacing_zyx == y.spacing_zyx


def test_pack_refuses_another_grid_and_other_splits(packed: Path, tmp_path: Path):
    with pytest.raises(CardioclrError, match="image size"):
        install(packed, tmp_path / "w1", image_size=224)
    work = tmp_path / "w2"
    work.mkdir()
    (work / "splits.json").write_text('{"train": [], "test": [], "folds": [], "seed": 1, "method": "x"}')
    with pytest.raises(CardioclrError, match="splits"):
        install(packed, work)


def test_damaged_member_is_named(packed: Path, tmp_path: Path):
    bad = tmp_path / "bad.pack"
    with zipfile.ZipFile(packed) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.startswith("store/") and not any(
                    n.filename.startswith("store/") for n in dst.infolist()):
                data = data[:-8] + b"\0" * 8  # flips bytes of the first patient
                damaged = item.filename
            dst.writestr(item, data)
    with pytest.raises(DataError, match=f"{damaged}: checksum mismatch"):
        PackReader(bad).verify()
    work = tmp_path / "w"
    install(bad, work)
    pid = damaged.removeprefix("store/").removesuffix(".npz")
    with pytest.raises(DataError, match="checksum"):
        SliceStore(work).load(pid)


def test_a_pack_written_with_x_differences_reads_the_same(packed: Path, tmp_path: Path):
    # Packs from before the "up" filter: every image member re-encoded along x, pack.json says so.
    import hashlib
    import io
    import json

    old = tmp_path / "old.pack"
    with zipfile.ZipFile(packed) as src, zipfile.ZipFile(old, "w", zipfile.ZIP_DEFLATED) as dst:
        meta = json.loads(src.read("pack.json"))
        for item in src.infolist():
            if item.filename == "pack.json":
                continue
            data = src.read(item.filename)
            if item.filename.startswith("store/"):
                with np.load(io.BytesIO(data)) as z:
                    arrays = {k: z[k] for k in z.files}
                for k in ("ed_image", "es_image"):
                    codes = np.cumsum(arrays[k], axis=-2, dtype=np.uint8)
                    arrays[k] = np.diff(codes, axis=-1, prepend=np.zeros(codes.shape[:-1] + (1,), np.uint8))
                data = _npz_bytes(arrays)
                meta["sha256"][item.filename] = hashlib.sha256(data).hexdigest()
            dst.writestr(item.filename, data)
        meta["image_encoding"] = {**meta["image_encoding"], "filter": "sub-x"}
        dst.writestr("pack.json", json.dumps(meta))
    new_work, old_work = tmp_path / "new", tmp_path / "old"
    install(packed, new_work)
    install(old, old_work)
    a, b = SliceStore(new_work), SliceStore(old_work)
    for pid in a.patient_ids[:3]:
        np.testing.assert_array_equal(a.load(pid).ed_image, b.load(pid).ed_image)
        np.testing.assert_array_equal(a.load(pid).es_mask, b.load(pid).es_mask)


def test_cli_pack_verify(packed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert cli_main(["pack", "--verify", str(packed)]) == 0
    assert '"ok": true' in capsys.readouterr().out
    copy = tmp_path / packed.name
    copy.write_bytes(packed.read_bytes())
    (tmp_path / (packed.name + ".sha256")).write_text("0" * 64 + f"  {packed.name}\n")
    assert cli_main(["pack", "--verify", str(copy)]) == 1  # members fine, file checksum not
    assert "file checksum" in capsys.readouterr().err
