"""Institutional datasets described by a CSV manifest, one row per patient.

Columns (header names are case-insensitive; order is free; unknown columns are ignored)::

    patient_id   required  letters, digits, '.', '_', '-' (it becomes a file name)
    label        required  diagnosis as text, e.g. ICM / NICM or amyloid / HCM (2+ classes)
    ed_image     required  end-diastolic stack: a NIfTI file (.nii/.nii.gz) or a DICOM series folder
    es_image     required  end-systolic stack, same forms
    ed_mask      optional  expert labels 0-3 (1 RV cavity, 2 LV myocardium, 3 LV cavity)
    es_mask      optional
    height_cm    optional  number
    weight_kg    optional  number
    cine         optional  4D cine NIfTI (x, y, z, t)
    subset       optional  training / testing (used by ``--split official``)

Paths are absolute or relative to the CSV's folder. Comma, semicolon or tab separated; UTF-8
(an Excel byte-order mark is fine) or UTF-16 with a byte-order mark ("Unicode text" exports).
Heights and weights are checked against human ranges and labels against ``--classes`` (when
given) by :mod:`cardioclr.data.validate`, as for ACDC's Info.cfg. Row numbers in messages are
the CSV line numbers as a spreadsheet shows them (the header is row 1).
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Collection
from pathlib import Path

from cardioclr.data.cases import Case, Skipped
from cardioclr.data.validate import check_body_size, check_label, parse_measure
from cardioclr.errors import DataError

REQUIRED_COLUMNS = ("patient_id", "label", "ed_image", "es_image")
OPTIONAL_COLUMNS = ("ed_mask", "es_mask", "height_cm", "weight_kg", "cine", "subset")
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SUBSETS = {"training": "training", "train": "training", "testing": "testing", "test": "testing"}
_NIFTI_SUFFIXES = (".nii", ".nii.gz")


def read_manifest(path: str | os.PathLike[str], require_label: bool = True,
                  classes: Collection[str] | None = None) -> tuple[list[Case], list[Skipped]]:
    """Read a CSV manifest into cases and the rows skipped with their reason.

    A row is skipped (reason names the CSV row and the file or value) for: an unsafe or empty
    patient_id, an empty label when ``require_label``, a listed file or folder that does not
    exist or is not NIfTI/DICOM-folder, and a bad height/weight/subset value. Raises
    :class:`DataError` naming the CSV for: a missing file, a missing required column, no data
    rows, and duplicate patient IDs (also those differing only in case, which collide as file
    names on macOS and Windows).
    """
    csv_path = Path(path)
    if not csv_path.is_file():
        raise DataError(csv_path, "manifest CSV does not exist")
    raw = csv_path.read_bytes()
    try:
        if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
            text = raw.decode("utf-16")
        else:
            text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(csv_path, f"manifest is not UTF-8 text ({err.reason} at byte {err.start}); "
                        "save it as CSV UTF-8") from None
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise DataError(csv_path, "manifest is empty; expected a header row with columns "
                        + ", ".join(REQUIRED_COLUMNS))
    reader = csv.reader(text.splitlines(keepends=True), delimiter=_delimiter(lines[0]))
    header = [h.strip().lower() for h in next(reader)]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise DataError(csv_path, f"missing required column(s) {', '.join(missing)} (found "
                        f"{', '.join(h for h in header if h) or 'none'}); required: "
                        + ", ".join(REQUIRED_COLUMNS))
    index = {name: header.index(name) for name in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS)
             if name in header}
    base = csv_path.resolve().parent
    cases: list[Case] = []
    skipped: list[Skipped] = []
    first_row: dict[str, int] = {}  # lower-cased patient_id -> row, for duplicate detection
    duplicates: list[str] = []
    n_rows = 0
    for values in reader:
        row = reader.line_num
        if not any(v.strip() for v in values):
            continue  # blank line (spreadsheets often leave some at the end)
        n_rows += 1
        fields = {name: (values[i].strip() if i < len(values) else "") for name, i in index.items()}
        pid = fields["patient_id"]
        if pid.lower() in first_row:
            duplicates.append(f"{pid!r} (rows {first_row[pid.lower()]} and {row})")
            continue
        if pid:
            first_row[pid.lower()] = row
        try:
            cases.append(_row_case(fields, row, csv_path, base, require_label, classes))
        except _RowProblem as problem:
            skipped.append(Skipped(pid, problem.path or str(csv_path),
                                   f"row {row} of {csv_path.name}: {problem}"))
        except DataError as err:  # a value refused by cardioclr.data.validate
            skipped.append(Skipped(pid, str(csv_path), f"row {row} of {csv_path.name}: "
                                   f"{err.problem}"))
    if duplicates:
        raise DataError(csv_path, f"duplicate patient_id: {'; '.join(duplicates[:5])}"
                        + (f" and {len(duplicates) - 5} more" if len(duplicates) > 5 else "")
                        + " (IDs must be unique, ignoring case)")
    if n_rows == 0:
        raise DataError(csv_path, "manifest has a header but no patient rows")
    return cases, skipped


class _RowProblem(Exception):
    """Why one manifest row cannot be used; ``path`` is the offending file when there is one."""

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


def _row_case(fields: dict[str, str], row: int, csv_path: Path, base: Path,
              require_label: bool, classes: Collection[str] | None) -> Case:
    pid = fields["patient_id"]
    if not pid:
        raise _RowProblem("empty patient_id")
    if not _SAFE_ID.match(pid) or ".." in pid:
        raise _RowProblem(f"patient_id {pid!r} is not safe as a file name; use letters, digits, "
                          "'.', '_' and '-' only (no '/', '\\', '..', spaces)")
    label = fields["label"] or None
    if label is None and require_label:
        raise _RowProblem("empty label (pass --unlabelled to use patients without a diagnosis)")
    if label is not None and require_label:
        check_label(csv_path, "label", label, classes)
    paths = {name: _resolve(fields, name, base, required=name in REQUIRED_COLUMNS)
             for name in ("ed_image", "es_image", "ed_mask", "es_mask", "cine")}
    for a, b in (("ed_image", "es_image"), ("ed_mask", "es_mask")):
        if paths[a] is not None and paths[a] == paths[b]:
            # Two copies of one frame would pass every later check and give EF = 0.
            raise _RowProblem(f"{a} and {b} name the same file or folder", str(paths[a]))
    subset_text = fields.get("subset", "")
    subset = _SUBSETS.get(subset_text.lower()) if subset_text else None
    if subset_text and subset is None:
        raise _RowProblem(f"subset {subset_text!r} is not training or testing")
    height = parse_measure(csv_path, "height_cm", fields.get("height_cm"))
    weight = parse_measure(csv_path, "weight_kg", fields.get("weight_kg"))
    check_body_size(csv_path, height, weight, "height_cm", "weight_kg")
    return Case(
        patient_id=pid,
        label=label,
        ed_image=paths["ed_image"],  # type: ignore[arg-type]  # required -> never None
        es_image=paths["es_image"],  # type: ignore[arg-type]
        ed_mask=paths["ed_mask"],
        es_mask=paths["es_mask"],
        cine=paths["cine"],
        height_cm=height,
        weight_kg=weight,
        subset=subset,
        source=f"{csv_path}:row {row}",
    )


def _resolve(fields: dict[str, str], column: str, base: Path, required: bool) -> Path | None:
    """The file or folder named in ``column``, checked to exist and to be NIfTI or a folder."""
    text = fields.get(column, "")
    if not text:
        if required:
            raise _RowProblem(f"{column} is empty")
        return None
    p = Path(os.path.expanduser(text))
    p = p if p.is_absolute() else base / p
    if not p.exists():
        raise _RowProblem(f"{column} {text!r} does not exist", str(p))
    if column == "cine":
        if not (p.is_file() and p.name.lower().endswith(_NIFTI_SUFFIXES)):
            raise _RowProblem(f"cine {text!r} must be a 4D NIfTI file (.nii/.nii.gz)", str(p))
    elif not (p.is_dir() or p.name.lower().endswith(_NIFTI_SUFFIXES)):
        raise _RowProblem(f"{column} {text!r} must be a NIfTI file (.nii/.nii.gz) or a DICOM "
                          "series folder", str(p))
    return p


def _delimiter(header_line: str) -> str:
    """The header's separator: comma, semicolon (European Excel) or tab."""
    counts = {d: header_line.count(d) for d in (",", ";", "\t")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","
