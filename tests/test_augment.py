"""Tests of the batched on-device SimCLR augmentations (cardioclr.data.augment)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from cardioclr.data.augment import AugmentConfig, augment_batch, sample_affine, two_views

IDENTITY = AugmentConfig.identity()


def _batch(b: int = 6, size: int = 24, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images ~[0, 1] (B, 1, S, S) and a disk-shaped heart (B, 1, S, S) per sample."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(b, 1, size, size, generator=gen)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    hearts = torch.zeros(b, 1, size, size)
    for i in range(b):
        cy, cx = size // 2 + (i % 3) - 1, size // 2 - (i % 2)
        hearts[i, 0] = (((yy - cy) ** 2 + (xx - cx) ** 2) <= (size // 4) ** 2).float()
    return images, hearts


@pytest.mark.parametrize("mode", ["full", "segmented", "roi"])
def test_shapes_dtype_and_device(mode: str) -> None:
    images, hearts = _batch()
    views, warped = augment_batch(images, hearts, mode, AugmentConfig())
    assert views.shape == images.shape and views.dtype == torch.float32
    assert warped is not None and warped.shape == hearts.shape
    assert set(warped.unique().tolist()) <= {0.0, 1.0}
    v0, v1 = two_views(images[:, 0], hearts[:, 0], mode, AugmentConfig())  # (B, H, W) accepted
    assert v0.shape == v1.shape == images.shape
    assert not torch.equal(v0, v1)  # independent parameters per view


def test_identity_config_returns_input() -> None:
    images, hearts = _batch()
    views, warped = augment_batch(images, hearts, "full", IDENTITY)
    torch.testing.assert_close(views, images, atol=1e-5, rtol=0)
    torch.testing.assert_close(warped, hearts)


def test_seeded_generator_is_deterministic_and_seed_matters() -> None:
    images, hearts = _batch()
    cfg = AugmentConfig()
    a = two_views(images, hearts, "segmented", cfg, torch.Generator().manual_seed(7))
    b = two_views(images, hearts, "segmented", cfg, torch.Generator().manual_seed(7))
    c = two_views(images, hearts, "segmented", cfg, torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_parameters_differ_per_sample() -> None:
    theta = sample_affine(16, 32, 32, AugmentConfig(), torch.device("cpu"),
                          torch.Generator().manual_seed(0))
    assert theta.shape == (16, 2, 3)
    assert len({tuple(t.flatten().tolist()) for t in theta}) == 16


@pytest.mark.parametrize(("flag", "dim"), [("p_hflip", -1), ("p_vflip", -2)])
def test_flips_really_flip(flag: str, dim: int) -> None:
    images, hearts = _batch()
    cfg = dataclasses.replace(IDENTITY, **{flag: 1.0})
    views, warped = augment_batch(images, hearts, "full", cfg)
    torch.testing.assert_close(views, images.flip(dim), atol=1e-5, rtol=0)
    torch.testing.assert_close(warped, hearts.flip(dim))
    assert not torch.allclose(views, images, atol=1e-3)  # the images are not symmetric


def test_rotation_angles_within_range_and_rotate_about_the_centre() -> None:
    cfg = dataclasses.replace(IDENTITY, rotation_deg=40.0)
    theta = sample_affine(64, 16, 16, cfg, torch.device("cpu"), torch.Generator().manual_seed(0))
    angle = torch.rad2deg(torch.atan2(theta[:, 1, 0], theta[:, 0, 0]))
    assert angle.abs().max() <= 40.0 + 1e-4 and angle.abs().max() > 30.0  # spread over the range
    det = theta[:, 0, 0] * theta[:, 1, 1] - theta[:, 0, 1] * theta[:, 1, 0]
    torch.testing.assert_close(det, torch.ones_like(det), atol=1e-5, rtol=0)  # no scaling/shear
    # A centred disk is (nearly) invariant under rotation; an off-centre bar is not.
    size = 33
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    disk = (((yy - 16) ** 2 + (xx - 16) ** 2) <= 64).float()[None, None].repeat(8, 1, 1, 1)
    bar = torch.zeros_like(disk)
    bar[..., 14:19, 2:31] = 1.0
    cfg = dataclasses.replace(cfg, rotation_deg=90.0)
    d, _ = augment_batch(disk, None, "full", cfg, torch.Generator().manual_seed(1))
    b, _ = augment_batch(bar, None, "full", cfg, torch.Generator().manual_seed(1))
    assert ((d > 0.5).float() != disk).float().mean() < 0.02
    assert ((b > 0.5).float() != bar).float().mean() > 0.05


def test_crop_zooms_in() -> None:
    # A centred crop of half the side magnifies: a centred square of side 8 in a 32 px image
    # becomes a square of side 16.
    images = torch.zeros(1, 1, 32, 32)
    images[..., 12:20, 12:20] = 1.0
    theta = torch.tensor([[[0.5, 0.0, 0.0], [0.0, 0.5, 0.0]]])
    grid = torch.nn.functional.affine_grid(theta, [1, 1, 32, 32], align_corners=False)
    out = torch.nn.functional.grid_sample(images, grid, align_corners=False)
    assert (out > 0.5).sum().item() == 16 * 16
    # sample_affine with area scale 0.25 and ratio 1 produces exactly that scale factor.
    cfg = dataclasses.replace(IDENTITY, crop_scale=(0.25, 0.25))
    t = sample_affine(4, 32, 32, cfg, torch.device("cpu"), torch.Generator().manual_seed(1))
    torch.testing.assert_close(t[:, 0, 0], torch.full((4,), 0.5))
    assert (t[:, :, 2].abs() <= 0.5 + 1e-6).all()  # crop stays inside the image


def test_segmented_views_stay_inside_the_warped_heart() -> None:
    images, hearts = _batch(b=16, size=32)
    # Strong intensity ops (brightness up to +-0.5, noise always) to try to light up background.
    cfg = dataclasses.replace(AugmentConfig(), brightness=0.5, p_intensity=1.0, p_noise=1.0,
                              noise_std=0.2)
    views, warped = augment_batch(images, hearts, "segmented", cfg, torch.Generator().manual_seed(3))
    assert warped is not None
    outside = warped == 0
    assert outside.any() and (~outside).any()
    assert (views[outside] == 0).all()
    assert (views[~outside] != 0).float().mean() > 0.9  # the heart itself is not blanked
    # Full mode with the same parameters does show the background.
    full, _ = augment_batch(images, hearts, "full", cfg, torch.Generator().manual_seed(3))
    assert (full[outside] != 0).float().mean() > 0.5
    # Same generator seed -> same geometry: the segmented view equals the full view's pixels
    # only up to the intensity statistics, but the masks agree exactly.
    _, warped_full = augment_batch(images, hearts, "full", cfg, torch.Generator().manual_seed(3))
    assert torch.equal(warped, warped_full)


def test_segmented_mode_needs_hearts_and_full_mode_does_not() -> None:
    images, _ = _batch()
    with pytest.raises(ValueError, match="segmented"):
        augment_batch(images, None, "segmented", AugmentConfig())
    views, warped = augment_batch(images, None, "full", AugmentConfig())
    assert warped is None and views.shape == images.shape


def test_intensity_ops_keep_values_finite_and_change_them() -> None:
    images, hearts = _batch()
    cfg = dataclasses.replace(IDENTITY, brightness=0.3, contrast=(0.5, 1.5), gamma=(0.5, 2.0),
                              p_intensity=1.0)
    views, _ = augment_batch(images, hearts, "full", cfg, torch.Generator().manual_seed(0))
    assert torch.isfinite(views).all()
    assert not torch.allclose(views, images, atol=1e-3)
    # Geometry is untouched (identity crop, no flip/rotation): ranks of pixel values within a
    # sample are preserved by these monotone maps.
    i = 0
    order_in = images[i].flatten().argsort()
    assert (views[i].flatten()[order_in].diff() >= -1e-5).all()


def test_config_validation_and_dict_round_trip() -> None:
    with pytest.raises(ValueError, match="crop_scale"):
        AugmentConfig(crop_scale=(0.0, 1.0))
    with pytest.raises(ValueError, match="p_hflip"):
        AugmentConfig(p_hflip=1.5)
    cfg = AugmentConfig(rotation_deg=10.0)
    assert AugmentConfig.from_dict(cfg.to_dict()) == cfg
