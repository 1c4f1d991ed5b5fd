"""A packed, travelling form of a prepared store: one compressed file with a checksum.

``cardioclr pack WORK OUT`` writes the ED/ES images, the expert masks, the geometry, the
manifest and the splits of a prepared work directory into one zip archive (no cine frames:
they are most of a store's size and the paper's grid does not use them). ``cardioclr prepare
PACK --out WORK`` (and a study with ``--data PACK``) then installs it: the small text files
are written into ``WORK`` and ``WORK/dataset.json`` names the pack, from which
:class:`cardioclr.data.store.SliceStore` reads every patient directly (nothing is unpacked).
With ``--unpack`` (``unpack=True``; the ``paper-fast`` study does it) every patient is decoded
once into ``WORK/store/PID.npz`` instead, so that every later stage reads at the store's speed:
a read from the pack costs 1.8-2.4x a store read (zlib decompression, ~65% of it), which every
stage of a study pays again; unpacking pays it once, for ~20x the pack's size on disk
(float32 images). The arrays are the same either way (the decoded ones).
The splits travel with the data: written once by ``prepare``, never redrawn.

Format (version :data:`PACK_VERSION`), a zip archive (DEFLATE, level 9)::

    pack.json             {"format": "cardioclr-pack", "version", "store_version",
                           "image_encoding": {...}, "patients": [...], "sha256": {member: hex},
                           "source_work", "image_size", "spacing_mm"}
    dataset.json          the work directory's files, verbatim
    manifest.csv
    splits.json
    skipped.csv           (when present)
    store/PID.npz         one patient: an uncompressed .npz (plain numeric arrays, read with
                          ``allow_pickle=False``) compressed by the outer zip

Image encoding: the store's float32 intensities lie in [-0.5, 1.5] (robust 1st-99th
percentile scaling, clipped; :mod:`cardioclr.data.prepare`). They are quantised to uint8 codes
``round((x + 0.5) / 2 * 255)`` (step 0.0078, i.e. 0.8% of the 1st-99th percentile range, error
at most half of that; the images' own noise is several times larger) and stored as
differences along y (the PNG "Up" filter, modulo 256), which DEFLATE compresses better than the
codes themselves. Measured on 10 ACDC patients at 224 px: "Up" is 9% smaller than differences
along x (the "Sub" filter of packs written before; still read) and undoes 1.5x faster (the
running sum along y adds whole rows at a time, along x one pixel after the other). Masks
(labels 0-3) are stored as they are.

Integrity: ``pack.json`` holds the SHA-256 of every member; a member is checked each time it
is read (a damaged pack fails naming the member), and ``OUT.sha256`` (``sha256sum`` format)
holds the whole file's checksum (``cardioclr pack --verify OUT`` checks both).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from cardioclr.atomic import (
    atomic_dir,
    read_json,
    save_npz,
    write_json,
    write_text,
)
from cardioclr.errors import CardioclrError, DataError

log = logging.getLogger(__name__)

PACK_FORMAT = "cardioclr-pack"
PACK_VERSION = 1
#: Store intensities are clipped to [IMAGE_LOW, IMAGE_HIGH] by prepare; codes 0..255 cover it.
IMAGE_LOW, IMAGE_HIGH = -0.5, 1.5
IMAGE_STEP = (IMAGE_HIGH - IMAGE_LOW) / 255
IMAGE_ENCODING = {"dtype": "uint8", "low": IMAGE_LOW, "high": IMAGE_HIGH, "levels": 256,
                  "filter": "up"}
#: Difference filters a reader undoes: the image axis of the differences.
_FILTER_AXIS = {"up": -2, "sub-x": -1}
#: Work-directory files copied into the pack (``skipped.csv`` only when present).
WORK_FILES = ("dataset.json", "manifest.csv", "splits.json", "skipped.csv")
#: The key of ``WORK/dataset.json`` naming the pack a work directory reads its patients from.
PACK_KEY = "pack"
_IMAGES = ("ed_image", "es_image")
_GEOMETRY = ("source_affine", "source_shape_zyx", "source_spacing_zyx", "resampled_shape_yx",
             "offset_yx", "spacing_zyx", "has_mask")


# ------------------------------------------------------------------------------ image encoding


def encode_image(image: np.ndarray) -> np.ndarray:
    """float (z, S, S) in [-0.5, 1.5] -> uint8 (z, S, S) y-differences of the quantised codes."""
    codes = np.round((np.clip(image, IMAGE_LOW, IMAGE_HIGH) - IMAGE_LOW) / IMAGE_STEP).astype(np.uint8)
    first = np.zeros(codes.shape[:-2] + (1,) + codes.shape[-1:], np.uint8)
    return np.diff(codes, axis=-2, prepend=first)


def decode_image(stored: np.ndarray, image_filter: str = "up") -> np.ndarray:
    """Inverse of :func:`encode_image`: uint8 (z, S, S) -> float32 (z, S, S) in [-0.5, 1.5].

    ``image_filter``: the pack's ``image_encoding["filter"]`` ("sub-x" for packs written before
    the "up" filter).
    """
    # Modulo 256, as the differences were.
    codes = np.cumsum(stored, axis=_FILTER_AXIS[image_filter], dtype=np.uint8)
    # In place into one float32 array: no temporary arrays of the image's size.
    decoded = codes.astype(np.float32)
    np.multiply(decoded, np.float32(IMAGE_STEP), out=decoded)
    np.add(decoded, np.float32(IMAGE_LOW), out=decoded)
    return decoded


# ------------------------------------------------------------------------------ writing


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]  # numpy's stubs type **kwds as allow_pickle
    return buf.getvalue()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a whole file (hex), read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def is_pack(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a file holding a cardioclr pack (a zip with ``pack.json``)."""
    p = Path(path)
    if not p.is_file() or not zipfile.is_zipfile(p):
        return False
    try:
        with zipfile.ZipFile(p) as zf:
            return "pack.json" in zf.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


