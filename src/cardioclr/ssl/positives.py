"""Anatomy-aware positives for contrastive pretraining: which slices of one patient match.

SimCLR (the paper) has one positive per image: a second augmentation of the same image. The
short-axis stack of a cine MRI offers more pairs that show the same anatomy, and this module
says which ones (``--positives``):

``augment``    the paper's SimCLR: only the other view of the same slice (no partner is drawn).
``phase``      + the same slice position at the other phase (ED <-> ES).
``neighbour``  + slices of the same frame whose relative positions along the stack
               (0 = first slice, 1 = last; base -> apex in ACDC) differ by at most
               ``neighbour_bound``.
``cine``       + the same slice position in every other frame of the cycle (ED, ES and the
               stored cine frames; ``prepare`` keeps cine when the data has a 4D file).
``anatomy``    all three: a pair is positive when its frames match (same frame, or any two
               frames of the cycle) and its positions match (same slice, or within the bound).

Choice of variant (Chaitanya et al., NeurIPS 2020, "global" strategies): they split every
volume into S partitions along the long axis and treat slices of the same partition *of
different volumes* as positives. Here positives never cross patients: with ~70 training
patients and 5 diagnoses, slices of two patients at the same level are the comparison a
classifier must keep apart, and the paper's negatives are other patients. What we keep of
their idea is the position-aware match: instead of fixed partitions (whose boundaries split
neighbouring slices) a sliding window of relative position, ``|r_i - r_j| <= bound``; the
default 0.25 is the width of one of their 4 ACDC partitions, i.e. 1 neighbour each side for a
6-slice stack, 2 for 10 slices, 4 for 18.

Negatives are the slices of *other* patients only. Slices of the same patient that are not
positives (base vs apex, ED vs ES of another level) are left out of the loss's denominator
(neither pulled together nor pushed apart): they share the patient's anatomy and pathology.

Batches: each anchor slice draws one partner uniformly from its positive set (itself
included, so plain two-view pairs keep occurring); the two views are the augmented anchor and
the augmented partner. The loss (:func:`cardioclr.ssl.loss.multi_positive_nt_xent`) then
treats every pair of views in the (global) batch that :func:`related` calls positive as
positives, not only the drawn one. Partners are drawn among the loaded slices of the same
part (train or held-out) only, so they come from the patients the pretraining may use (train
+ unlabelled, never test: :mod:`cardioclr.ssl.data`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from cardioclr.choices import POSITIVES
from cardioclr.errors import CardioclrError

__all__ = ["ED_FRAME", "ES_FRAME", "FIRST_CINE", "PartnerTable", "PositivePairs", "PositiveSpec",
           "SliceMeta", "frame_meta", "related", "same_patient"]

#: Frame codes of :class:`SliceMeta`: ED, ES, then cine frame t as ``FIRST_CINE + t``.
ED_FRAME, ES_FRAME, FIRST_CINE = 0, 1, 2

# The kinds each ``--positives`` value switches on.
_KINDS: dict[str, frozenset[str]] = {
    "augment": frozenset(),
    "phase": frozenset({"phase"}),
    "neighbour": frozenset({"neighbour"}),
    "cine": frozenset({"cine"}),
    "anatomy": frozenset({"phase", "neighbour", "cine"}),
}


@dataclass(frozen=True)
class PositiveSpec:
    """Which pairs of one patient's slices are positives (see the module docstring).

    ``name``: one of :data:`cardioclr.choices.POSITIVES`; ``neighbour_bound``: the largest
    relative-position difference (0-1) of neighbour positives.
    """

    name: str = "augment"
    neighbour_bound: float = 0.25

    def __post_init__(self) -> None:
        if self.name not in POSITIVES:
            raise CardioclrError(f"unknown positives {self.name!r}; choose one of: {', '.join(POSITIVES)}")
        if not 0 <= self.neighbour_bound <= 1:
            raise CardioclrError(f"neighbour bound must be in [0, 1] (relative position), got "
                                 f"{self.neighbour_bound}")

    @property
    def kinds(self) -> frozenset[str]:
        """The positive kinds switched on (empty for ``augment``)."""
        return _KINDS[self.name]

    @property
    def anatomical(self) -> bool:
        """True unless this is the paper's two-view SimCLR."""
        return bool(self.kinds)


