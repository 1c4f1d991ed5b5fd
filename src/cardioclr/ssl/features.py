"""Per-patient features of a SimCLR-pretrained encoder: the deep half of the hybrid baseline.

``deep_features.csv`` (``patient_id, f0..f{2D-1}``, one row per stored patient: train, test
and unlabelled) holds, for every patient, the mean over its slice pairs of
``[encoder(ED slice), encoder(ES slice)]`` (D features each, ED first), where ``encoder`` is
the one in ``encoder.pt`` written by ``cardioclr pretrain``. That encoder was trained by
contrastive learning on train/unlabelled images only and never saw a label, so the features of
the train patients are no better fitted to their labels than those of the test patients. (The
fine-tuned classifier's own features are not: it was trained on the train labels, so its train
features separate the classes almost perfectly and a model fit on them over-trusts them.)

Inputs are built exactly as for the dual-phase classifier
(:func:`cardioclr.data.pairs.load_patient_inputs`, :func:`~cardioclr.data.pairs.network_inputs`)
in the pretraining's input mode, image size and margins (read from ``encoder.pt``): the slices
where the heart mask is non-empty in ED or ES, masked (``segmented``), cropped around the heart
(``roi``) or whole (``full``). The mask source is the pretraining's; a ``full`` encoder records
none, so ``mask_source`` (only used to choose the heart slices) applies.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from cardioclr.artifacts import DEEP_FEATURES_FILE
from cardioclr.atomic import write_text
from cardioclr.data.pairs import InputSpec, load_patient_inputs, network_inputs
from cardioclr.data.store import SliceStore
from cardioclr.data.views import input_channels
from cardioclr.errors import CardioclrError, DataError
from cardioclr.models.checkpoint import load_encoder_weights, read_encoder_file
from cardioclr.models.encoders import build_encoder

log = logging.getLogger(__name__)

__all__ = ["DEEP_FEATURES_FILE", "encoder_spec", "load_pretrained_encoder", "patient_features",
           "write_simclr_features"]


def encoder_spec(payload: dict[str, Any], mask_source: str = "predicted") -> InputSpec:
    """The :class:`InputSpec` an ``encoder.pt`` was pretrained with (its dict, see
    :mod:`cardioclr.models.checkpoint`); ``mask_source`` is used only when the file has none
    (``full`` mode)."""
    return InputSpec(input_mode=str(payload["input_mode"]),
                     mask_source=str(payload.get("mask_source") or mask_source),
                     image_size=int(payload["image_size"]),
                     mask_margin_mm=float(payload.get("mask_margin_mm") or 0.0),
                     roi_margin_mm=float(payload.get("roi_margin_mm", 10.0)))


def load_pretrained_encoder(path: str | os.PathLike[str]) -> tuple[nn.Module, dict[str, Any]]:
    """The encoder of ``encoder.pt`` in eval mode (CPU) and the file's dict (metadata)."""
    payload = read_encoder_file(path)
    name = str(payload["encoder"])
    encoder, _ = build_encoder(name, in_channels=input_channels(str(payload["input_mode"])))
    try:
        encoder.load_state_dict(load_encoder_weights(path, name), strict=True)
    except RuntimeError as err:
        raise DataError(path, f"weights do not fit encoder {name!r}: "
                        f"{str(err).splitlines()[0]}") from err
    return encoder.eval(), payload


@torch.inference_mode()
def patient_features(encoder: nn.Module, store: SliceStore, patient_ids: Sequence[str],
                     spec: InputSpec, device: torch.device | str = "cpu"
                     ) -> tuple[list[str], np.ndarray, dict[str, str]]:
    """Mean [ED, ES] encoder features of each patient.

    Returns ``(ids, features, skipped)``: the patients whose slices loaded, in input order;
    float32 ``(len(ids), 2D)`` features; and ``{patient_id: reason}`` for the others (e.g. a
    patient without a predicted mask). Eval mode (batch norm uses its running statistics), no
    augmentation: the result depends on the encoder weights and the images only.
    """
    encoder = encoder.eval().to(device)
    ids: list[str] = []
    rows: list[np.ndarray] = []
    skipped: dict[str, str] = {}
    for pid in patient_ids:
        try:
            pi = load_patient_inputs(store, pid, spec)
        except CardioclrError as err:
            skipped[pid] = str(err)
            log.warning("SimCLR features: skipping %s (%s)", pid, err)
            continue
        # All of a patient's slices in one batch: a few tens of (1, S, S) images.
        images = torch.from_numpy(pi.images).to(device, torch.float32)
        hearts = torch.from_numpy(pi.hearts).to(device, torch.float32)
        ed, es = network_inputs(images, hearts, spec.input_mode)
        feats = torch.cat([encoder(ed), encoder(es)], dim=1).float()  # (n_slices, 2D)
        rows.append(feats.mean(dim=0).cpu().numpy())
        ids.append(pid)
    dim = rows[0].shape[0] if rows else 0
    return ids, (np.stack(rows) if rows else np.zeros((0, dim), np.float32)), skipped


def write_simclr_features(encoder_path: str | os.PathLike[str], work: str | os.PathLike[str],
                          out: str | os.PathLike[str] | None = None, mask_source: str = "predicted",
                          device: torch.device | str = "cpu") -> dict[str, Any]:
    """Write ``deep_features.csv`` of every stored patient from ``encoder_path`` (atomically).

    ``out``: the CSV (default: ``deep_features.csv`` beside ``encoder_path``); ``mask_source``:
    see :func:`encoder_spec`. Patients whose slices cannot be loaded are left out with a
    warning (the baseline then names them if it needs them). Returns a summary: file, encoder,
    input mode, number of patients and of features (2D), skipped patients.

    Raises :class:`CardioclrError` when no patient could be loaded.
    """
    path = Path(out) if out is not None else Path(encoder_path).with_name(DEEP_FEATURES_FILE)
    encoder, payload = load_pretrained_encoder(encoder_path)
    spec = encoder_spec(payload, mask_source)
    store = SliceStore(work)
    ids, feats, skipped = patient_features(encoder, store, store.patient_ids, spec, device)
    if not ids:
        first = next(iter(skipped.values()), "the store has no patients")
        raise CardioclrError(f"{work}: no patient's slices could be loaded for SimCLR features "
                             f"({spec.input_mode} input, {spec.mask_source} masks), e.g. {first}")
    df = pd.DataFrame(feats, columns=[f"f{i}" for i in range(feats.shape[1])])
    df.insert(0, "patient_id", ids)
    # 7 significant digits: float32 round-trips closely enough for PCA + random forest.
    write_text(path, df.to_csv(index=False, float_format="%.7g"))
    log.info("SimCLR features of %d patients (%d features, %s input) -> %s", len(ids),
             feats.shape[1], spec.input_mode, path)
    return {"file": str(path), "encoder": str(payload["encoder"]), "input_mode": spec.input_mode,
            "mask_source": spec.mask_source, "n_patients": len(ids),
            "n_features": int(feats.shape[1]), "skipped": sorted(skipped)}
