"""benchmarks/segmentation_quality.py ``--cv K``: each fold's result is kept, a stopped run goes on
from the first unfinished fold, ``--finished-only`` scores what has finished (the training and
scoring of a fold are faked here; the benchmark itself trains the real preset)."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd
import pytest

from cardioclr.data.store import SliceStore
from cardioclr.layout import WorkLayout
from cardioclr.segment.crossfit import mask_source
from conftest import load_benchmark


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_benchmark("segmentation_quality")


def _args(**changes: Any) -> argparse.Namespace:
    base = {"preset": "cpu", "max_epochs": None, "train_minutes": None, "context_slices": None,
            "phase_channel": None, "overwrite": False, "finished_only": False}
    return argparse.Namespace(**{**base, **changes})


class Stopped(Exception):
    """Stands for the run being stopped (Ctrl-C, kill) while a fold trains."""


def _fold_score(patient_ids: list[str], work: Path | None = None) -> dict[str, Any]:
    """A fold's fake result; with ``work``, its fake predictions too: a mask file naming the fold
    for each held-out patient, and a QC flag and a quality estimate (the fold's number) for every
    patient of the store (seen or not)."""
    if work is not None:
        layout = WorkLayout(work)
        layout.segmentation_masks.mkdir(parents=True, exist_ok=True)
        for pid in patient_ids:
            np.savez(layout.segmentation_masks / f"{pid}.npz", fold=np.array(work.name))
        everyone = sorted(SliceStore(work).patient_ids)
        pd.DataFrame({"patient_id": everyone, "phase": "ES", "flag": "fragmented",
                      "detail": work.name}).to_csv(layout.qc_flags, index=False)
        pd.DataFrame({"patient_id": everyone, "disagreement": float(work.name[-1]) / 100}).to_csv(
            layout.segmentation / "quality.csv", index=False)
    return {"mean_dice": 0.9, "dice": {ph: {s: 0.9 for s in ("RV", "MYO", "LV")} for ph in ("ED", "ES")},
            "mean_hd95": 3.0, "train_seconds": 10.0, "n_test": len(patient_ids)}


def test_cv_keeps_each_fold_and_a_new_run_goes_on_from_the_first_unfinished_one(
        bench: ModuleType, tiny_work: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = tmp_path / "work"
    shutil.copytree(tiny_work, base)
    measured: list[str] = []
    stopped = False

    def fake(work: Path, args: argparse.Namespace, patient_ids: list[str]) -> dict[str, Any]:
        nonlocal stopped
        measured.append(work.name)
        if work.name == "fold1" and not stopped:
            stopped = True
            raise Stopped  # the first run is stopped while fold 1 trains
        return _fold_score(patient_ids, work)

    monkeypatch.setattr(bench, "_train_predict_evaluate", fake)
    with pytest.raises(Stopped):
        bench._cross_validate(base, 2, _args())
    assert measured == ["fold0", "fold1"]

    measured.clear()
    partial = bench._cross_validate(base, 2, _args(finished_only=True))
    assert measured == []  # fold 0 from its kept result; fold 1 never finished training
    assert partial["complete"] is False and partial["folds_missing"] == [1]
    assert partial["out_of_fold_work"] is None  # masks are gathered only once every fold finished
    assert [f["fold"] for f in partial["folds"]] == [0] and partial["n_patients"] == 10

    whole = bench._cross_validate(base, 2, _args())
    assert measured == ["fold1"]
    assert whole["complete"] is True and whole["folds_missing"] == [] and whole["n_patients"] == 20

    measured.clear()
    bench._cross_validate(base, 2, _args(train_minutes=5.0))
    assert measured == ["fold0", "fold1"]  # results measured with other options are not reused


def test_finished_only_with_no_finished_fold_says_so(bench: ModuleType, tiny_work: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    base = tmp_path / "work"
    shutil.copytree(tiny_work, base)
    monkeypatch.setattr(bench, "_train_predict_evaluate", lambda *a, **k: pytest.fail("nothing may train"))
    with pytest.raises(SystemExit, match="no fold of the 2-fold CV"):
        bench._cross_validate(base, 2, _args(finished_only=True))


def test_complete_cv_gathers_each_patients_held_out_mask(bench: ModuleType, tiny_work: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    base = tmp_path / "work"
    shutil.copytree(tiny_work, base)
    monkeypatch.setattr(bench, "_train_predict_evaluate",
                        lambda work, args, patient_ids: _fold_score(patient_ids, work))
    result = bench._cross_validate(base, 2, _args())
    oof = Path(result["out_of_fold_work"])
    assert oof == tmp_path / "work_cv2" / "out_of_fold" and not (oof.parent / "out_of_fold.tmp").exists()
    held = {i: set(SliceStore(tmp_path / "work_cv2" / f"fold{i}").splits.test) for i in (0, 1)}
    store = SliceStore(oof)
    assert store.splits == SliceStore(base).splits  # the benchmark's own 70/30-style split
    for pid in store.patient_ids:
        fold = 0 if pid in held[0] else 1
        assert pid in held[fold]
        with np.load(WorkLayout(oof).segmentation_masks / f"{pid}.npz") as z:
            assert str(z["fold"]) == f"fold{fold}"  # from the model that never saw it
        assert mask_source(oof, pid) == "out_of_fold"
    flags = pd.read_csv(WorkLayout(oof).qc_flags)
    assert len(flags) == len(store.patient_ids)  # each patient's own fold's flags only
    own = [f"fold{0 if p in held[0] else 1}" for p in flags.patient_id]
    assert own == list(flags.detail)
    quality = pd.read_csv(WorkLayout(oof).segmentation / "quality.csv")
    assert sorted(quality.patient_id) == sorted(store.patient_ids)  # for qc_calibration.py
    assert list(quality.disagreement) == [(0 if p in held[0] else 1) / 100 for p in quality.patient_id]
    diagnosis = load_benchmark("diagnosis_quality")
    assert diagnosis.crossfit_problem(oof, list(store.splits.train), list(store.splits.test)) is None
