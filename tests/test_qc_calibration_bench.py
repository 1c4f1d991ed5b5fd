"""benchmarks/qc_calibration.py: the quality flag's threshold is calibrated on train patients only."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from cardioclr.data.masks import load_labels
from cardioclr.data.store import SliceStore
from cardioclr.layout import WorkLayout
from cardioclr.segment.crossfit import MASK_SOURCES_FILE, mask_sources_table
from cardioclr.segment.qc import QUALITY_FILE
from conftest import load_benchmark


def test_calibration_leaves_out_test_patients_even_with_out_of_fold_masks(tiny_work: Path,
                                                                         tmp_path: Path) -> None:
    # The layout of a segmentation CV's WORK_cvK/out_of_fold: every patient, test ones too,
    # has an out-of-fold mask and a quality estimate.
    work = tmp_path / "out_of_fold"
    shutil.copytree(tiny_work, work)
    layout = WorkLayout(work)
    layout.segmentation_masks.mkdir(parents=True)
    store = SliceStore(work)
    everyone = sorted(store.patient_ids)
    for pid in everyone:
        ed, es = load_labels(work, pid, "expert")
        np.savez(layout.segmentation_masks / f"{pid}.npz", ed_mask=ed, es_mask=es)
    mask_sources_table([{"patient_id": p, "source": "out_of_fold", "models": "cv_fold0"}
                        for p in everyone]).to_csv(layout.segmentation / MASK_SOURCES_FILE, index=False)
    pd.DataFrame({"patient_id": everyone, "disagreement": 0.02}).to_csv(
        layout.segmentation / QUALITY_FILE, index=False)

    table = load_benchmark("qc_calibration").out_of_fold_table(work)

    assert store.splits.test  # there is something to leave out
    assert sorted(table.index) == sorted(store.splits.train)
    assert np.allclose(table["mean_dice"], 1.0)  # predicted = expert
