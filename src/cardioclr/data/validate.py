"""Value checks for the per-patient fields of Info.cfg files and CSV manifests.

Both readers (:mod:`cardioclr.data.acdc`, :mod:`cardioclr.data.manifest`) go through these
functions, so one value is accepted or refused the same way whatever file it came from. Every
check raises :class:`DataError` naming the file and the field.

* :func:`read_text_file` -- UTF-8 (with or without a byte-order mark), UTF-16 with a BOM,
  else Latin-1: an Info.cfg saved by Notepad or Excel reads like any other.
* :func:`parse_frame` / :func:`check_frames` -- frame numbers: decimal digits of any script
  (``int`` understands Arabic-Indic or full-width digits), 1..NbFrame.
* :func:`parse_measure` / :func:`check_body_size` -- height (cm) and weight (kg) in human ranges.
* :func:`check_label` -- the diagnosis is one of the known classes.
"""

from __future__ import annotations

import math
import os
import unicodedata
from collections.abc import Collection
from pathlib import Path

from cardioclr.errors import DataError

#: Plausible body sizes, wide enough for children and extreme adults; outside them a value is
#: a typo or a unit mix-up (metres for cm, pounds for kg) that would distort BSA-indexed volumes.
HEIGHT_CM = (40.0, 250.0)
WEIGHT_KG = (2.0, 350.0)


def read_text_file(path: str | os.PathLike[str]) -> str:
    """The text of a small configuration file, whatever its common encoding.

    A UTF-8 or UTF-16 byte-order mark selects that encoding (and is dropped); otherwise UTF-8,
    and Latin-1 when the bytes are not UTF-8 (Latin-1 decodes every byte, so it never fails).
    """
    data = Path(path).read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as err:
            raise DataError(path, f"file starts with a UTF-16 byte-order mark but is not valid "
                            f"UTF-16 ({err.reason} at byte {err.start})") from None
    if len(data) >= 4 and data[1:2] == b"\x00" and data[3:4] == b"\x00":
        return data.decode("utf-16-le", errors="replace")  # UTF-16 saved without a BOM
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def parse_frame(path: str | os.PathLike[str], key: str, text: str) -> int:
    """A frame number from ``text`` (decimal digits of any script, surrounding spaces ignored)."""
    cleaned = unicodedata.normalize("NFKC", text).strip()
    if not cleaned or not all(unicodedata.category(c) == "Nd" for c in cleaned):
        raise DataError(path, f"field {key} must be a frame number (digits), found {text!r}")
    return int(cleaned)


def check_frames(path: str | os.PathLike[str], ed: int, es: int, nb_frames: int | None) -> None:
    """ED and ES are distinct frame numbers in 1..NbFrame (frames are numbered from 1)."""
    for key, value in (("ED", ed), ("ES", es)):
        if value < 1:
            raise DataError(path, f"field {key} is frame {value}; frames are numbered from 1")
        if nb_frames is not None and value > nb_frames:
            raise DataError(path, f"field {key} is frame {value} but NbFrame is {nb_frames}")
    if ed == es:
        # Two copies of one frame would pass every later check and give EF = 0.
        raise DataError(path, f"ED and ES name the same frame ({ed})")


def parse_measure(path: str | os.PathLike[str], key: str, text: str | None) -> float | None:
    """A number (decimal point or comma, digits of any script), None when empty or absent."""
    if text is None or not text.strip():
        return None
    cleaned = unicodedata.normalize("NFKC", text).strip().replace(",", ".")
    try:
        value = float(cleaned)
    except ValueError:
        raise DataError(path, f"field {key} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise DataError(path, f"field {key} {text!r} is not a finite number")
    return value


def check_body_size(path: str | os.PathLike[str], height_cm: float | None,
                    weight_kg: float | None, height_key: str = "Height",
                    weight_key: str = "Weight") -> None:
    """Height in :data:`HEIGHT_CM` and weight in :data:`WEIGHT_KG` when given."""
    for key, value, (low, high), unit in ((height_key, height_cm, HEIGHT_CM, "cm"),
                                          (weight_key, weight_kg, WEIGHT_KG, "kg")):
        if value is not None and not low <= value <= high:
            raise DataError(path, f"field {key} is {value:g} {unit}, outside the plausible "
                            f"{low:g}-{high:g} {unit} (unit mix-up or typo?)")


def check_label(path: str | os.PathLike[str], key: str, label: str,
                classes: Collection[str] | None) -> None:
    """``label`` is one of ``classes`` (None: any label is accepted)."""
    if classes is not None and label not in classes:
        raise DataError(path, f"field {key} {label!r} is not a known class ({', '.join(classes)}); "
                        "fix the value or pass --classes with every class of the dataset")
