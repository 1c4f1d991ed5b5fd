"""Worker processes that die with the run that started them.

``prepare`` reads patients in a process pool. When the run is killed (``kill -9``, an out-of-
memory kill, a closed terminal), the pool's workers would otherwise keep running and writing
into the store folder of a run that no longer exists. Two layers stop that:

* on Linux, each worker asks the kernel for SIGKILL when its parent dies
  (``prctl(PR_SET_PDEATHSIG)``), so it dies at once;
* everywhere, a worker checks that its parent is still the process that started it
  (:func:`exit_if_orphaned`) right before it writes a file, and exits without writing if not.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor

_PR_SET_PDEATHSIG = 1
_parent_pid: int | None = None  # set in each worker by _init_worker


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """A process pool whose workers die with this process (see the module docstring)."""
    return ProcessPoolExecutor(max_workers=workers, initializer=_init_worker,
                               initargs=(os.getpid(),))


def _init_worker(parent_pid: int) -> None:
    global _parent_pid
    _parent_pid = parent_pid
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except OSError:  # no libc to call (unusual builds): the parent check still applies
            pass
    exit_if_orphaned()  # the parent may have died before prctl took effect


def exit_if_orphaned() -> None:
    """In a pool worker: exit at once (without cleanup) when the parent run is gone."""
    if _parent_pid is not None and os.getppid() != _parent_pid:
        os._exit(1)
