"""Classifier inputs: every patient's paired ED/ES slices, pre-loaded once at the network size.

The unit of training is a *slice pair* (:mod:`cardioclr.data.pairs`: the ED and the ES frame
at the same short-axis position, stacked as ``(2, H, W)``, index 0 = ED, 1 = ES). A patient's
prediction is the mean of its slice-pair probabilities (:func:`patient_probabilities`); every
metric is computed on those patient-level probabilities.

Datasets are small (ACDC: 100 patients x ~10 slices), so all slices are held in memory: about
``n_slices * 2 * H * W * 4`` bytes for the images (ACDC at 96 px: ~75 MB) plus bool masks.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from cardioclr.data.augment import AugmentConfig
from cardioclr.data.pairs import InputSpec, PatientInputs, load_patient_inputs
from cardioclr.data.store import SliceStore
from cardioclr.errors import CardioclrError


class SliceBank:
    """All slice pairs of a set of patients, concatenated; index with :meth:`rows_of`.

    ``images``: float32 tensor (N, 2, H, W); ``hearts``: bool tensor (N, 2, H, W);
    ``patient``: int64 (N,) index into ``patient_ids``; ``labels``: int64 (N,) class per slice
    (the patient's label, -1 when unlabelled); ``structures``: bool tensor (N, 6, H, W) LV,
    MYO, RV masks of ED and ES when every patient was loaded with them (multi-task targets),
    else None.
    """

    def __init__(self, patients: Sequence[PatientInputs]) -> None:
        if not patients:
            raise CardioclrError("no patients to load")
        self.patient_ids = [p.patient_id for p in patients]
        if len(set(self.patient_ids)) != len(self.patient_ids):
            raise CardioclrError("duplicate patient ids in the slice bank")
        self.patient_labels = np.array([p.label_index for p in patients], dtype=np.int64)
        self.images = torch.from_numpy(np.concatenate([p.images for p in patients]))
        self.hearts = torch.from_numpy(np.concatenate([p.hearts for p in patients]))
        counts = [p.n_slices for p in patients]
        self.patient = torch.from_numpy(np.repeat(np.arange(len(patients)), counts))
        self.labels = torch.from_numpy(self.patient_labels[self.patient.numpy()])
        self.slice_index = torch.from_numpy(np.concatenate([p.slice_index for p in patients]))
        self.structures = (torch.from_numpy(np.concatenate([p.structures for p in patients]))
                           if all(p.structures is not None for p in patients) else None)
        self._pos = {pid: i for i, pid in enumerate(self.patient_ids)}

    @classmethod
    def load(cls, store: SliceStore, patient_ids: Sequence[str], spec: InputSpec,
             with_structures: bool = False) -> SliceBank:
        """Load ``patient_ids`` from ``store`` per ``spec`` (see :func:`load_patient_inputs`)."""
        return cls([load_patient_inputs(store, pid, spec, with_structures=with_structures)
                    for pid in patient_ids])

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def rows_of(self, patient_ids: Sequence[str]) -> Tensor:
        """Row indices (int64) of every slice pair of ``patient_ids``; unknown ids raise."""
        missing = [p for p in patient_ids if p not in self._pos]
        if missing:
            raise CardioclrError(f"patients not loaded: {missing[:5]}")
        wanted = torch.tensor([self._pos[p] for p in patient_ids], dtype=torch.int64)
        return torch.nonzero(torch.isin(self.patient, wanted)).flatten()

    def dataset(self, patient_ids: Sequence[str]) -> PairDataset:
        """A :class:`PairDataset` over the slice pairs of ``patient_ids``."""
        return PairDataset(self, self.rows_of(patient_ids))


class PairDataset(Dataset[tuple[Tensor, Tensor, Tensor, Tensor]]):
    """Slice pairs of some patients of a :class:`SliceBank`.

    Item: ``(images float32 (2, H, W), hearts float32 (2, H, W), label int64, row int64)``;
    ``row`` indexes the bank, so predictions can be traced back to their patient.
    """

    def __init__(self, bank: SliceBank, rows: Tensor) -> None:
        self.bank = bank
        self.rows = rows

    def __len__(self) -> int:
        return int(self.rows.numel())

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        r = int(self.rows[i])
        b = self.bank
        return b.images[r], b.hearts[r].float(), b.labels[r], torch.tensor(r)

    @property
    def patient_ids(self) -> list[str]:
        """Patients present, in bank order."""
        idx = torch.unique(self.bank.patient[self.rows]).tolist()
        return [self.bank.patient_ids[i] for i in idx]


def patient_probabilities(slice_proba: np.ndarray, slice_patient: np.ndarray
                          ) -> tuple[np.ndarray, np.ndarray]:
    """Mean of slice probabilities per patient.

    ``slice_proba``: (N, K) per-slice class probabilities; ``slice_patient``: (N,) patient
    keys (any sortable type). Returns ``(keys (P,), proba (P, K))`` with keys sorted; each row
    of ``proba`` sums to 1 when the slice rows do.
    """
    keys, inverse = np.unique(np.asarray(slice_patient), return_inverse=True)
    p = np.asarray(slice_proba, dtype=np.float64)
    sums = np.zeros((len(keys), p.shape[1]))
    np.add.at(sums, inverse, p)
    counts = np.bincount(inverse, minlength=len(keys)).astype(np.float64)
    return keys, sums / counts[:, None]


# ------------------------------------------------------------------------- light augmentation

#: Light fine-tuning augmentation (pretraining does the heavy one), applied with
#: :func:`cardioclr.data.augment.augment_batch` to the (B, 2, H, W) pair as one 2-channel image,
#: so ED and ES of a pair get the same geometry and intensity change (same anatomy, two times).
#: No flips: a mirrored short-axis slice puts the RV on the wrong side of the LV, which real
#: images never show. The heart mask is applied last (segmented mode), after the warp.
FINETUNE_AUGMENT = AugmentConfig(crop_scale=(0.75, 1.0), crop_ratio=(0.9, 1.1), rotation_deg=15.0,
                                 p_hflip=0.0, p_vflip=0.0, brightness=0.1, contrast=(0.85, 1.15),
                                 gamma=(0.85, 1.2), p_intensity=0.8, noise_std=0.02, p_noise=0.3)
