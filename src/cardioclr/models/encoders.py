"""Image encoders: an explicit registry of backbones mapping (B, C, H, W) images to (B, D) features.

Every encoder ends in global average pooling over the last feature map, so it accepts any
input size large enough for its down-sampling (32x for all but ``smallcnn``, 16x). Inputs are
float tensors of intensities percentile-normalised to about [0, 1] (:mod:`cardioclr.data.prepare`);
outputs are float features of width ``D``.

==============  ======  ====================================================================
name            D       what
==============  ======  ====================================================================
``vgg16``       512     the paper's; torchvision ``vgg16`` conv layers at the same indices
``densenet121`` 1024    the paper's; MONAI ``DenseNet121`` feature part
``resnet18``    512     MONAI ``ResNet`` configured to match torchvision's ``resnet18``
``resnet50``    2048    MONAI ``ResNet`` configured to match torchvision's ``resnet50``
``smallcnn``    256     small 5-block CNN for practical CPU runs (no ImageNet weights)
``segunet``     256     the segmentation U-Net's down path (:mod:`cardioclr.models.segunet`),
                        for ``--init segmentation`` (no ImageNet weights)
==============  ======  ====================================================================

ImageNet weights come only from a local torchvision state-dict file (see
:mod:`cardioclr.models.imagenet`); nothing is downloaded. ImageNet's RGB input normalisation is
folded into the first convolution (and its bias or following batch norm) when loading, so the
same [0, 1] inputs serve randomly and ImageNet-initialised encoders.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import cast

import torch
from monai.networks.nets import DenseNet121, ResNet
from monai.networks.nets.densenet import _DenseBlock
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from cardioclr.models.imagenet import (
    ImageNetWeightsError,
    densenet_key_from_torchvision,
    identity_key,
    load_imagenet_weights,
)
from cardioclr.models.segunet import SegUNetEncoder

__all__ = [
    "ENCODERS",
    "DenseNetEncoder",
    "EncoderSpec",
    "SmallCNN",
    "VGG16Encoder",
    "build_encoder",
    "encoder_names",
    "load_widened",
    "widen_input_channels",
]


# --------------------------------------------------------------------------------------------
# VGG16
# --------------------------------------------------------------------------------------------

# torchvision's configuration "D": conv widths, "M" = 2x2 max-pool. Building ``features`` from
# it in the same order puts each conv at torchvision's index (0, 2, 5, 7, 10, ..., 28).
_VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip


class VGG16Encoder(nn.Module):
    """VGG16 convolutional part (no batch norm) + global average pooling.

    Parameter names equal torchvision's ``vgg16`` (``features.0.weight`` ... ``features.28.bias``)
    so its ImageNet state dict loads directly; torchvision's ``avgpool`` (7x7) and ``classifier``
    MLP are replaced by a 1x1 adaptive average pool.

    Input (B, C, H, W) with H, W >= 32; output (B, 512).
    """

    feature_dim = 512

    def __init__(self, in_channels: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in _VGG16_CFG:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                assert isinstance(item, int)
                layers.append(nn.Conv2d(channels, item, kernel_size=3, padding=1))
                layers.append(nn.ReLU(inplace=True))
                channels = item
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # torchvision's initialisation for VGG, so training from scratch behaves alike.
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                assert m.bias is not None  # every conv here is built with a bias
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, 512)."""
        return torch.flatten(self.pool(self.features(x)), 1)


# --------------------------------------------------------------------------------------------
# DenseNet121 (MONAI)
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _frozen_bn_stats(module: nn.Module) -> Iterator[None]:
    """Keep batch-norm running statistics unchanged while ``module`` re-runs its forward.

    Gradient checkpointing recomputes the forward pass during backward; in training mode that
    would update every running mean/var a second time (an effective momentum of ~0.19 instead
    of 0.1). Momentum 0 makes the update a no-op; the batch counter is restored afterwards.
    """
    saved: list[tuple[nn.modules.batchnorm._BatchNorm, float | None, Tensor | None]] = []
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            count = None if m.num_batches_tracked is None else m.num_batches_tracked.clone()
            saved.append((m, m.momentum, count))
            m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum, count in saved:
            m.momentum = momentum
            if count is not None and m.num_batches_tracked is not None:
                m.num_batches_tracked.copy_(count)


