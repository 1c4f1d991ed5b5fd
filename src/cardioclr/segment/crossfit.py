"""Cross-fitted segmentation: K models, each trained without one fold of the train split.

``cardioclr segment train WORK --folds K`` writes::

    WORK/segmentation/folds/assignment.json   {"folds": [[pid, ...], ...], "source": ...}
    WORK/segmentation/folds/fold_K/model/     one model per fold (model.pt, done.json, ...)
    WORK/segmentation/folds/done.json         written last: every fold model is finished

Model k never sees the patients of fold k. ``cardioclr segment predict WORK`` then gives every
labelled training patient the mask of the one model that did not see it (``out_of_fold``) and
every other patient (test, unlabelled, excluded) the average of the K models (``ensemble``),
so masks of training patients are as good as, and no better than, those of new patients:
classifier cross-validation, the clinical baseline and SimCLR on segmented images are then not
optimistic. Which model(s) made each mask: ``WORK/segmentation/mask_sources.csv``.

Folds are the ``splits.json`` cross-validation folds when K equals their number (the
segmentation folds are then the classifier's), otherwise a seeded partition of the train split.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from cardioclr.atomic import read_json, write_json
from cardioclr.errors import CardioclrError
from cardioclr.layout import WorkLayout

#: Per-patient provenance of the predicted masks (columns ``patient_id, source, models``).
MASK_SOURCES_FILE = "mask_sources.csv"


def folds_dir(work: str | os.PathLike[str]) -> Path:
    """``WORK/segmentation/folds``."""
    return WorkLayout(work).segmentation_folds


def fold_model_dir(work: str | os.PathLike[str], k: int) -> Path:
    """``WORK/segmentation/folds/fold_K/model``."""
    return folds_dir(work) / f"fold_{k}" / "model"


def plan_folds(train: list[str], split_folds: list[list[str]], k: int, seed: int) -> list[list[str]]:
    """K disjoint folds covering the train patients ``train``.

    The ``splits.json`` folds (``split_folds``, restricted to ``train``) when there are K of them
    and they cover the train split; else a seeded round-robin partition of the sorted patients.
    """
    if k < 2:
        raise CardioclrError(f"--folds must be at least 2 for cross-fitting, got {k}")
    if k > len(train):
        raise CardioclrError(f"--folds {k} is more than the {len(train)} train-split patients")
    members = set(train)
    if len(split_folds) == k:
        folds = [sorted(set(f) & members) for f in split_folds]
        covered = set().union(*folds)
        if covered == members and all(folds) and sum(map(len, folds)) == len(members):
            return folds
    order = np.random.default_rng(seed).permutation(sorted(train))
    return [sorted(str(p) for p in order[i::k]) for i in range(k)]


def write_assignment(work: str | os.PathLike[str], folds: list[list[str]], source: str) -> None:
    """Write ``assignment.json``; refuses to change an existing one (models were trained on it)."""
    path = folds_dir(work) / "assignment.json"
    if path.is_file():
        old = read_assignment(work)
        if old != folds:
            raise CardioclrError(f"{path}: fold models were trained on other folds; pass "
                                 "--overwrite to retrain all folds")
        return
    write_json(path, {"folds": folds, "source": source})


def read_assignment(work: str | os.PathLike[str]) -> list[list[str]] | None:
    """The folds of ``assignment.json``, or None when there is none."""
    path = folds_dir(work) / "assignment.json"
    if not path.is_file():
        return None
    data = read_json(path)
    folds = data.get("folds") if isinstance(data, dict) else None
    if not isinstance(folds, list) or not all(isinstance(f, list) for f in folds):
        raise CardioclrError(f"{path}: no list of folds in it; retrain with --overwrite")
    return [[str(p) for p in f] for f in folds]


def crossfit_ready(work: str | os.PathLike[str]) -> bool:
    """Whether every fold model is finished (``folds/done.json``)."""
    return (folds_dir(work) / "done.json").is_file()


def models_for(patient_id: str, folds: list[list[str]]) -> list[int]:
    """Indices of the fold models allowed to segment a patient.

    A patient of fold k: only model k (the one trained without it). Anyone else: all models.
    """
    for k, fold in enumerate(folds):
        if patient_id in fold:
            return [k]
    return list(range(len(folds)))


def mask_sources_table(rows: list[dict[str, str]]) -> pd.DataFrame:
    """The ``mask_sources.csv`` frame of rows ``{patient_id, source, models}``."""
    return pd.DataFrame(rows, columns=["patient_id", "source", "models"])


def mask_source(work: str | os.PathLike[str], patient_id: str) -> str:
    """``out_of_fold``, ``ensemble`` or ``single_model``: how a patient's mask was made.

    Raises :class:`CardioclrError` when the patient has no row (not predicted yet).
    """
    path = WorkLayout(work).segmentation / MASK_SOURCES_FILE
    if not path.is_file():
        raise CardioclrError(f"{path}: not written yet; run `cardioclr segment predict {work}`")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    row = df[df["patient_id"] == patient_id]
    if row.empty:
        raise CardioclrError(f"{path}: no row for patient {patient_id}")
    return str(row["source"].iloc[0])
