"""Training data of the segmentation model: 2D slices of the train split's expert masks.

Only patients of ``splits.json["train"]`` are ever loaded (the test split stays unseen); a few
of them (``val_fraction``; none with 0, the ``cpu`` preset) are held out for validation and
early stopping. Every slice of the ED and ES frames is one sample; slices stay at store
resolution (S x S) and are cropped and augmented on the device (:mod:`cardioclr.data.augment`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from cardioclr.data.store import SliceStore
from cardioclr.errors import CardioclrError, DataError
from cardioclr.segment.crop import Box, crop, heart_box
from cardioclr.segment.model import PHASE_VALUE, slice_context

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PatientSelection:
    """Train-split patients used for fitting and validation, and those left out (with why)."""

    train: list[str]
    val: list[str]
    excluded: dict[str, str]


def select_patients(store: SliceStore, val_fraction: float, seed: int,
                    held_out: set[str] | frozenset[str] = frozenset()) -> PatientSelection:
    """Split the store's ``train`` patients with usable expert masks into fit / validation.

    ``held_out``: train patients this model must never see (a cross-fitting fold); they are
    not loaded at all and not listed as excluded.

    ``val_fraction`` 0: every usable patient trains and ``val`` is empty (no validation).

    Patients without an expert mask, whose ED or ES mask is empty, whose store file is
    unreadable, or whose slices are not on the store grid are excluded with a warning naming
    them. Raises :class:`CardioclrError` when no patient is usable.
    """
    excluded: dict[str, str] = {}
    usable: list[str] = []
    for pid in store.splits.train:
        if pid in held_out:
            continue
        if pid not in store.manifest.index:
            excluded[pid] = "listed in splits.json but not in the store"
        elif not bool(store.manifest.at[pid, "has_expert_mask"]):
            excluded[pid] = "no expert mask"
        else:
            try:
                ps = store.load(pid)
            except DataError as err:  # one unreadable file must not stop the training
                excluded[pid] = err.problem
                continue
            size = (store.image_size, store.image_size)
            empty = [ph for ph, m in (("ED", ps.ed_mask), ("ES", ps.es_mask))
                     if m is None or not m.any()]
            if any(a.shape[1:] != size for a in (ps.ed_image, ps.es_image)):
                excluded[pid] = (f"slices of {ps.ed_image.shape[1:]} px, not the store's {size}; "
                                 "rebuild the store with `cardioclr prepare --overwrite`")
            elif any(m is not None and m.shape != img.shape for m, img in
                     ((ps.ed_mask, ps.ed_image), (ps.es_mask, ps.es_image))):
                excluded[pid] = "expert mask and image shapes differ"
            elif empty:
                excluded[pid] = f"expert {'/'.join(empty)} mask is empty (all background)"
            else:
                usable.append(pid)
    for pid, why in excluded.items():
        log.warning("segmentation training: excluding %s (%s): %s", pid, store.path(pid), why)
    if not usable:
        raise CardioclrError(f"{store.work}: no train-split patient has a usable expert mask "
                             f"({len(excluded)} excluded); cannot train the segmentation model")
    order = np.random.default_rng(seed).permutation(len(usable))
    n_val = int(round(val_fraction * len(usable))) if len(usable) >= 2 else 0
    n_val = min(max(n_val, 1 if len(usable) >= 2 and val_fraction > 0 else 0), len(usable) - 1)
    val = sorted(usable[i] for i in order[:n_val])
    fit = sorted(usable[i] for i in order[n_val:])
    if not val and val_fraction > 0:
        log.warning("segmentation training: only %d usable patient(s); validating on the training "
                    "patient(s), so early stopping means little", len(usable))
        val = list(fit)
    return PatientSelection(train=fit, val=val, excluded=excluded)


class SliceDataset(Dataset[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]):
    """Slices in memory: image float16 (N, C, S, S) (the slice and its context channels),
    labels uint8 (N, S, S), heart centre (N, 2) px, phase value (N,) (0 ED, 1 ES:
    :data:`~cardioclr.segment.model.PHASE_VALUE`)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, phases: np.ndarray) -> None:
        self.images = torch.from_numpy(images.astype(np.float16))
        self.labels = torch.from_numpy(labels.astype(np.uint8))
        self.centres = torch.from_numpy(heart_centres(labels))
        self.phases = torch.from_numpy(np.asarray(phases, np.float32))

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.images[i].float(), self.labels[i].long(), self.centres[i], self.phases[i]


def heart_centres(labels: np.ndarray) -> np.ndarray:
    """Centre (y, x) in pixels of the labelled pixels of each (N, S, S) slice; slice centre if none."""
    n, h, w = labels.shape
    out = np.tile(np.array([(h - 1) / 2, (w - 1) / 2], np.float32), (n, 1))
    for i in range(n):
        ys, xs = np.nonzero(labels[i])
        if ys.size:
            out[i] = (ys.mean(), xs.mean())
    return out


