"""The ACDC dataset layout (Bernard et al., IEEE TMI 2018).

::

    ROOT/training/patientNNN/Info.cfg                  ED, ES, Group, Height, NbFrame, Weight
    ROOT/training/patientNNN/patientNNN_frameMM.nii.gz   ED and ES frames (MM = ED / ES)
    ROOT/training/patientNNN/patientNNN_frameMM_gt.nii.gz  expert labels 1 RV, 2 MYO, 3 LV
    ROOT/training/patientNNN/patientNNN_4d.nii.gz        optional cine (x, y, z, t)
    ROOT/testing/...                                     same layout

Uncompressed ``.nii`` files are accepted where ``.nii.gz`` is absent.

``ROOT`` may also be a single ``training`` or ``testing`` folder. Every folder beside the
patient folders is reported as skipped (never dropped without a word); hidden folders
(``.git``, ``.ipynb_checkpoints``) are ignored.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Collection
from pathlib import Path

from cardioclr.clinical.labels import DIAGNOSES
from cardioclr.data.boundary import patient_boundary, reading
from cardioclr.data.cases import Case, Skipped
from cardioclr.data.validate import (
    check_body_size,
    check_frames,
    check_label,
    parse_frame,
    parse_measure,
    read_text_file,
)
from cardioclr.errors import DataError

SUBSETS = ("training", "testing")
REQUIRED_FIELDS = ("ED", "ES", "Group")
_PATIENT_DIR = re.compile(r"^patient\d+$")


def is_acdc_root(root: str | os.PathLike[str]) -> bool:
    """True when ``root`` holds ``training/``/``testing/`` or ``patientNNN`` folders."""
    r = Path(root)
    if not r.is_dir():
        return False
    if any((r / s).is_dir() for s in SUBSETS):
        return True
    return any(_PATIENT_DIR.match(p.name) for p in r.iterdir() if p.is_dir())


def read_info_cfg(path: str | os.PathLike[str], require_label: bool = True,
                  classes: Collection[str] | None = DIAGNOSES) -> dict[str, str]:
    """Parse an ACDC ``Info.cfg`` (``Key: value`` lines) into a dict of strings.

    Encodings: UTF-8 with or without a BOM, UTF-16 (see
    :func:`cardioclr.data.validate.read_text_file`). Values are checked (ED, ES within 1..NbFrame
    and distinct, Height/Weight numbers in human ranges, Group one of ``classes`` when
    labelled; None accepts any Group); ED and ES come back as ASCII digits. Raises
    :class:`DataError` naming the file for a missing file, a missing field or a bad value.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(p, "Info.cfg is missing")
    fields: dict[str, str] = {}
    for line in read_text_file(p).splitlines():
        if ":" in line:
            key, value = line.split(":", 1)
            fields[key.strip().lstrip("\ufeff")] = value.strip()
    required = REQUIRED_FIELDS if require_label else ("ED", "ES")
    missing = [k for k in required if not fields.get(k)]
    if missing:
        found = ", ".join(fields) or "none"
        raise DataError(p, f"missing field(s) {', '.join(missing)} (found: {found})")
    ed, es = parse_frame(p, "ED", fields["ED"]), parse_frame(p, "ES", fields["ES"])
    nb = parse_frame(p, "NbFrame", fields["NbFrame"]) if fields.get("NbFrame") else None
    check_frames(p, ed, es, nb)
    fields["ED"], fields["ES"] = str(ed), str(es)
    check_body_size(p, parse_measure(p, "Height", fields.get("Height")),
                    parse_measure(p, "Weight", fields.get("Weight")))
    if fields.get("Group"):
        check_label(p, "Group", fields["Group"], classes if require_label else None)
    return fields


def read_acdc_case(patient_dir: str | os.PathLike[str], subset: str | None = None,
                   require_label: bool = True, classes: Collection[str] | None = DIAGNOSES
                   ) -> Case:
    """One ACDC patient folder -> :class:`Case`; raises :class:`DataError` on a bad folder."""
    d = Path(patient_dir)
    pid = d.name
    with reading(d / "Info.cfg"):
        info = read_info_cfg(d / "Info.cfg", require_label=require_label, classes=classes)
    ed, es = int(info["ED"]), int(info["ES"])
    paths = {}
    for phase, frame in (("ed", ed), ("es", es)):
        image = _nifti(d, f"{pid}_frame{frame:02d}")
        if image is None:
            raise DataError(d / f"{pid}_frame{frame:02d}.nii.gz",
                            f"{phase.upper()} frame {frame} named in Info.cfg does not exist")
        paths[phase] = (image, _nifti(d, f"{pid}_frame{frame:02d}_gt"))
    cine = _nifti(d, f"{pid}_4d")
    return Case(
        patient_id=pid,
        label=info.get("Group") or None,
        ed_image=paths["ed"][0],
        es_image=paths["es"][0],
        ed_mask=paths["ed"][1],
        es_mask=paths["es"][1],
        cine=cine,
        ed_frame=ed,
        es_frame=es,
        height_cm=parse_measure(d / "Info.cfg", "Height", info.get("Height")),
        weight_kg=parse_measure(d / "Info.cfg", "Weight", info.get("Weight")),
        subset=subset,
        source=str(d),
    )


def find_acdc_cases(root: str | os.PathLike[str], require_label: bool = True,
                    classes: Collection[str] | None = DIAGNOSES
                    ) -> tuple[list[Case], list[Skipped]]:
    """All patients under an ACDC root, and the ones skipped with their reason.

    A folder whose name is not ``patientNNN`` is listed as skipped (with that reason), as is
    any patient folder that cannot be read (through the per-patient error boundary). Raises
    :class:`DataError` when the folder has no patient folders at all.
    """
    r = Path(root)
    if not r.is_dir():
        raise DataError(r, "dataset folder does not exist")
    groups: list[tuple[str | None, Path]] = [(s, r / s) for s in SUBSETS if (r / s).is_dir()]
    if not groups:
        groups = [(r.name if r.name in SUBSETS else None, r)]
    cases: list[Case] = []
    skipped: list[Skipped] = []
    for subset, folder in groups:
        folders = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        for d in folders:
            if not _PATIENT_DIR.match(d.name):
                if folder is r and d.name in SUBSETS:
                    continue
                skipped.append(Skipped(d.name, str(d), "folder name does not match patientNNN "
                                       "(ACDC layout); not used"))
                continue
            result = patient_boundary(d.name, str(d), functools.partial(
                read_acdc_case, d, subset=subset, require_label=require_label, classes=classes))
            if isinstance(result, Skipped):
                skipped.append(result)
            else:
                cases.append(result)
    if not cases and not any(_PATIENT_DIR.match(s.patient_id) for s in skipped):
        others = ", ".join(s.patient_id for s in skipped[:5])
        raise DataError(r, "no patientNNN folders found (expected the ACDC layout: "
                        "training/patientNNN/Info.cfg and NIfTI frames)"
                        + (f"; other folders: {others}" if others else ""))
    ids = [c.patient_id for c in cases]
    if len(ids) != len(set(ids)):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise DataError(r, f"patient IDs appear in both training/ and testing/: {dup[:5]}")
    return cases, skipped


def _nifti(folder: Path, stem: str) -> Path | None:
    """``folder/stem.nii.gz``, or ``stem.nii`` (some ACDC copies are decompressed), or None."""
    for suffix in (".nii.gz", ".nii"):
        p = folder / f"{stem}{suffix}"
        if p.is_file():
            return p
    return None
