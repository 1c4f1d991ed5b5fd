"""Cross-fitted segmentation (``segment train --folds K``): no patient is ever segmented by a
model that saw its expert mask; everyone else gets the K-model ensemble."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest

from cardioclr.atomic import read_json
from cardioclr.data.prepare import PrepareConfig, prepare
from cardioclr.data.store import SliceStore
from cardioclr.errors import CardioclrError
from cardioclr.segment import predict as predict_mod
from cardioclr.segment.crossfit import (
    fold_model_dir,
    folds_dir,
    mask_source,
    models_for,
    plan_folds,
    read_assignment,
)
from cardioclr.segment.model import NetworkConfig
from cardioclr.segment.predict import PredictConfig, predict
from cardioclr.segment.train import preset_config, train
from conftest import write_tiny_acdc


def test_plan_folds_uses_the_split_folds_when_k_matches_else_a_partition():
    train_ids = [f"p{i:02d}" for i in range(10)]
    split_folds = [train_ids[:5], train_ids[5:]]
    assert plan_folds(train_ids, split_folds, 2, seed=0) == split_folds
    folds = plan_folds(train_ids, split_folds, 3, seed=0)
    assert len(folds) == 3 and sorted(sum(folds, [])) == train_ids  # disjoint, covering
    assert folds == plan_folds(train_ids, split_folds, 3, seed=0)  # deterministic
    with pytest.raises(CardioclrError, match="at least 2"):
        plan_folds(train_ids, split_folds, 1, seed=0)
    with pytest.raises(CardioclrError, match="more than"):
        plan_folds(train_ids[:2], [], 3, seed=0)


def test_models_for_gives_a_fold_patient_only_its_own_held_out_model():
    folds = [["a", "b"], ["c"], ["d"]]
    assert models_for("c", folds) == [1]
    assert models_for("test-patient", folds) == [0, 1, 2]


@pytest.fixture(scope="module")
def crossfitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[Path]]]:
    root = tmp_path_factory.mktemp("cf_data")
    write_tiny_acdc(root, n_per_class=3, seed=3)  # 15 patients, 48 px
    work = tmp_path_factory.mktemp("cf_work")
    prepare(PrepareConfig(data=str(root), out=str(work), spacing_mm=3.5, image_size=48, workers=1,
                          test_fraction=0.34, n_folds=2))
    cfg = preset_config(work, "cpu", max_epochs=1, progress_bar=False, batch_size=8, folds=2,
                        compile_network=False)
    cfg = dataclasses.replace(cfg, network=NetworkConfig(channels=(4, 8, 16), num_res_units=0),
                              crop=32, val_fraction=0.2)
    info = train(cfg)
    assert info["folds"] == 2
    used: dict[str, list[Path]] = {}
    original = predict_mod.segment_patient

    def recording(models, ps, *args, **kwargs):  # which model files segment which patient
        used[ps.patient_id] = [m.path for m in models]
        return original(models, ps, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(predict_mod, "segment_patient", recording)
        summary = predict(PredictConfig(work=str(work), tta=False, qc_png=False))
    assert summary["models"] == 2 and not summary["failed"]
    return work, used


def test_no_patient_is_segmented_by_a_model_that_saw_it(crossfitted):
    work, used = crossfitted
    store = SliceStore(work)
    assert set(used) == set(store.patient_ids)
    for pid, paths in used.items():
        for p in paths:
            done = read_json(p.parent / "done.json")
            seen = set(done["train_patients"]) | set(done["val_patients"])
            assert pid not in seen, f"{pid} segmented by {p}, which trained on it"


def test_training_patients_get_out_of_fold_masks_and_the_others_the_ensemble(crossfitted):
    work, used = crossfitted
    store = SliceStore(work)
    folds = read_assignment(work)
    assert folds is not None and sorted(sum(folds, [])) == sorted(store.splits.train)
    assert folds == [sorted(f) for f in store.splits.folds]  # K == n_folds: the classifier's folds
    for pid in store.splits.train:
        (k,) = [i for i, f in enumerate(folds) if pid in f]
        assert used[pid] == [fold_model_dir(work, k) / "model.pt"]
        assert mask_source(work, pid) == "out_of_fold"
    for pid in store.splits.test:
        assert len(used[pid]) == 2 and mask_source(work, pid) == "ensemble"
    sources = pd.read_csv(work / "segmentation" / "mask_sources.csv", dtype=str)
    assert list(sources.columns) == ["patient_id", "source", "models"]
    assert (folds_dir(work) / "done.json").is_file()
    flags = pd.read_csv(work / "segmentation" / "quality.csv", dtype={"patient_id": str})
    assert set(flags["patient_id"]) == set(store.patient_ids)


def test_changed_folds_are_refused_without_overwrite(crossfitted, tmp_path):
    work, _ = crossfitted
    path = folds_dir(work) / "assignment.json"
    data = json.loads(path.read_text())
    from cardioclr.segment.crossfit import write_assignment

    with pytest.raises(CardioclrError, match="other folds"):
        write_assignment(work, data["folds"][::-1], "test")


def test_fold_models_of_a_study_segment_another_work_directory(crossfitted, tmp_path):
    import shutil

    work, _ = crossfitted
    other = tmp_path / "new_patients"
    shutil.copytree(work, other, ignore=shutil.ignore_patterns("segmentation"))
    store = SliceStore(other)
    test_ids = list(store.splits.test)
    summary = predict(PredictConfig(work=str(other), model=str(folds_dir(work)), tta=False,
                                    qc_png=False), patient_ids=test_ids)
    assert summary["models"] == 2 and summary["segmented"] == len(test_ids)
    assert {mask_source(other, p) for p in test_ids} == {"ensemble"}


def test_segment_train_cli_folds_option_reaches_the_config(monkeypatch):
    from cardioclr.cli import main
    from cardioclr.segment import train as train_mod

    seen = {}

    def fake_train(cfg, overwrite=False):
        seen["cfg"] = cfg
        return {}

    monkeypatch.setattr(train_mod, "train", fake_train)
    assert main(["segment", "train", "W", "--folds", "3"]) == 0
    assert seen["cfg"].folds == 3 and seen["cfg"].fold is None
    assert main(["segment", "train", "W"]) == 0
    assert seen["cfg"].folds == 1


def test_segment_train_cli_minutes_sets_the_time_budget_per_model(monkeypatch, capsys):
    from cardioclr.cli import main
    from cardioclr.segment import train as train_mod

    seen = {}

    def fake_train(cfg, overwrite=False):
        seen["cfg"] = cfg
        return {}

    monkeypatch.setattr(train_mod, "train", fake_train)
    assert main(["segment", "train", "W", "--folds", "5", "--minutes", "10"]) == 0
    assert seen["cfg"].optim.time_budget_s == 600 and seen["cfg"].folds == 5
    preset_budget = train_mod.PRESETS["cpu"]["optim"].time_budget_s
    assert main(["segment", "train", "W"]) == 0
    assert seen["cfg"].optim.time_budget_s == preset_budget
    seen.clear()
    assert main(["segment", "train", "W", "--minutes", "0"]) == 1
    assert "cfg" not in seen and "--minutes must be positive" in capsys.readouterr().err
