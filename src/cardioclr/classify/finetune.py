"""``cardioclr finetune``: cross-validated hyperparameters, final model(s), one test evaluation.

Protocol (Nakashima et al.; every number per patient):

1. all slice pairs of the ``train`` and ``test`` patients are loaded once (:mod:`.data`);
2. cross-validation on ``train`` only (:mod:`.cv`): grid of learning rate x batch size, early
   stopping on each fold's validation patients; the grid point with the best mean validation
   AUC wins and the epoch count is the mean epochs-to-best over folds;
3. one final model per seed trains on *all* ``train`` patients for that many epochs (no
   validation part, no early stopping: nothing looks at ``test``);
4. the ``test`` patients are predicted once: patient probability = mean over slices, then
   mean over seeds (``predictions.csv``, ``metrics.json["test"]``); per-seed metrics and their
   mean +- SD are reported beside it (``per_seed``, ``seed_spread``).

Outputs in ``OUT`` (default ``WORK/finetune/<encoder>-<init>-<input>``): ``config.yaml``,
``versions.json``, ``metrics.json`` (written last: its presence marks a finished run),
``predictions.csv``, ``predictions_per_seed.csv``, ``curves.csv``, ``cv.csv``,
``finetuned_features.csv`` (inspection only: never the hybrid baseline's input), ``model.pt``,
``saliency/``; ``cv/`` and ``final/`` hold the per-run
results that make an interrupted run resumable.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import torch

from cardioclr.artifacts import (
    FINETUNED_FEATURES_FILE,
    ClassificationMetrics,
    FinetuneMetrics,
    SaliencySummary,
)
from cardioclr.atomic import atomic_path, read_json, write_json, write_text
from cardioclr.choices import CLASSIFIER_MODELS, MIL_POOLINGS
from cardioclr.classify.cv import check_disjoint, cv_table, grid, run_cv, select
from cardioclr.classify.data import SliceBank, patient_probabilities
from cardioclr.classify.model import DualPhaseClassifier, check_init, initialise_encoders
from cardioclr.classify.multitask import MultiTaskClassifier, as_classifier
from cardioclr.classify.patient_data import PatientBank
from cardioclr.classify.patient_predict import attention_table, patient_features, save_patient_classifier
from cardioclr.classify.patient_train import fit_patient_run, predict_patients
from cardioclr.classify.predict import MODEL_FILE, save_classifier
from cardioclr.classify.recipe import TrainingRecipe, as_recipe
from cardioclr.classify.train import RunHyper, fit_run, predict_slices
from cardioclr.data.pairs import InputSpec, load_patient_inputs
from cardioclr.data.store import SliceStore
from cardioclr.data.views import input_channels
from cardioclr.errors import CardioclrError
from cardioclr.evaluate.metrics import classification_metrics, prob_columns, to_jsonable
from cardioclr.evaluate.saliency import run_saliency
from cardioclr.models.encoders import encoder_names
from cardioclr.models.patient import PatientClassifier
from cardioclr.provenance import save_run_info, to_plain
from cardioclr.run_identity import digest, run_identity
from cardioclr.segment.encoder import default_segmentation_model
from cardioclr.training import TrainerSettings, inference_device, is_rank_zero

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything that defines a fine-tuning run (saved as ``config.yaml``).

    Sizes in pixels, margins in mm. ``max_folds`` limits CV to the first folds of
    ``splits.json`` (None = all). Fields in :data:`NOT_IN_FINGERPRINT` do not change results
    and may differ when a run is resumed.

    ``grid_batch`` values are PER-DEVICE batch sizes (ED+ES slice pairs per process and step):
    each is the DataLoader's batch size, and under DDP (``devices`` > 1) Lightning's distributed
    sampler gives every process its own batch of that size, so one optimiser step sees
    ``batch x devices x num_nodes`` pairs. This differs from SimCLR pretraining, whose
    ``batch_size`` (:class:`cardioclr.ssl.pretrain.PretrainConfig`) is global and split over
    the processes. A grid point chosen on one device is therefore a larger effective batch on
    several; divide the values by the device count to keep the single-device steps.

    ``model``: ``slice`` (the paper's ED/ES slice-pair classifier, patient = mean of slice
    probabilities) or ``patient`` (:mod:`cardioclr.models.patient`: all slices of a patient in
    one forward pass, one encoder shared by ED and ES, relative slice position, ``pooling``
    over slices); with ``patient`` the ``grid_batch`` values count *patients* per step, and
    ``instance_loss_weight`` > 0 adds the auxiliary per-slice loss (deep supervision).
    ``recipe``: small-data training details (:class:`~cardioclr.classify.recipe.TrainingRecipe`;
    a preset name or a plain mapping is converted on construction); the default is the paper's
    training and leaves the fingerprint of such runs as it was before recipes existed.
    """

    work: str
    encoder: str
    init: str = "none"
    weights: str | None = None
    input_mode: str = "segmented"
    mask_source: str = "predicted"
    out: str | None = None
    shared_encoder: bool = False
    linear_probe: bool = False
    image_size: int = 96
    seeds: tuple[int, ...] = (0,)
    grid_lr: tuple[float, ...] = (1e-4, 3e-4)
    grid_batch: tuple[int, ...] = (16, 32)
    max_epochs: int = 30
    patience: int = 5
    max_folds: int | None = None
    augment: bool = True
    mask_margin_mm: float = 0.0
    roi_margin_mm: float = 10.0
    saliency_margin_mm: float = 5.0
    saliency: bool = True
    #: Saliency overlay PNGs for the first N test patients in ID order (None: all of them).
    saliency_figures: int | None = None
    n_boot: int = 2000
    devices: int = 1
    accelerator: str = "auto"
    num_nodes: int = 1
    precision: str = "auto"
    progress_bar: bool = False
    # Issue 11 item 2: the patient-level model (classify.patient_*; default = the slice model).
    model: str = "slice"
    pooling: str = "gated"
    instance_loss_weight: float = 0.0
    #: Multi-task fine-tuning (issue 11 item 5): weight of the auxiliary LV/MYO/RV segmentation
    #: loss on the same encoder (:mod:`cardioclr.classify.multitask`); 0 = off (the paper's).
    aux_seg_weight: float = 0.0
    recipe: TrainingRecipe = TrainingRecipe()

    def __post_init__(self) -> None:
        # A preset name (`recipe: small-data` in a study YAML) or a mapping (config.yaml) becomes
        # the recipe itself, so every reader sees concrete values.
        object.__setattr__(self, "recipe", as_recipe(self.recipe))

    def out_dir(self) -> Path:
        """``out`` or ``WORK/finetune/<encoder>-<init>-<input>`` (+ ``-aux<W>`` when multi-task)."""
        if self.out:
            return Path(self.out)
        aux = f"-aux{self.aux_seg_weight:g}" if self.aux_seg_weight else ""
        return Path(self.work) / "finetune" / f"{self.encoder}-{self.init}-{self.input_mode}{aux}"

    def spec(self) -> InputSpec:
        """The input recipe shared by training, evaluation and inference."""
        return InputSpec(self.input_mode, self.mask_source, self.image_size, self.mask_margin_mm,
                         self.roi_margin_mm)


