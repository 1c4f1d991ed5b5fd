"""Per-patient clinical feature table: :func:`compute_indices` of the ED/ES masks + height/weight,
optionally + the regional features of :mod:`cardioclr.clinical.regional` (AHA segments, thickening,
heterogeneity, sphericity, volume profiles; ``regional=True``).

The masks come from :func:`cardioclr.data.masks.load_labels`: ``predicted`` (the honest
default: what a deployed pipeline would see) or ``expert`` (the annotation; an upper bound).
Spacing is the store grid's ``PatientSlices.spacing_zyx``; height and weight come from the
manifest (NaN when unknown, which makes the ``*_per_m2`` features NaN too).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence

import pandas as pd

from cardioclr.clinical.indices import INDEX_NAMES, compute_indices
from cardioclr.clinical.regional import REGIONAL_NAMES, regional_features
from cardioclr.data.masks import load_labels
from cardioclr.data.store import SliceStore

log = logging.getLogger(__name__)

#: Columns of :func:`feature_table`, in order.
FEATURE_NAMES: tuple[str, ...] = (*INDEX_NAMES, "height_cm", "weight_kg")
#: Columns of :func:`feature_table` with ``regional=True``.
ALL_FEATURE_NAMES: tuple[str, ...] = (*FEATURE_NAMES, *REGIONAL_NAMES)


def _float_or_nan(v: object) -> float:
    try:
        f = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan
    return f if math.isfinite(f) else math.nan


def patient_features(store: SliceStore, patient_id: str, source: str, regional: bool = False,
                     notes: list[str] | None = None) -> dict[str, float]:
    """Features of one patient (keys :data:`FEATURE_NAMES`, or :data:`ALL_FEATURE_NAMES` with
    ``regional``) from its ``source`` masks; why a regional value is NaN is appended to ``notes``.

    ``source``: ``"predicted"`` or ``"expert"``. Raises :class:`~cardioclr.errors.CardioclrError`
    when the masks are unavailable (e.g. segmentation not run yet).
    """
    ed, es = load_labels(store.work, patient_id, source)
    spacing = store.load(patient_id).spacing_zyx
    row = store.manifest.loc[patient_id]
    height = _float_or_nan(row.get("height_cm"))
    weight = _float_or_nan(row.get("weight_kg"))
    feats = compute_indices(ed, es, spacing, height_cm=height, weight_kg=weight)
    feats["height_cm"] = height
    feats["weight_kg"] = weight
    if not regional:
        return {k: feats[k] for k in FEATURE_NAMES}
    reg = regional_features(ed, es, spacing)
    if notes is not None:
        notes.extend(reg.notes)
    return {**{k: feats[k] for k in FEATURE_NAMES}, **reg.values}


def feature_table(work: str | os.PathLike[str] | SliceStore, patient_ids: Sequence[str],
                  source: str, regional: bool = False,
                  notes: dict[str, list[str]] | None = None) -> pd.DataFrame:
    """Features of the given patients: DataFrame (len(patient_ids), len(FEATURE_NAMES)) or, with
    ``regional``, (len(patient_ids), len(ALL_FEATURE_NAMES)), indexed by ``patient_id`` in the
    given order; volumes mL, mass g, thickness mm, EF and thickening %, angles degrees.
    ``notes`` (optional) receives patient -> reasons for NaN regional values."""
    store = work if isinstance(work, SliceStore) else SliceStore(work)
    rows = []
    for i, pid in enumerate(patient_ids):
        if regional:
            why: list[str] = []
            rows.append(patient_features(store, pid, source, regional=True, notes=why))
            if notes is not None and why:
                notes[pid] = why
        else:
            rows.append(patient_features(store, pid, source))
        if (i + 1) % 25 == 0:
            log.info("features: %d/%d patients", i + 1, len(patient_ids))
    df = pd.DataFrame(rows, index=pd.Index(list(patient_ids), name="patient_id"),
                      columns=list(ALL_FEATURE_NAMES if regional else FEATURE_NAMES), dtype=float)
    return df
