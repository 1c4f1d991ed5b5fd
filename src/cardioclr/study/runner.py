"""Run a study: every cell of the grid in order, resumable, failures recorded, then the report.

Resumability rests on two things:

* each stage resumes by itself from its directory (``checkpoints/last.ckpt``), so a cell that
  was interrupted picks up where it stopped when it is run again;
* a cell counts as finished only when its completion marker ``CELL_DIR/study_cell.json`` exists
  (written by the runner after the stage function returned, and after the stage's own
  ``metrics.json`` where it has one). Re-running the same command therefore skips finished
  cells, resumes the interrupted one and runs the rest.

What runs each kind of cell, what it must leave behind and whether it trains is the registry
:data:`cardioclr.study.kinds.CELL_KINDS`; tests pass a registry of cheap fakes instead.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TextIO

from cardioclr.atomic import read_json, write_json, write_text
from cardioclr.errors import CardioclrError
from cardioclr.provenance import environment_info
from cardioclr.study.config import (
    StudyConfig,
    config_additions,
    config_differences,
    read_saved_config,
    save_config,
)
from cardioclr.study.context import CONFIG_FILE, MARKER, SUMMARY_FILE, StudyContext
from cardioclr.study.grid import Cell, expand_grid, runnable
from cardioclr.study.kinds import (
    CELL_KINDS,
    CONCURRENT_KINDS,
    CellKind,
    cell_kind,
    check_options,
    kind_weights,
)
from cardioclr.study.progress import Progress
from cardioclr.study.report import build_report as write_report
from cardioclr.study.state import StudyState

log = logging.getLogger(__name__)

__all__ = ["CONFIG_FILE", "MARKER", "StudyContext", "StudyResult", "cell_finished", "prepare_out",
           "run_study"]


@dataclass
class StudyResult:
    """Outcome of :func:`run_study`: ids by status, and the report's files (if it was built)."""

    done: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    not_run: dict[str, str] = field(default_factory=dict)
    ran: list[str] = field(default_factory=list)
    seconds: float = 0.0
    report: dict[str, str] = field(default_factory=dict)
    report_error: str | None = None

    @property
    def ok(self) -> bool:
        """True when no cell failed and the report was built."""
        return not self.failed and self.report_error is None


def cell_finished(ctx: StudyContext, cell: Cell, kinds: Mapping[str, CellKind] = CELL_KINDS) -> bool:
    """Whether ``cell`` finished in an earlier run (marker and its kind's outputs present)."""
    d = ctx.cell_dir(cell)
    if not (d / MARKER).is_file():
        return False
    outputs = kinds[cell.kind].outputs if cell.kind in kinds else ()
    return all((d / name).is_file() for name in outputs)


def _marker_seconds(ctx: StudyContext, cell: Cell) -> float | None:
    try:
        return float(read_json(ctx.cell_dir(cell) / MARKER).get("seconds"))
    except (OSError, ValueError, TypeError):
        return None


def prepare_out(cfg: StudyConfig, out: Path) -> list[str]:
    """Create ``out`` and save the config; refuse to mix two different studies in one folder.

    Returns the keys ``cfg`` adds to the saved config where that is allowed (an ImageNet weight
    file given to a study first run without it: ``imagenet_weights.vgg16``); the saved
    ``study.yaml`` is rewritten with them, so the report and later re-runs see the new cells.
    """
    from cardioclr.data.prepare import check_out_dir

    check_out_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    saved = out / CONFIG_FILE
    added: list[str] = []
    if saved.is_file():
        old = read_saved_config(saved)
        diffs = config_differences(old, cfg)
        if diffs:
            hint = ""
            if any(d.startswith("imagenet_weights.") for d in diffs):
                # Only adding a file is allowed: with another file for the same encoder (or
                # none), its finished ImageNet cells would hold results of weights that
                # study.yaml no longer names. Say so, so the refusal is not a puzzle.
                hint = (" An encoder's ImageNet weight file can be added to a study but not "
                        "changed or removed (its ImageNet cells were fine-tuned from it).")
            raise CardioclrError(
                f"{out} holds a study with a different configuration ({saved}): "
                + "; ".join(diffs[:8]) + ("; ..." if len(diffs) > 8 else "")
                + "." + hint + " Re-run with the same options (or --config " + str(saved)
                + "), or choose another --out.")
        added = config_additions(old, cfg)
    save_config(cfg, saved)
    return added


