"""Find the patients of a dataset, whatever its form (ACDC folder or CSV manifest)."""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path

from cardioclr.data.acdc import find_acdc_cases, is_acdc_root
from cardioclr.data.cases import Case, Skipped
from cardioclr.data.manifest import read_manifest
from cardioclr.errors import DataError


def discover_cases(data: str | os.PathLike[str], require_label: bool = True,
                   classes: Collection[str] | None = None
                   ) -> tuple[list[Case], list[Skipped]]:
    """Cases of ``data``: an ACDC-layout folder, or a ``.csv`` manifest of institutional data.

    ``classes``: the diagnoses a label may name; None means the ACDC groups for an ACDC folder
    and any label for a manifest. Raises :class:`DataError` when ``data`` is neither, or holds
    no patients.
    """
    p = Path(data)
    if p.is_file() and p.suffix.lower() == ".csv":
        return read_manifest(p, require_label=require_label, classes=classes)
    if not p.exists():
        raise DataError(p, "dataset path does not exist")
    if p.is_dir() and not any(p.iterdir()):
        raise DataError(p, "dataset folder is empty")
    if is_acdc_root(p):
        if classes is None:
            return find_acdc_cases(p, require_label=require_label)
        return find_acdc_cases(p, require_label=require_label, classes=classes)
    raise DataError(p, "not a dataset: expected an ACDC-layout folder (training/patientNNN/...) "
                    "or a CSV manifest (patient_id, label, ed_image, es_image, ...)")
