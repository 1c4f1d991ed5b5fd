"""The per-patient error boundary: one bad patient never takes the others down.

Reading and preparing a patient runs inside :func:`reading` blocks (one per input file) and
:func:`patient_boundary`. A :class:`DataError` already names the file and the problem; any
*other* exception raised while one file is read (a library's ``ValueError`` on a strange
header, an ``OSError``, a ``MemoryError``) becomes a :class:`DataError` naming that file, with
the exception's type and message as the problem, and its traceback logged at debug level.
``prepare`` then lists the patient in ``skipped.csv`` (or stops with ``--strict``).

Programming errors must not hide behind that: with ``CARDIOCLR_RAISE_UNEXPECTED=1`` (the test
suite sets it in ``conftest.py``) unexpected exceptions propagate unchanged, so a bug in
cardioclr fails the tests instead of becoming a skipped patient.
"""

from __future__ import annotations

import contextlib
import logging
import os
import traceback
from collections.abc import Callable, Iterator
from typing import TypeVar

from cardioclr.data.cases import Skipped
from cardioclr.errors import CardioclrError, DataError

log = logging.getLogger(__name__)

RAISE_UNEXPECTED_ENV = "CARDIOCLR_RAISE_UNEXPECTED"
T = TypeVar("T")


def raise_unexpected() -> bool:
    """True when unexpected exceptions must propagate (tests, debugging)."""
    return os.environ.get(RAISE_UNEXPECTED_ENV, "").strip() not in ("", "0")


@contextlib.contextmanager
def reading(path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn any unexpected exception of the block into a :class:`DataError` naming ``path``.

    :class:`CardioclrError` (already a clear message) and ``BaseException`` that are not
    ``Exception`` (Ctrl-C, exit) pass unchanged.
    """
    try:
        yield
    except CardioclrError:
        raise
    except Exception as err:
        if raise_unexpected():
            raise
        log.debug("unexpected error while reading %s", path, exc_info=True)
        detail = str(err).splitlines()[0][:300] if str(err) else ""
        raise DataError(path, f"could not be read ({type(err).__name__}"
                        + (f": {detail})" if detail else ")")) from err


def patient_boundary(patient_id: str, where: str, fn: Callable[[], T]) -> T | Skipped:
    """``fn()``, or the :class:`Skipped` record of the patient when it raises.

    ``where`` names the patient's source (folder or manifest row) for errors that no file
    explains. The skipped record carries the traceback (``Skipped.detail``) for the log.
    """
    try:
        return fn()
    except DataError as err:
        return Skipped(patient_id, err.path, err.problem, detail=_trace())
    except CardioclrError:
        raise  # not about this patient's data (configuration, output folder): stop
    except Exception as err:
        if raise_unexpected():
            raise
        first = str(err).splitlines()[0][:300] if str(err) else ""
        return Skipped(patient_id, where, f"unexpected error while preparing the patient "
                       f"({type(err).__name__}" + (f": {first})" if first else ")"),
                       detail=_trace())


def _trace() -> str:
    return traceback.format_exc()
