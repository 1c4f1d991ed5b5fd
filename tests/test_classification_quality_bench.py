"""benchmarks/classification_quality.py: its statistics and choices, on faked predictions (no
training; the benchmark itself runs on the real data)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest

from cardioclr.evaluate.metrics import classification_metrics, prob_columns
from conftest import load_benchmark
from test_report_fakes import CLASSES, fake_predictions

Y = np.arange(40) % len(CLASSES)
IDS = [f"p{i:02d}" for i in range(len(Y))]


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_benchmark("classification_quality")


def _frame(proba: np.ndarray, **extra: object) -> pd.DataFrame:
    df = pd.DataFrame({"patient_id": IDS, "label_index": Y, **extra})
    df[prob_columns(CLASSES)] = proba
    return df


def test_seed_mean_metrics(bench: ModuleType) -> None:
    seeds = {s: fake_predictions(Y, 1.0 + s, seed=s) for s in (0, 1, 2)}
    per_seed = pd.concat([_frame(p, seed=s) for s, p in seeds.items()])
    out = bench.seed_mean_metrics(per_seed.sample(frac=1.0, random_state=0), CLASSES, n_boot=300)
    single = [classification_metrics(Y, p, CLASSES, n_boot=10) for p in seeds.values()]
    aucs = [m["macro_auc"]["value"] for m in single]
    accs = [m["accuracy"]["value"] for m in single]
    assert out["auc"] == pytest.approx(np.mean(aucs)) and out["auc_sd"] == pytest.approx(np.std(aucs, ddof=1))
    assert out["accuracy"] == pytest.approx(np.mean(accs))
    baccs = [m["balanced_accuracy"]["value"] for m in single]
    assert out["balanced_accuracy"] == pytest.approx(np.mean(baccs))
    assert out["auc_ci_low"] < out["auc"] < out["auc_ci_high"]
    assert [r["seed"] for r in out["per_seed"]] == [0, 1, 2]


def test_reference_and_best_are_chosen_by_cv_not_test(bench: ModuleType, tmp_path: Path) -> None:
    # (strength -> test quality, CV AUC on train)
    cells = {"none": (1.0, 0.70), "none-full": (0.3, 0.65), "simclr-full": (3.0, 0.68),
             "simclr-segmented": (1.2, 0.75), "roi": (2.5, 0.80)}
    results = {}
    for name, (strength, cv) in cells.items():
        path = tmp_path / f"{name}.csv"
        _frame(fake_predictions(Y, strength, seed=1)).to_csv(path, index=False)
        results[name] = {"auc": 0.5 + strength / 10, "accuracy": 0.5, "cv_auc": cv,
                         "images_only": True, "predictions": str(path), "classes": CLASSES}
    out = bench.compare_all(results, n_boot=300)
    assert out["reference"]["name"] == "simclr-segmented"  # best CV among the paper's cells
    assert out["best_by_cv"]["name"] == "roi"
    assert set(out["comparisons"]) == {"none", "none-full", "simclr-full", "roi"}
    roi = out["comparisons"]["roi"]
    assert roi["auc_diff"]["value"] > 0 and 0 < roi["auc_p"] < 0.05 and 0 <= roi["accuracy_p_mcnemar"] <= 1
    assert [(c["a"], c["b"]) for c in out["answers"]["simclr"]["comparisons"]] == [
        ("simclr-full", "none"), ("simclr-segmented", "none")]
    assert out["answers"]["simclr"]["verdicts"][0] == "helps"
    assert out["answers"]["heart_masking"]["verdicts"] == ["helps"]


def test_list_is_a_study_beyond_paper_block(bench: ModuleType, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from cardioclr.study.config import load_config

    assert bench.main(["--list"]) == 0
    path = tmp_path / "beyond.yaml"
    path.write_text(capsys.readouterr().out)
    cfg = load_config(None, path)
    assert [b.name for b in cfg.beyond_paper] == [n for n in bench.CONFIGURATIONS if n not in bench.PAPER]
    patient = next(b for b in cfg.beyond_paper if b.name == "patient")
    assert patient.finetune_options["model"] == "patient"