NOT_IN_FINGERPRINT = ("out", "devices", "accelerator", "num_nodes", "precision", "progress_bar",
                      "work", "saliency_figures")


def fingerprint(cfg: FinetuneConfig) -> str:
    """Hash of the result-relevant configuration (hex, 16 chars; :mod:`cardioclr.run_identity`)."""
    d = run_identity(to_plain(cfg), NOT_IN_FINGERPRINT)
    if cfg.model == "slice":
        # The slice model's runs keep the fingerprint they had before the patient model existed.
        d.pop("model", None)
        d.pop("pooling", None)
        d.pop("instance_loss_weight", None)
    if not cfg.aux_seg_weight:
        d.pop("aux_seg_weight", None)  # absent before issue 11: single-task runs keep their hash
    if cfg.recipe == TrainingRecipe():
        d.pop("recipe")  # the paper's training: same identity as runs from before recipes existed
    if cfg.weights:
        # The weight file's size and mtime stand in for its content (hashing VGG weights is slow).
        st = Path(cfg.weights).stat()
        d["weights_stat"] = [st.st_size, int(st.st_mtime)]
    return digest(d)


def finetune(cfg: FinetuneConfig) -> FinetuneMetrics:
    """Run (or resume, or skip when finished) one fine-tuning configuration; returns metrics."""
    if cfg.encoder not in encoder_names():
        raise CardioclrError(f"unknown encoder {cfg.encoder!r}; choose one of {', '.join(encoder_names())}")
    if cfg.init == "segmentation" and not cfg.weights:
        cfg = replace(cfg, weights=str(default_segmentation_model(cfg.work)))
    check_init(cfg.init, cfg.weights)
    if not cfg.seeds:
        raise CardioclrError("--seeds needs at least one seed")
    if cfg.aux_seg_weight < 0:
        raise CardioclrError(f"--aux-seg-weight must be >= 0, got {cfg.aux_seg_weight}")
    if not cfg.grid_lr or not cfg.grid_batch:
        raise CardioclrError("--grid-lr and --grid-batch need at least one value each")
    if cfg.model not in CLASSIFIER_MODELS or cfg.pooling not in MIL_POOLINGS:
        raise CardioclrError(f"--model must be one of {', '.join(CLASSIFIER_MODELS)} and --pooling one "
                             f"of {', '.join(MIL_POOLINGS)} (got {cfg.model!r}, {cfg.pooling!r})")
    if cfg.model == "patient" and cfg.linear_probe:
        raise CardioclrError("--linear-probe is not available with --model patient (its attention "
                             "and instance layers must train with the encoder)")
    if cfg.instance_loss_weight < 0 or (cfg.instance_loss_weight > 0 and cfg.model != "patient"):
        raise CardioclrError("--instance-loss-weight must be >= 0 and needs --model patient")
    patient = cfg.model == "patient"
    if patient and cfg.aux_seg_weight > 0:
        raise CardioclrError("--aux-seg-weight (multi-task) is available with --model slice only")
    if patient and cfg.recipe != TrainingRecipe():
        raise CardioclrError("--recipe and its options are available with --model slice only")
    if cfg.aux_seg_weight > 0 and cfg.recipe.mixes:
        raise CardioclrError("--mixup/--cutmix cannot be combined with --aux-seg-weight (the mixed "
                             "images would no longer match their segmentation targets)")
    spec = cfg.spec()
    store = SliceStore(cfg.work)
    out = cfg.out_dir()
    fp = fingerprint(cfg)
    metrics_path = out / "metrics.json"
    if metrics_path.is_file():
        old = read_json(metrics_path)
        if old.get("fingerprint") == fp:
            log.info("%s: finished with the same configuration; skipping", out)
            return cast(FinetuneMetrics, old)
        raise CardioclrError(f"{out} holds a finished run of another configuration; pass another "
                             "--out or delete that directory")
    if is_rank_zero():
        save_run_info(out, {**to_plain(cfg), "fingerprint": fp})
    start = time.perf_counter()
    splits = store.splits
    classes = store.classes
    n_classes = len(classes)
    check_disjoint("training", splits.train, splits.test)

    def make_model(seed: int) -> DualPhaseClassifier | PatientClassifier:
        torch.manual_seed(seed)
        m: DualPhaseClassifier | PatientClassifier
        if isinstance(bank, PatientBank):
            m = PatientClassifier(cfg.encoder, n_classes, bank.input_channels(cfg.input_mode), cfg.pooling,
                                  instance_loss_weight=cfg.instance_loss_weight)
        elif cfg.aux_seg_weight > 0:
            m = MultiTaskClassifier(cfg.encoder, n_classes, cfg.shared_encoder, cfg.linear_probe,
                                    in_channels=input_channels(cfg.input_mode),
                                    aux_seg_weight=cfg.aux_seg_weight, image_size=cfg.image_size)
        else:
            m = DualPhaseClassifier(cfg.encoder, n_classes, cfg.shared_encoder, cfg.linear_probe,
                                    in_channels=input_channels(cfg.input_mode))
        initialise_encoders(m, cfg.init, cfg.weights)
        return m

    # Validates the weight file (and reads the SimCLR input mode) before any data is loaded.
    info = initialise_encoders(DualPhaseClassifier(cfg.encoder, n_classes, cfg.shared_encoder,
                                                   in_channels=input_channels(cfg.input_mode)),
                               cfg.init, cfg.weights)
    log.info("loading %d train + %d test patients (%s input, %s masks, %d px)", len(splits.train),
             len(splits.test), cfg.input_mode, cfg.mask_source, cfg.image_size)
    # Multi-task targets are loaded for every patient but only training rows ever reach the
    # loss (classify.multitask): test masks are never targets.
    ids = list(splits.train) + list(splits.test)
    bank: SliceBank | PatientBank = (
        PatientBank.load(store, ids, spec) if patient
        else SliceBank.load(store, ids, spec, with_structures=cfg.aux_seg_weight > 0))
    fit = fit_patient_run if patient else fit_run
    settings = TrainerSettings(max_epochs=cfg.max_epochs, patience=cfg.patience,
                               accelerator=cfg.accelerator, devices=cfg.devices,
                               num_nodes=cfg.num_nodes, precision=cfg.precision,
                               progress_bar=cfg.progress_bar)

    # ---- 1. cross-validation on train only
    points = grid(cfg.grid_lr, cfg.grid_batch)
    cv_results = run_cv(out, bank, splits, points, make_model, cfg.input_mode, n_classes, settings,
                        seed=cfg.seeds[0], max_folds=cfg.max_folds, fingerprint=fp, fit=fit,
                        recipe=cfg.recipe)
    table = cv_table(cv_results)
    chosen = select(table)
    log.info("selected lr %g, batch %d, %d epochs (CV val AUC %s)", chosen["lr"], chosen["batch_size"],
             chosen["epochs"], chosen["cv_val_auc_mean"])

    # ---- 2. final model(s) on all of train
    models: list[DualPhaseClassifier | PatientClassifier] = []
    final_results: list[dict[str, Any]] = []
    for seed in cfg.seeds:
        model, res = _final_model(out / "final" / f"seed{seed}", make_model, seed, bank, splits.train,
                                  chosen, cfg, n_classes, settings, fp, fit)
        models.append(model)
        final_results.append(res)
    if not is_rank_zero():
        return {}
    # The auxiliary head only trains (multi-task runs are slice models; checked above).
    models = [m if isinstance(m, PatientClassifier) else as_classifier(m) for m in models]

    # ---- 3. the one evaluation on test
    device = inference_device(cfg.accelerator)
    if isinstance(bank, PatientBank):
        # The patient model: one probability per patient, nothing to average over slices.
        test_ids = list(splits.test)
        y = bank.patient_labels[bank.indices_of(test_ids)]
        predicted = [predict_patients(cast(PatientClassifier, m), bank, bank.indices_of(test_ids),
                                      cfg.input_mode, device) for m in models]
        seed_probs = [p for p, _, _ in predicted]
        attention = attention_table(bank, test_ids, cfg.seeds, [a for _, _, a in predicted])
        write_text(out / "attention.csv", attention.to_csv(index=False, float_format="%.6g"))
    else:
        test_rows = bank.rows_of(splits.test)
        per_seed_p = []
        for model in models:
            p, _ = predict_slices(cast(DualPhaseClassifier, model), bank.images[test_rows],
                                  bank.hearts[test_rows], cfg.input_mode, device,
                                  tta=cfg.recipe.tta)
            per_seed_p.append(p)
        slice_patient = bank.patient[test_rows].numpy()
        keys, _ = patient_probabilities(per_seed_p[0], slice_patient)
        test_ids = [bank.patient_ids[k] for k in keys]
        y = bank.patient_labels[keys]
        seed_probs = [patient_probabilities(p, slice_patient)[1] for p in per_seed_p]
    ens = np.mean(seed_probs, axis=0)
    test_metrics = classification_metrics(y, ens, classes, n_boot=cfg.n_boot, seed=0)
    per_seed = []
    for seed, sp in zip(cfg.seeds, seed_probs, strict=True):
        m = classification_metrics(y, sp, classes, n_boot=cfg.n_boot, seed=0)
        per_seed.append({"seed": int(seed), "macro_auc": m["macro_auc"], "accuracy": m["accuracy"],
                         "balanced_accuracy": m["balanced_accuracy"]})
    _write_predictions(out, test_ids, y, ens, seed_probs, cfg.seeds, classes)

    # ---- 4. model, features, curves, saliency
    pretraining = info.pretraining
    if isinstance(bank, PatientBank):
        patient_models = [cast(PatientClassifier, m) for m in models]
        save_patient_classifier(out / MODEL_FILE, patient_models, spec, classes, pretraining, cfg.seeds)
        feats = patient_features(patient_models[0], bank, store, spec, device)
        write_text(out / FINETUNED_FEATURES_FILE, feats.to_csv(index=False, float_format="%.6g"))
        n_features = feats.shape[1] - 1
    else:
        slice_models = [cast(DualPhaseClassifier, m) for m in models]
        save_classifier(out / MODEL_FILE, slice_models, spec, classes, pretraining, cfg.seeds,
                        tta=cfg.recipe.tta)
        n_features = _write_finetuned_features(out / FINETUNED_FEATURES_FILE, slice_models[0], bank, store,
                                               spec, device)
    curves = _curves(cv_results, final_results)
    write_text(out / "curves.csv", curves.to_csv(index=False))
    write_text(out / "cv.csv", table.to_csv(index=False))
    sal = None
    if cfg.saliency:
        pred = {pid: int(np.argmax(ens[i])) for i, pid in enumerate(test_ids)}
        sal_patients = [load_patient_inputs(store, pid, spec, cfg.saliency_margin_mm) for pid in test_ids]
        sal = run_saliency(models[0], sal_patients, pred, classes, cfg.input_mode, out / "saliency",
                           cfg.saliency_margin_mm, cfg.mask_source, device, cfg.saliency_figures)

    cv_touched = sorted({p for r in cv_results for p in r["train_patients"] + r["val_patients"]})
    final_touched = sorted(splits.train)
    check_disjoint("CV", cv_touched, splits.test)
    train_seconds = sum(r["seconds"] for r in cv_results) + sum(r["seconds"] for r in final_results)
    metrics: FinetuneMetrics = {
        "encoder": cfg.encoder,
        "pretraining": pretraining,
        "init": cfg.init,
        "pretraining_details": info.details,
        "weights": cfg.weights,
        "downstream_input": cfg.input_mode,
        "mask_source": cfg.mask_source,
        "shared_encoder": cfg.shared_encoder or patient,
        "model": cfg.model,
        "pooling": cfg.pooling if patient else None,
        "linear_probe": cfg.linear_probe,
        "image_size": cfg.image_size,
        "classes": classes,
        "test": cast(ClassificationMetrics, test_metrics),
        "per_seed": per_seed,
        "seed_spread": _spread(per_seed),
        "ensemble": f"mean of {len(cfg.seeds)} seed model(s)' patient probabilities"
                    + (" (patient-level model)" if patient else "")
                    + (f", each the mean of {cfg.recipe.tta} TTA views" if cfg.recipe.tta > 1 else ""),
        "ensemble_size": len(cfg.seeds),
        "recipe": cast("dict[str, Any]", to_plain(cfg.recipe)),
        "cv": table.to_dict(orient="records"),
        "cv_folds": cv_results_summary(cv_results),
        "selected": chosen,
        "saliency": cast("SaliencySummary | None", sal),
        "patients": {"train": len(splits.train), "test": len(test_ids),
                     "cv_touched": cv_touched, "final_touched": final_touched,
                     "test_ids": test_ids, "test_overlap_with_training": []},
        "finetuned_features": {"file": FINETUNED_FEATURES_FILE, "n_features": n_features,
                               "model": f"seed {cfg.seeds[0]} final model"},
        "train_seconds": train_seconds,
        "seconds": time.perf_counter() - start,
        "fingerprint": fp,
    }
    write_json(metrics_path, to_jsonable(metrics))
    return metrics


