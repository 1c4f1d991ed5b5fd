"""SimCLR (Chen et al., ICML 2020) as a thin LightningModule: encoder + projection head + NT-Xent.

Nothing else is glued in (no online classifier): the module turns a batch of slices into two
augmented views on the device, embeds both, and minimises :func:`cardioclr.ssl.loss.nt_xent`.

Batches come from :class:`cardioclr.ssl.data.SliceDataset`: ``{"image": (B, S, S) float16,
"heart": (B, S, S) uint8 (segmented mode only)}``; B is the per-process batch. Under DDP the
loss gathers the projections of every process, so the negatives of each image are the other
2N - 2 views of the GLOBAL batch of N = B x world-size images.

Anatomy-aware positives (``positives`` other than ``augment``; :mod:`cardioclr.ssl.positives`):
batches then also carry each slice's row ``"index"``; every anchor draws a partner slice of
the same patient (:meth:`SimCLRModule.attach_pairs` gives the module the loaded slices), the
two views are the augmented anchor and the augmented partner, and the loss is
:func:`cardioclr.ssl.loss.multi_positive_nt_xent` with every related pair of the global batch
as positives and the patient's unrelated slices left out of the denominator.

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
from cardioclr.errors import CardioclrError
from cardioclr.models.encoders import build_encoder
from cardioclr.models.heads import ProjectionHead
from cardioclr.ssl.loss import gather_rows, multi_positive_nt_xent, nt_xent
from cardioclr.ssl.positives import PositivePairs, PositiveSpec, related, same_patient

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
        positives: ``augment`` (the paper) or an anatomy-aware set
            (:data:`cardioclr.choices.POSITIVES`); neighbour_bound: its relative-position bound.
    """

    def __init__(self, encoder: str, input_mode: str = "full", image_size: int = 96, lr: float = 1e-4,
                 temperature: float = 0.1, cosine: bool = False, warmup_fraction: float = 0.05,
                 weight_decay: float = 0.0, augment: dict[str, Any] | None = None,
                 imagenet_weights: str | None = None, seed: int = 0, proj_hidden: int = 512,
                 proj_out: int = 128, positives: str = "augment", neighbour_bound: float = 0.25,
                 ) -> None:
        super().__init__()
        check_mode(input_mode)
        self.save_hyperparameters()
        self.encoder, self.feature_dim = build_encoder(encoder, in_channels=input_channels(input_mode),
                                                       imagenet_weights=imagenet_weights)
        self.projector = ProjectionHead(self.feature_dim, proj_hidden, proj_out)
        self.augment = AugmentConfig.from_dict(augment) if augment else AugmentConfig()
        self._train_gen: torch.Generator | None = None
        self.positive_spec = PositiveSpec(positives, neighbour_bound)
        # The loaded slices partners are drawn from (not parameters: never in a checkpoint).
        self._pairs: dict[str, PositivePairs] = {}

    def attach_pairs(self, train: PositivePairs, val: PositivePairs) -> None:
        """The train and held-out slices (with partner tables) anatomy-aware positives need."""
        self._pairs = {"train": train, "val": val}

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

    def anatomy_loss(self, batch: dict[str, Tensor], part: str, generator: torch.Generator | None
                     ) -> Tensor:
        """Multi-positive NT-Xent of anchors and drawn partners; scalar.

        ``batch["index"]`` (B,) are the anchors' rows in the ``part`` ("train"/"val") slices.
        Views: (2B, C, S, S) = augmented anchors, then their augmented partners.
        """
        pairs = self._pairs.get(part)
        if pairs is None or "index" not in batch:
            raise CardioclrError(f"positives {self.positive_spec.name!r} need the loaded slices "
                                 "(attach_pairs) and batches with their row index")
        index = batch["index"].to(pairs.images.device)
        image2, heart2, rows2 = pairs.partners(index, generator)
        device = batch["image"].device
        images = torch.cat([batch["image"], image2.to(device)])
        hearts = batch.get("heart")
        if hearts is not None and heart2 is not None:
            hearts = torch.cat([hearts, heart2.to(device)])
        # two_views (not augment_batch) so every input mode builds its views in one place, e.g.
        # extra mask channels; of the 2 x 2B views drawn, anchor view 0 and partner view 1 are
        # used (augmentation costs a few % of a step: the extra 2B views are cheaper than a
        # second code path).
        first, second = two_views(images, hearts, self.hparams["input_mode"], self.augment, generator)
        b = index.shape[0]
        views = torch.cat([first[:b], second[b:]])
        z = self.projector(self.encoder(as_channels_last(views)))
        meta = torch.cat([pairs.meta[index], pairs.meta[rows2]]).to(device)
        columns = gather_rows(meta)  # every process's views, rank-major, as in the loss
        return multi_positive_nt_xent(z, related(meta, columns, self.positive_spec),
                                      excluded=same_patient(meta, columns),
                                      temperature=self.hparams["temperature"], gather=True)

    def _step_loss(self, batch: dict[str, Tensor], part: str, generator: torch.Generator | None
                   ) -> Tensor:
        """The contrastive loss of one batch under the chosen positives."""
        if self.positive_spec.anatomical:
            return self.anatomy_loss(batch, part, generator)
        x0, x1 = self.make_views(batch, generator)
        return self.contrastive_loss(x0, x1)

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
        for pairs in self._pairs.values():
            pairs.to(self.device)  # partners are drawn with generators on this device

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """One SimCLR step on a batch of slices; logs ``train/loss``."""
        loss = self._step_loss(batch, "train", self._train_gen)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True,
                 batch_size=batch["image"].shape[0], sync_dist=True)
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """Held-out loss on fixed views (same seed every epoch); logs ``val/loss``."""
        gen = torch.Generator(device=self.device)
        gen.manual_seed((int(self.hparams["seed"]) * 1_000_003 + batch_idx) * 1024 + self.global_rank)
        loss = self._step_loss(batch, "val", gen)
        self.log(MONITOR, loss, on_step=False, on_epoch=True, prog_bar=True,
                 batch_size=batch["image"].shape[0], sync_dist=True)
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
