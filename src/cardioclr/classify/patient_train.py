"""One training run of the patient-level classifier (a CV fold or a final model), via Lightning.

The counterpart of :mod:`cardioclr.classify.train` for :class:`~cardioclr.models.patient.
PatientClassifier`: one training item is a whole patient (all ED+ES slice pairs, padded in the
batch), the loss is the cross-entropy of the patient's logits, and validation needs no
averaging (``val_loss`` = mean negative log-likelihood of the true class, ``val_auc`` = macro
one-vs-rest AUC over the validation patients, exactly as for the slice model). Adam with the
paper's weight decay; batch sizes count *patients*.

Augmentation is consistent per patient: the fine-tuning augmentation
(:data:`~cardioclr.classify.data.FINETUNE_AUGMENT`) is applied to all of a patient's slices as
the channels of one image, so every slice and both phases get the same rotation, crop and
intensity change (one heart, one acquisition) while patients differ.

:func:`fit_patient_run` has the signature of :func:`cardioclr.classify.train.fit_run`, so the
cross-validation and final-model code (:mod:`cardioclr.classify.cv`,
:mod:`cardioclr.classify.finetune`) run either model unchanged.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader

from cardioclr.classify.data import FINETUNE_AUGMENT
from cardioclr.classify.patient_data import PatientBank, PatientBatch, pad_patients
from cardioclr.classify.recipe import TrainingRecipe
from cardioclr.classify.train import WEIGHT_DECAY, RunHyper, fit_and_summarise, patient_val_metrics
from cardioclr.data.augment import AugmentConfig, augment_batch
from cardioclr.data.pairs import network_inputs
from cardioclr.errors import CardioclrError
from cardioclr.models.patient import PatientClassifier
from cardioclr.training import TrainerSettings, make_trainer

EVAL_PATIENTS = 8  # patients per inference batch (~10 slices x 2 phases each)


def patient_network_inputs(images: Tensor, hearts: Tensor, input_mode: str) -> tuple[Tensor, Tensor]:
    """(B, S, 2, H, W) padded pairs -> ED and ES inputs (B, S, C, H, W), masked per input mode."""
    b, s = images.shape[:2]
    ed, es = network_inputs(images.flatten(0, 1), hearts.flatten(0, 1), input_mode)
    return ed.reshape(b, s, *ed.shape[1:]), es.reshape(b, s, *es.shape[1:])


def augment_patients(images: Tensor, hearts: Tensor, input_mode: str, cfg: AugmentConfig
                     ) -> tuple[Tensor, Tensor]:
    """One random view per *patient*: (B, S, 2, H, W) images and hearts, same transform for all
    slices and both phases of a patient (they are stacked as channels of one image)."""
    b, (h, w) = images.shape[0], images.shape[-2:]
    views, warped = augment_batch(images.reshape(b, -1, h, w), hearts.reshape(b, -1, h, w), input_mode, cfg)
    out_hearts = warped.reshape(hearts.shape) if warped is not None else hearts
    return views.reshape(images.shape), out_hearts


def patient_loss(logits: Tensor, instance_logits: Tensor | None, labels: Tensor, mask: Tensor,
                 instance_weight: float) -> Tensor:
    """Cross-entropy of the patient logits (B, K), plus ``instance_weight`` x the mean
    cross-entropy of the real slices' logits (N, K) against their patient's label."""
    loss = F.cross_entropy(logits, labels)
    if instance_logits is not None and instance_weight > 0:
        per_slice = labels.repeat_interleave(mask.sum(dim=1))
        loss = loss + instance_weight * F.cross_entropy(instance_logits, per_slice)
    return loss


class PatientModule(L.LightningModule):
    """Thin Lightning wrapper around :class:`PatientClassifier`; batches from :func:`pad_patients`."""

    def __init__(self, model: PatientClassifier, lr: float, input_mode: str, n_classes: int,
                 augment: AugmentConfig | None = None, weight_decay: float = WEIGHT_DECAY) -> None:
        super().__init__()
        self.model = model
        self.lr = lr
        self.weight_decay = weight_decay
        self.input_mode = input_mode
        self.n_classes = n_classes
        self.augment = augment
        self.history: list[dict[str, Any]] = []
        self._loss_sum: float | Tensor = 0.0
        self._loss_n = 0
        self._val: list[tuple[Tensor, Tensor, Tensor]] = []

    def forward(self, images: Tensor, hearts: Tensor, positions: Tensor, mask: Tensor) -> Tensor:
        """Padded batch -> (B, K) logits (masking per input mode, no augmentation)."""
        ed, es = patient_network_inputs(images, hearts, self.input_mode)
        logits: Tensor = self.model(ed, es, positions, mask)
        return logits

    def on_train_epoch_start(self) -> None:
        self._loss_sum, self._loss_n = 0.0, 0

    def training_step(self, batch: PatientBatch, batch_idx: int) -> Tensor:
        images, hearts, positions, mask, labels, _ = batch
        if self.augment is not None:
            images, hearts = augment_patients(images, hearts, self.input_mode, self.augment)
        ed, es = patient_network_inputs(images, hearts, self.input_mode)
        logits, inst = self.model.forward_with_instances(ed, es, positions, mask)
        loss = patient_loss(logits, inst, labels, mask, self.model.instance_loss_weight)
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=labels.shape[0])
        self._loss_sum = self._loss_sum + loss.detach().float() * labels.shape[0]
        self._loss_n += int(labels.shape[0])
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # Written at the last batch, before any end-of-epoch checkpoint (as in train.py).
        if batch_idx + 1 == self.trainer.num_training_batches:
            row = {"epoch": int(self.current_epoch),
                   "train_loss": float(self._loss_sum) / max(self._loss_n, 1),
                   "val_loss": math.nan, "val_auc": math.nan}
            self.history = [r for r in self.history if r["epoch"] != row["epoch"]] + [row]

    def on_validation_epoch_start(self) -> None:
        self._val = []

    def validation_step(self, batch: PatientBatch, batch_idx: int) -> None:
        images, hearts, positions, mask, labels, index = batch
        proba = torch.softmax(self(images, hearts, positions, mask).float(), dim=1)
        self._val.append((proba.detach(), labels, index))

    def on_validation_epoch_end(self) -> None:
        proba = torch.cat([v[0] for v in self._val])
        labels = torch.cat([v[1] for v in self._val])
        index = torch.cat([v[2] for v in self._val])
        if self.trainer.world_size > 1:
            proba = cast(Tensor, self.all_gather(proba)).flatten(0, 1)
            labels = cast(Tensor, self.all_gather(labels)).flatten(0, 1)
            index = cast(Tensor, self.all_gather(index)).flatten(0, 1)
        idx = index.cpu().numpy()
        _, first = np.unique(idx, return_index=True)  # the distributed sampler repeats some
        val_loss, val_auc = patient_val_metrics(proba.cpu().numpy()[first], idx[first],
                                                labels.cpu().numpy()[first], self.n_classes)
        self.log("val_loss", val_loss, sync_dist=False)
        self.log("val_auc", val_auc if math.isfinite(val_auc) else 0.0, sync_dist=False)
        for row in self.history:
            if row["epoch"] == int(self.current_epoch):
                row.update(val_loss=val_loss, val_auc=val_auc)
        self._val = []

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for p in self.model.parameters() if p.requires_grad]
        return torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["cardioclr_history"] = [dict(r) for r in self.history]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.history = [dict(r) for r in checkpoint.get("cardioclr_history", [])]


def fit_patient_run(run_dir: str | Path, model: PatientClassifier, bank: PatientBank, train_ids: list[str],
                    val_ids: list[str] | None, hyper: RunHyper, input_mode: str, n_classes: int,
                    settings: TrainerSettings, seed: int, recipe: TrainingRecipe | None = None
                    ) -> dict[str, Any]:
    """Train ``model`` in place on ``train_ids`` (``hyper.batch_size`` patients per step);
    early-stop on ``val_ids`` when given. Same contract, resuming and return value as
    :func:`cardioclr.classify.train.fit_run`. ``recipe`` must be the paper's training (the
    small-data details of :mod:`cardioclr.classify.recipe` are wired into the slice model only).
    """
    if recipe is not None and recipe != TrainingRecipe():
        raise CardioclrError("--recipe / its options apply to --model slice only")
    L.seed_everything(seed, workers=True, verbose=False)
    run = Path(run_dir)
    gen = torch.Generator().manual_seed(seed)
    train_dl = DataLoader(bank.dataset(train_ids), batch_size=hyper.batch_size, shuffle=True, generator=gen,
                          num_workers=0, collate_fn=pad_patients)
    val_dl = None
    if val_ids:
        val_dl = DataLoader(bank.dataset(val_ids), batch_size=EVAL_PATIENTS, shuffle=False, num_workers=0,
                            collate_fn=pad_patients)
    augment = FINETUNE_AUGMENT if hyper.augment else None
    module = PatientModule(model, hyper.lr, input_mode, n_classes, augment)

    def generators(*_: Any) -> dict[str, torch.Generator]:
        return {"shuffle": gen}

    if val_dl is None:
        s = replace(settings, max_epochs=hyper.max_epochs, patience=hyper.max_epochs + 1)
        trainer = make_trainer(run, s, monitor="train_loss", mode="min", generators=generators)
    else:
        s = replace(settings, max_epochs=hyper.max_epochs)
        trainer = make_trainer(run, s, monitor="val_loss", mode="min", generators=generators)
    return fit_and_summarise(trainer, module, train_dl, val_dl, run)


@torch.no_grad()
def predict_patients(model: PatientClassifier, bank: PatientBank, indices: list[int], input_mode: str,
                     device: torch.device | str = "cpu", batch_size: int = EVAL_PATIENTS
                     ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Patient probabilities (P, K) float64, embeddings (P, M) float32 and attention weights
    (one (n_i,) float array per patient, summing to 1) for the bank patients ``indices``, in
    that order; eval mode, no augmentation."""
    was_training = model.training
    model.eval().to(device)
    probs: list[np.ndarray] = []
    embs: list[np.ndarray] = []
    att: list[np.ndarray] = []
    try:
        for i in range(0, len(indices), batch_size):
            images, hearts, positions, mask, _, _ = bank.batch(indices[i:i + batch_size])
            ed, es = patient_network_inputs(images.to(device), hearts.to(device), input_mode)
            mask = mask.to(device)
            z, a = model.embed(ed, es, positions.to(device), mask)
            probs.append(torch.softmax(model.fc(z).float(), dim=1).cpu().double().numpy())
            embs.append(z.float().cpu().numpy())
            att.extend(a[k][mask[k]].float().cpu().numpy() for k in range(a.shape[0]))
    finally:
        model.train(was_training)
    k = model.fc.out_features
    return (np.concatenate(probs) if probs else np.zeros((0, k)),
            np.concatenate(embs) if embs else np.zeros((0, model.embedding_dim), np.float32), att)