def cv_results_summary(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-fold CV rows without the long per-epoch history (that lives in curves.csv)."""
    keep = ("lr", "batch_size", "fold", "seed", "best_epoch", "epochs_to_best", "val_loss", "val_auc",
            "epochs_run", "seconds")
    return [{k: r[k] for k in keep} for r in results]


def _final_model(run_dir: Path, make_model: Any, seed: int, bank: SliceBank | PatientBank,
                 train_ids: Sequence[str], chosen: dict[str, Any], cfg: FinetuneConfig, n_classes: int,
                 settings: TrainerSettings, fp: str, fit: Any = fit_run) -> tuple[Any, dict[str, Any]]:
    """Train (or reload) the final model of one seed on all ``train`` patients."""
    done, weights = run_dir / "result.json", run_dir / "weights.pt"
    model = make_model(seed)
    if done.is_file() and weights.is_file():
        res = read_json(done)
        if res.get("fingerprint") != fp:
            raise CardioclrError(f"{done} was written by another configuration; use a new --out")
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        log.info("final model seed %d: done", seed)
        return model, res
    # The schedule's horizon is the CV runs' cap, so the final model's learning rates per epoch
    # are those of the CV runs up to the chosen epoch.
    hyper = RunHyper(chosen["lr"], chosen["batch_size"], chosen["epochs"], cfg.augment,
                     schedule_epochs=cfg.max_epochs)
    log.info("final model seed %d: %d train patients, %d epochs", seed, len(train_ids), hyper.max_epochs)
    r = fit(run_dir, model, bank, list(train_ids), None, hyper, cfg.input_mode, n_classes, settings, seed,
            cfg.recipe)
    model = model.cpu()
    res = {"seed": seed, "lr": hyper.lr, "batch_size": hyper.batch_size, "epochs": hyper.max_epochs,
           "epochs_run": r["epochs_run"], "seconds": r["seconds"], "history": r["history"],
           "train_patients": sorted(train_ids), "fingerprint": fp}
    if is_rank_zero():
        with atomic_path(weights) as tmp:
            torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
        write_json(done, res)
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    return model, res


def _write_predictions(out: Path, test_ids: list[str], y: np.ndarray, ens: np.ndarray,
                       seed_probs: list[np.ndarray], seeds: Sequence[int], classes: list[str]) -> None:
    cols = prob_columns(classes)
    df = pd.DataFrame({"patient_id": test_ids, "label": [classes[i] for i in y], "label_index": y})
    df[cols] = ens
    df["pred_index"] = ens.argmax(axis=1)
    df["pred_label"] = [classes[i] for i in df["pred_index"]]
    write_text(out / "predictions.csv", df.to_csv(index=False))
    rows = []
    for seed, sp in zip(seeds, seed_probs, strict=True):
        d = pd.DataFrame({"patient_id": test_ids, "seed": int(seed), "label_index": y})
        d[cols] = sp
        rows.append(d)
    write_text(out / "predictions_per_seed.csv", pd.concat(rows).to_csv(index=False))


def _write_finetuned_features(path: Path, model: DualPhaseClassifier, bank: SliceBank, store: SliceStore,
                         spec: InputSpec, device: torch.device) -> int:
    """``patient_id, f0..f{2D-1}``: mean over a patient's slices of the [ED, ES] features.

    All train and test patients, plus any other stored patient whose masks load (unlabelled).
    For inspection only: the model was trained on the train labels, so the train patients'
    features are fitted to them. Hence the file name (:data:`~cardioclr.artifacts.FINETUNED_FEATURES_FILE`),
    which :func:`cardioclr.evaluate.baseline.read_deep_features` refuses: the hybrid baseline
    uses the label-free SimCLR features (:mod:`cardioclr.ssl.features`) instead.
    """
    _, feats = predict_slices(model, bank.images, bank.hearts, spec.input_mode, device, with_features=True)
    assert feats is not None  # with_features=True
    keys, mean = patient_probabilities(feats, bank.patient.numpy())
    ids = [bank.patient_ids[k] for k in keys]
    extra = [p for p in store.patient_ids if p not in set(ids)]
    rows = [mean]
    for pid in extra:
        try:
            pi = load_patient_inputs(store, pid, spec)
        except CardioclrError as err:
            log.info("fine-tuned features: skipping %s (%s)", pid, err)
            continue
        _, f = predict_slices(model, torch.from_numpy(pi.images), torch.from_numpy(pi.hearts),
                              spec.input_mode, device, with_features=True)
        assert f is not None  # with_features=True
        rows.append(f.mean(axis=0, keepdims=True))
        ids.append(pid)
    feats_all = np.concatenate(rows)
    df = pd.DataFrame(feats_all, columns=[f"f{i}" for i in range(feats_all.shape[1])])
    df.insert(0, "patient_id", ids)
    write_text(path, df.to_csv(index=False, float_format="%.6g"))
    return int(feats_all.shape[1])


def _curves(cv_results: Sequence[dict[str, Any]], final_results: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """The convergence curves (paper Fig. 1): one row per epoch of every run."""
    rows = []
    for r in cv_results:
        for h in r["history"]:
            rows.append({"epoch": h["epoch"], "split": "cv", "fold": r["fold"], "seed": r["seed"],
                         "lr": r["lr"], "batch_size": r["batch_size"], "train_loss": h["train_loss"],
                         "val_loss": h["val_loss"], "val_auc": h["val_auc"]})
    for r in final_results:
        for h in r["history"]:
            rows.append({"epoch": h["epoch"], "split": "final", "fold": -1, "seed": r["seed"],
                         "lr": r["lr"], "batch_size": r["batch_size"], "train_loss": h["train_loss"],
                         "val_loss": math.nan, "val_auc": math.nan})
    return pd.DataFrame(rows, columns=["epoch", "split", "fold", "seed", "lr", "batch_size", "train_loss",
                                       "val_loss", "val_auc"])


def _spread(per_seed: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean and SD (ddof 1; None for one seed) over seeds of AUC, accuracy, balanced accuracy."""
    out: dict[str, Any] = {"n_seeds": len(per_seed)}
    for key in ("macro_auc", "accuracy", "balanced_accuracy"):
        v = np.array([s[key]["value"] for s in per_seed], dtype=float)
        v = v[np.isfinite(v)]
        out[key] = {"mean": float(v.mean()) if v.size else None,
                    "sd": float(v.std(ddof=1)) if v.size > 1 else None}
    return out

