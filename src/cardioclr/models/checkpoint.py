"""The pretrained-encoder file written by ``cardioclr pretrain`` and read by fine-tuning.

``OUT/encoder.pt`` is a dict saved with ``torch.save`` holding only tensors and primitives,
so ``torch.load(path, map_location="cpu", weights_only=True)`` reads it::

    {"format": "cardioclr-encoder-v1",
     "encoder": "vgg16",            # a key of cardioclr.models.encoders.ENCODERS
     "feature_dim": 512,            # D of the encoder's (B, D) output
     "input_mode": "segmented",     # full | segmented | roi: what the encoder was trained on
     "image_size": 96,              # input side in pixels during pretraining
     "state_dict": {...},           # encoder.state_dict() (no projection head)
     ...}                           # optional primitives (mask source, margins, epochs)

Typical use in the fine-tuning stage::

    encoder, dim = build_encoder("vgg16")
    encoder.load_state_dict(load_encoder_weights(path, "vgg16"), strict=True)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cardioclr.atomic import atomic_path
from cardioclr.errors import DataError

ENCODER_FORMAT = "cardioclr-encoder-v1"
_REQUIRED = ("format", "encoder", "feature_dim", "input_mode", "image_size", "state_dict")
_PRIMITIVES = (str, int, float, bool, type(None))

__all__ = ["ENCODER_FORMAT", "load_encoder_weights", "read_encoder_file", "save_encoder"]


def save_encoder(path: str | os.PathLike[str], encoder: nn.Module | dict[str, Tensor], encoder_name: str,
                 feature_dim: int, input_mode: str, image_size: int, **extra: Any) -> Path:
    """Write an encoder file atomically; returns its path.

    ``encoder``: the module or its state dict (tensors are copied to CPU, detached).
    ``extra``: further metadata; values must be primitives (str/int/float/bool/None) or
    lists/tuples of them so the file stays loadable with ``weights_only=True``.
    """
    state = encoder.state_dict() if isinstance(encoder, nn.Module) else encoder
    clean = {}
    for k, v in state.items():
        if not isinstance(v, Tensor):
            raise TypeError(f"state dict entry {k!r} is a {type(v).__name__}, not a tensor")
        clean[k] = v.detach().to("cpu").clone()
    for k, v in extra.items():
        values = v if isinstance(v, (list, tuple)) else [v]
        if not all(isinstance(x, _PRIMITIVES) for x in values):
            raise TypeError(f"metadata {k!r} must be primitive, got {type(v).__name__}")
        if k in _REQUIRED:
            raise ValueError(f"metadata key {k!r} is reserved")
    payload = {"format": ENCODER_FORMAT, "encoder": str(encoder_name), "feature_dim": int(feature_dim),
               "input_mode": str(input_mode), "image_size": int(image_size), "state_dict": clean,
               **{k: list(v) if isinstance(v, tuple) else v for k, v in extra.items()}}
    final = Path(path)
    with atomic_path(final) as tmp:
        torch.save(payload, tmp)
    return final


def read_encoder_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load and validate an encoder file: the whole dict (see the module docstring).

    Raises :class:`cardioclr.errors.DataError` naming the file when it is missing, not a
    torch file, or not a ``cardioclr-encoder-v1`` encoder file.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(p, "encoder file does not exist; run `cardioclr pretrain` first")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means "not our file"
        raise DataError(p, f"cannot be read as an encoder file ({type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else ''})") from err
    if not isinstance(payload, dict) or payload.get("format") != ENCODER_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise DataError(p, f"not a cardioclr encoder file (format {found!r}, expected "
                        f"{ENCODER_FORMAT!r}); a Lightning .ckpt is not accepted, use OUT/encoder.pt")
    missing = [k for k in _REQUIRED if k not in payload]
    if missing:
        raise DataError(p, f"encoder file lacks {', '.join(missing)}")
    state = payload["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise DataError(p, "encoder file's state_dict is not a dict of tensors")
    return payload


def load_encoder_weights(path: str | os.PathLike[str], encoder_name: str) -> dict[str, Tensor]:
    """The encoder state dict of ``path``, checked to belong to encoder ``encoder_name``.

    Load it with ``build_encoder(encoder_name)[0].load_state_dict(weights, strict=True)``.
    Raises :class:`cardioclr.errors.DataError` naming the file on a bad file or when it holds
    another architecture.
    """
    payload = read_encoder_file(path)
    if payload["encoder"] != encoder_name:
        raise DataError(path, f"holds a pretrained '{payload['encoder']}' encoder, not "
                        f"'{encoder_name}'; use --encoder {payload['encoder']} or pretrain a "
                        f"'{encoder_name}' encoder (`cardioclr pretrain WORK --encoder {encoder_name}`)")
    return dict(payload["state_dict"])
