"""One training run of the dual-phase classifier (a CV fold or a final model), via Lightning.

The LightningModule is thin: augmentation, masking per input mode, cross-entropy, Adam with
weight decay 1e-4 (the paper's). Validation is *per patient*: the mean of a patient's
slice-pair probabilities, then ``val_loss`` = mean negative log-likelihood of the true class
and ``val_auc`` = macro one-vs-rest AUC over the validation patients. Early stopping and the
best checkpoint monitor that patient-level ``val_loss``.

Every epoch appends a row ``{epoch, train_loss, val_loss, val_auc}`` to the module's
``history``, which is stored inside ``last.ckpt`` so an interrupted run resumes with its
curve intact.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader

from cardioclr.accel import DeviceBatches, channels_last, configure_backends
from cardioclr.classify.data import FINETUNE_AUGMENT, SliceBank, patient_probabilities
from cardioclr.classify.model import DualPhaseClassifier
from cardioclr.classify.multitask import MultiTaskClassifier
from cardioclr.classify.recipe import (
    TrainingRecipe,
    WeightedDeviceBatches,
    balanced_sampler,
    ema_callback,
    lr_scheduler_config,
    mix_batch,
    patient_balanced_weights,
    soft_cross_entropy,
    soft_targets,
    tta_proba,
)
from cardioclr.data.augment import AugmentConfig, augment_batch
from cardioclr.data.pairs import network_inputs
from cardioclr.evaluate.metrics import macro_of, ovr_auc_boot
from cardioclr.training import TrainerSettings, inference_device, make_trainer, resume_checkpoint

log = logging.getLogger(__name__)

WEIGHT_DECAY = 1e-4  # the paper's Adam weight decay
EVAL_BATCH = 64


@dataclass(frozen=True)
class RunHyper:
    """Hyperparameters of one run: Adam learning rate, batch size (slice pairs), epochs cap."""

    lr: float
    batch_size: int
    max_epochs: int
    augment: bool = True
    #: Horizon of a cosine learning-rate schedule in epochs (0 = ``max_epochs``); the final
    #: model passes the CV runs' cap so both follow the same curve (:mod:`.recipe`).
    schedule_epochs: int = 0


def patient_val_metrics(proba: np.ndarray, patient: np.ndarray, labels: np.ndarray, n_classes: int
                        ) -> tuple[float, float]:
    """Patient-level (val_loss, val_auc) from slice probabilities.

    ``proba``: (N, K) slice probabilities; ``patient``: (N,) patient keys; ``labels``: (N,)
    slice labels (constant within a patient). val_loss = mean over patients of
    -log p(true class) of the patient's mean probability; val_auc = macro OvR AUC (NaN when
    fewer than two classes are present).
    """
    keys, pp = patient_probabilities(proba, patient)
    first = {k: i for i, k in reversed(list(enumerate(patient)))}
    y = np.array([labels[first[k]] for k in keys], dtype=np.int64)
    nll = -np.log(np.clip(pp[np.arange(len(y)), y], 1e-12, 1.0))
    auc = float(macro_of(ovr_auc_boot(y, pp, None), n_classes))
    return float(nll.mean()), auc


class ClassifierModule(L.LightningModule):
    """Thin Lightning wrapper around :class:`DualPhaseClassifier`.

    Batches are ``(images (B, 2, H, W), hearts (B, 2, H, W), labels (B,), rows (B,))``
    from :class:`~cardioclr.classify.data.PairDataset`; ``slice_patient`` maps bank rows to
    patient indices so validation can average per patient. ``recipe`` adds the small-data
    training details (:mod:`.recipe`: soft targets, mixing, schedule over ``schedule_epochs``,
    TTA at validation); its default changes nothing.
    """

    def __init__(self, model: DualPhaseClassifier, lr: float, input_mode: str, n_classes: int,
                 slice_patient: Tensor, augment: AugmentConfig | None = None,
                 weight_decay: float = WEIGHT_DECAY, structures: Tensor | None = None,
                 recipe: TrainingRecipe | None = None, schedule_epochs: int = 0) -> None:
        super().__init__()
        self.recipe = recipe or TrainingRecipe()
        self.schedule_epochs = schedule_epochs
        self.model = model
        # Multi-task targets (bank rows -> (6, H, W) LV/MYO/RV masks), only for a MultiTaskClassifier.
        if isinstance(model, MultiTaskClassifier) and structures is None:
            raise ValueError("a multi-task model needs the slice bank's structure masks")
        self.structures = structures if isinstance(model, MultiTaskClassifier) else None
        self.lr = lr
        self.weight_decay = weight_decay
        self.input_mode = input_mode
        self.n_classes = n_classes
        self.augment = augment
        self.slice_patient = slice_patient.cpu().numpy()
        self.history: list[dict[str, Any]] = []
        self._loss_sum: float | torch.Tensor = 0.0
        self._loss_n = 0
        self._val: list[tuple[Tensor, Tensor, Tensor]] = []

    def forward(self, images: Tensor, hearts: Tensor) -> Tensor:
        """(B, 2, H, W) pairs and hearts -> (B, K) logits (masking per input mode, no augmentation)."""
        ed, es = network_inputs(images, hearts, self.input_mode)
        logits: Tensor = self.model(ed, es)
        return logits

    def on_train_epoch_start(self) -> None:
        self._loss_sum, self._loss_n = 0.0, 0

    def training_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor:
        images, hearts, labels, rows = batch
        targets = self._aux_targets(rows)
        if self.augment is not None:
            # Geometric augmentation first, masking after: a segmented input never shows
            # tissue that the warp moved inside the heart outline. Multi-task targets are
            # warped with them (extra mask channels), never intensity-changed.
            n_masks = hearts.shape[1]
            stacked = hearts if targets is None else torch.cat([hearts, targets], dim=1)
            images, warped = augment_batch(images, stacked, self.input_mode, self.augment)
            if warped is not None:
                hearts, targets = warped[:, :n_masks], (None if targets is None else warped[:, n_masks:])
        if self.recipe.soft_labels:
            # Mixing after augmentation and masking-ready hearts: each pair is one sample.
            # Multi-task runs never mix (finetune refuses it): their targets stay aligned.
            soft = soft_targets(labels, self.n_classes, self.recipe.label_smoothing)
            images, hearts, soft, _ = mix_batch(images, hearts, soft, self.recipe)
            loss = soft_cross_entropy(self(images, hearts), soft)
        else:
            loss = F.cross_entropy(self(images, hearts), labels)
        if targets is not None:
            assert isinstance(self.model, MultiTaskClassifier)  # _aux_targets
            seg_loss = self.model.auxiliary_loss(targets)
            self.log("train_seg_loss", seg_loss, on_step=False, on_epoch=True, batch_size=labels.shape[0])
            loss = loss + self.model.aux_seg_weight * seg_loss
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=labels.shape[0])
        # A device tensor, read once per epoch: no host synchronisation per step.
        self._loss_sum = self._loss_sum + loss.detach().float() * labels.shape[0]
        self._loss_n += int(labels.shape[0])
        return loss

    def _aux_targets(self, rows: Tensor) -> Tensor | None:
        """(B, 6, H, W) float structure masks of bank ``rows`` (multi-task), else None."""
        if self.structures is None:
            return None
        if self.structures.device != rows.device:  # once: the bank's masks go where the batches are
            self.structures = self.structures.to(rows.device)
        return self.structures[rows].float()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # The row is written here (last batch), before any end-of-epoch checkpoint is saved,
        # so that a resumed run's history has every finished epoch.
        if batch_idx + 1 == self.trainer.num_training_batches:
            row = {"epoch": int(self.current_epoch),
                   "train_loss": float(self._loss_sum) / max(self._loss_n, 1),
                   "val_loss": math.nan, "val_auc": math.nan}
            self.history = [r for r in self.history if r["epoch"] != row["epoch"]] + [row]

    def on_validation_epoch_start(self) -> None:
        self._val = []

    def validation_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> None:
        images, hearts, labels, rows = batch
        if self.recipe.tta > 1:
            proba = tta_proba(self, images, hearts, self.recipe.tta)
        else:
            proba = torch.softmax(self(images, hearts).float(), dim=1)
        self._val.append((proba.detach(), labels, rows))

    def on_validation_epoch_end(self) -> None:
        proba = torch.cat([v[0] for v in self._val])
        labels = torch.cat([v[1] for v in self._val])
        rows = torch.cat([v[2] for v in self._val])
        if self.trainer.world_size > 1:
            # Every rank saw a share (padded by the distributed sampler): gather, then dedupe rows.
            # all_gather of a tensor is a tensor (its signature also allows dicts and lists).
            proba = cast(Tensor, self.all_gather(proba)).flatten(0, 1)
            labels = cast(Tensor, self.all_gather(labels)).flatten(0, 1)
            rows = cast(Tensor, self.all_gather(rows)).flatten(0, 1)
        r = rows.cpu().numpy()
        _, first = np.unique(r, return_index=True)
        p, y, r = proba.cpu().numpy()[first], labels.cpu().numpy()[first], r[first]
        val_loss, val_auc = patient_val_metrics(p, self.slice_patient[r], y, self.n_classes)
        self.log("val_loss", val_loss, sync_dist=False)
        self.log("val_auc", val_auc if math.isfinite(val_auc) else 0.0, sync_dist=False)
        epoch = int(self.current_epoch)
        for row in self.history:
            if row["epoch"] == epoch:
                row.update(val_loss=val_loss, val_auc=val_auc)
        self._val = []

    def configure_optimizers(self) -> Any:
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        if self.recipe.schedule == "constant" and self.recipe.warmup_epochs == 0:
            return opt
        max_epochs = max(int(self.trainer.max_epochs or 1), 1)
        steps_per_epoch = self.trainer.estimated_stepping_batches / max_epochs
        horizon = self.schedule_epochs or max_epochs
        return {"optimizer": opt,
                "lr_scheduler": lr_scheduler_config(opt, self.recipe, steps_per_epoch, horizon)}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["cardioclr_history"] = [dict(r) for r in self.history]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.history = [dict(r) for r in checkpoint.get("cardioclr_history", [])]


def resident_device(settings: TrainerSettings) -> torch.device | None:
    """The GPU that holds the training pairs for the whole run (one CUDA device), else None
    (CPU, several devices: a DataLoader, which Lightning shards under DDP)."""
    device = inference_device(settings.accelerator)
    return device if device.type == "cuda" and settings.devices in (1, "1") else None


def fit_run(run_dir: str | Path, model: DualPhaseClassifier, bank: SliceBank, train_ids: list[str],
            val_ids: list[str] | None, hyper: RunHyper, input_mode: str, n_classes: int,
            settings: TrainerSettings, seed: int, recipe: TrainingRecipe | None = None
            ) -> dict[str, Any]:
    """Train ``model`` in place on ``train_ids``; early-stop on ``val_ids`` when given.

    Without validation patients the run trains exactly ``hyper.max_epochs`` epochs (the final
    model: its epoch count comes from cross-validation). Resumes from ``run_dir/checkpoints/
    last.ckpt`` when present. Returns ``{history, best_epoch, val_loss, val_auc, epochs_run,
    seconds}``; for validated runs ``model`` holds the *last* epoch's weights and the best
    epoch is reported (the caller only needs its index). ``recipe`` (:mod:`.recipe`) adds
    balanced sampling, soft targets, mixing, a schedule, EMA weights (the ones validated and
    left in ``model``) and TTA at validation; None = none of them.
    """
    recipe = recipe or TrainingRecipe()
    L.seed_everything(seed, workers=True, verbose=False)
    run = Path(run_dir)
    train_ds = bank.dataset(train_ids)
    # The generator fixes the shuffling order per seed, independent of other RNG consumers.
    gen = torch.Generator().manual_seed(seed)
    train_dl: DataLoader[Any] | DeviceBatches
    device = resident_device(settings)
    if device is not None:
        # The pairs on the GPU, batches drawn there (no per-item indexing, no host copies).
        configure_backends(device)
        channels_last(model, device)
        rows = train_ds.rows
        tensors = (bank.images[rows].to(device), bank.hearts[rows].to(device).float(),
                   bank.labels[rows].to(device), rows.to(device))
        if recipe.balanced_sampling:
            weights = patient_balanced_weights(bank.patient[rows], bank.labels[rows])
            train_dl = WeightedDeviceBatches(tensors, hyper.batch_size, weights, generator=gen)
        else:
            train_dl = DeviceBatches(tensors, hyper.batch_size, shuffle=True, generator=gen)
    elif recipe.balanced_sampling:
        weights = patient_balanced_weights(bank.patient[train_ds.rows], bank.labels[train_ds.rows])
        train_dl = DataLoader(train_ds, batch_size=hyper.batch_size,
                              sampler=balanced_sampler(weights, gen), num_workers=0)
    else:
        train_dl = DataLoader(train_ds, batch_size=hyper.batch_size, shuffle=True, generator=gen,
                              num_workers=0)
    val_dl = None
    if val_ids:
        val_dl = DataLoader(bank.dataset(val_ids), batch_size=EVAL_BATCH, shuffle=False, num_workers=0)
    module = ClassifierModule(model, hyper.lr, input_mode, n_classes, bank.patient,
                              FINETUNE_AUGMENT if hyper.augment else None,
                              structures=bank.structures if isinstance(model, MultiTaskClassifier) else None,
                              recipe=recipe, schedule_epochs=hyper.schedule_epochs or hyper.max_epochs)
    extra = [ema_callback(recipe.ema_decay)] if recipe.ema_decay > 0 else []
    def generators(*_: Any) -> dict[str, torch.Generator]:
        return {"shuffle": gen}  # the shuffling order continues where a resumed run stopped

    if val_dl is None:
        # No validation: checkpoint on the training loss and never stop early.
        s = replace(settings, max_epochs=hyper.max_epochs, patience=hyper.max_epochs + 1)
        trainer = make_trainer(run, s, monitor="train_loss", mode="min", generators=generators,
                               extra_callbacks=extra)
    else:
        s = replace(settings, max_epochs=hyper.max_epochs)
        trainer = make_trainer(run, s, monitor="val_loss", mode="min", generators=generators,
                               extra_callbacks=extra)
    return fit_and_summarise(trainer, module, train_dl, val_dl, run)


def fit_and_summarise(trainer: L.Trainer, module: Any, train_dl: Any, val_dl: Any, run: Path
                      ) -> dict[str, Any]:
    """``trainer.fit`` (resuming from ``run``'s last checkpoint) and the run summary shared by the
    slice and patient models: ``{history, epochs_run, seconds}`` plus ``best_epoch``,
    ``val_loss``, ``val_auc`` of the lowest validation loss when validated. ``module.history``
    holds one dict per epoch with ``epoch``, ``val_loss``, ``val_auc``."""
    start = time.perf_counter()
    with warnings.catch_warnings():
        # In-memory tensors: DataLoader workers would only add process overhead.
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*number of training batches.*")
        warnings.filterwarnings("ignore", message=".*no `val_dataloader`.*")  # final runs: by design
        trainer.fit(module, train_dataloaders=train_dl, val_dataloaders=val_dl,
                    ckpt_path=resume_checkpoint(run))
    seconds = time.perf_counter() - start
    if trainer.interrupted:
        # Lightning swallows Ctrl-C and returns; the run must not be recorded as finished.
        raise KeyboardInterrupt
    history = sorted(module.history, key=lambda r: r["epoch"])
    out: dict[str, Any] = {"history": history, "epochs_run": len(history), "seconds": seconds}
    if val_dl is not None and history:
        losses = [r["val_loss"] if math.isfinite(r["val_loss"]) else math.inf for r in history]
        best = int(np.argmin(losses))
        out.update(best_epoch=int(history[best]["epoch"]), val_loss=float(history[best]["val_loss"]),
                   val_auc=float(history[best]["val_auc"]))
    return out


@torch.no_grad()
def predict_slices(model: DualPhaseClassifier, images: Tensor, hearts: Tensor, input_mode: str,
                   device: torch.device | str = "cpu", batch_size: int = EVAL_BATCH,
                   with_features: bool = False, tta: int = 1) -> tuple[np.ndarray, np.ndarray | None]:
    """Slice-pair probabilities (N, K) float64 and optionally features (N, 2D) float32.

    ``images`` (N, 2, H, W) float, ``hearts`` (N, 2, H, W) bool/float; eval mode, no training
    augmentation. ``tta`` > 1 averages the probabilities over that many views
    (:func:`~cardioclr.classify.recipe.tta_proba`); features are always the unrotated view's.
    """
    was_training = model.training
    model.eval().to(device)
    probs, feats = [], []
    try:
        for i in range(0, images.shape[0], batch_size):
            x = images[i:i + batch_size].to(device, torch.float32)
            h = hearts[i:i + batch_size].to(device, torch.float32)
            ed, es = network_inputs(x, h, input_mode)
            f = model.features(ed, es)
            d = model.feature_dim
            logits = model.head(f[:, :d], f[:, d:])
            proba = torch.softmax(logits.float(), dim=1)
            if tta > 1:
                proba = tta_proba(lambda xi, hi: model(*network_inputs(xi, hi, input_mode)), x, h, tta)
            probs.append(proba.cpu().double().numpy())
            if with_features:
                feats.append(f.float().cpu().numpy())
    finally:
        model.train(was_training)
    k = model.head.fc.out_features
    p = np.concatenate(probs) if probs else np.zeros((0, k))
    return p, (np.concatenate(feats) if with_features and feats else None)
