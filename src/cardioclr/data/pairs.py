"""A patient's paired ED/ES slices on the network grid: what the classifier and the SimCLR
feature export both feed their encoders.

The unit is a *slice pair*: the ED and the ES frame at the same short-axis position of the same
patient, stacked as two inputs ``(2, H, W)`` (index 0 = ED, 1 = ES).

Which slices: those where the heart mask (of the chosen mask source) is non-empty in ED or ES.
Slices above the base or below the apex carry no heart and, in ``segmented`` mode, would be
all-zero inputs. A patient whose mask is empty everywhere (a failed segmentation) keeps all of
its slices, so no patient silently disappears from the evaluation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from torch import Tensor

from cardioclr.choices import MASK_SOURCES
from cardioclr.clinical.regional import slice_levels
from cardioclr.data.masks import load_labels
from cardioclr.data.store import SliceStore
from cardioclr.data.views import apply_input_mask, check_mode, heart_mask, patient_views, roi_box
from cardioclr.errors import CardioclrError

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
    ``saliency_hearts``: bool (n, 2, H, W) heart dilated by the saliency margin, when asked;
    ``positions``: float32 (n,) relative position of each slice, 0 = base .. 1 = apex
    (:func:`slice_positions`), the patient-level model's position input.
    """

    patient_id: str
    label_index: int
    images: np.ndarray
    hearts: np.ndarray
    slice_index: np.ndarray
    pixel_mm: float
    saliency_hearts: np.ndarray | None = None
    positions: np.ndarray | None = None

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
        positions=slice_positions(ed_lab, keep),
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


def network_inputs(images: Tensor, hearts: Tensor, input_mode: str) -> tuple[Tensor, Tensor]:
    """(B, 2, H, W) pairs -> ED and ES inputs (B, 1, H, W) each, masked per ``input_mode``.

    Call after any geometric augmentation (``segmented`` must never show warped-in tissue).
    """
    x = apply_input_mask(images, hearts, input_mode)
    return x[:, ED:ED + 1], x[:, ES:ES + 1]

