"""Patient-level classifier inputs: one item = every slice pair of one patient, batches padded.

The patient-level model (:mod:`cardioclr.models.patient`) sees a patient as a bag of slice
pairs. :class:`PatientBank` holds each patient's pairs (as loaded by
:func:`cardioclr.data.pairs.load_patient_inputs`, the same inputs as the slice model's
:class:`~cardioclr.classify.data.SliceBank`) and their relative positions base -> apex.
:func:`pad_patients` stacks patients of different slice counts into one padded batch with a
boolean mask (True = real slice).

Batch layout (what :func:`pad_patients` returns and the training module consumes):
``images`` float32 (B, S, 2, H, W) [ED, ES], ``hearts`` float32 (B, S, M, H, W) (M = 2, or the
mask channels of the input mode, e.g. 6 in ``anatomy``: always read through
:func:`cardioclr.data.pairs.network_inputs`),
``positions`` float32 (B, S), ``mask`` bool (B, S), ``labels`` int64 (B,), ``index`` int64 (B,)
(the patient's index in the bank). Padding is zeros with mask False and position 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from cardioclr.data.pairs import InputSpec, PatientInputs, load_patient_inputs, network_inputs
from cardioclr.data.store import SliceStore
from cardioclr.errors import CardioclrError

PatientBatch = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]


class PatientBank:
    """Every slice pair of a set of patients, one entry per patient.

    ``images[i]`` float32 (n_i, 2, H, W), ``hearts[i]`` bool (n_i, 2, H, W), ``positions[i]``
    float32 (n_i,) in [0, 1] (base -> apex); ``patient_labels`` int64 (P,) (-1 = unlabelled).
    """

    def __init__(self, patients: Sequence[PatientInputs]) -> None:
        if not patients:
            raise CardioclrError("no patients to load")
        self.patient_ids = [p.patient_id for p in patients]
        if len(set(self.patient_ids)) != len(self.patient_ids):
            raise CardioclrError("duplicate patient ids in the patient bank")
        self.patient_labels = np.array([p.label_index for p in patients], dtype=np.int64)
        self.images = [torch.from_numpy(p.images) for p in patients]
        self.hearts = [torch.from_numpy(p.hearts) for p in patients]
        self.positions = [torch.from_numpy(_positions(p)) for p in patients]
        self.slice_index = [p.slice_index for p in patients]
        self._pos = {pid: i for i, pid in enumerate(self.patient_ids)}

    @classmethod
    def load(cls, store: SliceStore, patient_ids: Sequence[str], spec: InputSpec) -> PatientBank:
        """Load ``patient_ids`` from ``store`` per ``spec`` (see :func:`load_patient_inputs`)."""
        return cls([load_patient_inputs(store, pid, spec) for pid in patient_ids])

    def __len__(self) -> int:
        return len(self.patient_ids)

    def indices_of(self, patient_ids: Sequence[str]) -> list[int]:
        """Bank indices of ``patient_ids`` in the given order; unknown ids raise."""
        missing = [p for p in patient_ids if p not in self._pos]
        if missing:
            raise CardioclrError(f"patients not loaded: {missing[:5]}")
        return [self._pos[p] for p in patient_ids]

    def dataset(self, patient_ids: Sequence[str]) -> PatientDataset:
        """A :class:`PatientDataset` over ``patient_ids``."""
        return PatientDataset(self, self.indices_of(patient_ids))

    def batch(self, indices: Sequence[int]) -> PatientBatch:
        """The padded batch of the patients at ``indices`` (see the module docstring)."""
        return pad_patients([self.item(i) for i in indices])

    def item(self, i: int) -> tuple[Tensor, Tensor, Tensor, int, int]:
        """``(images (n, 2, H, W), hearts float (n, 2, H, W), positions (n,), label, index)``."""
        return (self.images[i], self.hearts[i].float(), self.positions[i], int(self.patient_labels[i]), i)

    def input_channels(self, input_mode: str) -> int:
        """Channels C of one phase's network input in ``input_mode`` (what the encoder takes)."""
        ed, _ = network_inputs(self.images[0][:1].float(), self.hearts[0][:1].float(), input_mode)
        return int(ed.shape[1])


class PatientDataset(Dataset[tuple[Tensor, Tensor, Tensor, int, int]]):
    """Some patients of a :class:`PatientBank`; use with ``collate_fn=pad_patients``."""

    def __init__(self, bank: PatientBank, indices: Sequence[int]) -> None:
        self.bank = bank
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, Tensor, int, int]:
        return self.bank.item(self.indices[i])


def pad_patients(items: Sequence[tuple[Tensor, Tensor, Tensor, int, int]]) -> PatientBatch:
    """Stack patients of different slice counts: zero padding to the largest count plus a mask.

    ``items``: ``(images (n_i, 2, ...), hearts (n_i, 2, ...), positions (n_i,), label, index)``.
    Returns ``(images, hearts, positions, mask, labels, index)`` as in the module docstring.
    """
    if not items:
        raise ValueError("empty batch")
    counts = [int(it[0].shape[0]) for it in items]
    if min(counts) < 1:
        raise CardioclrError("a patient without slices cannot be classified")
    b, s = len(items), max(counts)
    first = items[0][0]
    images = first.new_zeros((b, s, *first.shape[1:]), dtype=torch.float32)
    hearts = torch.zeros((b, s, *items[0][1].shape[1:]), dtype=torch.float32)  # (.., 6, ..) in anatomy mode
    positions = torch.zeros(b, s, dtype=torch.float32)
    mask = torch.zeros(b, s, dtype=torch.bool)
    for k, (img, hrt, pos, _, _) in enumerate(items):
        n = int(img.shape[0])
        images[k, :n] = img
        hearts[k, :n] = hrt
        positions[k, :n] = pos
        mask[k, :n] = True
    labels = torch.tensor([int(it[3]) for it in items], dtype=torch.int64)
    index = torch.tensor([int(it[4]) for it in items], dtype=torch.int64)
    return images, hearts, positions, mask, labels, index


def _positions(p: PatientInputs) -> np.ndarray:
    if p.positions is None or p.positions.shape[0] != p.n_slices:
        raise CardioclrError(f"patient {p.patient_id}: no slice positions for the patient-level model")
    return np.asarray(p.positions, dtype=np.float32)
