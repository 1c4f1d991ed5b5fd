"""The trained segmentation network's encoder weights, for ``--init segmentation``.

Reads ``WORK/segmentation/model/model.pt`` (written by ``cardioclr segment train``; loaded by
:func:`cardioclr.segment.predict.load_model`, ``torch.load(weights_only=True)``) and returns
the state dict of its down path under the names of the ``segunet`` registry encoder
(:class:`cardioclr.models.segunet.SegUNetEncoder`). Only a network of the ``segunet``
architecture (the ``cpu`` preset's U-Net) fits; any other gives one clear error naming the file.
A network that takes context slices (2.5D, ``NetworkConfig.context_slices``) gives a one-slice
encoder: its input convolutions are summed over the context channels, which is exactly what it
computes for a volume that does not change from slice to slice. A network that takes the cardiac
phase (``NetworkConfig.phase_channel``) loses that channel's weights: the encoder computes what
the network computes for an end-diastolic slice (phase value 0), whatever frame it is given.

Leakage note for the study: the segmentation model is trained on the ``train`` patients'
expert masks only (never a diagnosis label, never a test patient), so initialising the
classifier from it uses nothing the classifier may not see.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cardioclr.errors import CardioclrError
from cardioclr.layout import WorkLayout
from cardioclr.models.segunet import SEGUNET_NETWORK, unet_down_path
from cardioclr.segment.model import input_channels, network_config_from_dict
from cardioclr.segment.predict import load_model


def default_segmentation_model(work: str | os.PathLike[str]) -> Path:
    """``WORK/segmentation/model/model.pt``: the model ``--init segmentation`` uses by default."""
    return WorkLayout(work).segmentation_model / "model.pt"


def load_segmentation_encoder(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``(state_dict, info)``: the ``segunet`` encoder weights of the segmentation model ``path``
    (a ``model.pt`` or the folder holding it) and primitives describing it (file, network,
    validation Dice, image size, spacing).

    Raises :class:`~cardioclr.errors.CardioclrError` naming the file when it is missing,
    unreadable, or a network of another architecture than ``segunet``.
    """
    loaded = load_model(path, torch.device("cpu"))
    network = dict(loaded.info.get("network") or {})
    want = dict(SEGUNET_NETWORK)
    got = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in network.items()}
    net_cfg = network_config_from_dict(network)
    channels_in = input_channels(net_cfg)
    image_channels = channels_in - int(net_cfg.phase_channel)
    if {k: got.get(k) for k in want} != want:
        diff = ", ".join(f"{k} {got.get(k)!r} (segunet: {v!r})" for k, v in want.items() if got.get(k) != v)
        raise CardioclrError(
            f"{loaded.path}: this segmentation network does not match the segunet encoder ({diff}); "
            "--init segmentation needs a model trained with `cardioclr segment train WORK --preset cpu` "
            "(or use another --init)")
    state: dict[str, Tensor] = {}
    for i, level in enumerate(unet_down_path(loaded.network)):  # type: ignore[arg-type]
        for key, value in level.state_dict().items():
            if i == 0 and channels_in > 1 and value.ndim == 4 and value.shape[1] == channels_in:
                # phase channel dropped, context channels -> one slice (module docstring)
                value = value[:, :image_channels].sum(dim=1, keepdim=True)
            state[f"down.{i}.{key}"] = value.detach().clone()
    info = {"segmentation_model": str(loaded.path), "segmentation_network": "unet 16-256 x2 res, instance",
            "segmentation_val_dice": loaded.info.get("best_val_dice"),
            "segmentation_image_size": loaded.info.get("image_size"),
            "segmentation_spacing_mm": loaded.info.get("spacing_mm")}
    return state, info