#: Bytes enough for any ``.npy`` header written by :func:`_npz_bytes` (format 1.0 headers are
#: at most 65535 + 10 bytes; ours are ~128).
_NPY_HEADER_MAX = 65545


def _npz_arrays(data: bytes) -> dict[str, np.ndarray]:
    """The arrays of an uncompressed ``.npz`` held in memory (as :func:`_npz_bytes` writes it).

    Each array is parsed in place from ``data`` (its ``.npy`` header, then ``np.frombuffer``);
    the images, decoded into new arrays next, stay read-only views, the rest is copied once
    into writable arrays. ``np.load`` on a ``BytesIO`` reads every member
    through ``zipfile`` (a copy and a CRC-32 each): measured 12 ms of a 224 px patient's 68 ms
    on the loaded development machine, against ~3 ms here. The member's SHA-256 was checked
    before, so the bytes are the ones written; a deflated inner member (not written by
    cardioclr) falls back to ``np.load``.
    """
    view = memoryview(data)
    arrays: dict[str, np.ndarray] = {}
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        infos = zf.infolist()
        if any(i.compress_type != zipfile.ZIP_STORED for i in infos):
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        for info in infos:
            # Local file header: 30 fixed bytes, then the name and an extra field of their own.
            name_len, extra_len = struct.unpack_from("<HH", view, info.header_offset + 26)
            start = info.header_offset + 30 + name_len + extra_len
            npy = io.BytesIO(view[start:start + min(info.file_size, _NPY_HEADER_MAX)])
            read_header = (np.lib.format.read_array_header_1_0
                           if np.lib.format.read_magic(npy) == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(npy)
            if dtype.hasobject:
                raise ValueError(f"{info.filename}: object arrays are not allowed")
            count = int(np.prod(shape, dtype=np.int64))
            flat = np.frombuffer(view, dtype=dtype, count=count, offset=start + npy.tell())
            key = info.filename.removesuffix(".npy")
            array = flat.reshape(shape, order="F" if fortran else "C")
            arrays[key] = array if key in _IMAGES else array.copy()
    return arrays


class PackReader:
    """Read access to a pack: its metadata, its work-directory files and its patients.

    The archive is opened per read (cheap: one central directory of ~100 entries), so a
    reader can be used from forked worker processes without sharing a file position.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise CardioclrError(f"{self.path}: pack not found (the work directory's "
                                 f"dataset.json names it; was it moved?)")
        try:
            with zipfile.ZipFile(self.path) as zf:
                self.meta: dict[str, Any] = json.loads(zf.read("pack.json"))
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as err:
            raise DataError(self.path, f"not a readable cardioclr pack ({type(err).__name__}: "
                            f"{err})") from err
        if self.meta.get("format") != PACK_FORMAT or self.meta.get("version") != PACK_VERSION:
            raise DataError(self.path, f"pack format {self.meta.get('format')!r} version "
                            f"{self.meta.get('version')!r}; this cardioclr reads {PACK_FORMAT!r} "
                            f"version {PACK_VERSION}")
        encoding = self.meta.get("image_encoding")
        if not isinstance(encoding, dict) or encoding.get("filter") not in _FILTER_AXIS or (
                {**encoding, "filter": IMAGE_ENCODING["filter"]} != IMAGE_ENCODING):
            raise DataError(self.path, f"unknown image encoding {encoding}")
        self.image_filter = str(encoding["filter"])

    @property
    def patients(self) -> list[str]:
        """Patient IDs in the pack."""
        return list(self.meta["patients"])

    def read_member(self, name: str) -> bytes:
        """One member's bytes, checked against its SHA-256 in ``pack.json``."""
        expected = self.meta["sha256"].get(name)
        if expected is None:
            raise DataError(self.path, f"no member {name!r} in the pack")
        try:
            with zipfile.ZipFile(self.path) as zf:
                data = zf.read(name)
        except (OSError, KeyError, zipfile.BadZipFile) as err:
            raise DataError(self.path, f"member {name}: unreadable ({type(err).__name__}: {err}); "
                            "copy the pack again") from err
        if _sha256(data) != expected:
            raise DataError(self.path, f"member {name}: checksum mismatch (damaged pack); copy "
                            "it again")
        return data

    def load_arrays(self, patient_id: str) -> dict[str, np.ndarray]:
        """One patient's arrays as the store holds them (images decoded to float32)."""
        name = f"store/{patient_id}.npz"
        data = self.read_member(name)
        try:
            arrays = _npz_arrays(data)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
            raise DataError(self.path, f"member {name}: unreadable ({err})") from err
        for k in _IMAGES:
            arrays[k] = decode_image(arrays[k], self.image_filter)
        return arrays

    def verify(self) -> dict[str, Any]:
        """Check every member's checksum and the sidecar ``.sha256`` (when present)."""
        for name in self.meta["sha256"]:
            self.read_member(name)
        sidecar = self.path.with_name(self.path.name + ".sha256")
        digest = file_sha256(self.path)
        if sidecar.is_file():
            recorded = sidecar.read_text(encoding="utf-8").split()[0]
            if recorded != digest:
                raise DataError(self.path, f"file checksum {digest} differs from {sidecar} "
                                f"({recorded}): damaged or replaced pack")
        return {"pack": str(self.path), "members": len(self.meta["sha256"]), "sha256": digest,
                "sidecar": sidecar.is_file(), "ok": True}


def install(pack_path: str | os.PathLike[str], work: str | os.PathLike[str],
            image_size: int | None = None, spacing_mm: float | None = None,
            unpack: bool = False) -> dict[str, Any]:
    """Make ``work`` a prepared work directory of the pack's patients (read from the pack, or
    from ``work/store`` with ``unpack``).

    Writes ``manifest.csv``, ``skipped.csv``, ``splits.json`` (kept when ``work`` already has
    one: splits are written once) and, last, ``dataset.json`` naming the pack (absolute path).
    ``image_size``/``spacing_mm``, when given, must match the pack's grid (a study asking for
    another grid than the data has would silently train on the wrong one). With ``unpack``,
    every patient is first decoded into ``work/store/PID.npz`` (built under a temporary name,
    renamed when complete) and ``dataset.json`` names the pack as ``unpacked_from`` only, so
    the store is read, not the pack.
    """
    reader = PackReader(pack_path)
    work = Path(work)
    info: dict[str, Any] = json.loads(reader.read_member("dataset.json"))
    for what, asked, held in (("image size (px)", image_size, reader.meta["image_size"]),
                              ("spacing (mm)", spacing_mm, reader.meta["spacing_mm"])):
        if asked is not None and float(asked) != float(held):
            raise CardioclrError(f"{reader.path}: the pack holds {what} {held}, but {asked} was "
                                 "asked for; re-pack a store prepared at that grid or use the "
                                 "pack's")
    work.mkdir(parents=True, exist_ok=True)
    write_text(work / "manifest.csv", reader.read_member("manifest.csv").decode("utf-8"))
    if "skipped.csv" in reader.meta["sha256"]:
        write_text(work / "skipped.csv", reader.read_member("skipped.csv").decode("utf-8"))
    splits = work / "splits.json"
    if splits.is_file():
        if read_json(splits) != json.loads(reader.read_member("splits.json")):
            raise CardioclrError(f"{splits} differs from the pack's splits; splits are written "
                                 "once: use a fresh work directory")
    else:
        write_text(splits, reader.read_member("splits.json").decode("utf-8"))
    if unpack:
        _unpack_patients(reader, work)
        info["unpacked_from"] = str(reader.path.resolve())
    else:
        info[PACK_KEY] = str(reader.path.resolve())
    info["packed_from"] = info.get("source")
    info["source"] = str(reader.path.resolve())
    write_json(work / "dataset.json", info)  # last: marks the work directory complete
    return info


def _unpack_patients(reader: PackReader, work: Path) -> None:
    """Decode every patient of ``reader`` into ``work/store/PID.npz`` (the store's format).

    One patient in memory at a time. Serial: on 16 cores a pool would finish sooner, but 100
    ACDC patients at 224 px took 12.7 s on the 2-core development machine, niced beside a
    training (benchmarks/pack_speed.py), against minutes of training after it.
    """
    with atomic_dir(work / "store") as store_tmp:  # clears debris of a killed earlier unpack
        for pid in reader.patients:
            save_npz(store_tmp / f"{pid}.npz", **reader.load_arrays(pid))


__all__ = ["PACK_KEY", "PackReader", "decode_image", "encode_image", "file_sha256", "install",
           "is_pack"]
