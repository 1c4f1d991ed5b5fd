"""Batched, label-safe training augmentation on the device (one ``grid_sample`` per batch).

One random affine map per sample does the crop and the geometry at once: a ``crop`` x ``crop``
window around the heart (with jitter, sometimes anywhere) of the S x S store slice, rotated,
scaled and mirrored. Images are sampled bilinearly, labels with nearest neighbour, so labels move
with the image (mirroring is safe for segmentation: the RV stays where the image shows it).
An optional smooth random displacement (elastic deformation) is added to the same sampling grid.
Intensity changes (contrast, brightness, gamma, multiplicative bias field, low-resolution
simulation, Gaussian noise) touch the image only. The transforms and their ranges follow
nnU-Net's 2D setup; they are written out here because batched on the device in one
``grid_sample`` they cost ~1 % of a CPU training step, where MONAI's per-sample dictionary
transforms cost more than the network on 2 cores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random transforms. Angles in degrees, scale as a zoom factor."""

    rotate_deg: float = 180.0
    scale_min: float = 0.8
    scale_max: float = 1.25
    flip_prob: float = 0.5
    jitter: float = 0.35          # crop centre moves up to this fraction of the crop size
    random_crop_prob: float = 0.2  # crop centre anywhere (teaches background far from the heart)
    contrast: float = 0.25        # multiply (x - mean) by U(1 - c, 1 + c)
    brightness: float = 0.1       # add U(-b, b)
    gamma_prob: float = 0.3
    gamma_max: float = 1.5        # gamma in [1/g, g] on the image rescaled to 0-1
    noise_prob: float = 0.5
    noise_std: float = 0.05
    elastic_prob: float = 0.0     # smooth displacement field on a 5 x 5 control grid
    elastic_px: float = 0.0       # its SD per control point, in output (crop) pixels
    bias_prob: float = 0.0        # multiply by exp(smooth field) (MRI coil inhomogeneity)
    bias_strength: float = 0.3    # SD of the log field on a 4 x 4 control grid
    lowres_prob: float = 0.0      # down- then up-sample by a factor in [1, lowres_max]
    lowres_max: float = 2.0


def _uniform(n: int, low: float, high: float, device: torch.device) -> torch.Tensor:
    return torch.rand(n, device=device) * (high - low) + low


def augment_batch(image: torch.Tensor, labels: torch.Tensor, centre_yx: torch.Tensor, crop: int,
                  cfg: AugmentConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Random crop + affine + intensity augmentation of a batch.

    ``image``: float (B, 1, S, S); ``labels``: integer (B, S, S); ``centre_yx``: float (B, 2),
    the heart centre of each slice in pixels (the slice centre when it has no heart). Returns
    (float (B, 1, crop, crop), long (B, crop, crop)).
    """
    b, _, h, w = image.shape
    dev = image.device
    # Crop centre in pixels: heart centre + jitter, or uniform over the slice.
    jit = (torch.rand(b, 2, device=dev) * 2 - 1) * cfg.jitter * crop
    centre = centre_yx.to(dev, torch.float32) + jit
    anywhere = torch.rand(b, device=dev) < cfg.random_crop_prob
    rand_c = torch.stack([_uniform(b, crop / 2, max(h - crop / 2, crop / 2), dev),
                          _uniform(b, crop / 2, max(w - crop / 2, crop / 2), dev)], dim=1)
    centre = torch.where(anywhere[:, None], rand_c, centre)
    # affine_grid works in normalised coordinates (-1..1 across the input, align_corners=False).
    cy = (2 * centre[:, 0] + 1) / h - 1
    cx = (2 * centre[:, 1] + 1) / w - 1
    angle = _uniform(b, -cfg.rotate_deg, cfg.rotate_deg, dev) * math.pi / 180
    zoom = torch.exp(_uniform(b, math.log(cfg.scale_min), math.log(cfg.scale_max), dev))
    fx = torch.where(torch.rand(b, device=dev) < cfg.flip_prob, -1.0, 1.0)
    fy = torch.where(torch.rand(b, device=dev) < cfg.flip_prob, -1.0, 1.0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    sx, sy = crop / w / zoom, crop / h / zoom  # output half-width in input units, zoomed
    theta = torch.zeros(b, 2, 3, device=dev)
    theta[:, 0, 0] = cos * sx * fx
    theta[:, 0, 1] = -sin * sy * fy
    theta[:, 1, 0] = sin * sx * fx
    theta[:, 1, 1] = cos * sy * fy
    theta[:, 0, 2] = cx
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta, [b, 1, crop, crop], align_corners=False)
    if cfg.elastic_prob > 0 and cfg.elastic_px > 0:
        # Displacement in output pixels, converted to normalised input units (x, y order).
        coarse = torch.randn(b, 2, 5, 5, device=dev) * cfg.elastic_px
        coarse = coarse * (torch.rand(b, 1, 1, 1, device=dev) < cfg.elastic_prob)
        disp = F.interpolate(coarse, size=(crop, crop), mode="bicubic", align_corners=True)
        scale = torch.stack([2.0 / w / zoom, 2.0 / h / zoom], dim=1).view(b, 2, 1, 1)
        grid = grid + (disp * scale).permute(0, 2, 3, 1)
    img = F.grid_sample(image.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    lab = F.grid_sample(labels[:, None].float(), grid, mode="nearest", padding_mode="zeros",
                        align_corners=False)[:, 0].round().long()
    # Intensity: contrast around the mean, brightness, gamma on 0-1, additive noise.
    mean = img.mean(dim=(1, 2, 3), keepdim=True)
    c = _uniform(b, 1 - cfg.contrast, 1 + cfg.contrast, dev).view(b, 1, 1, 1)
    img = (img - mean) * c + mean + _uniform(b, -cfg.brightness, cfg.brightness, dev).view(b, 1, 1, 1)
    if cfg.gamma_prob > 0:
        g = torch.exp(_uniform(b, -math.log(cfg.gamma_max), math.log(cfg.gamma_max), dev)).view(b, 1, 1, 1)
        use = (torch.rand(b, device=dev) < cfg.gamma_prob).view(b, 1, 1, 1)
        # The store clips intensities to [-0.5, 1.5]; map to 0-1, apply gamma, map back.
        u = ((img + 0.5) / 2).clamp(0, 1)
        img = torch.where(use, u.pow(g) * 2 - 0.5, img)
    if cfg.bias_prob > 0:
        log_field = torch.randn(b, 1, 4, 4, device=dev) * cfg.bias_strength
        log_field = log_field * (torch.rand(b, 1, 1, 1, device=dev) < cfg.bias_prob)
        img = img * torch.exp(F.interpolate(log_field, size=(crop, crop), mode="bicubic",
                                            align_corners=True))
    if cfg.lowres_prob > 0:
        # One factor per batch (interpolate takes one size); a random subset of samples uses it.
        f = float(torch.empty(()).uniform_(1.0, cfg.lowres_max))
        small = max(int(round(crop / f)), 8)
        low = F.interpolate(F.interpolate(img, size=(small, small), mode="area"), size=(crop, crop),
                            mode="bilinear", align_corners=False)
        use = (torch.rand(b, device=dev) < cfg.lowres_prob).view(b, 1, 1, 1)
        img = torch.where(use, low, img)
    if cfg.noise_prob > 0:
        std = _uniform(b, 0, cfg.noise_std, dev).view(b, 1, 1, 1)
        std = std * (torch.rand(b, device=dev) < cfg.noise_prob).view(b, 1, 1, 1)
        img = img + torch.randn_like(img) * std
    return img, lab
