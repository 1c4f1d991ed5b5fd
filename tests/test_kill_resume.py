"""A study killed with SIGKILL at any stage and re-run with the same command finishes with the
same results.csv as an uninterrupted run (apart from timings).

A tiny study (16 synthetic patients, 32 px, one or two epochs, a reduced grid) runs in a
subprocess in its own process group. The test polls ``study_state.json`` and kills the whole
group (``kill -9``: no cleanup, no Python handlers, the pool workers too) once a cell of the
next kind of the list is running, or, for ``report``, once every cell is done; then it starts
the same command again. The final ``results.csv`` must match a study run without interruption,
ignoring only timing columns.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import REPO

TINY = {
    "preset": "demo",
    "synthetic": {"patients": 16, "seed": 1, "options": {"matrix": 64}},
    "prepare": {"image_size": 32, "spacing_mm": 6.0, "n_folds": 2, "workers": 2},
    "segment": {"options": {"network": {"channels": [4, 8, 16, 32, 64]}, "crop": 32,
                            "batch_size": 16, "trainer": {"max_epochs": 2, "patience": 2},
                            "optim": {"time_budget_s": None}}},
    "pretrain": {"inputs": ["segmented"],
                 "options": {"batch_size": 16, "max_epochs": 2, "patience": 2,
                             "val_fraction": 0.2}},
    "finetune": {"inits": ["none", "simclr"], "inputs": ["segmented"],
                 "options": {"max_epochs": 2, "patience": 2, "n_boot": 20, "grid_batch": [16]}},
    "baseline": {"hybrid": False, "options": {"n_estimators": [10], "max_depth": [3],
                                              "n_boot": 20}},
    "report": {"saliency_patients": 1, "n_boot": 20},
}
#: Kill points, in study order: a cell of this kind is running ("report": all cells done).
KILL_AT = ("prepare", "segment-train", "pretrain", "finetune", "baseline", "report")
#: Kinds killed right after their first epoch's checkpoint appears, so that the re-run
#: resumes from it (the path that must end with the same weights as an uninterrupted run).
AFTER_CHECKPOINT = ("segment-train", "pretrain")
TIMING = ("seconds", "time", "duration", "eta", "finished", "started")


def _command(out: Path, cfg: Path) -> list[str]:
    return [sys.executable, "-m", "cardioclr.cli", "study", "--out", str(out), "--config",
            str(cfg)]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}


def _state(out: Path) -> dict:
    try:
        return json.loads((out / "study_state.json").read_text())
    except (OSError, ValueError):
        return {}


def _reached(out: Path, kind: str) -> Path | None:
    """The running cell's directory once ``kind`` is reached (``out`` for the report)."""
    cells = _state(out).get("cells", {})
    if not cells:
        return None
    if kind == "report":
        done = all(c["status"] in ("done", "not-run", "failed") for c in cells.values())
        return out if done else None
    running = [c for c in cells.values() if c["kind"] == kind and c["status"] == "running"]
    return out / running[0]["path"] if running else None


def _wait_before_kill(kind: str, cell_dir: Path, proc: subprocess.Popen) -> None:
    if kind in AFTER_CHECKPOINT:
        deadline = time.monotonic() + 60
        while (proc.poll() is None and time.monotonic() < deadline
               and not (cell_dir / "checkpoints" / "last.ckpt").is_file()):
            time.sleep(0.05)
    else:
        time.sleep({"report": 0.2, "prepare": 0.5}.get(kind, 1.0))


def _run_and_kill(out: Path, cfg: Path, kind: str, log: Path) -> bool:
    """Start the study; SIGKILL its process group once ``kind`` is reached. True when killed
    there, False when the study ended first."""
    with open(log, "a") as fh:
        proc = subprocess.Popen(_command(out, cfg), env=_env(), stdout=fh, stderr=fh,
                                start_new_session=True)
        try:
            deadline = time.monotonic() + 600
            while proc.poll() is None and time.monotonic() < deadline:
                cell_dir = _reached(out, kind)
                if cell_dir is not None:
                    _wait_before_kill(kind, cell_dir, proc)
                    if proc.poll() is not None:
                        return False
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=30)
                    return True
                time.sleep(0.1)
            return False
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)


