"""Load ImageNet weights from a local torchvision state-dict file into a 1-channel encoder.

Weights are never downloaded: the user names a file, e.g. torchvision's ``vgg16-397923af.pth``
or ``densenet121-a639ec97.pth``, fetched once by hand on a machine with internet access.

Accepted file contents (read with ``torch.load(..., map_location="cpu", weights_only=True)``):

* a plain state dict ``{name: Tensor}`` as written by ``torch.save(model.state_dict(), f)``;
* a dict holding that state dict under ``"state_dict"`` or ``"model"``;
* in either case a leading ``"module."`` on every key (``DataParallel``/DDP saves) is removed.

The first convolution's ImageNet kernel has 3 input channels (RGB); MRI has one. torchvision's
ImageNet networks also expect each RGB channel normalised as ``(v - m_c) / s_c`` with
:data:`IMAGENET_MEAN` and :data:`IMAGENET_STD`, whereas cardioclr feeds intensities
percentile-normalised to about [0, 1] (:mod:`cardioclr.data.prepare`). Both differences are
folded into the weights, so neither the input pipeline nor the state-dict keys change. For a
grey image ``x`` replicated into R, G and B the RGB network computes, per output channel,

    sum_c w_c * (x - m_c) / s_c + b  =  (sum_c w_c / s_c) * x  -  sum_c (m_c / s_c) * sum(w_c)  +  b

so the one-channel kernel is ``sum_c w_c / s_c`` (:func:`adapt_first_conv`) and the constant
``-sum_c (m_c / s_c) * sum(w_c)`` (:func:`first_conv_offset`) is added to the convolution's
bias (VGG16) or, for a bias-free convolution followed directly by batch norm (ResNet
``conv1 -> bn1``, DenseNet ``conv0 -> norm0``), subtracted from that batch norm's
``running_mean`` (exact in eval mode; in training mode the batch statistics remove a constant
shift anyway). The equivalence is exact away from the image border; see
:func:`first_conv_offset` for the border.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from cardioclr.errors import DataError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageNetWeightsError",
    "adapt_first_conv",
    "densenet_key_from_torchvision",
    "first_conv_offset",
    "identity_key",
    "load_imagenet_weights",
    "read_state_dict",
]

# How many offending keys an error message lists: enough to see the pattern, short to read.
_N_KEYS_SHOWN = 5

# Per-channel (R, G, B) input normalisation the torchvision ImageNet weights were trained with:
# torchvision.transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]), as in
# the ``transforms`` of torchvision's ImageNet weight entries (e.g.
# ``VGG16_Weights.IMAGENET1K_V1``) and its ImageNet reference training scripts
# (references/classification/presets.py).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


class ImageNetWeightsError(DataError):
    """An ImageNet weight file is missing, unreadable, or does not fit the chosen encoder."""


def identity_key(key: str) -> str:
    """Key map for encoders whose parameter names already equal torchvision's (vgg16, resnet)."""
    return key


