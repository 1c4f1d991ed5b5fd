"""Saved patient-level classifiers: the ``model.pt`` of ``finetune --model patient``.

Same file name, same loading entry point (:func:`cardioclr.classify.predict.load_classifier`)
and the same interface as the slice model's :class:`~cardioclr.classify.predict.Classifier`
(``models``, ``spec``, ``classes``, ``encoder``, ``pretraining``, ``seeds``,
``predict_inputs``, ``predict``), so ``cardioclr predict`` and the saliency code take either.
The file is a plain dict of primitives and tensors (``weights_only=True``)::

    format: "cardioclr-patient-classifier", format_version: 1
    encoder, in_channels, pooling, hidden_dim, attention_dim, n_frequencies, n_classes,
    classes [str], input: {InputSpec}, pretraining, seeds [int], state_dicts [per seed]

A patient's prediction is the patient model's probability, averaged over the seeds' models.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from cardioclr.atomic import atomic_path
from cardioclr.classify.patient_data import PatientBank
from cardioclr.classify.patient_train import predict_patients
from cardioclr.data.pairs import InputSpec, PatientInputs, load_patient_inputs
from cardioclr.data.store import SliceStore
from cardioclr.errors import CardioclrError
from cardioclr.evaluate.metrics import prob_columns
from cardioclr.models.patient import PatientClassifier

PATIENT_FORMAT = "cardioclr-patient-classifier"
PATIENT_FORMAT_VERSION = 1


@dataclass
class PatientEnsemble:
    """Trained patient-level models (one per seed) plus their input recipe."""

    models: list[PatientClassifier]
    spec: InputSpec
    classes: list[str]
    encoder: str
    pretraining: str
    seeds: list[int]

    def predict_inputs(self, inputs: PatientInputs, device: str | torch.device = "cpu") -> np.ndarray:
        """Patient probabilities (K,) float64: the patient model's, mean over seeds."""
        bank = PatientBank([inputs])
        per_seed = [predict_patients(m, bank, [0], self.spec.input_mode, device)[0][0] for m in self.models]
        proba: np.ndarray = np.mean(per_seed, axis=0)
        return proba

    def predict(self, work: str | os.PathLike[str], patient_ids: Sequence[str],
                device: str | torch.device = "cpu") -> pd.DataFrame:
        """Predictions for patients of a prepared work directory, in the ``predictions.csv``
        contract plus ``pred_index`` and ``pred_label`` (as the slice model's ``predict``)."""
        store = SliceStore(work)
        rows = []
        for pid in patient_ids:
            p = self.predict_inputs(load_patient_inputs(store, pid, self.spec), device)
            k = int(np.argmax(p))
            rows.append({"patient_id": pid, "label_index": store.label_index(pid),
                         **dict(zip(prob_columns(self.classes), p.tolist(), strict=True)),
                         "pred_index": k, "pred_label": self.classes[k]})
        return pd.DataFrame(rows)


def save_patient_classifier(path: str | os.PathLike[str], models: Sequence[PatientClassifier],
                            spec: InputSpec, classes: Sequence[str], pretraining: str,
                            seeds: Sequence[int]) -> None:
    """Write ``model.pt`` atomically (see the module docstring for the contents)."""
    m0 = models[0]
    obj: dict[str, Any] = {
        "format": PATIENT_FORMAT, "format_version": PATIENT_FORMAT_VERSION,
        **architecture(m0), "n_classes": len(classes), "classes": list(classes), "input": asdict(spec),
        "pretraining": pretraining, "seeds": [int(s) for s in seeds],
        "state_dicts": [{k: v.detach().cpu().clone() for k, v in m.state_dict().items()} for m in models],
    }
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def architecture(model: PatientClassifier) -> dict[str, Any]:
    """The constructor arguments that rebuild ``model`` (primitives only)."""
    return {"encoder": model.encoder_name, "in_channels": int(model.in_channels), "pooling": model.pooling,
            "hidden_dim": int(model.embedding_dim), "attention_dim": int(model.pool.v.out_features),
            "n_frequencies": int(model.n_frequencies)}


def patient_ensemble_from(obj: dict[str, Any]) -> PatientEnsemble:
    """A :class:`PatientEnsemble` from a loaded ``model.pt`` dict (format checked by the caller)."""
    models = []
    for state in obj["state_dicts"]:
        m = PatientClassifier(obj["encoder"], int(obj["n_classes"]), int(obj["in_channels"]), obj["pooling"],
                              int(obj["hidden_dim"]), int(obj["attention_dim"]), int(obj["n_frequencies"]))
        m.load_state_dict(state)
        models.append(m.eval())
    return PatientEnsemble(models=models, spec=InputSpec(**obj["input"]), classes=list(obj["classes"]),
                           encoder=str(obj["encoder"]), pretraining=str(obj["pretraining"]),
                           seeds=list(obj["seeds"]))


def attention_table(bank: PatientBank, patient_ids: Sequence[str], seeds: Sequence[int],
                    attention: Sequence[Sequence[np.ndarray]]) -> pd.DataFrame:
    """``attention.csv``: one row per patient, seed and slice: ``patient_id, seed, slice_index
    (store stack), position (0 base .. 1 apex), weight`` (a patient's weights sum to 1 per seed).

    ``attention[j][i]``: seed ``seeds[j]``'s weights (n_i,) for ``patient_ids[i]``.
    """
    rows = []
    idx = bank.indices_of(patient_ids)
    for seed, per_patient in zip(seeds, attention, strict=True):
        for pid, b, w in zip(patient_ids, idx, per_patient, strict=True):
            for z, pos, a in zip(bank.slice_index[b], bank.positions[b].tolist(), w.tolist(), strict=True):
                rows.append({"patient_id": pid, "seed": int(seed), "slice_index": int(z),
                             "position": float(pos), "weight": float(a)})
    return pd.DataFrame(rows, columns=["patient_id", "seed", "slice_index", "position", "weight"])


def patient_features(model: PatientClassifier, bank: PatientBank, store: SliceStore, spec: InputSpec,
                     device: str | torch.device = "cpu") -> pd.DataFrame:
    """``patient_id, f0..f{M-1}``: the pooled patient embedding (before the output layer) of
    every bank patient plus any other stored patient whose inputs load (unlabelled). Fitted to
    the train labels: for inspection only (never the hybrid baseline's input)."""
    _, emb, _ = predict_patients(model, bank, list(range(len(bank))), spec.input_mode, device)
    ids, rows = list(bank.patient_ids), [emb]
    for pid in store.patient_ids:
        if pid in set(bank.patient_ids):
            continue
        try:
            extra = PatientBank([load_patient_inputs(store, pid, spec)])
        except CardioclrError:
            continue  # a patient without readable masks has no features; the slice path skips it too
        rows.append(predict_patients(model, extra, [0], spec.input_mode, device)[1])
        ids.append(pid)
    feats = np.concatenate(rows)
    df = pd.DataFrame(feats, columns=[f"f{i}" for i in range(feats.shape[1])])
    df.insert(0, "patient_id", ids)
    return df
