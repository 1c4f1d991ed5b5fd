"""Progress display on stderr: the cell being run, cells done of total, elapsed time and ETA.

The ETA weights remaining cells by kind: a kind with finished cells is estimated by their mean
duration (this run's, or a previous run's recorded in the state); a kind with none yet by its
prior weight (``weight`` of :data:`cardioclr.study.kinds.CELL_KINDS`, or the preset's measured
one, :data:`~cardioclr.study.kinds.PRESET_WEIGHTS`) times the seconds per unit of weight
observed so far. Cells of the kinds that run side by side (``finetune.concurrent`` processes at
a time; :data:`~cardioclr.study.kinds.CONCURRENT_KINDS`) count for their summed estimate divided
by the number of processes. A cell whose duration its configuration fixes (a wall-clock
training budget: the ``cpu`` segmentation preset's 28 minutes) counts for that budget, and its
measured time is not used to calibrate the weights (it says nothing about how fast this machine
runs the other kinds: with it the real-cpu study showed an ETA of 3 hours after the segmentation
for 16 minutes of work). Before anything else has finished there is no ETA.
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from collections.abc import Mapping
from typing import TextIO

from cardioclr.study.grid import Cell
from cardioclr.study.kinds import CONCURRENT_KINDS, kind_weights


def format_seconds(seconds: float | None) -> str:
    """``75`` -> ``1m15s``; ``3725`` -> ``1h02m``; None -> ``?``."""
    if seconds is None:
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def estimate_remaining(remaining: list[Cell], durations: dict[str, list[float]],
                       finished: list[Cell], finished_seconds: list[float],
                       weights: Mapping[str, float] | None = None, slots: int = 1,
                       budgets: Mapping[str, float] | None = None) -> float | None:
    """Seconds left for ``remaining`` cells.

    ``durations``: kind -> measured seconds of finished cells of that kind; ``finished`` and
    ``finished_seconds``: all measured cells and their seconds (calibrate the prior weights);
    ``weights``: kind -> prior cost (default: the registry's; an unknown kind weighs 1);
    ``slots``: processes that run the :data:`~cardioclr.study.kinds.CONCURRENT_KINDS` cells side
    by side (their cells' seconds are each cell's own, measured while sharing the machine);
    ``budgets``: cell id -> its fixed duration (module docstring). None when a remaining cell
    needs the weights and nothing has been measured to calibrate them.
    """
    if not remaining:
        return 0.0
    prior = kind_weights() if weights is None else weights

    def weight(cell: Cell) -> float:
        return prior.get(cell.kind, 1.0)

    fixed = budgets or {}
    calibration = [(c, t) for c, t in zip(finished, finished_seconds, strict=True) if c.id not in fixed]
    measured_weight = sum(weight(c) for c, _ in calibration)
    total_seconds = sum(t for _, t in calibration)
    per_weight = total_seconds / measured_weight if measured_weight > 0 and total_seconds > 0 else None
    one_by_one = side_by_side = 0.0
    for cell in remaining:
        times = durations.get(cell.kind)
        if cell.id in fixed:
            seconds = fixed[cell.id]
        elif times:
            seconds = sum(times) / len(times)
        elif per_weight is not None:
            seconds = weight(cell) * per_weight
        else:
            return None
        if slots > 1 and cell.kind in CONCURRENT_KINDS:
            side_by_side += seconds
        else:
            one_by_one += seconds
    return one_by_one + side_by_side / max(1, slots)


class Progress:
    """Prints one line per event to ``stream`` (stderr): start of a cell, its end, skips.

    ``slots``: processes the runner uses for the cells that run side by side; ``budgets``: cell
    id -> fixed duration (both for the ETA, see :func:`estimate_remaining`)."""

    def __init__(self, cells: list[Cell], stream: TextIO | None = None,
                 weights: Mapping[str, float] | None = None, slots: int = 1,
                 budgets: Mapping[str, float] | None = None) -> None:
        self.cells = [c for c in cells if c.not_run_reason is None]
        self.slots = slots
        self.budgets = dict(budgets or {})
        self.weights = kind_weights() if weights is None else dict(weights)
        self.total = len(self.cells)
        self.stream = stream or sys.stderr
        self.done: set[str] = set()
        self.durations: dict[str, list[float]] = defaultdict(list)
        self.measured: list[tuple[Cell, float]] = []
        self.t0 = time.perf_counter()

    def record(self, cell: Cell, seconds: float | None, finished: bool = True) -> None:
        """Account a finished (or failed, ``finished=False``) cell and its duration."""
        self.done.add(cell.id)
        if seconds is not None and seconds > 0 and finished:
            self.durations[cell.kind].append(seconds)
            self.measured.append((cell, seconds))

    def eta(self) -> float | None:
        """Estimated seconds left for the cells not yet done."""
        left = [c for c in self.cells if c.id not in self.done]
        return estimate_remaining(left, self.durations, [c for c, _ in self.measured],
                                  [s for _, s in self.measured], self.weights, self.slots,
                                  self.budgets)

    def _line(self, text: str) -> None:
        elapsed = time.perf_counter() - self.t0
        print(f"[study {len(self.done)}/{self.total} done | {format_seconds(elapsed)} elapsed | "
              f"ETA {format_seconds(self.eta())}] {text}", file=self.stream, flush=True)

    def start(self, cell: Cell) -> None:
        """Announce the cell about to run."""
        index = next((i for i, c in enumerate(self.cells, 1) if c.id == cell.id), 0)
        self._line(f"running {index}/{self.total}: {cell.id}")

    def finish(self, cell: Cell, seconds: float, status: str, note: str = "") -> None:
        """Announce the end of a cell (done / failed)."""
        self.record(cell, seconds, finished=status == "done")
        self._line(f"{status}: {cell.id} in {format_seconds(seconds)}{' - ' + note if note else ''}")

    def skip(self, cell: Cell, seconds: float | None) -> None:
        """A cell already finished by an earlier run: counted done; its old duration feeds the ETA."""
        self.record(cell, seconds)
        self._line(f"already done: {cell.id}")

    def drop(self, cell: Cell) -> None:
        """A cell that will not run after all (a dependency failed): out of the total and ETA."""
        self.cells = [c for c in self.cells if c.id != cell.id]
        self.total = len(self.cells)

    def message(self, text: str) -> None:
        """Any other line (not-run cells, the report)."""
        self._line(text)
