"""Input modes (full / segmented / roi): heart mask with a margin in mm, ROI box, crop-resize."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cardioclr.choices import INPUT_MODES
from cardioclr.data.views import apply_input_mask, check_mode, crop_resize, heart_mask, patient_views, roi_box


def test_heart_mask_is_the_union_of_the_structures() -> None:
    labels = np.zeros((2, 9, 9), np.uint8)
    labels[0, 2, 2], labels[0, 4, 4], labels[1, 6, 6] = 1, 2, 3
    heart = heart_mask(labels)
    assert heart.dtype == bool and heart.sum() == 3
    assert heart[0, 2, 2] and heart[0, 4, 4] and heart[1, 6, 6]


@pytest.mark.parametrize(("margin_mm", "spacing_mm", "radius_px"),
                         [(7.0, 3.5, 2), (3.0, 1.5, 2), (4.5, 1.5, 3), (0.5, 1.5, 0)])
def test_heart_mask_margin_is_in_mm_and_in_plane_only(margin_mm: float, spacing_mm: float,
                                                      radius_px: int) -> None:
    labels = np.zeros((3, 15, 15), np.uint8)
    labels[1, 7, 7] = 3
    heart = heart_mask(labels, margin_mm=margin_mm, spacing_mm=spacing_mm)
    assert not heart[0].any() and not heart[2].any()  # never across slices (5-10 mm apart)
    ys, xs = np.nonzero(heart[1])
    assert ys.max() - 7 == radius_px and 7 - xs.min() == radius_px  # a disk of that radius
    r2 = (ys - 7) ** 2 + (xs - 7) ** 2
    assert r2.max() <= radius_px**2
    assert heart[1].sum() == int(((np.mgrid[-7:8, -7:8] ** 2).sum(0) <= radius_px**2).sum())


def test_heart_mask_of_empty_labels_stays_empty() -> None:
    assert not heart_mask(np.zeros((2, 8, 8), np.uint8), margin_mm=10.0, spacing_mm=1.0).any()


def test_roi_box_covers_every_slice_with_margin_and_empty_gives_whole_image() -> None:
    heart = np.zeros((2, 40, 40), bool)
    heart[0, 10:15, 12:16] = True
    heart[1, 18:20, 20:30] = True  # the box spans both slices
    y0, x0, side = roi_box(heart, margin_px=3, image_size=40)
    assert side == max(20 - 10, 30 - 12) + 6
    assert y0 <= 10 - 3 and y0 + side >= 20 + 3 and x0 <= 12 - 3 and x0 + side >= 30 + 3
    assert roi_box(np.zeros((2, 40, 40), bool), 3, 40) == (0, 0, 40)


def test_crop_resize_pads_outside_the_image_and_keeps_masks_binary() -> None:
    stack = np.ones((1, 10, 10), np.float32)
    out = crop_resize(stack, (-5, -5, 20), 20)  # box half outside: zero there
    assert out.shape == (1, 20, 20)
    assert out[0, :5].max() == 0 and out[0, 5:15, 5:15].min() == 1
    m = crop_resize(stack, (-5, -5, 20), 8, is_mask=True)
    assert set(np.unique(m).tolist()) <= {0.0, 1.0}


def test_patient_views_modes() -> None:
    image = np.random.default_rng(0).random((3, 32, 32)).astype(np.float32)
    heart = np.zeros((3, 32, 32), bool)
    heart[:, 10:20, 12:22] = True
    full, h = patient_views(image, heart, "full", 16)
    assert full.shape == h.shape == (3, 16, 16) and full.dtype == np.float32
    seg, _ = patient_views(image, heart, "segmented", 32)
    np.testing.assert_array_equal(seg, image)  # the mask is applied after augmentation
    box = roi_box(heart, 2, 32)
    roi, rh = patient_views(image, heart, "roi", 28, box=box)
    assert roi.shape == (3, 28, 28) and rh.mean() > heart.mean()  # zoomed in on the heart
    with pytest.raises(ValueError, match="roi mode needs"):
        patient_views(image, heart, "roi", 28)
    with pytest.raises(ValueError, match="full, segmented, roi"):
        check_mode("masked")
    assert INPUT_MODES == ("full", "segmented", "roi", "anatomy")


def test_apply_input_mask_zeroes_outside_only_in_segmented_mode() -> None:
    x = torch.ones(1, 1, 4, 4)
    h = torch.zeros(1, 1, 4, 4)
    h[..., 1:3, 1:3] = 1
    assert apply_input_mask(x, h, "segmented").sum() == 4
    assert torch.equal(apply_input_mask(x, h, "full"), x)
    assert torch.equal(apply_input_mask(x, h, "roi"), x)
