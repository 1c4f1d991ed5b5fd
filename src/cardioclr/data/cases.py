"""Case records: one patient of a dataset, as paths and metadata (nothing loaded yet)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Case:
    """One patient. Image paths are NIfTI files or DICOM series folders.

    ``label`` is the diagnosis (e.g. ACDC ``Group``), None for unlabelled data.
    ``subset`` is the dataset's own partition (``training`` / ``testing``) when it has one.
    Heights are in cm, weights in kg (None when unknown).
    """

    patient_id: str
    label: str | None
    ed_image: Path
    es_image: Path
    ed_mask: Path | None = None
    es_mask: Path | None = None
    cine: Path | None = None
    ed_frame: int | None = None
    es_frame: int | None = None
    height_cm: float | None = None
    weight_kg: float | None = None
    subset: str | None = None
    source: str = ""


@dataclass(frozen=True)
class Skipped:
    """A patient (or folder) that could not be used: where, and why (one line a user can act
    on). ``detail`` is the traceback behind it, for the debug log only (not in skipped.csv)."""

    patient_id: str
    path: str
    reason: str
    detail: str = field(default="", compare=False, repr=False)
