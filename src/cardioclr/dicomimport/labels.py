"""The optional labels CSV of ``cardioclr import``: diagnosis and overrides per patient.

Columns (case-insensitive, any order; comma, semicolon or tab separated; UTF-8)::

    patient_id  required  the DICOM PatientID as exported (read here, never written anywhere)
    label       optional  diagnosis text (becomes Group in Info.cfg)
    ed_frame    optional  1-based cine phase overriding the automatic ED (after sorting by time)
    es_frame    optional  1-based cine phase overriding the automatic ES
    height_cm   optional  overrides the DICOM PatientSize
    weight_kg   optional  overrides the DICOM PatientWeight
    subset      optional  training / testing (default: training)
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path

from cardioclr.errors import DataError

_SUBSETS = {"training": "training", "train": "training", "testing": "testing", "test": "testing"}


@dataclass(frozen=True)
class LabelRow:
    """One labels-CSV row; ``row`` is the spreadsheet line number (header = 1)."""

    row: int
    label: str | None = None
    ed_frame: int | None = None
    es_frame: int | None = None
    height_cm: float | None = None
    weight_kg: float | None = None
    subset: str | None = None


def read_labels(path: str | os.PathLike[str]) -> dict[str, LabelRow]:
    """PatientID -> :class:`LabelRow`. Raises :class:`DataError` naming the CSV and row (never
    the patient ID, which identifies) for a missing column, a bad number or a duplicate ID."""
    p = Path(path)
    if not p.is_file():
        raise DataError(p, "labels CSV does not exist")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(p, "labels CSV is not UTF-8 text; save it as CSV UTF-8") from None
    lines = text.splitlines()
    if not lines:
        raise DataError(p, "labels CSV is empty; expected a header with patient_id")
    counts = {d: lines[0].count(d) for d in (",", ";", "\t")}
    delimiter = max(counts, key=lambda d: counts[d]) if max(counts.values()) else ","
    reader = csv.reader(text.splitlines(keepends=True), delimiter=delimiter)
    header = [h.strip().lower() for h in next(reader)]
    if "patient_id" not in header:
        raise DataError(p, f"labels CSV lacks the patient_id column (found {', '.join(header)})")
    out: dict[str, LabelRow] = {}
    for values in reader:
        row = reader.line_num
        fields = {h: (values[i].strip() if i < len(values) else "") for i, h in enumerate(header)}
        pid = fields.get("patient_id", "")
        if not pid:
            continue
        if pid in out:
            raise DataError(p, f"row {row}: patient_id repeats row {out[pid].row}")
        subset_text = fields.get("subset", "")
        if subset_text and subset_text.lower() not in _SUBSETS:
            raise DataError(p, f"row {row}: subset {subset_text!r} is not training or testing")
        out[pid] = LabelRow(
            row=row, label=fields.get("label") or None,
            ed_frame=_frame(p, row, fields, "ed_frame"), es_frame=_frame(p, row, fields, "es_frame"),
            height_cm=_number(p, row, fields, "height_cm"),
            weight_kg=_number(p, row, fields, "weight_kg"),
            subset=_SUBSETS.get(subset_text.lower()) if subset_text else None)
    return out


def _frame(p: Path, row: int, fields: dict[str, str], key: str) -> int | None:
    text = fields.get(key, "")
    if not text:
        return None
    if not text.isdigit() or int(text) < 1:
        raise DataError(p, f"row {row}: {key} {text!r} must be a 1-based phase number")
    return int(text)


def _number(p: Path, row: int, fields: dict[str, str], key: str) -> float | None:
    text = fields.get(key, "")
    if not text:
        return None
    try:
        value = float(text.replace(",", "."))
    except ValueError:
        raise DataError(p, f"row {row}: {key} {text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise DataError(p, f"row {row}: {key} {text!r} must be a positive number")
    return value
