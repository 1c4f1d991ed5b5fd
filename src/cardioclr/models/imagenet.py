"""Load ImageNet weights from a local torchvision state-dict file into a 1-channel encoder.

Weights are never downloaded: the user names a file, e.g. torchvision's ``vgg16-397923af.pth``
or ``densenet121-a639ec97.pth``, fetched once by hand on a machine with internet access.

Accepted file contents (read with ``torch.load(..., map_location="cpu", weights_only=True)``):

* a plain state dict ``{name: Tensor}`` as written by ``torch.save(model.state_dict(), f)``;
* a dict holding that state dict under ``"state_dict"`` or ``"model"``;
* in either case a leading ``"module."`` on every key (``DataParallel``/DDP saves) is removed.

The first convolution's ImageNet kernel has 3 input channels (RGB); MRI has one. We sum the
RGB kernels over the input-channel axis, which gives exactly the response the RGB network has
to a grey image replicated into R, G and B (see :func:`adapt_first_conv`).
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
    "ImageNetWeightsError",
    "adapt_first_conv",
    "densenet_key_from_torchvision",
    "identity_key",
    "load_imagenet_weights",
    "read_state_dict",
]

# How many offending keys an error message lists: enough to see the pattern, short to read.
_N_KEYS_SHOWN = 5


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


def adapt_first_conv(weight: Tensor, in_channels: int) -> Tensor:
    """Convert an RGB first-convolution kernel to ``in_channels`` input channels.

    Args:
        weight: (O, 3, kH, kW) ImageNet kernel.
        in_channels: channels of the new input.

    Returns:
        (O, in_channels, kH, kW). For 1 channel, the sum over R, G, B: a grey image ``x``
        then gives the same pre-activation as the RGB network on ``(x, x, x)``. For 3, the
        kernel unchanged. Otherwise the summed kernel divided by ``in_channels`` and repeated
        on every channel, which keeps that equivalence when all channels carry the same image.
    """
    if weight.ndim != 4 or weight.shape[1] != 3:
        raise ValueError(f"expected an RGB kernel (O, 3, kH, kW), got {tuple(weight.shape)}")
    if in_channels == 3:
        return weight.clone()
    summed = weight.sum(dim=1, keepdim=True)
    if in_channels == 1:
        return summed
    return (summed / in_channels).repeat(1, in_channels, 1, 1)


def load_imagenet_weights(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    encoder_name: str,
    key_map: Callable[[str], str],
    first_conv_key: str,
    ignore_prefixes: tuple[str, ...] = (),
) -> None:
    """Load a torchvision ImageNet state dict from ``path`` into ``model`` in place.

    Args:
        model: the encoder, with ``in_channels`` input channels on ``first_conv_key``.
        path: local torchvision state-dict file.
        encoder_name: registry name, used in error messages.
        key_map: torchvision key -> ``model`` key.
        first_conv_key: ``model`` key of the first convolution's weight (RGB kernels there are
            converted with :func:`adapt_first_conv`).
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
    if (
        conv is not None
        and want is not None
        and conv.ndim == 4
        and conv.shape[1] == 3
        and want.shape[1] != 3
    ):
        mapped[first_conv_key] = adapt_first_conv(conv, int(want.shape[1]))

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

    merged = dict(target)
    merged.update(mapped)
    model.load_state_dict(merged, strict=True)