def _results(out: Path) -> pd.DataFrame:
    df = pd.read_csv(out / "results.csv")
    keep = [c for c in df.columns if not any(t in c.lower() for t in TIMING)]
    return df[keep].sort_values("cell").reset_index(drop=True)


@pytest.mark.slow
def test_study_killed_at_every_stage_resumes_to_the_same_results(tmp_path: Path) -> None:
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    log = tmp_path / "study.log"

    reference = tmp_path / "reference"
    run = subprocess.run(_command(reference, cfg), env=_env(), capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]

    out = tmp_path / "killed"
    killed_at = [kind for kind in KILL_AT if _run_and_kill(out, cfg, kind, log)]
    # Every training stage was really interrupted (the report may finish before the kill).
    assert set(killed_at) >= {"prepare", "segment-train", "pretrain", "finetune", "baseline"}, (
        killed_at, log.read_text()[-3000:])
    final = subprocess.run(_command(out, cfg), env=_env(), capture_output=True, text=True,
                           timeout=900)
    assert final.returncode == 0, final.stderr[-3000:] + log.read_text()[-3000:]

    # The trainings killed after their first checkpoint resumed from it...
    for name in ("segment-train.log", "pretrain__smallcnn-segmented.log"):
        assert "resuming from" in (out / "logs" / name).read_text(), name
    # ...and the study ends with the same results as without interruption.
    pd.testing.assert_frame_equal(_results(out), _results(reference))
    state = _state(out)
    assert {c["status"] for c in state["cells"].values()} <= {"done", "not-run"}
    # Nothing half-written is left: no temporary files or folders of the killed runs.
    debris = [str(p.relative_to(out)) for p in out.rglob("*")
              if p.name.endswith((".partial", ".tmp", ".old")) or ".tmp." in p.name]
    assert debris == []


def _cell_processes(out: Path) -> list[int]:
    """PIDs of live (not zombie) ``python -m cardioclr.study.cell OUT ...`` processes."""
    pids = []
    for proc_dir in Path("/proc").iterdir():
        if not proc_dir.name.isdigit():
            continue
        try:
            argv = (proc_dir / "cmdline").read_bytes().split(b"\0")
            state = (proc_dir / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if b"cardioclr.study.cell" in argv and str(out).encode() in argv and state != "Z":
            pids.append(int(proc_dir.name))
    return pids


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_fine_tuning_processes_end_when_the_study_alone_is_killed(tmp_path: Path) -> None:
    # Two fine-tuning cells run at once as their own processes (the demo preset's
    # finetune.concurrent), long enough to outlive the test were they left running.
    tiny = {**TINY, "finetune": {"inits": ["none"], "inputs": ["full", "segmented"], "concurrent": 2,
                                 "options": {"max_epochs": 1000, "patience": 1000, "grid_batch": [16]}},
            "baseline": {**TINY["baseline"], "hybrid": False}}
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny))
    out = (tmp_path / "study").resolve()
    with open(tmp_path / "study.log", "a") as fh:
        proc = subprocess.Popen(_command(out, cfg), env=_env(), stdout=fh, stderr=fh,
                                start_new_session=True)
    cells: list[int] = []
    try:
        deadline = time.monotonic() + 300
        while len(cells) < 2 and proc.poll() is None and time.monotonic() < deadline:
            cells = _cell_processes(out)
            time.sleep(0.2)
        assert len(cells) == 2, (tmp_path / "study.log").read_text()[-3000:]
        time.sleep(2.0)  # into their training loops
        os.kill(proc.pid, signal.SIGKILL)  # the study only, not its process group
        proc.wait(timeout=30)
        deadline = time.monotonic() + 30
        while _cell_processes(out) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _cell_processes(out) == []
    finally:
        for pid in _cell_processes(out):
            os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
