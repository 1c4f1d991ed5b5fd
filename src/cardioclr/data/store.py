"""The prepared slice store written by ``cardioclr prepare`` and read by every later stage.

Layout of a work directory ``WORK``::

    WORK/dataset.json     classes, image size (px), in-plane spacing (mm), source; written last
    WORK/manifest.csv     one row per patient: patient_id, label, label_index, subset, ...
    WORK/splits.json      {"train": [...], "test": [...], "folds": [[...], ...],
                           "unlabelled": [...], "seed": int, "method": "random"|"official"}
    WORK/skipped.csv      patients that could not be read, with the file and the reason
    WORK/store/PID.npz    arrays of one patient (see :class:`PatientSlices`)

or, for a work directory installed from a pack (``cardioclr prepare PACK``), no ``store/``:
``dataset.json``'s ``pack`` names the packed file the patients are read from
(:mod:`cardioclr.data.pack`).

Splits are by patient, written once by ``prepare`` and only read afterwards.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
from scipy.ndimage import zoom

from cardioclr.atomic import read_json
from cardioclr.data.pack import PackReader
from cardioclr.errors import CardioclrError, DataError

STORE_VERSION = 1


@dataclass(frozen=True)
class Geometry:
    """How the store grid maps back to the source image grid.

    The source (z, H, W) grid was resampled in-plane to ``resampled_shape_yx`` and then
    cropped/padded so that store pixel (0, 0) is resampled pixel ``offset_yx`` (negative when
    padded). ``source_affine`` is the source file's 4x4 voxel-to-world matrix (NIfTI order x, y, z).
    """

    source_affine: np.ndarray
    source_shape_zyx: tuple[int, int, int]
    source_spacing_zyx: tuple[float, float, float]
    resampled_shape_yx: tuple[int, int]
    offset_yx: tuple[int, int]


@dataclass(frozen=True)
class PatientSlices:
    """One patient's prepared frames on the store grid.

    ``ed_image``/``es_image``: float32 (z, S, S), robustly normalised (1st-99th percentile of
    the patient's ED+ES intensities mapped to 0-1, then clipped to [-0.5, 1.5]).
    ``ed_mask``/``es_mask``: uint8 (z, S, S) expert labels 0-3, or None when not available.
    ``cine``: float16 (t, z, S, S) every cine frame when a 4D cine exists, else None.
    ``spacing_zyx``: (slice spacing, pixel, pixel) in mm.
    """

    patient_id: str
    ed_image: np.ndarray
    es_image: np.ndarray
    ed_mask: np.ndarray | None
    es_mask: np.ndarray | None
    cine: np.ndarray | None
    spacing_zyx: tuple[float, float, float]
    geometry: Geometry

    @property
    def n_slices(self) -> int:
        """Number of short-axis slices z."""
        return int(self.ed_image.shape[0])


@dataclass(frozen=True)
class Splits:
    """Patient-level splits. ``folds[k]`` lists the validation patients of fold k (within train)."""

    train: list[str]
    test: list[str]
    folds: list[list[str]]
    unlabelled: list[str]
    seed: int
    method: str

    def fold_train(self, k: int) -> list[str]:
        """Training patients of fold k: ``train`` minus ``folds[k]``."""
        held = set(self.folds[k])
        return [p for p in self.train if p not in held]


class SliceStore:
    """Read access to a prepared work directory."""

    def __init__(self, work: str | os.PathLike[str]) -> None:
        self.work = Path(work)
        info = self.work / "dataset.json"
        if not info.is_file():
            raise CardioclrError(f"{self.work}: not a prepared work directory (no dataset.json); "
                                 "run `cardioclr prepare DATA --out WORK` first")
        self.info = read_json(info)
        if self.info.get("store_version") != STORE_VERSION:
            raise CardioclrError(f"{info}: store version {self.info.get('store_version')} is not "
                                 f"{STORE_VERSION}; re-run `cardioclr prepare`")
        self._pack = None
        if self.info.get("pack"):
            self._pack = PackReader(self.info["pack"])

    @property
    def classes(self) -> list[str]:
        """Class names in label-index order."""
        return list(self.info["classes"])

    @property
    def image_size(self) -> int:
        """Side S of the square store grid in pixels."""
        return int(self.info["image_size"])

    @property
    def spacing_mm(self) -> float:
        """In-plane pixel spacing of the store grid in mm."""
        return float(self.info["spacing_mm"])

    @cached_property
    def manifest(self) -> pd.DataFrame:
        """One row per stored patient, indexed by ``patient_id``."""
        df = pd.read_csv(self.work / "manifest.csv", dtype={"patient_id": str, "label": str})
        return df.set_index("patient_id", drop=False)

    @cached_property
    def splits(self) -> Splits:
        """The patient-level splits written by ``prepare``."""
        return read_splits(self.work)

    @property
    def patient_ids(self) -> list[str]:
        """All stored patients (labelled and unlabelled)."""
        return list(self.manifest["patient_id"])

    def label_index(self, patient_id: str) -> int:
        """Class index of a labelled patient (``-1`` when unlabelled)."""
        return int(self.manifest.at[patient_id, "label_index"])

    def path(self, patient_id: str) -> Path:
        """The ``.npz`` file of a patient (the pack file for a work directory read from one)."""
        if self._pack is not None:
            return self._pack.path
        return self.work / "store" / f"{patient_id}.npz"

    def load(self, patient_id: str, with_cine: bool = False) -> PatientSlices:
        """Load one patient's arrays (cine only when asked: it is the largest part).

        Raises :class:`DataError` naming the file when it is missing, truncated or lacks arrays.
        """
        p = self.path(patient_id)
        if self._pack is not None:
            if patient_id not in self._pack.patients:
                raise DataError(p, f"patient {patient_id} is not in the pack")
            return _slices(self._pack.load_arrays(patient_id), patient_id, with_cine)
        if not p.is_file():
            raise DataError(p, f"patient {patient_id} is not in the store")
        try:
            return self._load(p, patient_id, with_cine)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            raise DataError(p, f"unreadable store file ({type(err).__name__}: {err}); rebuild it "
                            "with `cardioclr prepare DATA --out WORK --overwrite`") from err

    @staticmethod
    def _load(p: Path, patient_id: str, with_cine: bool) -> PatientSlices:
        with np.load(p) as z:
            return _slices(z, patient_id, with_cine)


def _slices(z: Any, patient_id: str, with_cine: bool) -> PatientSlices:
    """:class:`PatientSlices` from a store file's (or a pack member's) named arrays."""
    has_mask = bool(z["has_mask"])
    cine = z["cine"] if with_cine and "cine" in z else None
    geo = Geometry(
        source_affine=z["source_affine"],
        source_shape_zyx=_ints3(z["source_shape_zyx"]),
        source_spacing_zyx=_floats3(z["source_spacing_zyx"]),
        resampled_shape_yx=_ints2(z["resampled_shape_yx"]),
        offset_yx=_ints2(z["offset_yx"]),
    )
    return PatientSlices(
        patient_id=patient_id,
        ed_image=z["ed_image"],
        es_image=z["es_image"],
        ed_mask=z["ed_mask"] if has_mask else None,
        es_mask=z["es_mask"] if has_mask else None,
        cine=cine,
        spacing_zyx=_floats3(z["spacing_zyx"]),
        geometry=geo,
    )


def read_splits(work: str | os.PathLike[str]) -> Splits:
    """Read ``WORK/splits.json``; fails clearly when it is missing."""
    p = Path(work) / "splits.json"
    if not p.is_file():
        raise CardioclrError(f"{p} is missing; run `cardioclr prepare` first")
    s = read_json(p)
    return Splits(train=list(s["train"]), test=list(s["test"]), folds=[list(f) for f in s["folds"]],
                  unlabelled=list(s.get("unlabelled", [])), seed=int(s["seed"]),
                  method=str(s["method"]))


def to_source_grid(array: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Map a label array from the store grid (z, S, S) back to the source grid (z, H, W).

    Nearest-neighbour: labels stay labels. Returns uint8 of ``geometry.source_shape_zyx``.
    """
    z, s = array.shape[0], array.shape[1]
    ry, rx = geometry.resampled_shape_yx
    oy, ox = geometry.offset_yx
    canvas = np.zeros((z, ry, rx), dtype=array.dtype)
    # Overlap between store window [oy, oy+s) and resampled grid [0, ry).
    y0, y1 = max(oy, 0), min(oy + s, ry)
    x0, x1 = max(ox, 0), min(ox + s, rx)
    if y1 > y0 and x1 > x0:
        canvas[:, y0:y1, x0:x1] = array[:, y0 - oy:y1 - oy, x0 - ox:x1 - ox]
    sz, sy, sx = geometry.source_shape_zyx
    out = zoom(canvas, (1.0, sy / ry, sx / rx), order=0, grid_mode=True, mode="nearest")
    return _fit(out, (sz, sy, sx)).astype(np.uint8)


def _fit(a: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Crop or zero-pad ``a`` to exactly ``shape`` (zoom can be off by one pixel)."""
    out = np.zeros(shape, dtype=a.dtype)
    sl = tuple(slice(0, min(x, y)) for x, y in zip(a.shape, shape, strict=True))
    out[sl] = a[sl]
    return out


# Typed views of the store's small geometry arrays (written by prepare with these lengths).
def _ints3(a: np.ndarray) -> tuple[int, int, int]:
    return cast("tuple[int, int, int]", tuple(int(v) for v in a))


def _ints2(a: np.ndarray) -> tuple[int, int]:
    return cast("tuple[int, int]", tuple(int(v) for v in a))


def _floats3(a: np.ndarray) -> tuple[float, float, float]:
    return cast("tuple[float, float, float]", tuple(float(v) for v in a))