def _checkpoint_contexts(
    module: nn.Module,
) -> tuple[contextlib.AbstractContextManager[None], contextlib.AbstractContextManager[None]]:
    """Contexts for ``checkpoint``: none for the forward, frozen BN stats for the recompute."""
    return contextlib.nullcontext(), _frozen_bn_stats(module)


def _dense_layer_fn(layers: nn.Module) -> Callable[..., Tensor]:
    """The part of one MONAI dense layer worth recomputing: concatenate, then BN-ReLU-conv x2."""

    def run(*feats: Tensor) -> Tensor:
        out: Tensor = layers(torch.cat(feats, dim=1))
        return out

    return run


class DenseNetEncoder(nn.Module):
    """MONAI ``DenseNet121`` feature part + ReLU + global average pooling (as torchvision does).

    Keys are MONAI's (``features.denseblock1.denselayer1.layers.norm1.weight``); ImageNet files
    with torchvision names are mapped by :func:`densenet_key_from_torchvision`.

    ``memory_efficient``: MONAI's dense layer stores the growing concatenation of all previous
    feature maps at every layer (memory quadratic in depth). With this flag each dense block
    keeps the per-layer outputs in a list and each layer runs under gradient checkpointing, so
    only those (linear) outputs are kept and the concatenation/bottleneck is recomputed during
    backward — the idea of torchvision's ``memory_efficient`` option, which MONAI lacks. Costs
    roughly one extra forward pass of the dense layers; results equal the plain forward (batch
    norm statistics are updated once, see :func:`_frozen_bn_stats`). Measured on CPU, batch 16
    at 96 px, forward + backward: peak memory 342 MiB -> 165 MiB.

    Input (B, C, H, W) with H, W >= 32; output (B, 1024).
    """

    feature_dim = 1024

    def __init__(self, in_channels: int = 1, memory_efficient: bool = False) -> None:
        super().__init__()
        net = DenseNet121(spatial_dims=2, in_channels=in_channels, out_channels=1)
        # Only the convolutional part is kept; MONAI's class_layers (ReLU, pool, Linear) is
        # replaced below so no unused classifier parameters linger in the state dict.
        self.features = net.features
        self.memory_efficient = memory_efficient

    def _checkpointed_block(self, block: _DenseBlock, x: Tensor) -> Tensor:
        feats = [x]
        for layer in block.children():
            new = checkpoint(
                _dense_layer_fn(cast(nn.Module, layer.layers)),
                *feats,
                use_reentrant=False,
                # called afresh for each (re)computation: plain forward, frozen-stats recompute
                context_fn=functools.partial(_checkpoint_contexts, cast(nn.Module, layer.layers)),
            )
            feats.append(new)
        return torch.cat(feats, dim=1)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, 1024)."""
        if self.memory_efficient and torch.is_grad_enabled():
            for module in self.features.children():
                if isinstance(module, _DenseBlock):
                    x = self._checkpointed_block(module, x)
                else:
                    x = module(x)
        else:
            x = self.features(x)
        x = torch.relu(x)
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)


# --------------------------------------------------------------------------------------------
# ResNet (MONAI)
# --------------------------------------------------------------------------------------------


def _monai_resnet(block: str, layers: list[int], in_channels: int) -> ResNet:
    """MONAI ``ResNet`` set up to equal torchvision's architecture and parameter names.

    MONAI's defaults differ from torchvision in two places: the stem convolution has stride 1
    (torchvision: 2) and the 1x1 downsampling convolutions have a bias (torchvision: none).
    With those fixed, every key (``conv1``, ``bn1``, ``layerN.M.convK``, ``layerN.0.downsample.
    {0,1}``) matches torchvision, and ``fc`` is absent (``feed_forward=False``); the forward
    already ends in global average pooling + flatten, returning (B, D).
    """
    return ResNet(
        block=block,
        layers=layers,
        block_inplanes=[64, 128, 256, 512],
        spatial_dims=2,
        n_input_channels=in_channels,
        conv1_t_size=7,
        conv1_t_stride=2,
        shortcut_type="B",
        bias_downsample=False,
        feed_forward=False,
    )


# --------------------------------------------------------------------------------------------
# SmallCNN
# --------------------------------------------------------------------------------------------


class SmallCNN(nn.Module):
    """A small, fast CNN for CPU experiments: 5 conv-BN-ReLU blocks + global average pooling.

    Channels 32 -> 64 -> 128 -> 256 -> 256; the first four blocks have stride 2 (16x down-
    sampling, 96 px -> 6 px), the last refines at that resolution. About 1.0 M parameters;
    ``widths`` changes the channel counts (D = ``widths[-1]``).

    Input (B, C, H, W) with H, W >= 16; output (B, 256).
    """

    feature_dim = 256

    def __init__(
        self, in_channels: int = 1, widths: tuple[int, ...] = (32, 64, 128, 256, 256)
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for i, width in enumerate(widths):
            stride = 2 if i < 4 else 1
            layers += [
                # bias is redundant before batch norm
                nn.Conv2d(channels, width, kernel_size=3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            channels = width
        self.features = nn.Sequential(*layers)
        self.feature_dim = channels
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, 256)."""
        pooled: Tensor = self.features(x).mean(dim=(2, 3))
        return pooled


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EncoderSpec:
    """One registry entry.

    ``build(in_channels, memory_efficient)`` returns the encoder module; ``feature_dim`` is the
    width D of its (B, D) output. ``imagenet_key_map`` maps torchvision state-dict keys to the
    module's (``None``: no ImageNet weights exist); ``imagenet_ignore`` are torchvision key
    prefixes to drop (classifier heads); ``first_conv_key`` names the RGB kernel to convert;
    ``first_norm_key`` is the batch norm directly after that convolution when it has no bias
    (its ``running_mean`` absorbs the ImageNet mean, see
    :func:`cardioclr.models.imagenet.load_imagenet_weights`).
    """

    name: str
    feature_dim: int
    build: Callable[[int, bool], nn.Module]
    description: str
    in_paper: bool = False
    imagenet_key_map: Callable[[str], str] | None = None
    imagenet_ignore: tuple[str, ...] = field(default=())
    first_conv_key: str = ""
    first_norm_key: str = ""


