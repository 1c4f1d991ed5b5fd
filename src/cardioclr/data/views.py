"""Input modes every later stage shares: what the network sees of a patient's slices.

* ``full``      the whole field of view (no mask);
* ``segmented`` the image multiplied by the heart mask, background zero (the paper's input);
* ``roi``       the heart's bounding box plus a margin, cropped and resized (context kept).
* ``anatomy``   the ``roi`` crop (finer pixels than the whole field of view) plus the LV cavity,
                LV myocardium and RV cavity masks of the chosen mask source as three extra
                input channels (:data:`ANATOMY_STRUCTURES`): the anatomic prior given to the
                network explicitly rather than by deleting the background. Encoders then take
                :func:`input_channels` = 4 channels.

Masks come from the segmentation model (``predicted``, the honest default) or from expert
labels (``expert``, an upper bound); see :mod:`cardioclr.data.masks`.
In ``segmented`` mode, consumers apply the mask *after* geometric augmentation
(:func:`apply_input_mask`) so that augmented views never show tissue outside the heart.
In ``anatomy`` mode the structure masks travel with the image as "mask" channels through
:mod:`cardioclr.data.augment`: spatial transforms move them with the image (resampled with the
same grid, thresholded at 0.5), intensity transforms never touch them (they stay 0/1).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import binary_dilation

from cardioclr.choices import INPUT_MODES
from cardioclr.clinical.labels import STRUCTURES

#: The structures of ``anatomy`` inputs, in channel order after the image: (name, label value).
ANATOMY_STRUCTURES: tuple[tuple[str, int], ...] = tuple(
    (name, STRUCTURES[name]) for name in ("LV", "MYO", "RV"))
#: Input modes whose network input carries the structure masks as extra channels.
_MASK_CHANNEL_MODES = ("anatomy",)


def check_mode(mode: str) -> str:
    """Return ``mode`` if it is one of :data:`INPUT_MODES`, else raise ``ValueError`` listing them."""
    if mode not in INPUT_MODES:
        raise ValueError(f"unknown input mode {mode!r}; choose one of {', '.join(INPUT_MODES)}")
    return mode


def input_channels(mode: str) -> int:
    """Channels C of one phase's network input (B, C, H, W): 1 image channel, plus the
    :data:`ANATOMY_STRUCTURES` masks in ``anatomy`` mode."""
    check_mode(mode)
    return 1 + (len(ANATOMY_STRUCTURES) if mode in _MASK_CHANNEL_MODES else 0)


def crops_to_heart(mode: str) -> bool:
    """Whether ``mode`` crops the heart's box (``roi`` and ``anatomy``)."""
    return check_mode(mode) in ("roi", "anatomy")


def structure_masks(labels: np.ndarray) -> np.ndarray:
    """Label volume (z, H, W) values 0-3 -> bool (z, 3, H, W): LV, MYO, RV (:data:`ANATOMY_STRUCTURES`)."""
    return np.stack([labels == value for _, value in ANATOMY_STRUCTURES], axis=1)


def heart_mask(labels: np.ndarray, margin_mm: float = 0.0, spacing_mm: float = 1.0) -> np.ndarray:
    """Union of RV cavity, LV myocardium and LV cavity, dilated in-plane by ``margin_mm``.

    ``labels``: (z, y, x) or (y, x) integer labels 0-3; ``spacing_mm``: in-plane pixel size.
    Returns bool of the same shape. Dilation is per slice with a disk of radius margin/spacing
    pixels (slices are 5-10 mm apart, so dilating across them would be meaningless).
    """
    heart = labels > 0
    radius = int(round(margin_mm / spacing_mm))
    if radius <= 0 or not heart.any():
        return heart
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    disk = (yy**2 + xx**2) <= radius**2
    structure = disk[None] if heart.ndim == 3 else disk
    dilated: np.ndarray = binary_dilation(heart, structure=structure)
    return dilated


def roi_box(heart: np.ndarray, margin_px: int, image_size: int) -> tuple[int, int, int]:
    """Square box (y0, x0, side) in pixels around every heart pixel of ``heart`` plus a margin.

    ``heart``: bool (..., y, x), e.g. both phases and all slices of a patient stacked, so every
    slice of a patient is cropped with the same box and scale. An empty mask gives the whole
    image. The box may extend past the image; :func:`crop_resize` pads with zeros.
    """
    flat = heart.reshape(-1, *heart.shape[-2:]).any(axis=0)
    if not flat.any():
        return 0, 0, image_size
    ys, xs = np.nonzero(flat)
    cy, cx = (ys.min() + ys.max() + 1) / 2, (xs.min() + xs.max() + 1) / 2
    side = int(max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) + 2 * margin_px)
    return int(round(cy - side / 2)), int(round(cx - side / 2)), side


def crop_resize(stack: np.ndarray, box: tuple[int, int, int], out_size: int, is_mask: bool = False
                ) -> np.ndarray:
    """Crop (z, H, W) to ``box`` (zero outside the image) and resize to (z, out_size, out_size)."""
    y0, x0, side = box
    z, h, w = stack.shape
    crop = np.zeros((z, side, side), dtype=np.float32)
    ys, ye, xs, xe = max(y0, 0), min(y0 + side, h), max(x0, 0), min(x0 + side, w)
    if ye > ys and xe > xs:
        crop[:, ys - y0:ye - y0, xs - x0:xe - x0] = stack[:, ys:ye, xs:xe]
    return resize_stack(crop, out_size, is_mask)


def resize_stack(stack: np.ndarray, out_size: int, is_mask: bool = False) -> np.ndarray:
    """Resize (z, H, W) to (z, out_size, out_size): antialiased bilinear; masks thresholded at 0.5."""
    if stack.shape[-1] == out_size and stack.shape[-2] == out_size:
        return stack.astype(np.float32, copy=False)
    t = torch.from_numpy(np.ascontiguousarray(stack, dtype=np.float32))[:, None]
    out = F.interpolate(t, size=(out_size, out_size), mode="bilinear", align_corners=False,
                        antialias=not is_mask)[:, 0]
    if is_mask:
        out = (out > 0.5).float()
    return out.numpy()


def patient_views(image: np.ndarray, heart: np.ndarray, mode: str, out_size: int,
                  box: tuple[int, int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One frame of a patient as the network input grid, before any augmentation.

    ``image``: float32 (z, S, S); ``heart``: bool (z, S, S) (any mask: it gets the image's
    geometry). Returns ``(image, heart)`` both float32 (z, out_size, out_size). In ``roi`` and
    ``anatomy`` modes ``box`` (from :func:`roi_box`, shared by
    the patient's ED and ES frames) is required. The mask is *not* applied here in
    ``segmented`` mode: call :func:`apply_input_mask` after geometric augmentation.
    """
    if crops_to_heart(mode):
        if box is None:
            raise ValueError(f"{mode} mode needs the patient's heart box (roi_box)")
        return crop_resize(image, box, out_size), crop_resize(heart.astype(np.float32), box,
                                                               out_size, is_mask=True)
    return resize_stack(image, out_size), resize_stack(heart.astype(np.float32), out_size,
                                                       is_mask=True)


def apply_input_mask(images: torch.Tensor, hearts: torch.Tensor, mode: str) -> torch.Tensor:
    """Zero everything outside the heart in ``segmented`` mode; identity otherwise.

    ``images``, ``hearts``: (B, C, H, W) tensors on the same device (hearts 0/1 float).
    """
    check_mode(mode)
    return images * hearts if mode == "segmented" else images
