"""The 2D segmentation network (MONAI) and its Lightning module.

Input: one short-axis slice, float (B, 1, H, W) with H, W multiples of :func:`size_divisor`; with
``NetworkConfig.context_slices`` = k > 0 the slice and its k neighbours on each side of the same
volume as channels (B, 1 + 2k, H, W; :func:`slice_context`); with ``NetworkConfig.phase_channel``
one more channel, constant over the slice, says the cardiac phase (0 end-diastole, 1 end-systole;
:func:`with_phase`).
Output: logits (B, 4, H, W) for background, RV cavity, LV myocardium, LV cavity.
Fully convolutional: trained on heart-centred crops, applied to whole store slices.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn

from cardioclr.accel import compile_in_place
from cardioclr.clinical.labels import N_LABELS, STRUCTURES
from cardioclr.data.augment import SegmentationAugmentConfig, augment_segmentation_batch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NetworkConfig:
    """Architecture. ``arch``: ``unet`` (MONAI ``UNet``, residual units) or ``dynunet``
    (MONAI ``DynUNet``, the nnU-Net layout). ``channels``: features per resolution level.
    ``norm``: ``batch`` or ``instance`` (affine, as nnU-Net). ``deep_supervision``: number of
    lower-resolution auxiliary outputs trained alongside the main one (``dynunet`` only; they
    exist only in training mode, so exported weights predict exactly as without them).
    ``context_slices``: neighbouring slices on each side given as extra input channels (2.5D;
    0 = the slice alone). Short-axis slices are 5-10 mm apart: the neighbours tell a basal slice
    (atria above it) from a mid one and an apical one from the slice below the apex, where a
    lone slice is ambiguous.
    ``phase_channel``: one more input channel, constant over the slice, giving the cardiac phase
    (0 = end-diastole, 1 = end-systole; cine frames in between, :func:`cine_phase_values`). ED and
    ES slices are trained together, and ACDC's experts draw end-systolic basal slices differently
    (no RV where the base has descended past the valve), which a slice alone cannot tell."""

    arch: str = "unet"
    channels: tuple[int, ...] = (16, 32, 64, 128, 256)
    num_res_units: int = 1
    norm: str = "batch"
    dropout: float = 0.0
    deep_supervision: int = 0
    context_slices: int = 0
    phase_channel: bool = False


#: Value of the phase channel (:attr:`NetworkConfig.phase_channel`) for each annotated phase.
PHASE_VALUE = {"ED": 0.0, "ES": 1.0}
#: Phase-channel value of a frame whose place in the cycle is unknown (halfway between ED and ES).
UNKNOWN_PHASE = 0.5


def input_channels(cfg: NetworkConfig) -> int:
    """Input channels of the network: the slice, ``context_slices`` neighbours on each side, and
    the phase channel when ``phase_channel``."""
    return 1 + 2 * cfg.context_slices + int(cfg.phase_channel)


def with_phase(x: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    """Append the phase channel: images (B, C, H, W) and phase values (B,) -> (B, C + 1, H, W).

    Appended after augmentation (never augmented itself: intensity and spatial transforms would
    turn the constant into noise and zero borders)."""
    plane = phase.to(x.dtype).view(-1, 1, 1, 1).expand(x.shape[0], 1, x.shape[2], x.shape[3])
    return torch.cat([x, plane], dim=1)


def cine_phase_values(n_frames: int, ed_index: int | None, es_index: int | None) -> np.ndarray:
    """Phase-channel value of each cine frame, float32 (t,): 0 at ED rising linearly to 1 at ES,
    then back to 0 at the next ED (the cycle wraps).

    The network is trained on ED (0) and ES (1) only; frames between get the fraction of the way
    through systole or diastole. Unknown ED or ES frame (None, out of range, or the same):
    :data:`UNKNOWN_PHASE` for every frame.
    """
    t = n_frames
    if ed_index is None or es_index is None or not (0 <= ed_index < t and 0 <= es_index < t) \
            or ed_index == es_index:
        return np.full(t, UNKNOWN_PHASE, np.float32)
    systole = (es_index - ed_index) % t  # frames from ED to ES
    out = np.empty(t, np.float32)
    for f in range(t):
        d = (f - ed_index) % t
        out[f] = d / systole if d <= systole else 1.0 - (d - systole) / (t - systole)
    return out


def slice_context(volume: np.ndarray, context_slices: int) -> np.ndarray:
    """Each slice of a volume with its neighbours: (z, H, W) -> (z, 1 + 2k, H, W), k = ``context_slices``.

    Channel k is the slice itself, channel k - d the slice d closer to the first slice, k + d
    the one d further. Past the first or last slice the edge slice is repeated (as in nnU-Net's
    2.5D variants): the network sees "no more heart that way" as "the same as here".
    """
    if context_slices == 0:
        return volume[:, None]
    z = volume.shape[0]
    idx = np.clip(np.arange(z)[:, None] + np.arange(-context_slices, context_slices + 1)[None], 0, z - 1)
    return volume[idx]


def size_divisor(cfg: NetworkConfig) -> int:
    """Input height and width must be multiples of this (2 ** number of downsamplings)."""
    return 2 ** (len(cfg.channels) - 1)


def build_network(cfg: NetworkConfig) -> nn.Module:
    """A fresh MONAI 2D network with :func:`input_channels` inputs and 4 output classes."""
    n = len(cfg.channels)
    if n < 2:
        raise ValueError(f"need at least 2 resolution levels, got channels={cfg.channels}")
    norm: str | tuple[str, dict[str, Any]] = cfg.norm
    if cfg.norm == "instance":
        norm = ("instance", {"affine": True})
    if cfg.deep_supervision and cfg.arch != "dynunet":
        raise ValueError("deep_supervision needs arch dynunet")
    if cfg.arch == "unet":
        from monai.networks.nets import UNet

        return UNet(spatial_dims=2, in_channels=input_channels(cfg), out_channels=N_LABELS,
                    channels=tuple(cfg.channels),
                    strides=(2,) * (n - 1), num_res_units=cfg.num_res_units, norm=norm,
                    dropout=cfg.dropout)
    if cfg.arch == "dynunet":
        from monai.networks.nets import DynUNet

        return DynUNet(spatial_dims=2, in_channels=input_channels(cfg), out_channels=N_LABELS,
                       kernel_size=[3] * n,
                       strides=[1] + [2] * (n - 1), upsample_kernel_size=[2] * (n - 1),
                       filters=list(cfg.channels), norm_name=norm, res_block=True,
                       dropout=cfg.dropout or None, deep_supervision=cfg.deep_supervision > 0,
                       deep_supr_num=max(cfg.deep_supervision, 1))
    raise ValueError(f"unknown architecture {cfg.arch!r}; choose unet or dynunet")


def label_map(scores: torch.Tensor) -> torch.Tensor:
    """Class of each pixel: logits or probabilities (B, C, H, W) -> long (B, H, W).

    ``max(dim=1).indices`` rather than ``argmax(dim=1)``: the same labels (the first class on
    ties, checked in the tests), but torch's CPU ``argmax`` over a non-last dimension is ~10x
    slower (measured 37 vs 3.8 ms for 32 x 4 x 64 x 64, one thread): it was a fifth of the
    demo's segmentation prediction and most of its validation passes.
    """
    return scores.max(dim=1).indices


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with a linear warm-up then polynomial decay (nnU-Net's 0.9 power) to zero.

    ``time_budget_s``: when set, the schedule's progress is the larger of the step fraction and
    the fraction of the wall-clock budget used, so the learning rate reaches ~0 by the deadline
    even on a slower or busier machine than expected (training then stops; see TrainClock).
    """

    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.03
    time_budget_s: float | None = None


