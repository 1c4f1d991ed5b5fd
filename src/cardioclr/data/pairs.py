"""A patient's paired ED/ES slices on the network grid: what the classifier and the SimCLR
feature export both feed their encoders.

The unit is a *slice pair*: the ED and the ES frame at the same short-axis position of the same
patient, stacked as two inputs ``(2, H, W)`` (index 0 = ED, 1 = ES).

In ``anatomy`` mode the masks that go with a pair are the LV, MYO and RV masks of both phases,
``(6, H, W)`` = [ED LV, ED MYO, ED RV, ES LV, ES MYO, ES RV]; :func:`network_inputs` turns a
batch into the (B, 4, H, W) ED and ES inputs. Every consumer goes through it.

Which slices: those where the heart mask (of the chosen mask source) is non-empty in ED or ES.
Slices above the base or below the apex carry no heart and, in ``segmented`` mode, would be
all-zero inputs. A patient whose mask is empty everywhere (a failed segmentation) keeps all of
its slices, so no patient silently disappears from the evaluation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from cardioclr.choices import MASK_SOURCES
from cardioclr.clinical.regional import slice_levels
from cardioclr.data.masks import load_labels
from cardioclr.data.store import SliceStore
from cardioclr.data.views import (
    ANATOMY_STRUCTURES,
    apply_input_mask,
    check_mode,
    crop_resize,
    crops_to_heart,
    heart_mask,
    input_channels,
    patient_views,
    resize_stack,
    roi_box,
    structure_masks,
)
from cardioclr.errors import CardioclrError

log = logging.getLogger(__name__)

ED, ES = 0, 1


@dataclass(frozen=True)
class InputSpec:
    """What the network sees of a patient; saved in ``model.pt`` so inference sees the same.

    ``input_mode``: full | segmented | roi | anatomy (see :mod:`cardioclr.data.views`);
    ``mask_source``: predicted | expert; ``image_size``: network grid side in pixels;
    ``mask_margin_mm``: in-plane dilation of the heart mask used to mask ``segmented`` inputs
    (0 = the paper's exact LV + myocardium + RV mask); ``roi_margin_mm``: margin around the
    heart box in ``roi`` and ``anatomy`` modes.
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
    ``hearts``: bool (n, 2, H, W) input masks (heart dilated by ``mask_margin_mm``); in
    ``anatomy`` mode bool (n, 6, H, W), the structure masks (see the module docstring);
    ``slice_index``: int (n,) positions in the store's slice stack (base = 0);
    ``pixel_mm``: in-plane pixel size of the network grid in mm;
    ``saliency_hearts``: bool (n, 2, H, W) heart dilated by the saliency margin, when asked;
    ``positions``: float32 (n,) relative position of each slice, 0 = base .. 1 = apex
    (:func:`slice_positions`), the patient-level model's position input.
    ``structures``: bool (n, 6, H, W) LV, MYO, RV masks of ED then ES on the network grid, when
    asked (targets of multi-task fine-tuning, :mod:`cardioclr.classify.multitask`).
    """

    patient_id: str
    label_index: int
    images: np.ndarray
    hearts: np.ndarray
    slice_index: np.ndarray
    pixel_mm: float
    saliency_hearts: np.ndarray | None = None
    positions: np.ndarray | None = None
    structures: np.ndarray | None = None

    @property
    def n_slices(self) -> int:
        """Number of slice pairs n."""
        return int(self.images.shape[0])


def load_patient_inputs(store: SliceStore, patient_id: str, spec: InputSpec,
                        saliency_margin_mm: float | None = None,
                        with_structures: bool = False) -> PatientInputs:
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
    if crops_to_heart(spec.input_mode):
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
    hearts_out: np.ndarray = np.stack(masks, axis=1)
    structures: np.ndarray | None = None
    if spec.input_mode == "anatomy" or with_structures:
        structures = np.concatenate([_structures_on_grid(lab[keep], box, spec.image_size)
                                     for lab in (ed_lab, es_lab)], axis=1)
        if spec.input_mode == "anatomy":
            hearts_out = structures
    return PatientInputs(
        patient_id=patient_id,
        label_index=store.label_index(patient_id),
        images=np.stack(images, axis=1).astype(np.float32),
        hearts=hearts_out,
        slice_index=keep.astype(np.int64),
        pixel_mm=px * side / spec.image_size,
        saliency_hearts=np.stack(sal, axis=1) if sal else None,
        positions=slice_positions(ed_lab, keep),
        structures=structures if with_structures else None,
    )


def slice_positions(ed_labels: np.ndarray, slice_index: np.ndarray) -> np.ndarray:
    """Relative position base -> apex of the kept slices ``slice_index`` of a (z, H, W) stack.

    The store keeps the source file's slice order, which does not say which end is the base
    (ACDC stores the base at slice 0 but its NIfTI affines carry no orientation; other sources
    may run apex first). The anatomy decides instead, with the rule of
    :func:`cardioclr.clinical.regional.slice_levels`: the base is the end whose LV
    cross-section at ED (of the same mask source as the inputs) is larger. Positions are
    linear in the slice index over the kept range: 0 = the most basal kept slice, 1 = the most
    apical (0.5 for a single slice). Without any LV myocardium the store order is taken
    (slice 0 = base). Returns float32 (n,).
    """
    z = np.asarray(slice_index, dtype=np.float64)
    if z.size == 0:
        return np.zeros(0, dtype=np.float32)
    span = float(z.max() - z.min())
    rel = (z - z.min()) / span if span > 0 else np.full_like(z, 0.5)
    _, base_high = slice_levels(ed_labels)
    return (1.0 - rel if base_high else rel).astype(np.float32)


def _structures_on_grid(labels: np.ndarray, box: tuple[int, int, int] | None, out_size: int
                        ) -> np.ndarray:
    """Labels (n, S, S) -> bool (n, 3, out, out) structure masks, cropped to ``box`` (roi,
    anatomy) or resized (full, segmented) exactly like the image."""
    masks = structure_masks(labels).astype(np.float32)
    return np.stack([(crop_resize(masks[:, j], box, out_size, is_mask=True) if box is not None
                      else resize_stack(masks[:, j], out_size, is_mask=True)) > 0.5
                     for j in range(masks.shape[1])], axis=1)


def heart_outline(hearts: np.ndarray, input_mode: str) -> np.ndarray:
    """The pair's masks (..., M, H, W) -> the heart per phase, bool (..., 2, H, W) (for overlays)."""
    if input_mode != "anatomy":
        return hearts.astype(bool)
    k = len(ANATOMY_STRUCTURES)
    shape = (*hearts.shape[:-3], 2, k, *hearts.shape[-2:])
    union: np.ndarray = np.any(hearts.reshape(shape).astype(bool), axis=-3)
    return union


def network_inputs(images: Tensor, hearts: Tensor, input_mode: str) -> tuple[Tensor, Tensor]:
    """(B, 2, H, W) pairs and their masks -> ED and ES inputs (B, C, H, W) each.

    ``C`` = :func:`~cardioclr.data.views.input_channels` of ``input_mode``: the image masked
    per ``input_mode`` (C = 1), or in ``anatomy`` mode the image followed by its phase's LV,
    MYO and RV masks (``hearts`` (B, 6, H, W), C = 4). Call after any geometric augmentation
    (``segmented`` must never show warped-in tissue; the structure masks must move with the image).
    """
    if input_mode == "anatomy":
        k = input_channels(input_mode) - 1
        if hearts.shape[1] != 2 * k:
            raise ValueError(f"anatomy inputs need (B, {2 * k}, H, W) structure masks, got "
                             f"{tuple(hearts.shape)}")
        masks = hearts.to(images.dtype)
        return (torch.cat([images[:, ED:ED + 1], masks[:, :k]], dim=1),
                torch.cat([images[:, ES:ES + 1], masks[:, k:]], dim=1))
    x = apply_input_mask(images, hearts, input_mode)
    return x[:, ED:ED + 1], x[:, ES:ES + 1]

