"""Contrastive positives compared by a linear probe on the TRAIN patients (never test).

Usage::

    python benchmarks/ssl_positives_probe.py --work WORK [--out DIR]
        [--positives augment,anatomy] [--encoder smallcnn] [--input segmented] [--image-size 64]
        [--epochs 30] [--patience 10] [--batch-size 64] [--seeds 0] [--repeats 5] [--folds 5]
        [--masks predicted] [--threads 2]

For every ``--positives`` value (``cardioclr pretrain --positives``; ``augment`` = the paper's
SimCLR) and seed it runs one pretraining of ``--encoder`` on ``WORK`` (train + unlabelled
patients; 10 % of the train patients held out for early stopping, as ``cardioclr pretrain``
does), then reads the run's label-free ``deep_features.csv`` (mean [ED, ES] encoder features
per patient) for the ``train`` patients only and scores them with repeated stratified K-fold
CV on those 70 patients: a standardised logistic regression (macro one-vs-rest AUC,
accuracy) and a 5-nearest-neighbour classifier (cosine; accuracy). A randomly initialised
encoder (``random``) is probed the same way as the floor. Test patients are never scored;
their features are written by ``cardioclr pretrain`` but not read here.

``WORK`` is a prepared work directory with heart masks for the input mode (e.g. the one
``segmentation_quality.py`` leaves: predicted masks for all patients). Runs go to ``--out``
(default ``WORK/ssl_positives_probe``); a finished run with the same configuration is reused.
Without ``WORK`` the script prints ``{"skipped": ...}``.

The LAST output line is one JSON object: ``configurations`` {name: {``probe_auc`` {mean, sd},
``probe_accuracy`` {mean, sd}, ``knn_accuracy`` {mean, sd}, ``seeds``, ``epochs``,
``best_epoch``, ``seconds_per_epoch``, ``pretrain_seconds``, ``n_train_images``,
``best_val_loss``}}, ``protocol``, ``work``, ``encoder``, ``input``, ``image_size``,
``seconds``, ``load_before``, ``load_after``. Contrastive losses of different positives are
not comparable (other positives, other denominators); the probe is.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def _load() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def probe(features_csv: Path, train_ids: list[str], labels: dict[str, int], repeats: int, folds: int,
          seed: int) -> dict[str, list[float]]:
    """Repeated stratified CV scores of the train patients' features (lists over splits)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, roc_auc_score
    from sklearn.model_selection import RepeatedStratifiedKFold
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    table = pd.read_csv(features_csv, dtype={"patient_id": str}).set_index("patient_id")
    x = table.loc[train_ids].to_numpy(dtype=np.float64)  # train patients only, never test
    y = np.array([labels[p] for p in train_ids])
    scores: dict[str, list[float]] = {"auc": [], "accuracy": [], "knn_accuracy": []}
    cv = RepeatedStratifiedKFold(n_splits=folds, n_repeats=repeats, random_state=seed)
    for fit, held in cv.split(x, y):
        linear = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000))
        linear.fit(x[fit], y[fit])
        proba = linear.predict_proba(x[held])
        scores["auc"].append(float(roc_auc_score(y[held], proba, multi_class="ovr", average="macro",
                                                 labels=linear.classes_)))
        scores["accuracy"].append(float(accuracy_score(y[held], linear.predict(x[held]))))
        knn = make_pipeline(StandardScaler(), KNeighborsClassifier(5, metric="cosine"))
        knn.fit(x[fit], y[fit])
        scores["knn_accuracy"].append(float(accuracy_score(y[held], knn.predict(x[held]))))
    return scores