def pad_to_multiple(a: np.ndarray, divisor: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Zero-pad the last two axes of ``a`` at the end to multiples of ``divisor``.

    Returns the padded array and the original (H, W) to crop back to.
    """
    h, w = a.shape[-2:]
    ph, pw = (-h) % divisor, (-w) % divisor
    if ph == 0 and pw == 0:
        return a, (h, w)
    pad = [(0, 0)] * (a.ndim - 2) + [(0, ph), (0, pw)]
    return np.pad(a, pad), (h, w)


def load_slices(store: SliceStore, patient_ids: list[str], window: int | None = None,
                context_slices: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every ED and ES slice of the patients: images float32 (N, 1 + 2k, S, S) (each slice with
    its k = ``context_slices`` neighbours of the same volume, :func:`slice_context`), labels
    uint8 (N, S, S), phase values float32 (N,) (:data:`~cardioclr.segment.model.PHASE_VALUE`).

    ``window``: instead, the ``window`` x ``window`` crop around each patient's heart (expert
    labels of ED and ES together), as ``segment predict`` segments a window around the heart it
    found: (N, window, window).
    """
    images, labels, phases = [], [], []
    for pid in patient_ids:
        ps = store.load(pid)
        ed_mask, es_mask = ps.ed_mask, ps.es_mask
        if ed_mask is None or es_mask is None:
            raise CardioclrError(f"{store.path(pid)}: patient {pid} has no expert mask")
        pairs = (("ED", ps.ed_image, ed_mask), ("ES", ps.es_image, es_mask))
        box = None
        if window is not None:
            both = np.concatenate([ed_mask, es_mask])
            found = heart_box(both, window, 1, margin_px=0, min_pixels=1)
            if found is not None:  # same centre, fixed side so slices stack into one batch
                c = found.size // 2
                box = Box(found.y0 + c - window // 2, found.x0 + c - window // 2, window)
            else:
                box = Box((ps.ed_image.shape[1] - window) // 2, (ps.ed_image.shape[2] - window) // 2, window)
        for phase, img, m in pairs:
            stacked = slice_context(img, context_slices)
            images.append(stacked if box is None else crop(stacked, box))
            labels.append(m if box is None else crop(m, box))
            phases.append(np.full(img.shape[0], PHASE_VALUE[phase], np.float32))
    return np.concatenate(images), np.concatenate(labels), np.concatenate(phases)


class SegDataModule(L.LightningDataModule):
    """Fit/validation loaders over the selected train-split patients."""

    def __init__(self, work: str | os.PathLike[str], selection: PatientSelection, batch_size: int,
                 divisor: int, val_window: int | None = None, context_slices: int = 0) -> None:
        super().__init__()
        self.context_slices = context_slices
        self.val_window = val_window
        self.work = work
        self.selection = selection
        self.batch_size = batch_size
        self.divisor = divisor
        self.train_set: SliceDataset | None = None
        self.val_set: SliceDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        """Load the slices once (a few hundred MB at most for ACDC)."""
        if self.train_set is not None:
            return
        store = SliceStore(self.work)
        img, lab, phase = load_slices(store, self.selection.train, context_slices=self.context_slices)
        self.train_set = SliceDataset(img, lab, phase)
        if self.selection.val:
            vimg, vlab, vphase = load_slices(store, self.selection.val, self.val_window, self.context_slices)
            # Validation runs on heart windows (``val_window``, as predict) or whole slices, padded
            # so every downsampling level divides evenly.
            self.val_set = SliceDataset(pad_to_multiple(vimg, self.divisor)[0],
                                        pad_to_multiple(vlab, self.divisor)[0], vphase)
        else:  # no validation (val_fraction 0): the trainer runs no validation loop
            self.val_set = SliceDataset(*(np.zeros((0, *a.shape[1:]), a.dtype) for a in (img, lab, phase)))
        log.info("segmentation data: %d training slices (%d patients), %d validation slices "
                 "(%d patients)", len(self.train_set), len(self.selection.train), len(self.val_set),
                 len(self.selection.val))

    def train_dataloader(self) -> DataLoader[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Shuffled slices; data is in memory and augmentation is batched on the device."""
        assert self.train_set is not None
        # Drop a last ragged batch only when there are several batches (tiny cohorts keep all).
        drop = len(self.train_set) >= 2 * self.batch_size
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, drop_last=drop,
                          num_workers=0)

    def val_dataloader(self) -> DataLoader[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Whole validation slices in order."""
        assert self.val_set is not None
        return DataLoader(self.val_set, batch_size=self.batch_size, shuffle=False, num_workers=0)
