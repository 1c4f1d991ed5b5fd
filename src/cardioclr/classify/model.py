"""The paper's dual-phase classifier: an ED encoder, an ES encoder, concatenation, one linear layer.

``DualPhaseClassifier`` holds two encoders from the registry (separate weights by default, as in
Nakashima et al.; ``shared_encoder=True`` uses one encoder for both phases) and a
:class:`~cardioclr.models.heads.DualPhaseHead`. With ``freeze_encoders`` (linear probe) only the
head trains and the encoders stay in eval mode, so their batch-norm statistics do not drift.

Initialisation (:func:`initialise_encoders`):

* ``none``     random (the registry's own initialisation);
* ``imagenet`` a local torchvision state-dict file (``--weights``), required;
* ``simclr``   an ``encoder.pt`` written by ``cardioclr pretrain`` (``--weights``), required;
  its encoder name must match and its pretraining input mode is recorded as
  ``simclr-full`` / ``simclr-segmented`` / ``simclr-roi`` (``segmentation-simclr-...`` when
  that SimCLR run itself started from the segmentation encoder);
* ``segmentation`` the trained segmentation network's down path (``--encoder segunet`` only;
  ``--weights`` defaults to ``WORK/segmentation/model/model.pt``, see
  :mod:`cardioclr.segment.encoder`), recorded as ``segmentation``.

Encoders with more input channels than the weights (``anatomy`` inputs) get zero weights on
the extra channels (:func:`cardioclr.models.encoders.widen_input_channels` says why).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cardioclr.choices import INITS
from cardioclr.errors import CardioclrError
from cardioclr.models.checkpoint import load_encoder_weights, read_encoder_file
from cardioclr.models.encoders import build_encoder, encoder_names, load_widened
from cardioclr.models.heads import DualPhaseHead
from cardioclr.models.patient import PatientClassifier
from cardioclr.segment.encoder import load_segmentation_encoder

#: The registry encoder that equals the segmentation network's down path.
SEGUNET = "segunet"

log = logging.getLogger(__name__)


class DualPhaseClassifier(nn.Module):
    """ED and ES slices -> class logits.

    Inputs ``ed``, ``es``: (B, C, H, W) float with C = ``in_channels`` (1, or 4 for ``anatomy``
    inputs: :func:`cardioclr.data.views.input_channels`); :meth:`features` returns (B, 2D) =
    [ED feats, ES feats]; :meth:`forward` returns (B, n_classes) logits.
    """

    def __init__(self, encoder_name: str, n_classes: int, shared_encoder: bool = False,
                 freeze_encoders: bool = False, dropout: float = 0.0, in_channels: int = 1) -> None:
        super().__init__()
        if encoder_name not in encoder_names():
            raise CardioclrError(f"unknown encoder {encoder_name!r}; choose one of "
                                 f"{', '.join(encoder_names())}")
        self.encoder_name = encoder_name
        self.shared_encoder = shared_encoder
        self.freeze_encoders = freeze_encoders
        self.in_channels = in_channels
        self.encoder_ed, self.feature_dim = build_encoder(encoder_name, in_channels=in_channels)
        # With a shared encoder there is no second module at all, so parameter counts, the
        # state dict and the optimiser see each weight once.
        self.encoder_es: nn.Module | None = None
        if not shared_encoder:
            self.encoder_es, _ = build_encoder(encoder_name, in_channels=in_channels)
        self.head = DualPhaseHead(self.feature_dim, n_classes, dropout=dropout)
        if freeze_encoders:
            for enc in self.encoders():
                enc.requires_grad_(False)
                # Eval mode from the start: Lightning (>= 2.2) no longer calls .train() when
                # fitting, so modules keep the mode they were built in (training, for torch) and
                # batch norm would update its running statistics on the first epoch.
                enc.eval()

    def encoders(self) -> list[nn.Module]:
        """The distinct encoder modules (one when shared, two otherwise)."""
        return [self.encoder_ed] + ([self.encoder_es] if self.encoder_es is not None else [])

    def train(self, mode: bool = True) -> DualPhaseClassifier:
        """Like ``nn.Module.train`` but frozen encoders stay in eval mode (linear probe)."""
        super().train(mode)
        if self.freeze_encoders:
            for enc in self.encoders():
                enc.eval()
        return self

    def features(self, ed: Tensor, es: Tensor) -> Tensor:
        """(B, C, H, W) ED and ES -> (B, 2D) concatenated encoder features [ED, ES]."""
        if self.encoder_es is None:
            # One pass over both phases: the same weights, half the kernel launches.
            f = self.encoder_ed(torch.cat([ed, es], dim=0))
            f_ed, f_es = f[: ed.shape[0]], f[ed.shape[0]:]
        else:
            f_ed, f_es = self.encoder_ed(ed), self.encoder_es(es)
        return torch.cat([f_ed, f_es], dim=1)

    def forward(self, ed: Tensor, es: Tensor) -> Tensor:
        """(B, C, H, W) ED and ES -> (B, n_classes) logits."""
        f = self.features(ed, es)
        d = self.feature_dim
        logits: Tensor = self.head(f[:, :d], f[:, d:])
        return logits


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of (distinct) parameters, optionally only those with ``requires_grad``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


@dataclass(frozen=True)
class InitInfo:
    """What initialised the encoders: ``pretraining`` label for tables, plus details."""

    init: str
    pretraining: str
    weights: str | None
    details: dict[str, Any]


def check_init(init: str, weights: str | os.PathLike[str] | None) -> None:
    """Fail early (before any data is loaded) when ``--init`` and ``--weights`` do not fit."""
    if init not in INITS:
        raise CardioclrError(f"unknown --init {init!r}; choose one of {', '.join(INITS)}")
    if init == "imagenet" and not weights:
        raise CardioclrError("--init imagenet needs --weights FILE: a local torchvision ImageNet "
                             "state-dict file (e.g. vgg16-397923af.pth); nothing is downloaded")
    if init == "simclr" and not weights:
        raise CardioclrError("--init simclr needs --weights encoder.pt (written by `cardioclr "
                             "pretrain`)")
    if init == "segmentation" and not weights:
        raise CardioclrError("--init segmentation needs the segmentation model.pt (default: "
                             "WORK/segmentation/model/model.pt, written by `cardioclr segment train`)")
    if init == "none" and weights:
        raise CardioclrError("--weights was given with --init none; pass --init imagenet or simclr")
    if init == "segmentation" and weights and not Path(weights).is_file():
        raise CardioclrError(f"{weights}: no trained segmentation model; run `cardioclr segment "
                             "train WORK --preset cpu` first (or pass --weights MODEL.pt)")
    if weights and not Path(weights).is_file():
        raise CardioclrError(f"{weights}: weight file not found")


def read_simclr_info(path: str | os.PathLike[str], encoder_name: str
                     ) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Encoder state dict and metadata (primitives only) of a SimCLR ``encoder.pt``.

    Validation (format, encoder name) is :mod:`cardioclr.models.checkpoint`'s; a file holding
    another architecture raises a :class:`~cardioclr.errors.DataError` naming both encoders.
    """
    state = load_encoder_weights(path, encoder_name)
    payload = read_encoder_file(path)
    meta = {k: v for k, v in payload.items()
            if isinstance(v, (str, int, float, bool)) or v is None}
    return state, meta