ENCODERS: dict[str, EncoderSpec] = {
    "vgg16": EncoderSpec(
        name="vgg16",
        feature_dim=512,
        build=lambda c, _me: VGG16Encoder(c),
        description="VGG16 conv layers (torchvision names) + GAP; the paper's encoder",
        in_paper=True,
        imagenet_key_map=identity_key,
        imagenet_ignore=("classifier.",),
        first_conv_key="features.0.weight",
    ),
    "densenet121": EncoderSpec(
        name="densenet121",
        feature_dim=1024,
        build=lambda c, me: DenseNetEncoder(c, memory_efficient=me),
        description="MONAI DenseNet121 features + ReLU + GAP; the paper's encoder",
        in_paper=True,
        imagenet_key_map=densenet_key_from_torchvision,
        imagenet_ignore=("classifier.",),
        first_conv_key="features.conv0.weight",
        first_norm_key="features.norm0",
    ),
    "resnet18": EncoderSpec(
        name="resnet18",
        feature_dim=512,
        build=lambda c, _me: _monai_resnet("basic", [2, 2, 2, 2], c),
        description="MONAI ResNet-18 (torchvision layout and names) + GAP",
        imagenet_key_map=identity_key,
        imagenet_ignore=("fc.",),
        first_conv_key="conv1.weight",
        first_norm_key="bn1",
    ),
    "resnet50": EncoderSpec(
        name="resnet50",
        feature_dim=2048,
        build=lambda c, _me: _monai_resnet("bottleneck", [3, 4, 6, 3], c),
        description="MONAI ResNet-50 (torchvision layout and names) + GAP",
        imagenet_key_map=identity_key,
        imagenet_ignore=("fc.",),
        first_conv_key="conv1.weight",
        first_norm_key="bn1",
    ),
    "smallcnn": EncoderSpec(
        name="smallcnn",
        feature_dim=256,
        build=lambda c, _me: SmallCNN(c),
        description="small 5-block CNN for CPU runs; no ImageNet weights",
    ),
    "segunet": EncoderSpec(
        name="segunet",
        feature_dim=256,
        build=lambda c, _me: SegUNetEncoder(c),
        description="down path of the segmentation U-Net (cpu preset) + GAP; for --init segmentation",
    ),
}


