"""Choose the small-data training recipe by repeated stratified CV on the TRAIN patients only.

Issue 11 item 6. For every candidate recipe (:mod:`cardioclr.classify.recipe`), every repeat
and every fold of a repeated stratified K-fold over the ``train`` patients of ``splits.json``
(the ``test`` patients are never loaded), one dual-phase classifier trains on the other folds
for a FIXED number of epochs through the product's own ``fit_run`` (no validation part, as a
final model trains) and predicts the held-out fold once. Each repeat thus gives out-of-fold
(OOF) patient probabilities for all train patients; from them: macro one-vs-rest AUC, accuracy,
balanced accuracy and NLL per repeat (mean +- SD over repeats). Every trained model is
evaluated with 1 view and with ``--tta`` views, so TTA is measured on the same models
(``NAME@tta1`` / ``NAME@ttaN``). Paired against the baseline (``none@tta1``): the per-repeat
differences and a patient bootstrap 95% CI of the AUC / accuracy difference of the
repeat-averaged OOF probabilities.

Usage::

    python benchmarks/recipe_cv.py --work WORK [--input segmented] [--masks predicted]
        [--image-size 64] [--encoder smallcnn] [--epochs 20] [--lr 3e-4] [--batch 16]
        [--folds 3] [--repeats 2] [--candidates none,small-data,...] [--out DIR]

``WORK`` is a prepared work directory with predicted masks (``cardioclr prepare`` +
``segment``). Fold results are written to ``--out`` (default ``WORK/recipe_cv``) as they finish,
so an interrupted run resumes. The LAST output line is one JSON object ``{"candidates": {name:
{"auc": {mean, sd}, "accuracy": ..., "balanced_accuracy": ..., "nll": ..., "per_repeat": [...],
"vs_baseline": {auc_diff_mean, auc_diff_ci, accuracy_diff_mean, accuracy_diff_ci}}}, "protocol",
"seconds", "load_before", "load_after"}``; without ``WORK`` it prints ``{"skipped": ...}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import numpy as np  # noqa: E402

#: Candidate recipes (ablations of ``small-data``), built from the presets when run.
CANDIDATE_NAMES = ("none", "small-data", "small-data-no-mixup", "small-data-no-balance", "small-data-no-ema",
                   "smoothing-only", "cutmix")


def candidates() -> dict[str, Any]:
    """Name -> TrainingRecipe of every candidate."""
    from cardioclr.classify.recipe import CUSTOM, RECIPES

    small = RECIPES["small-data"]

    def variant(**changes: Any) -> Any:
        return dataclasses.replace(small, name=CUSTOM, **changes)

    return {"none": RECIPES["none"], "small-data": small,
            "small-data-no-mixup": variant(mixup_alpha=0.0),
            "small-data-no-balance": variant(balanced_sampling=False),
            "small-data-no-ema": variant(ema_decay=0.0),
            "smoothing-only": dataclasses.replace(RECIPES["none"], name=CUSTOM, label_smoothing=0.1),
            "cutmix": variant(mixup_alpha=0.0, cutmix_alpha=1.0)}


def _metrics(y: np.ndarray, p: np.ndarray, k: int) -> dict[str, float]:
    from cardioclr.evaluate.metrics import macro_of, ovr_auc_boot

    pred = p.argmax(axis=1)
    recalls = [float((pred[y == c] == c).mean()) for c in range(k) if (y == c).any()]
    return {"auc": float(macro_of(ovr_auc_boot(y, p, None), k)), "accuracy": float((pred == y).mean()),
            "balanced_accuracy": float(np.mean(recalls)),
            "nll": float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1)).mean())}


def _paired(y: np.ndarray, p: np.ndarray, base: np.ndarray, k: int, n_boot: int = 2000) -> dict[str, Any]:
    """Patient bootstrap of the AUC and accuracy differences (candidate - baseline)."""
    rng = np.random.default_rng(0)
    d_auc, d_acc = [], []
    for _ in range(n_boot):
        i = rng.integers(0, len(y), len(y))
        if len(np.unique(y[i])) < k:
            continue
        a, b = _metrics(y[i], p[i], k), _metrics(y[i], base[i], k)
        d_auc.append(a["auc"] - b["auc"])
        d_acc.append(a["accuracy"] - b["accuracy"])
    full, ref = _metrics(y, p, k), _metrics(y, base, k)
    return {"auc_diff": full["auc"] - ref["auc"],
            "auc_diff_ci": [float(np.percentile(d_auc, 2.5)), float(np.percentile(d_auc, 97.5))],
            "accuracy_diff": full["accuracy"] - ref["accuracy"],
            "accuracy_diff_ci": [float(np.percentile(d_acc, 2.5)), float(np.percentile(d_acc, 97.5))]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default=None, help="prepared work directory with predicted masks")
    ap.add_argument("--out", default=None, help="fold results (default WORK/recipe_cv)")
    ap.add_argument("--input", default="segmented")
    ap.add_argument("--masks", default="predicted")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--encoder", default="smallcnn")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--tta", type=int, default=5, help="views of the TTA evaluation")
    ap.add_argument("--candidates", default="none,small-data",
                    help=f"comma-separated, from {', '.join(CANDIDATE_NAMES)}")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--summarise-only", action="store_true",
                    help="train nothing: summarise the folds already finished (patients without an "
                    "out-of-fold prediction for every candidate are left out; the JSON says how many)")
    args = ap.parse_args()
    if not args.work or not (Path(args.work) / "splits.json").is_file():
        print(json.dumps({"skipped": f"no prepared work directory at {args.work!r} (pass --work)"}))
        return 0
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch
    from sklearn.model_selection import RepeatedStratifiedKFold

    from cardioclr.atomic import read_json, write_json
    from cardioclr.classify.data import SliceBank, patient_probabilities
    from cardioclr.classify.model import DualPhaseClassifier
    from cardioclr.classify.train import RunHyper, fit_run, predict_slices
    from cardioclr.data.pairs import InputSpec
    from cardioclr.data.store import SliceStore
    from cardioclr.training import TrainerSettings

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    names = [c.strip() for c in args.candidates.split(",") if c.strip()]
    pool = candidates()
    unknown = [n for n in names if n not in pool]
    if unknown:
        raise SystemExit(f"unknown candidates {unknown}; choose from {', '.join(pool)}")
    store = SliceStore(args.work)
    train = sorted(store.splits.train)  # the test patients are never loaded
    spec = InputSpec(args.input, args.masks, args.image_size)
    bank = SliceBank.load(store, train, spec)
    k = len(store.classes)
    y_all = bank.patient_labels
    out = Path(args.out or Path(args.work) / "recipe_cv")
    settings = TrainerSettings(max_epochs=args.epochs, patience=args.epochs + 1, accelerator="cpu",
                               progress_bar=False)
    rskf = RepeatedStratifiedKFold(n_splits=args.folds, n_repeats=args.repeats, random_state=0)
    splits = list(rskf.split(np.zeros(len(train)), y_all))
    views = sorted({1, args.tta})
    # oof[name@ttaV][repeat] = (P, K) probabilities in `train` order
    oof: dict[str, list[np.ndarray]] = {}
    seconds: dict[str, float] = {}
    for name in names:
        for v in views:
            oof[f"{name}@tta{v}"] = [np.full((len(train), k), np.nan) for _ in range(args.repeats)]
    # Fold-major order: every finished fold has all candidates, so a partial run stays paired.
    for i, (tr, va) in enumerate(splits):
        rep, fold = divmod(i, args.folds)
        for name in names:
            recipe = pool[name]
            run_dir = out / args.input / name / f"r{rep}f{fold}"
            done = run_dir / "result.json"
            key = {"recipe": dataclasses.asdict(recipe), "epochs": args.epochs, "lr": args.lr,
                   "batch": args.batch, "encoder": args.encoder, "spec": dataclasses.asdict(spec),
                   "val": [train[j] for j in va]}
            res = read_json(done) if done.is_file() else None
            if res is not None and res.get("key") != key:
                res = None
            if res is None and args.summarise_only:
                continue
            if res is None:
                torch.manual_seed(rep * 100 + fold)
                model = DualPhaseClassifier(args.encoder, k)
                hyper = RunHyper(args.lr, args.batch, args.epochs, True, schedule_epochs=args.epochs)
                r = fit_run(run_dir, model, bank, [train[j] for j in tr], None, hyper, args.input, k,
                            settings, seed=rep * 100 + fold, recipe=recipe)
                rows = bank.rows_of([train[j] for j in va])
                probs = {}
                for v in views:
                    p, _ = predict_slices(model, bank.images[rows], bank.hearts[rows], args.input, tta=v)
                    keys, pp = patient_probabilities(p, bank.patient[rows].numpy())
                    probs[str(v)] = {bank.patient_ids[int(kk)]: pp[j].tolist() for j, kk in enumerate(keys)}
                res = {"key": key, "probs": probs, "seconds": r["seconds"]}
                write_json(done, res)
                print(f"{name} repeat {rep} fold {fold}: {r['seconds']:.0f} s", flush=True)
            seconds[name] = seconds.get(name, 0.0) + float(res["seconds"])
            for v in views:
                for pid, pr in res["probs"][str(v)].items():
                    oof[f"{name}@tta{v}"][rep][train.index(pid)] = pr
    # Only patients predicted out of fold by every candidate in every repeat (all of them
    # unless --summarise-only met unfinished folds).
    have = np.all([np.isfinite(p).all(axis=1) for reps in oof.values() for p in reps], axis=0)
    if not have.any():
        print(json.dumps({"skipped": "no finished folds"}))
        return 0
    y_all = y_all[have]
    oof = {key: [p[have] for p in reps] for key, reps in oof.items()}
    base_key = f"{names[0]}@tta1"
    base_avg = np.mean(oof[base_key], axis=0)
    result: dict[str, Any] = {}
    for key, reps in oof.items():
        per = [_metrics(y_all, p, k) for p in reps]
        entry: dict[str, Any] = {}
        for m in ("auc", "accuracy", "balanced_accuracy", "nll"):
            v = [r[m] for r in per]
            entry[m] = {"mean": float(np.mean(v)), "sd": float(np.std(v, ddof=1)) if len(v) > 1 else None}
        entry["per_repeat"] = per
        entry["train_seconds"] = seconds[key.split("@")[0]]
        if key != base_key:
            entry["vs_baseline"] = _paired(y_all, np.mean(reps, axis=0), base_avg, k)
            entry["vs_baseline"]["auc_diff_per_repeat"] = [
                a["auc"] - b for a, b in zip(per, [_metrics(y_all, p, k)["auc"] for p in oof[base_key]],
                                              strict=True)]
        result[key] = entry
    print(json.dumps({"candidates": result, "baseline": base_key,
                      "protocol": {"patients": len(train), "patients_scored": int(have.sum()),
                                   "split": "train only (splits.json)",
                                   "folds": args.folds, "repeats": args.repeats, "epochs": args.epochs,
                                   "lr": args.lr, "batch": args.batch, "encoder": args.encoder,
                                   "input": args.input, "masks": args.masks, "image_size": args.image_size,
                                   "tta": args.tta},
                      "seconds": time.perf_counter() - start, "load_before": load_before,
                      "load_after": os.getloadavg()[0]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