def _summary(values: list[float]) -> dict[str, float]:
    return {"mean": round(statistics.fmean(values), 4),
            "sd": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default=None, help="prepared work directory with heart masks")
    p.add_argument("--out", default=None, help="runs folder (default WORK/ssl_positives_probe)")
    p.add_argument("--positives", default="augment,anatomy")
    p.add_argument("--encoder", default="smallcnn")
    p.add_argument("--input", dest="input_mode", default="segmented")
    p.add_argument("--masks", default="predicted")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--patience", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seeds", default="0")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-random", dest="random", action="store_false",
                   help="skip the randomly initialised encoder (the floor)")
    args = p.parse_args(argv)
    if not args.work or not (Path(args.work) / "dataset.json").is_file():
        print(json.dumps({"skipped": f"no prepared work directory (--work {args.work})"}))
        return 0
    logging.basicConfig(level=logging.WARNING)
    import torch

    from cardioclr.data.store import SliceStore
    from cardioclr.models.checkpoint import save_encoder
    from cardioclr.models.encoders import build_encoder
    from cardioclr.ssl.features import write_simclr_features
    from cardioclr.ssl.pretrain import PretrainConfig, pretrain

    torch.set_num_threads(args.threads)
    start, load_before = time.perf_counter(), _load()
    work = Path(args.work)
    out = Path(args.out) if args.out else work / "ssl_positives_probe"
    store = SliceStore(work)
    train_ids = sorted(store.splits.train)
    labels = {p: store.label_index(p) for p in train_ids}
    seeds = [int(s) for s in args.seeds.split(",")]
    results: dict[str, Any] = {}
    names = [n for n in args.positives.split(",") if n]
    if args.random:
        names = ["random", *names]
    for name in names:
        runs: list[dict[str, Any]] = []
        scores: dict[str, list[float]] = {"auc": [], "accuracy": [], "knn_accuracy": []}
        for seed in seeds:
            run = out / f"{args.encoder}-{args.input_mode}-{args.image_size}px-{name}-seed{seed}"
            t0 = time.perf_counter()
            if name == "random":
                torch.manual_seed(seed)
                encoder, dim = build_encoder(args.encoder, in_channels=1)
                save_encoder(run / "encoder.pt", encoder, args.encoder, dim, args.input_mode,
                             args.image_size, mask_source=args.masks)
                write_simclr_features(run / "encoder.pt", work, mask_source=args.masks)
                metrics: dict[str, Any] = {}
            else:
                cfg = PretrainConfig(work=str(work), encoder=args.encoder, input_mode=args.input_mode,
                                     masks=args.masks, out=str(run), batch_size=args.batch_size,
                                     max_epochs=args.epochs, patience=args.patience,
                                     image_size=args.image_size, accelerator="cpu", seed=seed,
                                     progress_bar=False, positives=name)
                metrics = pretrain(cfg)
            runs.append({**metrics, "seconds": time.perf_counter() - t0})
            for k, v in probe(run / "deep_features.csv", train_ids, labels, args.repeats,
                              args.folds, seed).items():
                scores[k] += v
            print(f"{name} seed {seed}: probe AUC {statistics.fmean(scores['auc']):.3f}, "
                  f"accuracy {statistics.fmean(scores['accuracy']):.3f}", flush=True)
        epochs = [r.get("epochs") for r in runs]
        per_epoch = [r["train_seconds"] / r["epochs"] for r in runs if r.get("epochs")]
        results[name] = {
            "probe_auc": _summary(scores["auc"]), "probe_accuracy": _summary(scores["accuracy"]),
            "knn_accuracy": _summary(scores["knn_accuracy"]), "seeds": seeds, "epochs": epochs,
            "best_epoch": [r.get("best_epoch") for r in runs],
            "seconds_per_epoch": round(statistics.fmean(per_epoch), 2) if per_epoch else None,
            "pretrain_seconds": [round(r["seconds"], 1) for r in runs],
            "n_train_images": runs[0].get("n_train_images"),
            "best_val_loss": [r.get("best_val_loss") for r in runs],
            "reused_finished_run": [bool(r.get("skipped")) for r in runs],
        }
    print(json.dumps({
        "configurations": results,
        "protocol": f"linear probe (standardised logistic regression) and 5-NN on label-free "
                    f"mean [ED, ES] features of the {len(train_ids)} train patients, "
                    f"{args.repeats}x{args.folds} repeated stratified CV; test never read",
        "work": str(work), "encoder": args.encoder, "input": args.input_mode,
        "image_size": args.image_size, "masks": args.masks, "max_epochs": args.epochs,
        "seconds": round(time.perf_counter() - start, 1), "load_before": load_before,
        "load_after": _load(),
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
