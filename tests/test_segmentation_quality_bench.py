"""benchmarks/segmentation_quality.py ``--cv K``: each fold's result is kept, a stopped run goes on
from the first unfinished fold, ``--finished-only`` scores what has finished (the training and
scoring of a fold are faked here; the benchmark itself trains the real preset)."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

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


def _fold_score(patient_ids: list[str]) -> dict[str, Any]:
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
        return _fold_score(patient_ids)

    monkeypatch.setattr(bench, "_train_predict_evaluate", fake)
    with pytest.raises(Stopped):
        bench._cross_validate(base, 2, _args())
    assert measured == ["fold0", "fold1"]

    measured.clear()
    partial = bench._cross_validate(base, 2, _args(finished_only=True))
    assert measured == []  # fold 0 from its kept result; fold 1 never finished training
    assert partial["complete"] is False and partial["folds_missing"] == [1]
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