# torchvision >= 0.3 names: features.denseblock1.denselayer1.norm1.weight
_DENSE_MODERN = re.compile(
    r"^(.*denselayer\d+)\.((?:norm|relu|conv)[12]\."
    r"(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)
# The published torchvision .pth files predate that and use ...denselayer1.norm.1.weight
# (torchvision renames them on download; MONAI's own pretrained loader handles only this form).
_DENSE_LEGACY = re.compile(
    r"^(.*denselayer\d+)\.(norm|relu|conv)\.([12])\."
    r"(weight|bias|running_mean|running_var|num_batches_tracked)$"
)


def densenet_key_from_torchvision(key: str) -> str:
    """Map a torchvision DenseNet key to MONAI's ``DenseNet`` naming.

    MONAI wraps each dense layer's modules in a ``layers`` Sequential, so
    ``features.denseblock1.denselayer1.norm1.weight`` (torchvision) and the legacy
    ``features.denseblock1.denselayer1.norm.1.weight`` both become
    ``features.denseblock1.denselayer1.layers.norm1.weight``. Every other key (``conv0``,
    ``norm0``, ``transitionN.*``, ``norm5``) is named alike in both and passes unchanged.
    """
    m = _DENSE_MODERN.match(key)
    if m:
        return f"{m.group(1)}.layers.{m.group(2)}"
    m = _DENSE_LEGACY.match(key)
    if m:
        return f"{m.group(1)}.layers.{m.group(2)}{m.group(3)}.{m.group(4)}"
    return key


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a torchvision-format state dict from ``path`` (never downloads anything).

    Returns ``{key: Tensor}`` with any common ``"module."`` prefix removed.
    Raises :class:`ImageNetWeightsError` naming ``path`` when the file is missing or holds
    something other than a state dict.
    """
    p = Path(path)
    if not p.is_file():
        raise ImageNetWeightsError(
            p,
            "ImageNet weight file not found. Weights are never downloaded: fetch the torchvision "
            "state-dict file (e.g. vgg16-397923af.pth) yourself and pass its local path.",
        )
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling failure means "not a state dict"
        raise ImageNetWeightsError(
            p, f"cannot be read as a PyTorch state-dict file ({type(exc).__name__}: {exc})"
        ) from exc
    if isinstance(obj, Mapping):
        for wrapper_key in ("state_dict", "model"):
            inner = obj.get(wrapper_key)
            if isinstance(inner, Mapping):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj:
        raise ImageNetWeightsError(p, "does not contain a state dict (a dict of named tensors)")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise ImageNetWeightsError(
            p, f"is not a state dict: entries that are not named tensors: {bad[:_N_KEYS_SHOWN]}"
        )
    state: dict[str, Tensor] = dict(obj)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _check_rgb_kernel(weight: Tensor) -> None:
    if weight.ndim != 4 or weight.shape[1] != 3:
        raise ValueError(f"expected an RGB kernel (O, 3, kH, kW), got {tuple(weight.shape)}")


def _per_channel(values: tuple[float, float, float], like: Tensor) -> Tensor:
    """``values`` as a (1, 3, 1, 1) tensor matching ``like``'s dtype and device."""
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(1, 3, 1, 1)


def adapt_first_conv(weight: Tensor, in_channels: int) -> Tensor:
    """Convert an RGB ImageNet first-convolution kernel to ``in_channels`` [0, 1]-scaled inputs.

    The ImageNet kernel acts on ``(v - m_c) / s_c`` (:data:`IMAGENET_MEAN`,
    :data:`IMAGENET_STD`); the returned kernel acts on the raw values ``v``: each RGB kernel
    is first divided by its channel's std. The mean's constant term is not representable in
    the kernel; :func:`first_conv_offset` gives it, to be folded into a bias or batch norm.

    Args:
        weight: (O, 3, kH, kW) ImageNet kernel.
        in_channels: channels of the new input.

    Returns:
        (O, in_channels, kH, kW). For 1 channel, ``sum_c w_c / s_c``: a grey image ``x`` then
        gives the same pre-activation as the RGB network on the ImageNet-normalised
        ``(x, x, x)``, up to the constant of :func:`first_conv_offset`. For 3, ``w_c / s_c``
        per channel (the input's channels are taken as R, G, B). Otherwise ``sum_c w_c / s_c``
        divided by ``in_channels`` and repeated on every channel, which keeps the equivalence
        when all channels carry the same image.
    """
    _check_rgb_kernel(weight)
    scaled = weight / _per_channel(IMAGENET_STD, weight)
    if in_channels == 3:
        return scaled
    summed = scaled.sum(dim=1, keepdim=True)
    if in_channels == 1:
        return summed
    return (summed / in_channels).repeat(1, in_channels, 1, 1)


def first_conv_offset(weight: Tensor) -> Tensor:
    """Per-output-channel constant that ImageNet mean subtraction adds to the first convolution.

    With the kernel from :func:`adapt_first_conv`, the RGB network's pre-activation on the
    normalised input is ``conv(adapted, x) + offset`` (plus its bias, if any), where
    ``offset[o] = -sum_c (m_c / s_c) * sum_{kH, kW} w[o, c]``. The caller folds it into the
    convolution's bias, or subtracts it from the ``running_mean`` of a batch norm that directly
    follows a bias-free convolution.

    Exact only where the kernel window lies inside the image: the RGB network zero-pads the
    *normalised* input (padding = the ImageNet mean in raw terms), whereas the adapted one
    zero-pads the raw [0, 1] input (``-m_c / s_c`` in normalised terms), so outputs within the
    kernel radius of the border differ.

    Args:
        weight: (O, 3, kH, kW) ImageNet kernel (the original, not the adapted one).

    Returns:
        (O,) tensor, same dtype and device as ``weight``.
    """
    _check_rgb_kernel(weight)
    ratio = _per_channel(IMAGENET_MEAN, weight) / _per_channel(IMAGENET_STD, weight)
    return -(weight * ratio).sum(dim=(1, 2, 3))


def load_imagenet_weights(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    encoder_name: str,
    key_map: Callable[[str], str],
    first_conv_key: str,
    first_norm_key: str = "",
    ignore_prefixes: tuple[str, ...] = (),
) -> None:
    """Load a torchvision ImageNet state dict from ``path`` into ``model`` in place.

    Args:
        model: the encoder, with ``in_channels`` input channels on ``first_conv_key``.
        path: local torchvision state-dict file.
        encoder_name: registry name, used in error messages.
        key_map: torchvision key -> ``model`` key.
        first_conv_key: ``model`` key of the first convolution's weight. An RGB kernel there is
            converted with :func:`adapt_first_conv`, and the ImageNet mean's constant
            (:func:`first_conv_offset`) is added to that convolution's bias (``...bias`` next
            to ``first_conv_key``) when it has one, else folded into ``first_norm_key``.
        first_norm_key: ``model`` prefix of the batch norm that directly follows a bias-free
            first convolution (e.g. ``"bn1"``); its ``running_mean`` absorbs the constant.
            Unused when the first convolution has a bias.
        ignore_prefixes: torchvision keys to drop (classifier heads the encoder does not have).

    Raises:
        ImageNetWeightsError: the file is missing/unreadable, or its keys or shapes do not
            match the encoder (the message names the file and the first mismatched keys).
            Batch-norm ``num_batches_tracked`` counters may be absent (old torchvision files
            lack them); the model's own are then kept.
    """
    source = read_state_dict(path)
    target = model.state_dict()
    mapped: dict[str, Tensor] = {}
    for key, value in source.items():
        if key.startswith(ignore_prefixes):
            continue
        mapped[key_map(key)] = value

    conv = mapped.get(first_conv_key)
    want = target.get(first_conv_key)
    offset: Tensor | None = None
    if conv is not None and want is not None and conv.ndim == 4 and conv.shape[1] == 3:
        mapped[first_conv_key] = adapt_first_conv(conv, int(want.shape[1]))
        offset = first_conv_offset(conv)

    missing = [k for k in target if k not in mapped and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in mapped if k not in target]
    wrong_shape = [
        f"{k} (file {tuple(mapped[k].shape)} vs encoder {tuple(target[k].shape)})"
        for k in mapped
        if k in target and mapped[k].shape != target[k].shape
    ]
    if missing or unexpected or wrong_shape:
        parts = []
        for label, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", wrong_shape),
        ):
            if keys:
                more = f" and {len(keys) - _N_KEYS_SHOWN} more" if len(keys) > _N_KEYS_SHOWN else ""
                parts.append(f"{label} ({len(keys)}): {', '.join(keys[:_N_KEYS_SHOWN])}{more}")
        raise ImageNetWeightsError(
            Path(path),
            f"is not a torchvision ImageNet state dict for encoder '{encoder_name}': "
            + "; ".join(parts),
        )

    if offset is not None:
        # Keys and shapes are checked above, so the fold target below exists with shape (O,).
        # The fold is exact except within the kernel radius of the image border, where zero
        # padding of the raw input is not zero padding of the ImageNet-normalised one.
        conv_bias = first_conv_key.rsplit(".", 1)[0] + ".bias"
        if conv_bias in target:
            mapped[conv_bias] = mapped[conv_bias] + offset.to(mapped[conv_bias].dtype)
        elif first_norm_key and f"{first_norm_key}.running_mean" in target:
            # BN(z) uses z - running_mean; z is now short of the offset, so shift the mean too.
            mean_key = f"{first_norm_key}.running_mean"
            mapped[mean_key] = mapped[mean_key] - offset.to(mapped[mean_key].dtype)
        else:
            raise ValueError(
                f"encoder '{encoder_name}': first convolution {first_conv_key!r} has no bias and "
                f"no batch norm ({first_norm_key!r}) to fold the ImageNet mean into"
            )

    merged = dict(target)
    merged.update(mapped)
    model.load_state_dict(merged, strict=True)
