"""What every stage function of a study gets besides its cell, and the study's own file names.

:class:`StudyContext` (the configuration and the study folder) is shared by the stage
functions (:mod:`.stages`), the cell registry (:mod:`.kinds`), the runner and the one-cell
process (:mod:`.cell`); it lives here, below all of them, so none of them imports another
upward.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cardioclr.layout import StudyLayout
from cardioclr.study.config import StudyConfig
from cardioclr.study.grid import Cell

#: ``OUT/study.yaml``: the saved configuration of the study.
CONFIG_FILE = "study.yaml"
#: A cell's completion marker (written by the runner after the stage function returned).
MARKER = "study_cell.json"
#: Summary a cell run in its own process leaves for the runner (rank 0 writes it).
SUMMARY_FILE = ".cell_summary.json"


@dataclass(frozen=True)
class StudyContext:
    """What every stage function gets besides its cell: the config and the study's folders."""

    cfg: StudyConfig
    out: Path

    @property
    def layout(self) -> StudyLayout:
        """Paths of the study folder."""
        return StudyLayout(self.out)

    @property
    def work(self) -> Path:
        """The prepared work directory ``OUT/work``."""
        return self.layout.work

    @property
    def data(self) -> Path:
        """The dataset: ``--data`` or the synthetic cohort ``OUT/data``."""
        return Path(self.cfg.data) if self.cfg.data is not None else self.layout.data

    def cell_dir(self, cell: Cell) -> Path:
        """Absolute directory of ``cell``."""
        return self.out / cell.path


#: A stage function: runs one cell into its directory; returns a small summary (or None).
StageFunction = Callable[[StudyContext, Cell], "dict[str, Any] | None"]