def simclr_input_mode(meta: dict[str, Any]) -> str | None:
    """The pretraining input mode recorded in ``encoder.pt`` (None when absent)."""
    mode = meta.get("input_mode")
    return str(mode) if isinstance(mode, str) else None


def initialise_encoders(model: DualPhaseClassifier | PatientClassifier, init: str,
                        weights: str | os.PathLike[str] | None) -> InitInfo:
    """Load the chosen initial weights into every encoder of ``model`` (in place; the
    patient-level model has one encoder)."""
    check_init(init, weights)
    if init == "none":
        return InitInfo("none", "none", None, {})
    name = model.encoder_name
    if init == "segmentation":
        assert weights is not None  # check_init
        if name != SEGUNET:
            raise CardioclrError(f"--init segmentation needs --encoder {SEGUNET} (the segmentation "
                                 f"U-Net's down path), not {name!r}")
        seg_state, seg_info = load_segmentation_encoder(weights)
        for enc in model.encoders():
            load_widened(enc, seg_state)
        return InitInfo("segmentation", "segmentation", str(weights), seg_info)
    if init == "imagenet":
        # Built for the image channel, then widened: extra (mask) channels start at zero
        # (see :func:`cardioclr.models.encoders.widen_input_channels` for why).
        loaded, _ = build_encoder(name, in_channels=1, imagenet_weights=weights)
        for enc in model.encoders():
            load_widened(enc, loaded.state_dict())
        return InitInfo("imagenet", "imagenet", str(weights), {})
    assert weights is not None  # check_init: simclr needs a weight file
    state, meta = read_simclr_info(weights, name)
    for enc in model.encoders():
        try:
            # A 1-channel SimCLR encoder fine-tuned on anatomy inputs: mask channels start at zero.
            load_widened(enc, state)
        except RuntimeError as err:
            raise CardioclrError(f"{weights}: weights do not fit encoder {name!r}: "
                                 f"{str(err).splitlines()[0]}") from err
    mode = simclr_input_mode(meta)
    label = f"simclr-{mode}" if mode else "simclr"
    if meta.get("init") == "segmentation":
        label = f"segmentation-{label}"
    if meta.get("image_size") is not None:
        # Encoders end in global pooling, so any size runs; a large mismatch changes the scale
        # of what the filters learned to see, which users should know about.
        log.info("SimCLR encoder pretrained at %s px (%s input)", meta.get("image_size"), mode)
    return InitInfo("simclr", label, str(weights),
                    {"simclr_input_mode": mode, "simclr_meta": meta})