class SegModule(L.LightningModule):
    """Dice + cross-entropy training of a 2D network on augmented heart-centred crops.

    ``compile_network``: compile the network when fitting starts (:func:`compile_in_place`).

    Batches: ``(image float (B,C,S,S), labels long (B,S,S), centre_yx float (B,2), phase float
    (B,))``, C = :func:`input_channels` without the phase channel, which :func:`with_phase` adds
    (after augmentation) when the network takes it. Validation
    logs ``val_dice`` (mean of the LV, MYO, RV Dice pooled over all validation slices).
    """

    def __init__(self, network: dict[str, Any], optim: dict[str, Any], augment: dict[str, Any],
                 crop: int, compile_network: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net_cfg = NetworkConfig(**{**network, "channels": tuple(network["channels"])})
        self.optim_cfg = OptimConfig(**optim)
        self.aug_cfg = SegmentationAugmentConfig(**augment)
        self.crop = crop
        self.compile_network = compile_network
        self.network = build_network(self.net_cfg)
        from monai.losses import DiceCELoss

        # batch=True: Dice pooled over the batch, so slices without a structure do not blow up.
        self.loss = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
        self.clock: Any = None  # set by train(): a TrainClock giving the elapsed training time
        self._val_counts = torch.zeros(3, len(STRUCTURES))
        self._total_steps: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, 4, H, W) of images (B, C, H, W), C = :func:`input_channels`."""
        return self.network(x)

    def on_fit_start(self) -> None:
        """channels_last on a GPU (the tensor cores' native layout); compile when asked."""
        if self.device.type == "cuda":
            self.network.to(memory_format=torch.channels_last)
        if self.compile_network:
            compile_in_place(self.network, self.device)

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        """Augment on the device, then Dice+CE loss (weighted over deep-supervision outputs)."""
        image, labels, centre, phase = batch
        with torch.no_grad():
            x, y = augment_segmentation_batch(image, labels, centre, self.crop, self.aug_cfg)
            if self.net_cfg.phase_channel:
                x = with_phase(x, phase)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        out = self(x)
        if out.ndim == 5:  # DynUNet deep supervision: (B, 1 + n, C, H, W), all at full size
            # nnU-Net's weights: halve per level, normalised to sum to 1.
            w = torch.tensor([0.5 ** i for i in range(out.shape[1])], device=out.device)
            w = w / w.sum()
            loss = sum(w[i] * self.loss(out[:, i], y[:, None]) for i in range(out.shape[1]))
        else:
            loss = self.loss(out, y[:, None])
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=x.shape[0])
        self.log("lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False)
        return loss

    def on_validation_epoch_start(self) -> None:
        """Reset the pooled intersection / prediction / reference voxel counts."""
        self._val_counts = torch.zeros(3, len(STRUCTURES), device=self.device, dtype=torch.float64)

    def validation_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        """Accumulate pooled Dice counts on whole (padded) slices."""
        image, labels, _, phase = batch
        if self.net_cfg.phase_channel:
            image = with_phase(image, phase)
        pred = label_map(self(image))
        for j, value in enumerate(STRUCTURES.values()):
            p, r = pred == value, labels == value
            self._val_counts[0, j] += (p & r).sum()
            self._val_counts[1, j] += p.sum()
            self._val_counts[2, j] += r.sum()

    def on_validation_epoch_end(self) -> None:
        """Log ``val_dice`` and per-structure ``val_dice_LV`` etc. (summed over DDP ranks)."""
        counts = self.trainer.strategy.reduce(self._val_counts, reduce_op="sum")
        d = 2 * counts[0] / (counts[1] + counts[2]).clamp_min(1)
        for j, name in enumerate(STRUCTURES):
            self.log(f"val_dice_{name}", d[j].float(), sync_dist=False)
        self.log("val_dice", d.mean().float(), prog_bar=True, sync_dist=False)
        if self.trainer.is_global_zero and not self.trainer.sanity_checking:
            # One line per epoch, so logs without a progress bar still show how training goes.
            elapsed = self.clock.elapsed() if self.clock is not None else float("nan")
            log.info("epoch %d: val Dice %.3f (%s), lr %.2e, %.0f s", self.current_epoch,
                     float(d.mean()), ", ".join(f"{n} {float(d[j]):.3f}" for j, n in enumerate(STRUCTURES)),
                     self.optimizers().param_groups[0]["lr"], elapsed)

    def on_train_epoch_end(self) -> None:
        """Without validation (``val_fraction`` 0), one log line per epoch with the training loss."""
        if self.trainer.limit_val_batches == 0 and self.trainer.is_global_zero:
            loss = self.trainer.callback_metrics.get("train_loss_epoch")
            elapsed = self.clock.elapsed() if self.clock is not None else float("nan")
            log.info("epoch %d: train loss %.3f (no validation), lr %.2e, %.0f s", self.current_epoch,
                     float(loss) if loss is not None else float("nan"),
                     self.optimizers().param_groups[0]["lr"], elapsed)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """AdamW; the learning rate is set each step by :meth:`on_train_batch_start`."""
        return torch.optim.AdamW(self.parameters(), lr=self.optim_cfg.lr,
                                 weight_decay=self.optim_cfg.weight_decay)

    def progress(self) -> float:
        """Fraction of training done, 0-1: steps, or wall-clock budget if that is further along."""
        if self._total_steps is None:  # estimated_stepping_batches is not free: compute once
            self._total_steps = max(int(self.trainer.estimated_stepping_batches), 1)
        total = self._total_steps
        p = self.global_step / total
        if self.optim_cfg.time_budget_s and self.clock is not None:
            p = max(p, self.clock.elapsed() / self.optim_cfg.time_budget_s)
        return min(p, 1.0)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Warm-up then poly decay, computed from :meth:`progress` (resumes exactly)."""
        p = self.progress()
        w = self.optim_cfg.warmup_fraction
        factor = p / w if p < w else (1 - (p - w) / (1 - w)) ** 0.9
        for g in self.optimizers().param_groups:
            g["lr"] = self.optim_cfg.lr * max(factor, 1e-3)


def network_config_dict(cfg: NetworkConfig) -> dict[str, Any]:
    """Plain dict of a NetworkConfig (lists, not tuples), storable with weights_only loading."""
    d = asdict(cfg)
    d["channels"] = list(cfg.channels)
    return d


def network_config_from_dict(d: dict[str, Any]) -> NetworkConfig:
    """Inverse of :func:`network_config_dict` (keys added since, e.g. ``context_slices`` of
    models saved before it existed, take their defaults)."""
    return NetworkConfig(**{**d, "channels": tuple(int(c) for c in d["channels"])})