@dataclass
class SliceMeta:
    """Where each loaded slice comes from; arrays of length N aligned with the images.

    ``patient``: int64 code of the patient (unique within one loaded part, across sources);
    ``frame``: int64 ``ED_FRAME``, ``ES_FRAME`` or ``FIRST_CINE + t`` for cine frame t;
    ``z``: int64 index in the patient's stored slice stack; ``position``: float32 relative
    position ``z / (n_slices - 1)`` in [0, 1] (0 for a single slice).
    """

    patient: np.ndarray
    frame: np.ndarray
    z: np.ndarray
    position: np.ndarray

    def __len__(self) -> int:
        return int(self.patient.shape[0])

    @staticmethod
    def empty() -> SliceMeta:
        """No slices."""
        return SliceMeta(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64),
                         np.zeros(0, np.float32))

    @staticmethod
    def concat(parts: list[SliceMeta]) -> SliceMeta:
        """The parts one after the other (in the order their images are concatenated)."""
        if not parts:
            return SliceMeta.empty()
        return SliceMeta(*(np.concatenate([getattr(p, k) for p in parts])
                           for k in ("patient", "frame", "z", "position")))

    def select(self, keep: np.ndarray) -> SliceMeta:
        """The rows ``keep`` (boolean mask or indices)."""
        return SliceMeta(self.patient[keep], self.frame[keep], self.z[keep], self.position[keep])

    def as_tensor(self, device: torch.device | str = "cpu") -> Tensor:
        """(N, 4) float64 [patient, frame, z, position] (exact for the integer codes)."""
        cols = [self.patient, self.frame, self.z, self.position]
        return torch.from_numpy(np.stack([c.astype(np.float64) for c in cols], axis=1)).to(device)


def frame_meta(patient: int, frame: int, n_slices: int) -> SliceMeta:
    """:class:`SliceMeta` of one frame's ``n_slices`` slices of one patient."""
    z = np.arange(n_slices, dtype=np.int64)
    pos = (z / (n_slices - 1) if n_slices > 1 else np.zeros(n_slices)).astype(np.float32)
    return SliceMeta(np.full(n_slices, patient, np.int64), np.full(n_slices, frame, np.int64), z, pos)


# Rounding slack of the float32 relative positions (a bound of exactly 1/k must admit them).
_EPS = 1e-6


def same_patient(a: Tensor, b: Tensor) -> Tensor:
    """(A, B) bool: row i of ``a`` and row j of ``b`` ((A, 4), (B, 4) meta) share the patient."""
    return a[:, None, 0] == b[None, :, 0]


def related(a: Tensor, b: Tensor, spec: PositiveSpec) -> Tensor:
    """(A, B) bool: the slices are positives of each other under ``spec`` (identity included).

    ``a``, ``b``: (A, 4), (B, 4) :meth:`SliceMeta.as_tensor` rows. Never true across patients.
    For ``augment`` only the very same slice (patient, frame, z) is related.
    """
    kinds = spec.kinds
    patient = same_patient(a, b)
    fa, fb = a[:, None, 1], b[None, :, 1]
    same_frame = fa == fb
    if "cine" in kinds:
        frame_ok = torch.ones_like(same_frame)  # any two frames of the cycle
    elif "phase" in kinds:
        ed_es = (fa <= ES_FRAME) & (fb <= ES_FRAME)
        frame_ok = same_frame | ed_es
    else:
        frame_ok = same_frame
    same_z = a[:, None, 2] == b[None, :, 2]
    if "neighbour" in kinds:
        pos_ok = same_z | ((a[:, None, 3] - b[None, :, 3]).abs() <= spec.neighbour_bound + _EPS)
    else:
        pos_ok = same_z
    result: Tensor = patient & frame_ok & pos_ok
    return result


