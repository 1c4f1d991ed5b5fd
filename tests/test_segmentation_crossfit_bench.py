"""benchmarks/segmentation_crossfit.py: out-of-fold scores on the store grid and on the source
grid (against the dataset's own label files), on faked cross-fit outputs of the tiny synthetic
cohort (no training; the benchmark itself runs on real cross-fits)."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest

from cardioclr.data.masks import load_labels, predicted_mask_path
from cardioclr.data.store import SliceStore
from cardioclr.segment.crossfit import MASK_SOURCES_FILE
from conftest import load_benchmark


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_benchmark("segmentation_crossfit")


def _fake_crossfit(tiny_work: Path, tmp_path: Path, shift_px: int = 0) -> Path:
    """A copy of ``tiny_work`` whose train patients have 'out-of-fold' predicted masks equal to
    their expert masks rolled by ``shift_px`` store pixels along x."""
    work = tmp_path / "work"
    shutil.copytree(tiny_work, work)
    train = SliceStore(work).splits.train
    for pid in train:
        ed, es = load_labels(work, pid, "expert")
        path = predicted_mask_path(work, pid)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, ed_mask=np.roll(ed, shift_px, axis=2),
                            es_mask=np.roll(es, shift_px, axis=2))
    pd.DataFrame({"patient_id": train, "source": "out_of_fold"}).to_csv(
        work / "segmentation" / MASK_SOURCES_FILE, index=False)
    return work


def test_source_grid_scores_against_the_dataset_files(bench: ModuleType, tiny_work: Path,
                                                       tmp_path: Path) -> None:
    exact = _fake_crossfit(tiny_work, tmp_path / "exact")
    store = bench.out_of_fold_metrics(exact, "store")
    source = bench.out_of_fold_metrics(exact, "source")
    assert list(source.index) == sorted(SliceStore(exact).splits.train)
    # The expert masks themselves score 1 on the store grid; mapped back to the source grid they
    # meet the dataset's files up to the resampling (3 mm store grid, finer source grid).
    assert store["mean_dice"].min() == 1.0
    assert 0.85 < source["mean_dice"].mean() < 1.0
    # A prediction one store pixel off scores lower on the source grid too.
    shifted = bench.out_of_fold_metrics(_fake_crossfit(tiny_work, tmp_path / "shifted", shift_px=1), "source")
    assert (shifted["mean_dice"] < source["mean_dice"]).all()


def test_source_grid_names_a_missing_label_file(bench: ModuleType, tiny_work: Path, tmp_path: Path) -> None:
    work = _fake_crossfit(tiny_work, tmp_path)
    pid = sorted(SliceStore(work).splits.train)[0]
    cases = {pid: type("Case", (), {"ed_mask": None, "es_mask": None, "source": f"/data/{pid}"})()}
    with pytest.raises(SystemExit, match=f"/data/{pid}: no expert ED label file"):
        bench.source_grid_pair(work, SliceStore(work), pid, cases)