def widen_input_channels(state: dict[str, Tensor], target: dict[str, Tensor]) -> dict[str, Tensor]:
    """``state`` of a 1-channel encoder made to fit ``target``, the same encoder for C channels.

    Every 4-D kernel that reads the input has shape (O, 1, kH, kW) in ``state`` and
    (O, C, kH, kW) in ``target`` (the first convolution; MONAI residual units also have a
    strided shortcut convolution on the input). Channel 0 keeps the trained kernel, the extra
    channels (the ``anatomy`` structure masks) get zero weights. Why zero, not the mean of
    the RGB kernels nor a copy: with zero weights the widened encoder computes, at the start
    of fine-tuning, exactly what the pretrained one computed from the image, so the pretrained
    features are not disturbed by 0/1 mask planes whose intensity statistics are unlike any
    image the kernels were trained on; the mask weights still receive gradients (their
    inputs are non-zero) and are learned from there. Other entries are returned unchanged;
    shape mismatches left over are reported by ``load_state_dict``.
    """
    out = dict(state)
    for key, value in state.items():
        want = target.get(key)
        if (want is not None and value.ndim == 4 and want.ndim == 4 and value.shape[1] == 1
                and want.shape[1] > 1 and value.shape[0] == want.shape[0]
                and value.shape[2:] == want.shape[2:]):
            wide = torch.zeros_like(want, dtype=value.dtype)
            wide[:, :1] = value
            out[key] = wide
    return out


def load_widened(module: nn.Module, state: dict[str, Tensor]) -> None:
    """``module.load_state_dict(state, strict=True)`` after :func:`widen_input_channels`."""
    module.load_state_dict(widen_input_channels(state, module.state_dict()), strict=True)


def encoder_names() -> list[str]:
    """Registry names in a stable order (for CLI choices and messages)."""
    return list(ENCODERS)


def build_encoder(
    name: str,
    in_channels: int = 1,
    imagenet_weights: str | os.PathLike[str] | None = None,
    *,
    memory_efficient: bool = False,
) -> tuple[nn.Module, int]:
    """Build encoder ``name`` for ``in_channels``-channel images.

    Args:
        name: a key of :data:`ENCODERS`.
        in_channels: input channels C (1 for cine MRI).
        imagenet_weights: optional local torchvision ImageNet state-dict file; the first
            convolution's RGB kernel is divided by ImageNet's per-channel std and summed to one
            channel, and the mean's constant folded into its bias or batch norm (see
            :mod:`cardioclr.models.imagenet`). Never downloaded.
        memory_efficient: trade compute for activation memory where the architecture has a
            cheap way to (currently ``densenet121``: checkpointed dense layers); ignored
            elsewhere.

    Returns:
        ``(module, D)``: ``module`` maps (B, C, H, W) float -> (B, D) features.

    Raises:
        ValueError: unknown ``name`` (the message lists the choices) or ``in_channels < 1``.
        cardioclr.models.imagenet.ImageNetWeightsError: missing/mismatched weight file, or
            ImageNet weights asked for an encoder that has none.
    """
    spec = ENCODERS.get(name)
    if spec is None:
        raise ValueError(f"unknown encoder {name!r}; choose one of: {', '.join(encoder_names())}")
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    model = spec.build(in_channels, memory_efficient)
    if imagenet_weights is not None:
        if spec.imagenet_key_map is None:
            raise ImageNetWeightsError(
                imagenet_weights,
                f"encoder '{name}' has no ImageNet weights (it is not an ImageNet architecture); "
                "train it from scratch or pick one of: "
                + ", ".join(n for n, s in ENCODERS.items() if s.imagenet_key_map is not None),
            )
        load_imagenet_weights(
            model,
            imagenet_weights,
            encoder_name=name,
            key_map=spec.imagenet_key_map,
            first_conv_key=spec.first_conv_key,
            first_norm_key=spec.first_norm_key,
            ignore_prefixes=spec.imagenet_ignore,
        )
    return model, spec.feature_dim
