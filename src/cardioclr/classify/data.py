"""Classifier inputs: every patient's paired ED/ES slices, pre-loaded once at the network size.

The unit of training is a *slice pair*: the ED and the ES frame at the same short-axis position
of the same patient, stacked as two inputs ``(2, H, W)`` (index 0 = ED, 1 = ES). A patient's
prediction is the mean of its slice-pair probabilities (:func:`patient_probabilities`); every
metric is computed on those patient-level probabilities.

Which slices: those where the heart mask (of the chosen mask source) is non-empty in ED or ES.
Slices above the base or below the apex carry no heart and, in ``segmented`` mode, would be
all-zero inputs. A patient whose mask is empty everywhere (a failed segmentation) keeps all of
its slices, so no patient silently disappears from the evaluation.

Datasets are small (ACDC: 100 patients x ~10 slices), so all slices are held in memory: about
``n_slices * 2 * H * W * 4`` bytes for the images (ACDC at 96 px: ~75 MB) plus bool masks.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from cardioclr.data.augment import AugmentConfig
from cardioclr.data.store import SliceStore
from cardioclr.data.views import apply_input_mask, check_mode, heart_mask, patient_views, roi_box
from cardioclr.errors import CardioclrError
from cardioclr.segment.masks import MASK_SOURCES, load_labels

log = logging.getLogger(__name__)

ED, ES = 0, 1


@dataclass(frozen=True)
class InputSpec:
    """What the network sees of a patient; saved in ``model.pt`` so inference sees the same.

    ``input_mode``: full | segmented | roi (see :mod:`cardioclr.data.views`);
    ``mask_source``: predicted | expert; ``image_size``: network grid side in pixels;
    ``mask_margin_mm``: in-plane dilation of the heart mask used to mask ``segmented`` inputs
    (0 = the paper's exact LV + myocardium + RV mask); ``roi_margin_mm``: margin around the
    heart box in ``roi`` mode.
    """

    input_mode: str
    mask_source: str
    image_size: int = 96
    mask_margin_mm: float = 0.0
    roi_margin_mm: float = 10.0

    def __post_init__(self) -> None:
        check_mode(self.input_mode)
        if self.mask_source not in MASK_SOURCES:
            raise CardioclrError(f"unknown mask source {self.mask_source!r}; choose one of "
                                 f"{', '.join(MASK_SOURCES)}")
        if self.image_size < 16:
            raise CardioclrError(f"image size {self.image_size} px is too small (>= 16)")


@dataclass
class PatientInputs:
    """One patient's slice pairs on the network grid, before augmentation and masking.

    ``images``: float32 (n, 2, H, W) [ED, ES] intensities (store normalisation, ~0-1);
    ``hearts``: bool (n, 2, H, W) input masks (heart dilated by ``mask_margin_mm``);
    ``slice_index``: int (n,) positions in the store's slice stack (base = 0);
    ``pixel_mm``: in-plane pixel size of the network grid in mm;
    ``saliency_hearts``: bool (n, 2, H, W) heart dilated by the saliency margin, when asked.
    """

    patient_id: str
    label_index: int
    images: np.ndarray
    hearts: np.ndarray
    slice_index: np.ndarray
    pixel_mm: float
    saliency_hearts: np.ndarray | None = None

    @property
    def n_slices(self) -> int:
        """Number of slice pairs n."""
        return int(self.images.shape[0])


def load_patient_inputs(store: SliceStore, patient_id: str, spec: InputSpec,
                        saliency_margin_mm: float | None = None) -> PatientInputs:
    """Load one patient's slice pairs resized/cropped per ``spec`` (no masking applied yet).

    The heart masks are built on the store grid (where the pixel size is known) and then
    undergo exactly the same resize or crop as the image. In ``roi`` mode one box (union over
    ED, ES and all slices) is shared by both phases so they keep a common scale.
    """
    ps = store.load(patient_id)
    if spec.mask_source == "expert" and ps.ed_mask is not None and ps.es_mask is not None:
        ed_lab, es_lab = ps.ed_mask, ps.es_mask  # already loaded with the images
    else:
        ed_lab, es_lab = load_labels(store.work, patient_id, spec.mask_source)
    if ed_lab.shape != ps.ed_image.shape or es_lab.shape != ps.es_image.shape:
        raise CardioclrError(f"patient {patient_id}: {spec.mask_source} mask shape {ed_lab.shape} "
                             f"differs from the image {ps.ed_image.shape}")
    px = store.spacing_mm
    hearts = [heart_mask(lab, spec.mask_margin_mm, px) for lab in (ed_lab, es_lab)]
    raw = [heart_mask(lab, 0.0, px) for lab in (ed_lab, es_lab)]
    present = raw[ED].any(axis=(1, 2)) | raw[ES].any(axis=(1, 2))
    keep = np.nonzero(present)[0]
    if keep.size == 0:
        log.warning("patient %s: %s heart mask is empty on every slice; using all %d slices",
                    patient_id, spec.mask_source, ps.n_slices)
        keep = np.arange(ps.n_slices)
    box = None
    side = store.image_size
    if spec.input_mode == "roi":
        box = roi_box(np.stack(raw), int(round(spec.roi_margin_mm / px)), store.image_size)
        side = box[2]
    images, masks, sal = [], [], []
    for phase, image in ((ED, ps.ed_image), (ES, ps.es_image)):
        img, hm = patient_views(image[keep], hearts[phase][keep], spec.input_mode, spec.image_size, box)
        images.append(img)
        masks.append(hm > 0.5)
        if saliency_margin_mm is not None:
            smask = heart_mask((ed_lab, es_lab)[phase][keep], saliency_margin_mm, px)
            _, sm = patient_views(image[keep], smask, spec.input_mode, spec.image_size, box)
            sal.append(sm > 0.5)
    return PatientInputs(
        patient_id=patient_id,
        label_index=store.label_index(patient_id),
        images=np.stack(images, axis=1).astype(np.float32),
        hearts=np.stack(masks, axis=1),
        slice_index=keep.astype(np.int64),
        pixel_mm=px * side / spec.image_size,
        saliency_hearts=np.stack(sal, axis=1) if sal else None,
    )


class SliceBank:
    """All slice pairs of a set of patients, concatenated; index with :meth:`rows_of`.

    ``images``: float32 tensor (N, 2, H, W); ``hearts``: bool tensor (N, 2, H, W);
    ``patient``: int64 (N,) index into ``patient_ids``; ``labels``: int64 (N,) class per slice
    (the patient's label, -1 when unlabelled).
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
        self._pos = {pid: i for i, pid in enumerate(self.patient_ids)}

    @classmethod
    def load(cls, store: SliceStore, patient_ids: Sequence[str], spec: InputSpec) -> SliceBank:
        """Load ``patient_ids`` from ``store`` per ``spec`` (see :func:`load_patient_inputs`)."""
        return cls([load_patient_inputs(store, pid, spec) for pid in patient_ids])

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


class PairDataset(Dataset):
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


def network_inputs(images: Tensor, hearts: Tensor, input_mode: str) -> tuple[Tensor, Tensor]:
    """(B, 2, H, W) pairs -> ED and ES inputs (B, 1, H, W) each, masked per ``input_mode``.

    Call after any geometric augmentation (``segmented`` must never show warped-in tissue).
    """
    x = apply_input_mask(images, hearts, input_mode)
    return x[:, ED:ED + 1], x[:, ES:ES + 1]

