"""Label masks for later stages: the predicted segmentation or the expert annotation.

Both sources give the same thing: ED and ES label volumes, uint8 (z, S, S) on the store grid
(S = ``SliceStore.image_size`` pixels at ``SliceStore.spacing_mm`` mm in-plane), with labels
0 = background, 1 = RV cavity, 2 = LV myocardium, 3 = LV cavity
(:mod:`cardioclr.clinical.labels`).

``predicted`` masks live in ``WORK/segmentation/masks/PID.npz`` (written by
``cardioclr segment predict WORK``), their QC flags in ``WORK/segmentation/qc_flags.csv``
(:func:`mask_flags`); ``expert`` masks come from the store itself.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from cardioclr.choices import MASK_SOURCES
from cardioclr.clinical.labels import MAX_LABEL
from cardioclr.data.store import SliceStore
from cardioclr.errors import CardioclrError, DataError
from cardioclr.layout import WorkLayout


def segmentation_dir(work: str | os.PathLike[str]) -> Path:
    """``WORK/segmentation``: model, masks, NIfTI, metrics and QC of the segmentation stage."""
    return WorkLayout(work).segmentation


def predicted_mask_path(work: str | os.PathLike[str], patient_id: str) -> Path:
    """``WORK/segmentation/masks/PID.npz``."""
    return WorkLayout(work).segmentation_masks / f"{patient_id}.npz"


def mask_flags(work: str | os.PathLike[str], patient_ids: list[str]) -> list[str]:
    """Per patient, the distinct QC flags of its predicted masks (``qc_flags.csv`` rows of
    ``cardioclr segment predict``), sorted and ``;``-separated; empty when it has none or the
    work directory has no ``qc_flags.csv``."""
    path = WorkLayout(work).qc_flags
    if not path.is_file():
        return [""] * len(patient_ids)
    rows = pd.read_csv(path, dtype={"patient_id": str})
    by_patient = rows.groupby("patient_id")["flag"].agg(lambda f: ";".join(sorted(set(map(str, f)))))
    return [str(by_patient.get(p, "")) for p in patient_ids]


def load_labels(work: str | os.PathLike[str], patient_id: str, source: str) -> tuple[np.ndarray, np.ndarray]:
    """ED and ES labels of one patient, uint8 (z, S, S) with values 0-3 on the store grid.

    ``source``: ``"predicted"`` (``cardioclr segment predict`` output) or ``"expert"`` (the
    store's annotation). Raises :class:`CardioclrError` when the masks are not available.
    """
    if source not in MASK_SOURCES:
        raise CardioclrError(f"unknown mask source {source!r}; choose one of {', '.join(MASK_SOURCES)}")
    if source == "predicted":
        p = predicted_mask_path(work, patient_id)
        if not p.is_file():
            raise CardioclrError(f"{p}: no predicted mask for patient {patient_id}; run "
                                 f"`cardioclr segment predict {work}` first")
        try:
            with np.load(p) as z:
                ed, es = z["ed_mask"], z["es_mask"]
        except (OSError, KeyError, ValueError) as err:
            raise DataError(p, f"unreadable predicted mask ({err}); re-run "
                            f"`cardioclr segment predict {work}`") from err
        return _check(ed, p, "ed_mask"), _check(es, p, "es_mask")
    store = SliceStore(work)
    ps = store.load(patient_id)
    if ps.ed_mask is None or ps.es_mask is None:
        raise DataError(store.path(patient_id), f"patient {patient_id} has no expert mask; use "
                        "--masks predicted (after `cardioclr segment predict`)")
    return _check(ps.ed_mask, store.path(patient_id), "ed_mask"), _check(ps.es_mask, store.path(patient_id),
                                                                        "es_mask")


def _check(a: np.ndarray, path: Path, name: str) -> np.ndarray:
    if a.ndim != 3 or a.shape[1] != a.shape[2]:
        raise DataError(path, f"{name} has shape {a.shape}; expected (z, S, S)")
    if a.size and int(a.max()) > MAX_LABEL:
        raise DataError(path, f"{name} has label {int(a.max())}; expected labels 0-{MAX_LABEL}")
    return a.astype(np.uint8, copy=False)
