"""Hand-written fake study trees for the report tests (no training), and checks of the fakes.

:func:`write_fake_study` writes what a finished demo study leaves on disk: ``study.yaml``,
``study_state.json``, the prepared work dir's summary files, segmentation metrics and QC, one
pretraining, every fine-tuning cell (``metrics.json``, ``predictions.csv``, ``curves.csv``,
``saliency/``) and the two baselines. Prediction quality is set per cell (``strength``), so the
tests know which cell has the best AUC. Every ``metrics.json`` is built with the typed
definition its stage writes (:mod:`cardioclr.artifacts`), so a renamed or dropped key shows up
here as well as in the writer and the report.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd

from cardioclr.artifacts import (
    BaselineMetrics,
    ClassificationMetrics,
    FinetuneMetrics,
    PretrainMetrics,
    SaliencySummary,
    SegmentationMetrics,
)
from cardioclr.evaluate.metrics import classification_metrics, prob_columns, to_jsonable

CLASSES = ["DCM", "HCM", "MINF", "NOR", "RV"]
#: Signal strength per (pretraining, downstream input): higher -> better AUC.
STRENGTH = {("none", "full"): 0.6, ("simclr-full", "full"): 3.0, ("simclr-segmented", "full"): 1.0,
            ("none", "segmented"): 1.2, ("simclr-full", "segmented"): 0.8,
            ("simclr-segmented", "segmented"): 2.0}


def tiny_png(value: int = 128) -> bytes:
    """A small valid PNG (8x8 grey) written with matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    plt.imsave(buf, np.full((8, 8), value, np.uint8), cmap="gray", vmin=0, vmax=255, format="png")
    return buf.getvalue()


