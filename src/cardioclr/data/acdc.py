"""The ACDC dataset layout (Bernard et al., IEEE TMI 2018).

::

    ROOT/training/patientNNN/Info.cfg                  ED, ES, Group, Height, NbFrame, Weight
    ROOT/training/patientNNN/patientNNN_frameMM.nii.gz   ED and ES frames (MM = ED / ES)
    ROOT/training/patientNNN/patientNNN_frameMM_gt.nii.gz  expert labels 1 RV, 2 MYO, 3 LV
    ROOT/training/patientNNN/patientNNN_4d.nii.gz        optional cine (x, y, z, t)
    ROOT/testing/...                                     same layout

Uncompressed ``.nii`` files are accepted where ``.nii.gz`` is absent.

``ROOT`` may also be a single ``training`` or ``testing`` folder.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from cardioclr.data.cases import Case, Skipped
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


def read_info_cfg(path: str | os.PathLike[str], require_label: bool = True) -> dict[str, str]:
    """Parse an ACDC ``Info.cfg`` (``Key: value`` lines) into a dict of strings.

    Raises :class:`DataError` naming the file when it is missing, lacks ED, ES or Group, or
    names the same frame for ED and ES.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(p, "Info.cfg is missing")
    fields: dict[str, str] = {}
    for line in p.read_text(encoding="utf-8", errors="replace").splitlines():
        if ":" in line:
            key, value = line.split(":", 1)
            fields[key.strip()] = value.strip()
    required = REQUIRED_FIELDS if require_label else ("ED", "ES")
    missing = [k for k in required if not fields.get(k)]
    if missing:
        raise DataError(p, f"missing field(s) {', '.join(missing)}")
    for key in ("ED", "ES"):
        if not fields[key].isdigit():
            raise DataError(p, f"field {key} must be a frame number, found {fields[key]!r}")
    if int(fields["ED"]) == int(fields["ES"]):
        # Two copies of one frame would pass every later check and give EF = 0.
        raise DataError(p, f"ED and ES name the same frame ({fields['ED']})")
    return fields


def read_acdc_case(patient_dir: str | os.PathLike[str], subset: str | None = None,
                   require_label: bool = True) -> Case:
    """One ACDC patient folder -> :class:`Case`; raises :class:`DataError` on a bad folder."""
    d = Path(patient_dir)
    pid = d.name
    info = read_info_cfg(d / "Info.cfg", require_label=require_label)
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
        height_cm=_optional_float(info.get("Height")),
        weight_kg=_optional_float(info.get("Weight")),
        subset=subset,
        source=str(d),
    )


def find_acdc_cases(root: str | os.PathLike[str], require_label: bool = True
                    ) -> tuple[list[Case], list[Skipped]]:
    """All patients under an ACDC root, and the ones skipped with their reason.

    Raises :class:`DataError` when the folder has no patient folders at all.
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
        for d in sorted(p for p in folder.iterdir() if p.is_dir() and _PATIENT_DIR.match(p.name)):
            try:
                cases.append(read_acdc_case(d, subset=subset, require_label=require_label))
            except DataError as err:
                skipped.append(Skipped(d.name, err.path, err.problem))
    if not cases and not skipped:
        raise DataError(r, "no patientNNN folders found (expected the ACDC layout: "
                        "training/patientNNN/Info.cfg and NIfTI frames)")
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


def _optional_float(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None
