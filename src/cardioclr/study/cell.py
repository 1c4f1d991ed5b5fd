"""Run one training cell of a study in its own process: ``python -m cardioclr.study.cell OUT ID``.

With several devices (``study.devices > 1``) the runner starts every training cell
(segmentation training, SimCLR pretraining, fine-tuning: the kinds with ``multi_device`` in
:data:`cardioclr.study.kinds.CELL_KINDS`) through this module instead of in its own process.
Lightning's DDP launcher starts the other ranks by re-running the current command; here that
command is this one cell, so the other ranks train that cell and exit. Were the cell run inside
``cardioclr study``, every rank would re-run the whole study (preparing data, predicting masks
and writing the report once per rank).

The cell's configuration is ``OUT/study.yaml`` (the runner saved it); the stage's summary is
written by rank 0 to ``CELL_DIR/.cell_summary.json`` for the runner to pick up.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from cardioclr.atomic import write_json
from cardioclr.study.config import read_saved_config
from cardioclr.study.context import CONFIG_FILE, SUMMARY_FILE, StudyContext
from cardioclr.study.grid import expand_grid
from cardioclr.study.kinds import CELL_KINDS
from cardioclr.training import is_rank_zero


def run_cell(out: Path, cell_id: str) -> int:
    """Run the cell ``cell_id`` of the study in ``out``; returns the exit code."""
    cfg = read_saved_config(out / CONFIG_FILE)
    cells = {c.id: c for c in expand_grid(cfg)}
    if cell_id not in cells:
        print(f"cardioclr.study.cell: {out} has no cell {cell_id!r}", file=sys.stderr)
        return 2
    cell = cells[cell_id]
    if cfg.threads is not None:
        import torch  # only here: the registry and config must not load torch on import

        torch.set_num_threads(cfg.threads)
    ctx = StudyContext(cfg, out)
    summary = CELL_KINDS[cell.kind].run(ctx, cell) or {}
    if is_rank_zero():
        write_json(ctx.cell_dir(cell) / SUMMARY_FILE, summary)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m cardioclr.study.cell OUT CELL_ID``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m cardioclr.study.cell OUT CELL_ID", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_cell(Path(args[0]).resolve(), args[1])


if __name__ == "__main__":
    sys.exit(main())
