"""The segmentation network's encoder as a classifier backbone (``segunet`` in the registry).

Issue 11 item 4: the anatomic prior as a *representation*. The classifier's encoder is the
down path of the segmentation stage's MONAI ``UNet`` (the ``cpu`` preset of
:mod:`cardioclr.segment.train`: channels 16-32-64-128-256, strides 2, two residual sub-units
per level, affine instance norm, PReLU), so the trained segmentation weights load into it
exactly, key by key, with nothing re-initialised but the classifier head. Why an architecture of
its own rather than loading the U-Net weights into ``smallcnn`` or ``resnet18``: their layers
have other shapes, so nothing but a distillation could carry the segmentation knowledge over.

The module is built by asking MONAI for that very ``UNet`` and keeping its down path
(:func:`unet_down_path`), so its layers are the segmentation network's, not a copy that could
drift. Output: global average pooling of the bottom level, (B, 256), after 16x down-sampling.
Loading a segmentation ``model.pt`` into it is :func:`cardioclr.segment.encoder.load_segmentation_encoder`.
"""

from __future__ import annotations

from typing import Any

from monai.networks.layers.simplelayers import SkipConnection
from monai.networks.nets import UNet
from torch import Tensor, nn

#: The segmentation network the encoder equals (``cpu`` preset of :mod:`cardioclr.segment.train`),
#: in :class:`cardioclr.segment.model.NetworkConfig` terms. A test checks they agree.
SEGUNET_NETWORK: dict[str, Any] = {"arch": "unet", "channels": [16, 32, 64, 128, 256],
                                   "num_res_units": 2, "norm": "instance", "dropout": 0.0,
                                   "deep_supervision": 0}
N_SEG_LABELS = 4  # background, RV, MYO, LV: the output layer is dropped, but UNet needs it


def build_segmentation_unet(in_channels: int = 1) -> UNet:
    """The MONAI ``UNet`` of :data:`SEGUNET_NETWORK` (what :func:`cardioclr.segment.model.build_network`
    builds for it), with ``in_channels`` inputs."""
    channels = tuple(SEGUNET_NETWORK["channels"])
    return UNet(spatial_dims=2, in_channels=in_channels, out_channels=N_SEG_LABELS, channels=channels,
                strides=(2,) * (len(channels) - 1), num_res_units=SEGUNET_NETWORK["num_res_units"],
                norm=("instance", {"affine": True}), dropout=SEGUNET_NETWORK["dropout"])


def unet_down_path(net: UNet) -> list[nn.Module]:
    """The encoder levels of a MONAI ``UNet``, top to bottom: ``[down_0, ..., down_{n-2}, bottom]``.

    MONAI nests each level as ``Sequential(down, SkipConnection(<deeper levels>), up)``; the
    innermost ``SkipConnection`` holds the bottom layer.
    """
    levels: list[nn.Module] = []
    node: nn.Module = net.model
    while isinstance(node, nn.Sequential) and len(node) == 3 and isinstance(node[1], SkipConnection):
        levels.append(node[0])
        node = node[1].submodule
    levels.append(node)
    return levels


class SegUNetEncoder(nn.Module):
    """Down path of the segmentation U-Net + global average pooling.

    ``down.0`` ... ``down.4`` are the U-Net's levels (``down.4`` the bottom, stride 1).
    Input (B, C, H, W) with H, W >= 16; output (B, 256).
    """

    feature_dim = 256

    def __init__(self, in_channels: int = 1) -> None:
        super().__init__()
        self.down = nn.Sequential(*unet_down_path(build_segmentation_unet(in_channels)))
        self.feature_dim = int(SEGUNET_NETWORK["channels"][-1])

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, 256)."""
        pooled: Tensor = self.down(x).mean(dim=(2, 3))
        return pooled
