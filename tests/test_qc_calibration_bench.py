"""benchmarks/qc_calibration.py: the quality flag's threshold is calibrated on train patients only,
against a fixed Dice or the train patients' worst fraction, and tested on test patients only."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cardioclr.data.masks import load_labels
from cardioclr.data.store import SliceStore
from cardioclr.layout import WorkLayout
from cardioclr.segment.crossfit import MASK_SOURCES_FILE, mask_sources_table
from cardioclr.segment.qc import QUALITY_FILE
from conftest import load_benchmark


def _out_of_fold_work(tiny_work: Path, tmp_path: Path, poor: set[str]) -> Path:
    """The layout of a segmentation CV's WORK_cvK/out_of_fold: every patient, test ones too, has
    an out-of-fold mask (the expert one; without its RV for the ``poor`` patients) and a quality
    estimate (0.05 for the poor patients, 0.02 for the others)."""
    work = tmp_path / "out_of_fold"
    shutil.copytree(tiny_work, work)
    layout = WorkLayout(work)
    layout.segmentation_masks.mkdir(parents=True)
    everyone = sorted(SliceStore(work).patient_ids)
    for pid in everyone:
        ed, es = load_labels(work, pid, "expert")
        if pid in poor:
            ed, es = np.where(ed == 1, 0, ed), np.where(es == 1, 0, es)
        np.savez(layout.segmentation_masks / f"{pid}.npz", ed_mask=ed, es_mask=es)
    mask_sources_table([{"patient_id": p, "source": "out_of_fold", "models": "cv_fold0"}
                        for p in everyone]).to_csv(layout.segmentation / MASK_SOURCES_FILE, index=False)
    pd.DataFrame({"patient_id": everyone, "disagreement": [0.05 if p in poor else 0.02 for p in everyone]}
                 ).to_csv(layout.segmentation / QUALITY_FILE, index=False)
    return work


def test_calibration_leaves_out_test_patients_even_with_out_of_fold_masks(tiny_work: Path,
                                                                         tmp_path: Path) -> None:
    work = _out_of_fold_work(tiny_work, tmp_path, poor=set())
    store = SliceStore(work)
    bench = load_benchmark("qc_calibration")

    table = bench.out_of_fold_table(work)

    assert store.splits.test  # there is something to leave out
    assert sorted(table.index) == sorted(store.splits.train)
    assert np.allclose(table["mean_dice"], 1.0)  # predicted = expert
    assert sorted(bench.out_of_fold_table(work, "test").index) == sorted(store.splits.test)


def test_worst_fraction_calibration_tested_on_the_test_patients_own_masks(tiny_work: Path, tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]
                                                                          ) -> None:
    store = SliceStore(tiny_work)
    train, test = sorted(store.splits.train), sorted(store.splits.test)
    poor = {*train[:3], test[0]}  # 3 of the train patients: their worst fraction
    work = _out_of_fold_work(tiny_work, tmp_path, poor)
    bench = load_benchmark("qc_calibration")

    assert bench.main(["--crossfit-work", str(work), "--poor-quantile", str(3.5 / len(train)),
                       "--test-from-crossfit"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    assert result["n_out_of_fold"] == len(train) and result["n_test"] == len(test)
    assert result["calibration"]["n_poor"] == 3  # the Dice below the quantile: the 3 degraded ones
    assert 0.02 < result["calibration"]["threshold"] < 0.05 and result["calibration"]["youden_j"] == 1.0
    at = result["test_at_calibrated"]
    assert at["flagged"]["patients"] == [test[0]] and at["unflagged"]["n"] == len(test) - 1
    assert at["flagged"]["mean_dice"] < at["unflagged"]["mean_dice"] == pytest.approx(1.0)
