"""Multi-task fine-tuning: diagnosis plus an auxiliary heart segmentation on the same encoder.

Issue 11 item 5 (in the spirit of Snaauw et al. 2019, images-only ACDC diagnosis with an
auxiliary segmentation task). :class:`MultiTaskClassifier` is the dual-phase classifier plus a
light segmentation decoder (:class:`SegmentationHead`) that reads each encoder's last spatial
feature map (the layer Grad-CAM explains, :func:`cardioclr.evaluate.saliency.target_layer`,
caught with a forward hook, so every registry encoder works without a decoder of its own).
Training minimises ``cross-entropy(diagnosis) + aux_seg_weight * mean over ED, ES of
cross-entropy(LV, MYO, RV, background)``.

Targets: the LV, MYO and RV masks of the run's mask source (``--masks``), loaded into the
slice bank (:attr:`cardioclr.classify.data.SliceBank.structures`) and warped with the image by
the same augmentation. Only training batches use them, and training batches hold only the
training patients of the run (CV fold-train or the ``train`` split): a test patient's mask is
never a target. With ``predicted`` masks, the train patients' masks come from a segmentation
model trained on those patients' expert masks (not their diagnosis labels).

Why a light decoder (conv 3x3 - batch norm - ReLU - conv 1x1 - bilinear upsampling, FCN
style) and not the U-Net decoder: it needs no skip connections, so it fits every registry
encoder, and its few parameters (~0.15 M for D = 256) force the segmentation knowledge into
the shared encoder, which is the point of the auxiliary task. The head only trains: the saved
classifier (:func:`as_classifier`) is the plain dual-phase model, so ``cardioclr predict`` and
saliency are unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cardioclr.classify.model import DualPhaseClassifier
from cardioclr.data.views import ANATOMY_STRUCTURES
from cardioclr.evaluate.saliency import target_layer

#: Segmentation classes of the auxiliary head: background, then :data:`ANATOMY_STRUCTURES`.
N_AUX_CLASSES = 1 + len(ANATOMY_STRUCTURES)


class SegmentationHead(nn.Module):
    """(B, D, h, w) encoder feature map -> (B, 4, H, W) logits [background, LV, MYO, RV]."""

    def __init__(self, in_dim: int, hidden: int = 64, n_classes: int = N_AUX_CLASSES) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(in_dim, hidden, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, n_classes, kernel_size=1),
        )

    def forward(self, fmap: Tensor, size: tuple[int, int]) -> Tensor:
        """Logits upsampled (bilinear) to ``size`` = (H, W)."""
        return F.interpolate(self.block(fmap), size=size, mode="bilinear", align_corners=False)


class MultiTaskClassifier(DualPhaseClassifier):
    """:class:`DualPhaseClassifier` + :class:`SegmentationHead` (one head for both phases).

    After :meth:`features` (or ``forward``), :meth:`segmentation_logits` gives the ED and ES
    segmentation logits (B, 4, H, W) from the feature maps of that same pass.
    """

    def __init__(self, encoder_name: str, n_classes: int, shared_encoder: bool = False,
                 freeze_encoders: bool = False, dropout: float = 0.0, in_channels: int = 1,
                 aux_seg_weight: float = 0.5, image_size: int = 64) -> None:
        super().__init__(encoder_name, n_classes, shared_encoder, freeze_encoders, dropout, in_channels)
        if aux_seg_weight <= 0:
            raise ValueError(f"aux_seg_weight must be > 0, got {aux_seg_weight}")
        self.aux_seg_weight = aux_seg_weight
        self.seg_head = SegmentationHead(self.feature_dim)
        self._maps: list[Tensor] = []
        for enc in self.encoders():
            name = target_layer(enc, self.feature_dim, image_size, in_channels)
            dict(enc.named_modules())[name].register_forward_hook(self._keep_map)

    def _keep_map(self, _module: nn.Module, _inputs: Any, output: Tensor) -> None:
        self._maps.append(output)

    def features(self, ed: Tensor, es: Tensor) -> Tensor:
        """As :meth:`DualPhaseClassifier.features`; keeps the pass's feature maps."""
        self._maps = []
        return super().features(ed, es)

    def segmentation_logits(self, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """ED and ES logits (B, 4, H, W) of the last :meth:`features` pass."""
        if len(self._maps) == 1:  # shared encoder: one pass over [ED; ES]
            both = self._maps[0]
            b = both.shape[0] // 2
            ed_map, es_map = both[:b], both[b:]
        else:
            ed_map, es_map = self._maps[-2], self._maps[-1]
        return self.seg_head(ed_map, size), self.seg_head(es_map, size)

    def auxiliary_loss(self, structures: Tensor) -> Tensor:
        """Mean over ED and ES of the segmentation cross-entropy against ``structures``
        (B, 6, H, W) 0/1 = [ED LV, MYO, RV, ES LV, MYO, RV] (warped with the inputs)."""
        k = len(ANATOMY_STRUCTURES)
        size = (int(structures.shape[-2]), int(structures.shape[-1]))
        logits = self.segmentation_logits(size)
        losses = []
        for phase, lg in enumerate(logits):
            masks = structures[:, phase * k:(phase + 1) * k] > 0.5
            # Structures are disjoint: label = 1 + index of the structure, 0 for background.
            target = (masks.long() * torch.arange(1, k + 1, device=masks.device).view(1, k, 1, 1)).amax(1)
            losses.append(F.cross_entropy(lg.float(), target))
        return (losses[0] + losses[1]) / 2


def as_classifier(model: DualPhaseClassifier) -> DualPhaseClassifier:
    """The plain dual-phase classifier of a (multi-task) model: same weights, no auxiliary head."""
    if not isinstance(model, MultiTaskClassifier):
        return model
    plain = DualPhaseClassifier(model.encoder_name, model.head.fc.out_features, model.shared_encoder,
                                model.freeze_encoders, in_channels=model.in_channels)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("seg_head.")}
    plain.load_state_dict(state, strict=True)
    return plain.train(model.training)