class PartnerTable:
    """For every slice of a loaded part, its positive partners; draws one per anchor.

    Built per patient (the relation never crosses patients), stored as CSR arrays:
    ``offsets`` (N + 1,) and ``partners`` (M,) int64, partner list of slice i =
    ``partners[offsets[i]:offsets[i + 1]]`` (always containing i itself).
    """

    def __init__(self, meta: SliceMeta, spec: PositiveSpec) -> None:
        self.spec = spec
        n = len(meta)
        lists: list[np.ndarray] = [np.zeros(0, np.int64)] * n
        rows = meta.as_tensor()
        for code in np.unique(meta.patient):
            idx = np.nonzero(meta.patient == code)[0]
            sub = rows[torch.from_numpy(idx)]
            rel = related(sub, sub, spec).numpy()
            for k, i in enumerate(idx):
                lists[int(i)] = idx[rel[k]]
        counts = np.array([len(x) for x in lists], dtype=np.int64)
        self.offsets = torch.from_numpy(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))
        self.partners = torch.from_numpy(np.concatenate(lists).astype(np.int64) if n
                                         else np.zeros(0, np.int64))

    def __len__(self) -> int:
        return int(self.offsets.shape[0]) - 1

    def counts(self) -> Tensor:
        """(N,) number of positives of each slice (itself included)."""
        return self.offsets[1:] - self.offsets[:-1]

    def to(self, device: torch.device | str) -> PartnerTable:
        """Move the tables to ``device`` (in place); returns self."""
        self.offsets = self.offsets.to(device)
        self.partners = self.partners.to(device)
        return self

    def draw(self, index: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One partner per anchor, uniform over its positives: (B,) -> (B,) int64 indices.

        ``index`` and ``generator`` must be on the tables' device.
        """
        index = index.to(self.offsets.device, torch.long)
        start = self.offsets[index]
        count = self.offsets[index + 1] - start
        u = torch.rand(index.shape[0], device=start.device, generator=generator, dtype=torch.float64)
        pick = torch.minimum((u * count).long(), count - 1)
        return self.partners[start + pick]


class PositivePairs:
    """The slices of one loaded part (train or held-out) with their partner table.

    ``images`` float16 (N, ...) and ``hearts`` uint8 (N, ...) or None share memory with the
    loaded arrays on the CPU (a GPU run holds one more copy there after :meth:`to`); ``meta``
    is (N, 4) :meth:`SliceMeta.as_tensor`. :meth:`partners` draws one positive per anchor
    row and returns its slice.
    """

    def __init__(self, images: np.ndarray, hearts: np.ndarray | None, meta: SliceMeta,
                 spec: PositiveSpec) -> None:
        if len(meta) != images.shape[0] or (hearts is not None and hearts.shape != images.shape):
            raise ValueError(f"{len(meta)} meta rows, images {images.shape}, hearts "
                             f"{None if hearts is None else hearts.shape}: they must align")
        self.images = torch.from_numpy(np.ascontiguousarray(images))
        self.hearts = None if hearts is None else torch.from_numpy(np.ascontiguousarray(hearts))
        self.meta = meta.as_tensor()
        self.table = PartnerTable(meta, spec)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def to(self, device: torch.device | str) -> PositivePairs:
        """Move everything to ``device`` (in place; no copy when already there); returns self."""
        self.images = self.images.to(device)
        self.hearts = None if self.hearts is None else self.hearts.to(device)
        self.meta = self.meta.to(device)
        self.table.to(device)
        return self

    def partners(self, index: Tensor, generator: torch.Generator | None = None
                 ) -> tuple[Tensor, Tensor | None, Tensor]:
        """Draw one partner of each anchor row ``index`` (B,): (images, hearts or None, rows)."""
        rows = self.table.draw(index, generator)
        hearts = None if self.hearts is None else self.hearts[rows]
        return self.images[rows], hearts, rows
