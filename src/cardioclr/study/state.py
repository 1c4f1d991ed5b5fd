"""``OUT/study_state.json``: what happened to every cell, rewritten atomically after each one.

Format::

    {"version": 1, "started": ISO time, "updated": ISO time, "seconds": float (all runs),
     "cells": {CELL_ID: {"kind", "path", "status", "seconds", "reason", "error",
                          "finished"}}}

``status`` is ``pending`` (not reached yet), ``running``, ``done``, ``failed`` (``error``
holds the message) or ``not-run`` (``reason`` says why). The state is a record for people and
for the report; whether a cell is finished is decided by its completion marker on disk (see
:mod:`cardioclr.study.runner`), so a study killed between finishing a cell and writing the
state loses nothing.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cardioclr.atomic import read_json, write_json
from cardioclr.study.grid import Cell

STATE_FILE = "study_state.json"
STATUSES = ("pending", "running", "done", "failed", "not-run")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class StudyState:
    """In-memory state of a study's cells, saved to ``OUT/study_state.json`` on every change."""

    def __init__(self, out: str | os.PathLike[str], cells: list[Cell]) -> None:
        self.path = Path(out) / STATE_FILE
        old: dict[str, Any] = {}
        if self.path.is_file():
            try:
                old = read_json(self.path)
            except (OSError, ValueError):
                old = {}  # a damaged record is rebuilt; the cells' markers decide what is done
        old_cells = old.get("cells", {}) if isinstance(old.get("cells"), dict) else {}
        self.started = old.get("started") or _now()
        self.cells: dict[str, dict[str, Any]] = {}
        for cell in cells:
            prev = old_cells.get(cell.id, {})
            self.cells[cell.id] = {
                "kind": cell.kind,
                "path": cell.path,
                "status": "pending",
                # Seconds of earlier runs are kept: they feed the ETA and the provenance table.
                "seconds": prev.get("seconds"),
                "reason": None,
                "error": None,
                "finished": prev.get("finished"),
            }

    def set(self, cell_id: str, status: str, seconds: float | None = None, reason: str | None = None,
            error: str | None = None) -> None:
        """Update one cell and save; ``seconds`` None keeps the recorded duration."""
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        rec = self.cells[cell_id]
        rec["status"] = status
        if seconds is not None:
            rec["seconds"] = round(float(seconds), 2)
        rec["reason"] = reason
        rec["error"] = error
        if status in ("done", "failed"):
            rec["finished"] = _now()
        self.save()

    def save(self) -> None:
        """Write the state atomically."""
        total = sum(r["seconds"] or 0.0 for r in self.cells.values())
        write_json(self.path, {"version": 1, "started": self.started, "updated": _now(),
                               "seconds": round(total, 2), "cells": self.cells})

    def by_status(self, status: str) -> list[str]:
        """Ids of the cells with ``status``, in grid order."""
        return [k for k, r in self.cells.items() if r["status"] == status]


def read_state(out: str | os.PathLike[str]) -> dict[str, Any]:
    """The saved state of a study (empty cells mapping when there is none)."""
    p = Path(out) / STATE_FILE
    if not p.is_file():
        return {"cells": {}}
    try:
        state: dict[str, Any] = read_json(p)
    except (OSError, ValueError):
        return {"cells": {}}
    return state