class _CellLog:
    """During one cell: its log lines go to ``OUT/logs/<cell>.log``; the console shows warnings.

    The study's own progress lines are the console output; the stages' INFO chatter (Lightning
    banners, per-epoch messages) would drown them, so it goes to the cell's log file instead.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handler: logging.Handler | None = None
        self.saved: list[tuple[logging.Handler, int]] = []
        self.attached: list[logging.Logger] = []
        self.root_level = logging.WARNING

    def __enter__(self) -> _CellLog:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        root = logging.getLogger()
        self.handler = logging.FileHandler(self.path, encoding="utf-8")
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.handler.setLevel(logging.DEBUG)
        # Lightning installs its own console handler (propagate=False) when imported before
        # logging is configured, so every logger with handlers is quietened, not just the root.
        loggers = [root] + [lg for lg in logging.root.manager.loggerDict.values()
                            if isinstance(lg, logging.Logger) and lg.handlers]
        for lg in loggers:
            for h in lg.handlers:
                if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                    self.saved.append((h, h.level))
                    h.setLevel(max(h.level, logging.WARNING))
            if lg is root or not lg.propagate:
                lg.addHandler(self.handler)
                self.attached.append(lg)
        # Library warnings (deprecations) go to the cell's log, not between the progress lines.
        logging.captureWarnings(True)
        warn_logger = logging.getLogger("py.warnings")
        self.warn_propagate = warn_logger.propagate
        warn_logger.propagate = False
        if warn_logger not in self.attached:
            warn_logger.addHandler(self.handler)
            self.attached.append(warn_logger)
        self.root_level = root.level
        if root.level > logging.INFO or root.level == logging.NOTSET:
            root.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc: object) -> None:
        root = logging.getLogger()
        if self.handler is not None:
            for lg in self.attached:
                lg.removeHandler(self.handler)
            self.handler.close()
        for h, level in self.saved:
            h.setLevel(level)
        logging.getLogger("py.warnings").propagate = self.warn_propagate
        logging.captureWarnings(False)
        root.setLevel(self.root_level)


def _log_name(cell: Cell) -> str:
    return cell.id.replace("/", "__") + ".log"


def _end_with_the_study(study_pid: int) -> None:
    """``preexec_fn`` of a cell's process: on Linux, SIGTERM it when the study process dies.

    Without it a study killed on its own (``kill -9 PID``, the out-of-memory killer) would leave
    its cell processes training on as orphans, and the re-run of the same command would train
    the same cells beside them, both writing one cell directory. SIGTERM, not SIGKILL: Lightning
    stops a fit on it, and the cell, without its completion marker, is resumed by the re-run.
    A Ctrl-C or a ``kill`` of the whole process group reaches the cells directly.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    pr_set_pdeathsig = 1  # <linux/prctl.h>; not wrapped by the standard library
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != study_pid:  # the study died between fork and prctl
        os.kill(os.getpid(), signal.SIGTERM)


def _cell_command(ctx: StudyContext, cell: Cell) -> list[str]:
    """``python -m cardioclr.study.cell OUT ID``: one cell of this study in a process of its own."""
    return [sys.executable, "-m", "cardioclr.study.cell", str(ctx.out), cell.id]


def _run_in_own_process(ctx: StudyContext, cell: Cell, log_path: Path) -> dict[str, Any]:
    """Run a training cell as ``python -m cardioclr.study.cell`` (see that module for why).

    Its output is appended to the cell's log; a non-zero exit is the cell's failure.
    """
    import subprocess

    summary_path = ctx.cell_dir(cell) / SUMMARY_FILE
    summary_path.unlink(missing_ok=True)
    command = _cell_command(ctx, cell)
    log.info("running in its own process (devices=%d): %s", ctx.cfg.devices, " ".join(command))
    with open(log_path, "a", encoding="utf-8") as fh:
        code = subprocess.run(command, stdout=fh, stderr=subprocess.STDOUT, check=False,
                              preexec_fn=partial(_end_with_the_study, os.getpid())).returncode
    if code != 0:
        raise CardioclrError(f"the cell's process ({' '.join(command)}) exited with status {code}")
    return read_json(summary_path) if summary_path.is_file() else {}


def concurrent_group(cells: list[Cell], done: set[str], handled: set[str], weights: Mapping[str, float],
                     finished: Callable[[Cell], bool]) -> list[Cell]:
    """The cells of :data:`CONCURRENT_KINDS` that can run now: runnable, not yet run or handled,
    every dependency ``done`` (so none failed or not run; and not merely listed earlier: a
    beyond-paper cell's own SimCLR pretraining comes after the fine-tuning cells) and not
    ``finished`` already. Ordered by the kinds' expected cost (``weights``), heaviest first, so
    that the cheap cells fill the slots at the end instead of one long cell running alone."""
    group = [c for c in cells if c.kind in CONCURRENT_KINDS and c.id not in handled
             and c.not_run_reason is None and all(d in done for d in c.deps) and not finished(c)]
    return sorted(group, key=lambda c: -weights.get(c.kind, 1.0))