def fake_predictions(y: np.ndarray, strength: float, seed: int) -> np.ndarray:
    """Softmax of one-hot * strength + Gaussian noise: (N, K) probabilities."""
    rng = np.random.default_rng(seed)
    logits = np.eye(len(CLASSES))[y] * strength + rng.normal(0, 1, (len(y), len(CLASSES)))
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def write_fake_study(out: Path, n_test_per_class: int = 6, failed: tuple[str, ...] = ()) -> Path:
    """Write a fake finished demo study into ``out``; ``failed`` lists fine-tune cell names to
    leave without results (recorded as failed in the state)."""
    from cardioclr.study.config import load_config, save_config
    from cardioclr.study.grid import expand_grid
    from cardioclr.study.state import StudyState

    cfg = load_config("demo")
    save_config(cfg, out / "study.yaml")
    cells = expand_grid(cfg)
    state = StudyState(out, cells)

    test = [f"patient{i:03d}" for i in range(1, n_test_per_class * len(CLASSES) + 1)]
    train = [f"patient{i:03d}" for i in range(101, 101 + 2 * len(test))]
    y = np.arange(len(test)) % len(CLASSES)
    work = out / "work"
    _write(work / "dataset.json", json.dumps({
        "store_version": 1, "classes": CLASSES, "image_size": 64, "spacing_mm": 2.5,
        "source": str(out / "data"), "patients": len(test) + len(train), "skipped": 1,
        "train": len(train), "test": len(test), "seconds": 1.0}))
    labels = {p: CLASSES[i % len(CLASSES)] for i, p in enumerate(train + test)}
    _write(work / "manifest.csv", pd.DataFrame({"patient_id": list(labels), "label": list(labels.values())})
           .to_csv(index=False))
    _write(work / "splits.json", json.dumps({"method": "random", "seed": 0, "train": train, "test": test,
                                             "folds": [train[::2], train[1::2]], "unlabelled": []}))
    _write(work / "skipped.csv", "patient_id,path,reason\npatient999,/x/patient999/Info.cfg,"
           "missing field(s) Group\n")
    seg = work / "segmentation"
    _write(seg / "metrics.json", json.dumps(SegmentationMetrics(
        grid="store (64 px at 2.5 mm in-plane, native slice spacing)",
        dice={"ED": {"RV": 0.81, "MYO": 0.77, "LV": 0.9}, "ES": {"RV": 0.7, "MYO": 0.75, "LV": 0.85}},
        hd95={"ED": {"RV": 9.5, "MYO": 6.1, "LV": 4.2}, "ES": {"RV": 11.0, "MYO": 7.0, "LV": 5.0}},
        mean_dice=0.797, mean_hd95=7.1, n_test=len(test),
        indices_agreement={"lv_ef_pct": {"n": len(test), "pearson_r": 0.93, "bias": -1.2, "sd": 4.5}})))
    _write(seg / "qc_flags.csv", "patient_id,phase,flag,detail\npatient001,ED,fragmented,LV: 9%\n"
           "patient001,ES,fragmented,LV: 7%\n")
    (seg / "qc").mkdir(parents=True, exist_ok=True)
    (seg / "qc" / "patient001.png").write_bytes(tiny_png(200))
    for name in ("smallcnn-full", "smallcnn-segmented"):
        _write(work / "pretrain" / name / "metrics.json", json.dumps(PretrainMetrics(
            best_val_loss=3.2, best_epoch=4, epochs=5, train_seconds=40.0)))

    for cell in cells:
        if cell.not_run_reason:
            state.set(cell.id, "not-run", reason=cell.not_run_reason)
            continue
        if cell.kind != "finetune":
            state.set(cell.id, "done", seconds=5.0)
            continue
        name = cell.path.split("/")[-1]
        if name in failed:
            state.set(cell.id, "failed", seconds=1.0, error="RuntimeError: boom")
            continue
        p = cell.params
        strength = STRENGTH[(p["pretraining"], p["input"])]
        proba = fake_predictions(y, strength, seed=int(strength * 10))
        d = out / cell.path
        pred = pd.DataFrame({"patient_id": test, "label_index": y})
        for c, col in enumerate(prob_columns(CLASSES)):
            pred[col] = proba[:, c]
        _write(d / "predictions.csv", pred.to_csv(index=False))
        curves = pd.DataFrame([{"epoch": e, "split": "cv", "fold": f, "seed": 0,
                                "train_loss": 1.6 - 0.1 * e, "val_loss": 1.7 - 0.08 * e * strength / 3,
                                "val_auc": min(1.0, 0.5 + 0.05 * e * strength / 3)}
                               for e in range(6) for f in range(2)])
        _write(d / "curves.csv", curves.to_csv(index=False))
        for pid in test[:4]:
            (d / "saliency").mkdir(parents=True, exist_ok=True)
            (d / "saliency" / f"{pid}.png").write_bytes(tiny_png(60 + int(strength * 30)))
        test_metrics: ClassificationMetrics = classification_metrics(y, proba, CLASSES, n_boot=200, seed=0)
        metrics = FinetuneMetrics(encoder=p["encoder"], pretraining=p["pretraining"],
                                  downstream_input=p["input"], mask_source="predicted", classes=CLASSES,
                                  test=test_metrics,
                                  saliency=SaliencySummary(in_heart_share_mean=0.3 + 0.1 * strength,
                                                           n=len(test)),
                                  train_seconds=12.5)
        _write(d / "metrics.json", json.dumps(to_jsonable(metrics)))
        state.set(cell.id, "done", seconds=12.5)

    for name, strength in (("clinical", 1.5), ("hybrid", 2.2)):
        proba = fake_predictions(y, strength, seed=7)
        d = out / "baseline" / name
        pred = pd.DataFrame({"patient_id": test, "label_index": y})
        for c, col in enumerate(prob_columns(CLASSES)):
            pred[col] = proba[:, c]
        _write(d / "predictions.csv", pred.to_csv(index=False))
        m = BaselineMetrics(model=f"{name}-rf", mask_source="predicted",
                            **classification_metrics(y, proba, CLASSES, n_boot=200, seed=0),
                            feature_importances={"lv_ef_pct": 0.3, "rv_edv_ml": 0.2},
                            feature_importance_kind="permutation importance on train (mean drop of "
                                                    "the log-loss score)")
        if name == "hybrid":  # as the study writes it: the SimCLR pretraining's features
            m["deep_features"] = {"file": str(out / "work" / "pretrain" / "smallcnn-segmented" /
                                              "deep_features.csv"), "n_input": 512,
                                  "pca_components": 16}
        _write(d / "metrics.json", json.dumps(to_jsonable(m)))
    _write(out / "study_environment.json", json.dumps({"cardioclr": "0.1.0", "git_revision": "abc123",
                                                       "python": "3.11", "packages": {"torch": "2.x"},
                                                       "platform": "Linux", "cpu_count": 2,
                                                       "cuda_devices": [], "command": "cardioclr study"}))
    return out


def test_fake_study_is_complete(tmp_path: Path) -> None:
    out = write_fake_study(tmp_path / "s")
    assert len(list((out / "finetune").glob("*/metrics.json"))) == 6
    state = json.loads((out / "study_state.json").read_text())
    assert state["cells"]["finetune/smallcnn__imagenet__full"]["status"] == "not-run"
