"""Saved classifiers: ``model.pt`` written by ``finetune`` and read back by :func:`load_classifier`.

``model.pt`` is a plain dict of primitives and tensors (loadable with ``weights_only=True``)::

    format: "cardioclr-classifier", format_version: 1
    encoder, shared_encoder, linear_probe, feature_dim, n_classes, classes [str]
    input: {input_mode, mask_source, image_size, mask_margin_mm, roi_margin_mm}
    pretraining, seeds [int], state_dicts [ {name: Tensor} per seed ]
    tta (int, optional; 1 when absent): test-time augmentation views (:mod:`.recipe`)

A patient's prediction is the mean over its slice pairs of the slice probabilities, averaged
over the seeds' models (the same ensemble as ``predictions.csv``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cardioclr.atomic import atomic_path
from cardioclr.classify.model import DualPhaseClassifier
from cardioclr.classify.patient_predict import (
    PATIENT_FORMAT,
    PATIENT_FORMAT_VERSION,
    PatientEnsemble,
    patient_ensemble_from,
)
from cardioclr.classify.train import predict_slices
from cardioclr.data.pairs import InputSpec, PatientInputs, load_patient_inputs
from cardioclr.data.store import SliceStore
from cardioclr.data.views import input_channels
from cardioclr.errors import CardioclrError
from cardioclr.evaluate.metrics import prob_columns

FORMAT = "cardioclr-classifier"
FORMAT_VERSION = 1
MODEL_FILE = "model.pt"


@dataclass
class Classifier:
    """A trained dual-phase classifier ensemble (one model per seed) plus its input recipe."""

    models: list[DualPhaseClassifier]
    spec: InputSpec
    classes: list[str]
    encoder: str
    pretraining: str
    seeds: list[int]
    tta: int = 1

    def predict_inputs(self, inputs: PatientInputs, device: str | torch.device = "cpu") -> np.ndarray:
        """Patient probabilities (K,) float64: mean over slices, then over seeds."""
        imgs = torch.from_numpy(inputs.images)
        hearts = torch.from_numpy(inputs.hearts)
        per_seed = [predict_slices(m, imgs, hearts, self.spec.input_mode, device, tta=self.tta)[0]
                    .mean(axis=0) for m in self.models]
        proba: np.ndarray = np.mean(per_seed, axis=0)
        return proba

    def predict(self, work: str | os.PathLike[str], patient_ids: Sequence[str],
                device: str | torch.device = "cpu") -> pd.DataFrame:
        """Predictions for patients of a prepared work directory (masks from ``spec.mask_source``).

        Returns a table in the ``predictions.csv`` contract (``label_index`` is -1 for
        unlabelled patients) plus ``pred_index`` and ``pred_label``.
        """
        store = SliceStore(work)
        rows = []
        for pid in patient_ids:
            p = self.predict_inputs(load_patient_inputs(store, pid, self.spec), device)
            rows.append({"patient_id": pid, "label_index": store.label_index(pid),
                         **dict(zip(prob_columns(self.classes), p.tolist(), strict=True)),
                         "pred_index": int(np.argmax(p)), "pred_label": self.classes[int(np.argmax(p))]})
        return pd.DataFrame(rows)


def save_classifier(path: str | os.PathLike[str], models: Sequence[DualPhaseClassifier],
                    spec: InputSpec, classes: Sequence[str], pretraining: str,
                    seeds: Sequence[int], tta: int = 1) -> None:
    """Write ``model.pt`` atomically (see the module docstring for the contents)."""
    m0 = models[0]
    obj: dict[str, Any] = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "encoder": m0.encoder_name, "shared_encoder": bool(m0.shared_encoder),
        "linear_probe": bool(m0.freeze_encoders), "feature_dim": int(m0.feature_dim),
        "n_classes": len(classes), "classes": list(classes), "input": asdict(spec),
        "pretraining": pretraining, "seeds": [int(s) for s in seeds], "tta": int(tta),
        "state_dicts": [{k: v.detach().cpu().clone() for k, v in m.state_dict().items()} for m in models],
    }
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_classifier(model_dir: str | os.PathLike[str]) -> Classifier | PatientEnsemble:
    """Read ``model_dir/model.pt`` (or a ``model.pt`` path) into a :class:`Classifier` (or a
    :class:`~cardioclr.classify.patient_predict.PatientEnsemble` for ``finetune --model patient``).

    Raises :class:`CardioclrError` naming the file when it is missing or not a classifier.
    """
    p = Path(model_dir)
    if p.is_dir():
        p = p / MODEL_FILE
    if not p.is_file():
        raise CardioclrError(f"{p}: no trained classifier (run `cardioclr finetune` first)")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means "not our file"
        raise CardioclrError(f"{p}: unreadable classifier file ({type(err).__name__}: {err})") from err
    if isinstance(obj, dict) and obj.get("format") == PATIENT_FORMAT:
        if int(obj.get("format_version", 0)) > PATIENT_FORMAT_VERSION:
            raise CardioclrError(f"{p}: written by a newer cardioclr (format {obj['format_version']})")
        return patient_ensemble_from(obj)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CardioclrError(f"{p}: not a cardioclr classifier file")
    if int(obj.get("format_version", 0)) > FORMAT_VERSION:
        raise CardioclrError(f"{p}: written by a newer cardioclr (format {obj['format_version']})")
    spec = InputSpec(**obj["input"])
    models = []
    for state in obj["state_dicts"]:
        m = DualPhaseClassifier(obj["encoder"], int(obj["n_classes"]), bool(obj["shared_encoder"]),
                                bool(obj["linear_probe"]), in_channels=input_channels(spec.input_mode))
        m.load_state_dict(state)
        models.append(m.eval())
    return Classifier(models=models, spec=spec, classes=list(obj["classes"]), encoder=obj["encoder"],
                      pretraining=str(obj["pretraining"]), seeds=list(obj["seeds"]),
                      tta=int(obj.get("tta", 1)))