def _run_concurrently(ctx: StudyContext, group: list[Cell], slots: int, state: StudyState,
                      progress: Progress, result: StudyResult, blocked: dict[str, str]) -> None:
    """Run ``group`` (independent training cells) as up to ``slots`` processes at a time.

    Each cell runs as ``python -m cardioclr.study.cell OUT ID`` (output to its log), so one
    failing or crashing cell fails alone. The CPU threads are shared out among the processes
    (intra-op threads that outnumber the cores spin-wait). On interruption every process is
    stopped and its cell left pending (each resumes from its own checkpoint).
    """
    import subprocess

    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // slots))
    waiting = list(group)
    running: dict[str, tuple[Cell, subprocess.Popen[bytes], float, Any]] = {}
    try:
        while waiting or running:
            while waiting and len(running) < slots:
                cell = waiting.pop(0)
                progress.start(cell)
                state.set(cell.id, "running")
                log_path = ctx.out / "logs" / _log_name(cell)
                log_path.parent.mkdir(parents=True, exist_ok=True)
                (ctx.cell_dir(cell) / SUMMARY_FILE).unlink(missing_ok=True)
                fh = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 - closed when it ends
                proc = subprocess.Popen(_cell_command(ctx, cell), stdout=fh, stderr=subprocess.STDOUT,
                                        env=env, preexec_fn=partial(_end_with_the_study, os.getpid()))
                running[cell.id] = (cell, proc, time.perf_counter(), fh)
            time.sleep(0.2)
            for cid, (cell, proc, start, fh) in list(running.items()):
                code = proc.poll()
                if code is None:
                    continue
                fh.close()
                del running[cid]
                seconds = time.perf_counter() - start
                summary_path = ctx.cell_dir(cell) / SUMMARY_FILE
                if code != 0:
                    message = f"the cell's process exited with status {code}"
                    state.set(cid, "failed", seconds=seconds, error=message)
                    result.failed[cid] = message
                    blocked[cid] = "failed"
                    progress.finish(cell, seconds, "failed",
                                    f"{message} (log: {ctx.out / 'logs' / _log_name(cell)})")
                    continue
                summary = read_json(summary_path) if summary_path.is_file() else {}
                write_json(ctx.cell_dir(cell) / MARKER, {"id": cid, "kind": cell.kind,
                                                         "seconds": round(seconds, 2),
                                                         "params": cell.params, "summary": summary})
                state.set(cid, "done", seconds=seconds)
                result.done.append(cid)
                result.ran.append(cid)
                progress.finish(cell, seconds, "done")
    except BaseException:
        for cid, (_cell, proc, start, fh) in running.items():
            proc.terminate()
            proc.wait()
            fh.close()
            state.set(cid, "pending", seconds=time.perf_counter() - start,
                      error="interrupted; re-run the same command to resume")
        raise


