"""Atomic file output: write to a temporary name in the same folder, then rename.

A reader never sees half a file, and an interrupted run leaves either the old result or
none, never one that looks complete.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

# The process umask, read once at import (os.umask has no getter: set it and restore it).
_UMASK = os.umask(0o022)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    The temporary name keeps the final suffix (e.g. ``.nii.gz``) so writers that dispatch on
    the suffix behave the same. On error the temporary file is removed.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_temporary_files(final)
    # The writer's pid is in the name, so that a later writer can remove it once it is dead.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.{os.getpid()}.",
                                    suffix=".tmp" + "".join(final.suffixes), dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates 0600 files; results are shared, so give them the usual umask mode.
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Atomically write ``text`` (UTF-8) to ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON (NaN written as null-safe strings are not used)."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file written by :func:`write_json`."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def save_npz(path: str | os.PathLike[str], **arrays: np.ndarray) -> None:
    """Atomically save arrays to an uncompressed ``.npz`` (fast to read; stores are small)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        # numpy's stub types **kwds as if a key could be its allow_pickle flag.
        np.savez(fh, **arrays)  # type: ignore[arg-type]


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Build a directory under a temporary name and rename it onto ``path`` when complete.

    An existing ``path`` is replaced only after the new one is fully written.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(final.parent, final.name)  # debris of a killed earlier build
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    # Who builds it, so that a later run can tell debris of a killed run from a live one.
    (tmp.parent / f"{tmp.name}.owner").write_text(f"{socket.gethostname()} {os.getpid()}\n")
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp creates 0700
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        (tmp.parent / f"{tmp.name}.owner").unlink(missing_ok=True)


def remove_stale_temporaries(parent: str | os.PathLike[str], name: str) -> list[Path]:
    """Remove what an interrupted :func:`atomic_dir` for ``parent/name`` left behind.

    ``.NAME.*.partial`` folders whose owner process (recorded beside them) is gone, or that
    have no owner record, and a leftover ``.NAME.old``. A folder still being built by a live
    process on this host is kept. Returns the removed paths.
    """
    folder = Path(parent)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for tmp in sorted(folder.glob(f".{glob.escape(name)}.*.partial")):
        owner = tmp.parent / f"{tmp.name}.owner"
        if _owner_alive(owner):
            continue
        shutil.rmtree(tmp, ignore_errors=True)
        owner.unlink(missing_ok=True)
        removed.append(tmp)
    for owner in folder.glob(f".{glob.escape(name)}.*.partial.owner"):
        if not owner.with_suffix("").exists():
            owner.unlink(missing_ok=True)
    old = folder / f".{name}.old"
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)
        removed.append(old)
    return removed


def _remove_dead_temporary_files(final: Path) -> None:
    """Remove ``.NAME.<pid>.*.tmp*`` files beside ``final`` whose writing process is gone."""
    for tmp in final.parent.glob(f".{glob.escape(final.name)}.*.tmp*"):
        pid = tmp.name[len(final.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def _owner_alive(owner: Path) -> bool:
    try:
        host, pid = owner.read_text().split()
    except (OSError, ValueError):
        return False
    if host != socket.gethostname() or not pid.isdigit():
        return True  # another machine (shared file system): cannot tell, keep it
    return _pid_alive(int(pid)) and int(pid) != os.getpid()


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")
