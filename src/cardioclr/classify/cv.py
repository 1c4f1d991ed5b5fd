"""Hyperparameter selection by cross-validation on the ``train`` patients only.

For every grid point (learning rate x batch size) and every fold k of ``splits.folds``, a model
trains on ``fold_train(k)`` and early-stops on ``folds[k]``; the fold's result (best epoch,
patient-level validation loss and macro AUC at that epoch, the per-epoch curve) is written
atomically to ``OUT/cv/lr<lr>-bs<b>/fold<k>/result.json``, so a re-run skips finished folds.

Selection: the grid point with the highest mean validation AUC over folds (ties: lowest mean
validation loss). The final model's epoch count is the mean over folds of the number of epochs
up to the best one (rounded, at least 1): the final model trains on *all* of ``train`` without
any validation part, so no patient is wasted and ``test`` never influences a choice.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cardioclr.atomic import read_json, write_json
from cardioclr.classify.data import SliceBank
from cardioclr.classify.patient_data import PatientBank
from cardioclr.classify.recipe import TrainingRecipe
from cardioclr.classify.train import RunHyper, fit_run
from cardioclr.data.store import Splits
from cardioclr.errors import CardioclrError
from cardioclr.training import TrainerSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GridPoint:
    """One hyperparameter combination: Adam learning rate and batch size (slice pairs)."""

    lr: float
    batch_size: int

    @property
    def key(self) -> str:
        """Directory-safe name, e.g. ``lr0.0003-bs32``."""
        return f"lr{self.lr:g}-bs{self.batch_size}"


def grid(lrs: Sequence[float], batches: Sequence[int]) -> list[GridPoint]:
    """All (lr, batch) combinations in a stable order."""
    return [GridPoint(float(lr), int(b)) for lr in lrs for b in batches]


def check_disjoint(name: str, used: Sequence[str], test: Sequence[str]) -> None:
    """Raise if any ``test`` patient is among ``used`` (a guard, not a statistic)."""
    leak = sorted(set(used) & set(test))
    if leak:
        raise CardioclrError(f"{name} would touch test patients {leak[:5]}; splits.json is inconsistent")


def run_cv(out: Path, bank: SliceBank | PatientBank, splits: Splits, points: Sequence[GridPoint],
           make_model: Callable[[int], Any], input_mode: str, n_classes: int,
           settings: TrainerSettings, seed: int, max_folds: int | None = None,
           fingerprint: str = "", fit: Callable[..., dict[str, Any]] | None = None,
           recipe: TrainingRecipe | None = None) -> list[dict[str, Any]]:
    """Run (or reload) every grid point x fold; returns one result dict per run.

    ``make_model(seed)`` builds a freshly initialised classifier. ``fingerprint`` identifies the
    configuration; a stored fold result with another fingerprint raises instead of being reused.
    ``fit`` trains one run (default :func:`~cardioclr.classify.train.fit_run`, the slice model;
    :func:`~cardioclr.classify.patient_train.fit_patient_run` with a ``PatientBank``).
    ``recipe``: the training details of every run (:mod:`.recipe`; validation uses its TTA).
    """
    train_one: Callable[..., dict[str, Any]] = fit or fit_run
    n_folds = len(splits.folds) if max_folds is None else min(max_folds, len(splits.folds))
    if n_folds < 1:
        raise CardioclrError("splits.json has no cross-validation folds")
    results = []
    for point in points:
        for k in range(n_folds):
            run_dir = out / "cv" / point.key / f"fold{k}"
            done = run_dir / "result.json"
            train_ids, val_ids = splits.fold_train(k), list(splits.folds[k])
            check_disjoint(f"CV fold {k}", train_ids + val_ids, splits.test)
            if done.is_file():
                res = read_json(done)
                if res.get("fingerprint") != fingerprint:
                    raise CardioclrError(f"{done} was written by another configuration; use a new "
                                         "--out or delete that directory")
                log.info("CV %s fold %d: done (val AUC %.3f)", point.key, k, res["val_auc"] or math.nan)
                results.append(res)
                continue
            log.info("CV %s fold %d: %d train / %d validation patients", point.key, k,
                     len(train_ids), len(val_ids))
            r = train_one(run_dir, make_model(seed), bank, train_ids, val_ids,
                        RunHyper(point.lr, point.batch_size, settings.max_epochs), input_mode,
                        n_classes, settings, seed, recipe)
            res = {"lr": point.lr, "batch_size": point.batch_size, "fold": k, "seed": seed,
                   "best_epoch": r["best_epoch"], "epochs_to_best": r["best_epoch"] + 1,
                   "val_loss": r["val_loss"], "val_auc": _finite_or_none(r["val_auc"]),
                   "epochs_run": r["epochs_run"], "seconds": r["seconds"],
                   "train_patients": sorted(train_ids), "val_patients": sorted(val_ids),
                   "history": r["history"], "fingerprint": fingerprint}
            write_json(done, res)
            # Fold checkpoints are only needed to resume; drop them once the result is safe.
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
            results.append(res)
    return results


def cv_table(results: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One row per grid point: mean/SD of validation AUC and loss, mean epochs to best, folds."""
    df = pd.DataFrame([{k: r[k] for k in ("lr", "batch_size", "fold", "val_auc", "val_loss",
                                           "epochs_to_best")} for r in results])
    df["val_auc"] = df["val_auc"].astype(float)
    g = df.groupby(["lr", "batch_size"], sort=False)
    table = g.agg(val_auc_mean=("val_auc", "mean"), val_auc_sd=("val_auc", "std"),
                  val_loss_mean=("val_loss", "mean"), val_loss_sd=("val_loss", "std"),
                  epochs_mean=("epochs_to_best", "mean"), n_folds=("fold", "count")).reset_index()
    return table


def select(table: pd.DataFrame) -> dict[str, Any]:
    """The chosen grid point: highest mean val AUC, then lowest mean val loss; epochs from CV."""
    t = table.copy()
    t["_auc"] = t["val_auc_mean"].fillna(-np.inf)
    t = t.sort_values(["_auc", "val_loss_mean"], ascending=[False, True], kind="stable")
    best = t.iloc[0]
    return {"lr": float(best["lr"]), "batch_size": int(best["batch_size"]),
            "epochs": max(1, int(round(float(best["epochs_mean"])))),
            "cv_val_auc_mean": _finite_or_none(float(best["val_auc_mean"])),
            "cv_val_loss_mean": float(best["val_loss_mean"]),
            "rule": "max mean patient-level val macro AUC over folds (ties: min val loss); "
                    "epochs = mean epochs-to-best over folds"}


def _finite_or_none(x: float | None) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None