def run_study(cfg: StudyConfig, out: str | os.PathLike[str],
              kinds: Mapping[str, CellKind] = CELL_KINDS, stream: TextIO | None = None,
              build_report: bool = True) -> StudyResult:
    """Run (or resume) the study ``cfg`` in ``out``; returns what happened to every cell.

    ``kinds``: the registry of cell kinds (:data:`~cardioclr.study.kinds.CELL_KINDS`; tests pass
    fakes). A failing cell is recorded (``study_state.json``, ``OUT/logs/<cell>.log`` with the
    traceback) and the study goes on with every cell that does not depend on it. The report is
    built at the end from whatever finished.
    """
    out = Path(out).resolve()
    if cfg.threads is not None:
        import torch

        torch.set_num_threads(cfg.threads)
    added = prepare_out(cfg, out)
    check_options(cfg, kinds)
    ctx = StudyContext(cfg, out)
    cells = expand_grid(cfg)
    # Cells recorded as not run by an earlier run but runnable now (an ImageNet weight file
    # added since) need nothing special: they have no completion marker, so the loop below
    # runs them, and the state starts every cell as pending, dropping the old not-run reason.
    state = StudyState(out, cells)
    # Processes for the cells that run side by side: only with the real registry (the cell
    # processes load it; a caller's own registry, such as the tests' fakes, runs in-process).
    slots = cfg.finetune.concurrent if cfg.devices == 1 and kinds is CELL_KINDS else 1
    weights = kind_weights(kinds, cfg.preset)
    budgets = {c.id: b for c in runnable(cells)
               if (k := kinds.get(c.kind)) is not None and k.budget_seconds is not None
               and (b := k.budget_seconds(cfg)) is not None}
    progress = Progress(cells, stream or sys.stderr, weights, slots=slots, budgets=budgets)
    for key in added:
        progress.message(f"added to {out / CONFIG_FILE}: {key} (its cells run now)")
    result = StudyResult()
    t0 = time.perf_counter()
    blocked: dict[str, str] = {}  # cell id -> why it cannot provide its outputs
    write_json(out / "study_environment.json", environment_info())

    handled: set[str] = set()  # cells run by a concurrent group (see _run_concurrently)
    for cell in cells:
        if cell.id in handled:
            continue
        if cell.not_run_reason:
            state.set(cell.id, "not-run", reason=cell.not_run_reason)
            result.not_run[cell.id] = cell.not_run_reason
            blocked[cell.id] = "not run"
            progress.message(f"not run: {cell.id} ({cell.not_run_reason})")
            continue
        bad = [d for d in cell.deps if d in blocked]
        if bad:
            reason = f"depends on {bad[0]}, which {blocked[bad[0]]}"
            state.set(cell.id, "not-run", reason=reason)
            result.not_run[cell.id] = reason
            blocked[cell.id] = "was not run"
            progress.drop(cell)
            progress.message(f"not run: {cell.id} ({reason})")
            continue
        if cell_finished(ctx, cell, kinds):
            seconds = _marker_seconds(ctx, cell)
            state.set(cell.id, "done", seconds=seconds)
            result.done.append(cell.id)
            progress.skip(cell, seconds)
            continue
        kind = cell_kind(kinds, cell.kind)
        if cell.kind == "finetune" and slots > 1:
            # Every cell that can run now as one group of ``python -m cardioclr.study.cell``
            # processes.
            group = concurrent_group(cells, set(result.done), handled, weights,
                                     lambda c: cell_finished(ctx, c, kinds))
            handled.update(c.id for c in group)
            _run_concurrently(ctx, group, slots, state, progress, result, blocked)
            continue
        progress.start(cell)
        state.set(cell.id, "running")
        start = time.perf_counter()
        log_path = out / "logs" / _log_name(cell)
        try:
            with _CellLog(log_path):
                log.info("cell %s (%s) -> %s", cell.id, cell.kind, ctx.cell_dir(cell))
                if cfg.devices > 1 and kind.multi_device:
                    summary = _run_in_own_process(ctx, cell, log_path)
                else:
                    summary = kind.run(ctx, cell) or {}
        except (KeyboardInterrupt, SystemExit) as err:
            # Lightning turns Ctrl-C inside fit() into sys.exit(1), and SIGTERM into
            # SIGTERMException (a SystemExit): all three are an interrupted cell, resumable.
            state.set(cell.id, "pending", seconds=time.perf_counter() - start,
                      error="interrupted; re-run the same command to resume")
            if isinstance(err, KeyboardInterrupt):
                raise
            raise KeyboardInterrupt from err
        except Exception as err:  # noqa: BLE001 - one bad cell must not stop the study
            seconds = time.perf_counter() - start
            message = f"{type(err).__name__}: {err}"
            with open(log_path, "a", encoding="utf-8") as fh:
                fh.write(traceback.format_exc())
            state.set(cell.id, "failed", seconds=seconds, error=message)
            result.failed[cell.id] = message
            blocked[cell.id] = "failed"
            progress.finish(cell, seconds, "failed", f"{message} (log: {log_path})")
            continue
        seconds = time.perf_counter() - start
        write_json(ctx.cell_dir(cell) / MARKER, {"id": cell.id, "kind": cell.kind,
                                                 "seconds": round(seconds, 2),
                                                 "params": cell.params, "summary": summary})
        state.set(cell.id, "done", seconds=seconds)
        result.done.append(cell.id)
        result.ran.append(cell.id)
        progress.finish(cell, seconds, "done")

    result.seconds = time.perf_counter() - t0
    if build_report:
        try:
            result.report = {k: str(v) for k, v in write_report(out).items()}
            progress.message(f"report: {out / 'report.html'}")
        except Exception as err:  # noqa: BLE001 - the cells' results stay; say why no report
            result.report_error = f"{type(err).__name__}: {err}"
            write_text(out / "logs" / "report.log", traceback.format_exc())
            progress.message(f"report failed: {result.report_error} (log: {out / 'logs' / 'report.log'})")
    return result
