"""Property-based tests (hypothesis) of the two parsers that meet raw user files first.

* The NIfTI reader, given any header (dims, voxel sizes, units, data type, offset) over a
  small payload, either returns a volume whose geometry passed the validator or raises
  :class:`DataError` naming the file -- never another exception, never a large allocation.
* The Info.cfg reader, given any text in any of the common encodings, returns fields or raises
  :class:`DataError`; valid fields written with digits of any script and any encoding read back
  as the same numbers.
"""

from __future__ import annotations

import gzip
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cardioclr.clinical.labels import DIAGNOSES as ACDC_GROUPS
from cardioclr.data.acdc import read_info_cfg
from cardioclr.errors import DataError
from cardioclr.io.validate import IN_PLANE_MM, SLICE_MM
from cardioclr.io.volume import read_volume

SETTINGS = settings(max_examples=80, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
_FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32),
                    st.sampled_from([0.0, -1.5, 1e-6, 0.0015, 1.5, 10.0, 1562.5, 1e9]))
_DTYPES = st.sampled_from([np.uint8, np.int16, np.int32, np.float32, np.float64, np.complex64])
_UNITS = st.sampled_from(["unknown", "meter", "mm", "micron"])


@SETTINGS
@given(dims=st.lists(st.one_of(st.integers(min_value=0, max_value=8),
                               st.integers(min_value=0, max_value=32767)), min_size=2, max_size=5),
       pixdim=st.lists(_FLOATS, min_size=3, max_size=3), unit=_UNITS, dtype=_DTYPES,
       payload=st.integers(min_value=0, max_value=4096), gz=st.booleans(),
       sform=st.booleans())
def test_nifti_reader_refuses_cleanly_or_returns_valid_geometry(
        dims: list[int], pixdim: list[float], unit: str, dtype: type, payload: int, gz: bool,
        sform: bool) -> None:
    header = nib.Nifti1Header()
    header.set_data_dtype(dtype)
    header["dim"][0] = len(dims)
    header["dim"][1: 1 + len(dims)] = dims
    header["pixdim"][1:4] = pixdim
    header.set_xyzt_units(xyz=unit)
    header["vox_offset"] = 352
    if sform:
        header.set_sform(np.diag([*(abs(v) if np.isfinite(v) else 1.0 for v in pixdim), 1.0]),
                         code=1)
    body = header.binaryblock + b"\x00" * 4 + bytes(range(256)) * (payload // 256) \
        + b"\x01" * (payload % 256)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("x.nii.gz" if gz else "x.nii")
        path.write_bytes(gzip.compress(body) if gz else body)
        try:
            vol = read_volume(path)
        except DataError as err:
            assert err.path == str(path) and err.problem
            return
    # Accepted: the claimed voxels fitted in the payload and the geometry is plausible.
    itemsize = np.dtype(dtype).itemsize
    assert vol.array.size * itemsize <= payload
    assert vol.array.ndim == 3 and vol.array.dtype == np.float32
    z, y, x = vol.spacing
    # ... and the voxel size is the header's, in mm (not nibabel's 1 mm for a 0, not metres).
    scale = {"unknown": 1.0, "mm": 1.0, "meter": 1000.0, "micron": 0.001}[unit]
    stored = [float(np.float32(v)) for v in pixdim]
    assert (x, y, z) == pytest.approx([abs(v) * scale for v in stored], rel=1e-6)
    assert SLICE_MM[0] <= z <= SLICE_MM[1]
    assert IN_PLANE_MM[0] <= y <= IN_PLANE_MM[1] and IN_PLANE_MM[0] <= x <= IN_PLANE_MM[1]


_ENCODINGS = st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "latin-1"])


@SETTINGS
@given(text=st.text(max_size=300), encoding=_ENCODINGS)
def test_info_cfg_reader_never_crashes(text: str, encoding: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "Info.cfg"
        try:
            path.write_bytes(text.encode(encoding))
        except UnicodeEncodeError:
            path.write_bytes(text.encode("utf-8"))
        try:
            fields = read_info_cfg(path)
        except DataError as err:
            assert err.path == str(path) and err.problem
            return
    assert fields["ED"].isascii() and fields["ES"].isascii()
    assert int(fields["ED"]) != int(fields["ES"])
    assert fields["Group"] in ACDC_GROUPS


# Decimal digit zero of several scripts: ASCII, Arabic-Indic, Devanagari, full-width, Thai.
_ZEROS = [0x30, 0x660, 0x966, 0xFF10, 0xE50]


def _digits(n: int, zero: int) -> str:
    return "".join(chr(zero + int(c)) for c in str(n))


@SETTINGS
@given(nb=st.integers(min_value=2, max_value=60), data=st.data(), encoding=_ENCODINGS,
       zero=st.sampled_from(_ZEROS), group=st.sampled_from(ACDC_GROUPS),
       height=st.floats(min_value=40, max_value=250), weight=st.floats(min_value=2, max_value=350),
       newline=st.sampled_from(["\n", "\r\n"]), pad=st.sampled_from(["", " ", "\t"]))
def test_info_cfg_valid_fields_round_trip(nb: int, data: st.DataObject, encoding: str, zero: int,
                                          group: str, height: float, weight: float, newline: str,
                                          pad: str) -> None:
    ed = data.draw(st.integers(min_value=1, max_value=nb))
    es = data.draw(st.integers(min_value=1, max_value=nb).filter(lambda v: v != ed))
    lines = [f"ED:{pad}{_digits(ed, zero)}", f"ES: {_digits(es, zero)}{pad}", f"Group: {group}",
             f"Height: {height:.1f}", f"NbFrame: {_digits(nb, zero)}", f"Weight: {weight:.1f}"]
    text = newline.join(data.draw(st.permutations(lines))) + newline
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "Info.cfg"
        try:
            path.write_bytes(text.encode(encoding))
        except UnicodeEncodeError:
            path.write_bytes(text.encode("utf-16"))
        fields = read_info_cfg(path)
    assert (int(fields["ED"]), int(fields["ES"])) == (ed, es)
    assert fields["Group"] == group


@pytest.mark.parametrize("frame", ["0", "-1", "1.0", "1e1", "x", "\u00b2\u00b2x", ""])
def test_info_cfg_bad_frame_numbers(tmp_path: Path, frame: str) -> None:
    path = tmp_path / "Info.cfg"
    path.write_text(f"ED: {frame}\nES: 2\nGroup: NOR\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_info_cfg(path)
    assert info.value.path == str(path) and "ED" in info.value.problem
