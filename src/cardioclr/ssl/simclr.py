"""SimCLR (Chen et al., ICML 2020) as a thin LightningModule: encoder + projection head + NT-Xent.

Nothing else is glued in (no online classifier): the module turns a batch of slices into two
augmented views on the device, embeds both, and minimises :func:`cardioclr.ssl.loss.nt_xent`.

Batches come from :class:`cardioclr.ssl.data.SliceDataset`: ``{"image": (B, S, S) float16,
"heart": (B, S, S) uint8 (segmented mode only)}``; B is the per-process batch. Under DDP the
loss gathers the projections of every process, so the negatives of each image are the other
2N - 2 views of the GLOBAL batch of N = B x world-size images.

Validation: the held-out loss uses the same augmentation distribution with a generator
seeded per batch (seed, batch index, rank), so every epoch sees exactly the same views and
the loss is comparable across epochs (early stopping and ``best.ckpt`` monitor ``val/loss``).
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.types import OptimizerLRScheduler
from torch import Tensor

from cardioclr.accel import as_channels_last, channels_last, configure_backends
from cardioclr.data.augment import AugmentConfig, two_views
from cardioclr.data.views import check_mode, input_channels
from cardioclr.models.encoders import build_encoder
from cardioclr.models.heads import ProjectionHead
from cardioclr.ssl.loss import nt_xent

MONITOR = "val/loss"


class SimCLRModule(L.LightningModule):
    """Encoder + SimCLR projection head trained with NT-Xent on on-device augmented views.

    Args:
        encoder: a key of :data:`cardioclr.models.encoders.ENCODERS`.
        input_mode: ``full``, ``segmented`` (masked after augmentation) or ``roi``.
        image_size: input side S in pixels (recorded; the data decide the actual size).
        lr: Adam learning rate (paper: 1e-4).
        temperature: NT-Xent temperature (paper: 0.1).
        cosine: cosine learning-rate decay over the planned steps after a linear warmup of
            ``warmup_fraction`` of them (else constant lr, as in the paper).
        weight_decay: Adam weight decay (0: the paper does not mention one for pretraining).
        augment: :meth:`AugmentConfig.to_dict` (None: defaults).
        imagenet_weights: optional local torchvision weight file to start from.
        seed: seeds the validation views and (with the rank) the training views.
        proj_hidden, proj_out: projection head widths (SimCLR: 2-layer MLP, 128-d output).
    """

    def __init__(self, encoder: str, input_mode: str = "full", image_size: int = 96, lr: float = 1e-4,
                 temperature: float = 0.1, cosine: bool = False, warmup_fraction: float = 0.05,
                 weight_decay: float = 0.0, augment: dict[str, Any] | None = None,
                 imagenet_weights: str | None = None, seed: int = 0, proj_hidden: int = 512,
                 proj_out: int = 128) -> None:
        super().__init__()
        check_mode(input_mode)
        self.save_hyperparameters()
        self.encoder, self.feature_dim = build_encoder(encoder, in_channels=input_channels(input_mode),
                                                       imagenet_weights=imagenet_weights)
        self.projector = ProjectionHead(self.feature_dim, proj_hidden, proj_out)
        self.augment = AugmentConfig.from_dict(augment) if augment else AugmentConfig()
        self._train_gen: torch.Generator | None = None

    # ---- the computation -------------------------------------------------------------------

    def make_views(self, batch: dict[str, Tensor], generator: torch.Generator | None = None
                   ) -> tuple[Tensor, Tensor]:
        """Two augmented views of a batch: ((B, C, S, S), (B, C, S, S)) float32 on its device
        (C = :func:`~cardioclr.data.views.input_channels`: 4 in ``anatomy`` mode)."""
        return two_views(batch["image"], batch.get("heart"), self.hparams["input_mode"], self.augment,
                         generator)

    def contrastive_loss(self, x0: Tensor, x1: Tensor) -> Tensor:
        """NT-Xent of two views (B, 1, S, S) each; scalar.

        Both views go through the encoder as one batch of 2B: one kernel launch per layer, and
        batch-norm statistics over both views (as in SimCLR's reference implementation).
        """
        z = self.projector(self.encoder(as_channels_last(torch.cat([x0, x1]))))
        z0, z1 = z.chunk(2)
        return nt_xent(z0, z1, temperature=self.hparams["temperature"], gather=True)

    def forward(self, x: Tensor) -> Tensor:
        """Encoder features: (B, 1, S, S) -> (B, D)."""
        features: Tensor = self.encoder(x)
        return features

    # ---- Lightning hooks --------------------------------------------------------------------

    def on_fit_start(self) -> None:
        """Per-rank training generator: ranks draw different augmentations from one seed."""
        configure_backends(self.device)
        channels_last(self.encoder, self.device)
        self._train_gen = torch.Generator(device=self.device)
        self._train_gen.manual_seed(int(self.hparams["seed"]) * 1009 + self.global_rank + 1)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """One SimCLR step on a batch of slices; logs ``train/loss``."""
        x0, x1 = self.make_views(batch, self._train_gen)
        loss = self.contrastive_loss(x0, x1)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True,
                 batch_size=x0.shape[0], sync_dist=True)
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """Held-out loss on fixed views (same seed every epoch); logs ``val/loss``."""
        gen = torch.Generator(device=self.device)
        gen.manual_seed((int(self.hparams["seed"]) * 1_000_003 + batch_idx) * 1024 + self.global_rank)
        x0, x1 = self.make_views(batch, gen)
        loss = self.contrastive_loss(x0, x1)
        self.log(MONITOR, loss, on_step=False, on_epoch=True, prog_bar=True,
                 batch_size=x0.shape[0], sync_dist=True)
        return loss

    def configure_optimizers(self) -> OptimizerLRScheduler:
        """Adam (paper: lr 1e-4); with ``cosine``, linear warmup then cosine decay per step."""
        opt = torch.optim.Adam(self.parameters(), lr=self.hparams["lr"],
                               weight_decay=self.hparams["weight_decay"])
        if not self.hparams["cosine"]:
            return {"optimizer": opt}
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(self.hparams["warmup_fraction"] * total)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return 0.5 * (1.0 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
