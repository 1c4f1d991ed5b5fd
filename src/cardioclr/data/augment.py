"""Batched training augmentations that run on the training device (the GPU when there is one).

Two families, one module: the classifier inputs' augmentation (SimCLR pretraining and light
fine-tuning: :class:`AugmentConfig`, :func:`augment_batch`, :func:`two_views`) and the
segmentation network's label-safe crop augmentation (:class:`SegmentationAugmentConfig`,
:func:`augment_segmentation_batch`, at the end of this module).

Classifier inputs.

The paper (Nakashima et al.) pretrains with random crop, contrast, horizontal and vertical
flips and rotation; we add brightness, gamma and Gaussian noise. Every sample of a batch
draws its own parameters, but the whole batch is transformed with one ``F.grid_sample`` call
and a few element-wise ops, so the CPU only has to index pre-loaded tensors.

Order of operations (per sample, all batched)::

    1. geometry   one affine grid per sample = random resized crop (scale, aspect, position)
                  composed with a rotation and horizontal/vertical flips; the image and its
                  heart mask are resampled with the SAME grid (mask thresholded at 0.5)
    2. intensity  brightness (add), contrast (scale about the mean), gamma, Gaussian noise;
                  statistics are taken inside the heart in ``segmented`` mode
    3. mask       ``views.apply_input_mask`` with the warped heart (``segmented`` mode only),
                  last, so neither the geometry nor the intensity ops can leave tissue or
                  brightness outside the heart: every nonzero pixel lies inside the mask

Intensities are those of the slice store (robustly normalised, mostly in [0, 1]); nothing
here re-normalises them, so the fine-tuning stage sees the same intensity scale.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from cardioclr.data.views import apply_input_mask, check_mode

__all__ = ["AugmentConfig", "SegmentationAugmentConfig", "augment_batch", "augment_segmentation_batch",
           "sample_affine", "two_views"]


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random augmentations (defaults: SimCLR's crop, moderate MRI intensity ops).

    Geometry: ``crop_scale`` is the crop's area as a fraction of the image, ``crop_ratio`` its
    width/height aspect (sampled log-uniformly), ``rotation_deg`` the maximum absolute angle in
    degrees (uniform in [-r, r]); flips happen with ``p_hflip``/``p_vflip``.
    Intensity (images ~[0, 1]): brightness offset uniform in [-b, b]; contrast factor in
    ``contrast``; gamma exponent log-uniform in ``gamma`` (on the sample's min-max range);
    these three are applied together with probability ``p_intensity`` (SimCLR's colour-jitter
    probability 0.8). Gaussian noise with std uniform in [0, ``noise_std``] with ``p_noise``.
    """

    crop_scale: tuple[float, float] = (0.4, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    rotation_deg: float = 30.0
    p_hflip: float = 0.5
    p_vflip: float = 0.5
    brightness: float = 0.2
    contrast: tuple[float, float] = (0.7, 1.3)
    gamma: tuple[float, float] = (0.7, 1.5)
    p_intensity: float = 0.8
    noise_std: float = 0.05
    p_noise: float = 0.5

    def __post_init__(self) -> None:
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1, got {self.crop_scale}")
        if not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ValueError(f"crop_ratio must satisfy 0 < min <= max, got {self.crop_ratio}")
        if not 0 < self.gamma[0] <= self.gamma[1]:
            raise ValueError(f"gamma must satisfy 0 < min <= max, got {self.gamma}")
        for name in ("p_hflip", "p_vflip", "p_intensity", "p_noise"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {p}")

    @classmethod
    def identity(cls) -> AugmentConfig:
        """No augmentation at all (output = input, masked in ``segmented`` mode); for tests."""
        return cls(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), rotation_deg=0.0, p_hflip=0.0,
                   p_vflip=0.0, brightness=0.0, contrast=(1.0, 1.0), gamma=(1.0, 1.0),
                   p_intensity=0.0, noise_std=0.0, p_noise=0.0)

    def to_dict(self) -> dict[str, float | list[float]]:
        """Plain dict (tuples as lists) for YAML/JSON and Lightning hyper-parameters."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AugmentConfig:
        """Inverse of :meth:`to_dict`."""
        kwargs: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**kwargs)


def _uniform(n: int, lo: float, hi: float, device: torch.device, generator: torch.Generator | None
             ) -> Tensor:
    """(n,) float32 uniform in [lo, hi)."""
    return lo + (hi - lo) * torch.rand(n, device=device, generator=generator)


def _bernoulli(n: int, p: float, device: torch.device, generator: torch.Generator | None) -> Tensor:
    """(n,) bool, True with probability p."""
    return torch.rand(n, device=device, generator=generator) < p


def sample_affine(n: int, height: int, width: int, cfg: AugmentConfig, device: torch.device,
                  generator: torch.Generator | None = None) -> Tensor:
    """One random affine sampling matrix per sample for ``F.affine_grid``: (n, 2, 3) float32.

    The matrix maps normalised output coordinates (x, y in [-1, 1]) to input coordinates:
    ``in = centre + R(angle) @ diag(crop_w * flip_x, crop_h * flip_y) @ out``, i.e. the output
    shows a crop of relative size (crop_w, crop_h) centred at ``centre`` (kept inside the
    image), rotated about its centre and possibly mirrored. The rotation is done in pixel units
    so that it stays a rotation (not a shear) on non-square images.
    """
    log_lo, log_hi = math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1])
    area = _uniform(n, *cfg.crop_scale, device, generator)
    ratio = torch.exp(_uniform(n, log_lo, log_hi, device, generator))
    # Crop side fractions; an aspect far from 1 at large area would exceed the image: clamp.
    cw = torch.sqrt(area * ratio).clamp(max=1.0)
    ch = torch.sqrt(area / ratio).clamp(max=1.0)
    # Centre in normalised coordinates such that the (unrotated) crop lies inside the image.
    cx = (1.0 - cw) * _uniform(n, -1.0, 1.0, device, generator)
    cy = (1.0 - ch) * _uniform(n, -1.0, 1.0, device, generator)
    angle = torch.deg2rad(_uniform(n, -cfg.rotation_deg, cfg.rotation_deg, device, generator))
    fx = 1.0 - 2.0 * _bernoulli(n, cfg.p_hflip, device, generator).float()  # -1 = mirror x
    fy = 1.0 - 2.0 * _bernoulli(n, cfg.p_vflip, device, generator).float()
    cos, sin = torch.cos(angle), torch.sin(angle)
    # Rotation in pixels conjugated into normalised units: D^-1 R D with D = diag(W/2, H/2).
    sx, sy = width / 2.0, height / 2.0
    r00, r01 = cos, -sin * sy / sx
    r10, r11 = sin * sx / sy, cos
    theta = torch.empty(n, 2, 3, device=device, dtype=torch.float32)
    theta[:, 0, 0] = r00 * cw * fx
    theta[:, 0, 1] = r01 * ch * fy
    theta[:, 1, 0] = r10 * cw * fx
    theta[:, 1, 1] = r11 * ch * fy
    theta[:, 0, 2] = cx
    theta[:, 1, 2] = cy
    return theta


def _affine_grid(theta: Tensor, height: int, width: int) -> Tensor:
    """``F.affine_grid(theta, (B, C, H, W), align_corners=False)`` computed element-wise.

    theta (B, 2, 3) -> grid (B, H, W, 2). Same values (to float rounding); about 4x faster on
    CPU than ``F.affine_grid``'s batched (H*W, 3) x (3, 2) matrix products.
    """
    dev, dt = theta.device, theta.dtype
    xs = ((torch.arange(width, device=dev, dtype=dt) * 2 + 1) / width - 1).view(1, 1, width)
    ys = ((torch.arange(height, device=dev, dtype=dt) * 2 + 1) / height - 1).view(1, height, 1)
    t = theta.reshape(-1, 6, 1, 1)
    gx = t[:, 0] * xs + t[:, 1] * ys + t[:, 2]
    gy = t[:, 3] * xs + t[:, 4] * ys + t[:, 5]
    return torch.stack([gx, gy], dim=-1)


def rotate_about_centre(x: Tensor, degrees: float, padding_mode: str = "zeros") -> Tensor:
    """(B, C, H, W) float rotated in-plane by ``degrees`` about the grid centre (bilinear).

    The rotation is in pixel units, so a non-square grid is rotated, not sheared. What enters
    from outside the grid is ``padding_mode`` (``zeros``, or ``border``: the edge repeated).
    Rotating back by ``-degrees`` returns ``x`` up to interpolation, except the corners that
    left the grid. Test-time views of the classifier (:mod:`cardioclr.classify.recipe`) and of
    the segmentation network (:mod:`cardioclr.segment.predict`).
    """
    b, _, h, w = x.shape
    a = math.radians(degrees)
    cos, sin = math.cos(a), math.sin(a)
    theta = torch.tensor([[cos, -sin * h / w, 0.0], [sin * w / h, cos, 0.0]], dtype=x.dtype,
                         device=x.device).expand(b, 2, 3)
    grid = F.affine_grid(theta, [b, 1, h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)


# Added to pixels outside the region before taking the min (subtracted for the max): far
# beyond any intensity the store (clipped to [-0.5, 1.5]) and these ops can produce.
_OUTSIDE = 1.0e4


def _masked_stats(x: Tensor, region: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample mean, min and max of x (B, C, H, W) over ``region`` (0/1, same shape) or all.

    Returns three (B, 1, 1, 1) tensors. An empty region falls back to the whole image (its
    values are masked to zero at the end anyway). Float arithmetic instead of boolean
    indexing/``masked_fill``, which are several times slower on CPU.
    """
    b = x.shape[0]
    flat = x.reshape(b, -1)
    if region is None:
        return (flat.mean(1).view(b, 1, 1, 1), flat.amin(1).view(b, 1, 1, 1),
                flat.amax(1).view(b, 1, 1, 1))
    w = region.reshape(b, -1).to(flat.dtype)
    n = w.sum(1, keepdim=True)
    w = torch.where(n > 0, w, 1.0)  # (B, N): empty regions -> whole image
    penalty = (1.0 - w) * _OUTSIDE
    mean = (flat * w).sum(1) / w.sum(1)
    lo = (flat + penalty).amin(1)
    hi = (flat - penalty).amax(1)
    return mean.view(b, 1, 1, 1), lo.view(b, 1, 1, 1), hi.view(b, 1, 1, 1)


def _intensity(x: Tensor, region: Tensor | None, cfg: AugmentConfig,
               generator: torch.Generator | None) -> Tensor:
    """Gamma, contrast, brightness (together, with probability p_intensity) and noise.

    x: (B, C, H, W) float32. Per sample, with statistics taken over ``region`` (or the image):
    ``g = lo + span * ((x - lo) / span) ** gamma`` (gamma on the sample's own [min, max], so
    negative store values are handled and the range is kept), then
    ``y = (g - mean) * contrast + mean + brightness``, then ``y + sigma * N(0, 1)``.
    Samples not drawn get gamma = contrast = 1 and brightness = sigma = 0 (identity up to
    rounding) instead of a blend, which keeps this to a few passes over the batch.
    """
    b, dev = x.shape[0], x.device

    def per_sample(v: Tensor) -> Tensor:
        return v.view(b, 1, 1, 1)

    apply = per_sample(_bernoulli(b, cfg.p_intensity, dev, generator))
    # Draw every parameter even when unused, so the random stream does not depend on data.
    offset = per_sample(_uniform(b, -cfg.brightness, cfg.brightness, dev, generator))
    factor = per_sample(_uniform(b, *cfg.contrast, dev, generator))
    log_g = _uniform(b, math.log(cfg.gamma[0]), math.log(cfg.gamma[1]), dev, generator)
    gamma = per_sample(torch.exp(log_g))
    noise_on = per_sample(_bernoulli(b, cfg.p_noise, dev, generator))
    sigma = per_sample(_uniform(b, 0.0, cfg.noise_std, dev, generator))
    offset = torch.where(apply, offset, 0.0)
    factor = torch.where(apply, factor, 1.0)
    gamma = torch.where(apply, gamma, 1.0)
    sigma = torch.where(noise_on, sigma, 0.0)

    if cfg.p_intensity > 0:  # not `apply.any()`: that would synchronise with the GPU
        mean, lo, hi = _masked_stats(x, region)
        span = (hi - lo).clamp(min=1e-6)
        y = (x - lo).mul_(1.0 / span).clamp_(0.0, 1.0).pow_(gamma)
        # (lo + span * y - mean) * factor + mean + offset as one fused multiply-add.
        x = torch.addcmul((lo - mean) * factor + mean + offset, y, span * factor)
    if cfg.noise_std > 0 and cfg.p_noise > 0:
        noise = torch.randn(x.shape, device=dev, generator=generator, dtype=x.dtype)
        x = torch.addcmul(x, noise, sigma)
    return x


def augment_batch(images: Tensor, hearts: Tensor | None, mode: str, cfg: AugmentConfig,
                  generator: torch.Generator | None = None) -> tuple[Tensor, Tensor | None]:
    """One random view of every sample of a batch, on the batch's device.

    Args:
        images: (B, 1, H, W) float (or (B, H, W), unsqueezed), store intensities ~[0, 1].
        hearts: (B, 1, H, W) or (B, H, W) heart masks (0/1, any dtype), or None in ``full``
            mode when no mask is loaded. Required in ``segmented`` mode.
        mode: input mode (``full``, ``segmented``, ``roi``; see :mod:`cardioclr.data.views`).
        cfg: augmentation ranges.
        generator: a ``torch.Generator`` on the images' device for reproducible views (the
            validation loss uses a fixed seed); None uses the global RNG.

    Returns:
        ``(views, warped_hearts)``: views (B, 1, H, W) float32; warped_hearts (B, 1, H, W)
        float32 0/1 (the mask carried through the same geometric transform), or None when
        ``hearts`` is None. In ``segmented`` mode every nonzero pixel of ``views`` lies inside
        ``warped_hearts``.
    """
    return _augment(images, hearts, mode, cfg, generator, repeat=1)


def _augment(images: Tensor, hearts: Tensor | None, mode: str, cfg: AugmentConfig,
             generator: torch.Generator | None, repeat: int) -> tuple[Tensor, Tensor | None]:
    """:func:`augment_batch` of the batch repeated ``repeat`` times (``repeat`` * B samples)."""
    check_mode(mode)
    if images.ndim == 3:
        images = images[:, None]
    if hearts is not None and hearts.ndim == 3:
        hearts = hearts[:, None]
    if mode == "segmented" and hearts is None:
        raise ValueError("segmented mode needs the heart masks")
    # Autocast (bf16 on GPU) would resample in low precision; augmentation is cheap anyway.
    with torch.autocast(device_type=images.device.type, enabled=False):
        b, c, h, w = images.shape
        n = repeat * b
        # Image and mask as channels of one float32 tensor, filled by dtype-converting copies
        # (float16 images, uint8 masks from the loader): no intermediate concatenations.
        k = c + (0 if hearts is None else hearts.shape[1])
        src = torch.empty(n, k, h, w, device=images.device, dtype=torch.float32)
        for r in range(repeat):
            src[r * b:(r + 1) * b, :c] = images
            if hearts is not None:
                src[r * b:(r + 1) * b, c:] = hearts
        theta = sample_affine(n, h, w, cfg, images.device, generator)
        # One resampling call for image and mask together: exactly the same geometry.
        out = F.grid_sample(src, _affine_grid(theta, h, w), mode="bilinear", padding_mode="zeros",
                            align_corners=False)
        x = out[:, :c]
        warped = (out[:, c:] > 0.5).float() if hearts is not None else None
        # Masks beyond the image's C channels (multi-task targets) ride along, warped only.
        masks = warped[:, :c] if warped is not None and mode == "segmented" else warped
        region = masks if mode == "segmented" else None
        x = _intensity(x, region, cfg, generator)
        if masks is not None:
            # Last, so brightness/noise cannot make the background nonzero.
            x = apply_input_mask(x, masks, mode)
    return x, warped


def two_views(images: Tensor, hearts: Tensor | None, mode: str, cfg: AugmentConfig,
              generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """The two independently augmented views SimCLR contrasts: ((B, C, H, W), (B, C, H, W)).

    Both views come from one :func:`augment_batch` call on the batch repeated twice (2B
    samples, each with its own parameters): one resampling kernel instead of two. C = 1,
    except in ``anatomy`` mode where ``hearts`` holds the (B, 3, H, W) LV, MYO and RV masks:
    they are warped with the image (same grid, thresholded) but get no intensity change, and
    follow the image as channels 1-3 of each view.
    """
    b = images.shape[0]
    views, warped = _augment(images, hearts, mode, cfg, generator, repeat=2)
    if mode == "anatomy":
        if warped is None:
            raise ValueError("anatomy mode needs the structure masks")
        views = torch.cat([views, warped], dim=1)
    return views[:b], views[b:]

# ----------------------------------------------------------------- segmentation (label-safe)
#
# Batched, label-safe training augmentation on the device (one ``grid_sample`` per batch).
#
# One random affine map per sample does the crop and the geometry at once: a ``crop`` x ``crop``
# window around the heart (with jitter, sometimes anywhere) of the S x S store slice, rotated,
# scaled and mirrored. Images are sampled bilinearly, labels with nearest neighbour, so labels move
# with the image (mirroring is safe for segmentation: the RV stays where the image shows it).
# An optional smooth random displacement (elastic deformation) is added to the same sampling grid.
# Intensity changes (contrast, brightness, gamma, multiplicative bias field, low-resolution
# simulation, Gaussian noise) touch the image only. The transforms and their ranges follow
# nnU-Net's 2D setup; they are written out here because batched on the device in one
# ``grid_sample`` they cost ~1 % of a CPU training step, where MONAI's per-sample dictionary
# transforms cost more than the network on 2 cores.


@dataclass(frozen=True)
class SegmentationAugmentConfig:
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


def augment_segmentation_batch(image: Tensor, labels: Tensor, centre_yx: Tensor, crop: int,
                               cfg: SegmentationAugmentConfig) -> tuple[Tensor, Tensor]:
    """Random crop + affine + intensity augmentation of a batch.

    ``image``: float (B, C, S, S) (a slice, or a slice and its neighbours: every channel gets the
    same geometry and intensity change); ``labels``: integer (B, S, S); ``centre_yx``: float
    (B, 2), the heart centre of each slice in pixels (the slice centre when it has no heart).
    Returns (float (B, C, crop, crop), long (B, crop, crop)).
    """
    b, _, h, w = image.shape
    dev = image.device
    # Crop centre in pixels: heart centre + jitter, or uniform over the slice.
    jit = (torch.rand(b, 2, device=dev) * 2 - 1) * cfg.jitter * crop
    centre = centre_yx.to(dev, torch.float32) + jit
    anywhere = torch.rand(b, device=dev) < cfg.random_crop_prob
    rand_c = torch.stack([_uniform(b, crop / 2, max(h - crop / 2, crop / 2), dev, None),
                          _uniform(b, crop / 2, max(w - crop / 2, crop / 2), dev, None)], dim=1)
    centre = torch.where(anywhere[:, None], rand_c, centre)
    # affine_grid works in normalised coordinates (-1..1 across the input, align_corners=False).
    cy = (2 * centre[:, 0] + 1) / h - 1
    cx = (2 * centre[:, 1] + 1) / w - 1
    angle = _uniform(b, -cfg.rotate_deg, cfg.rotate_deg, dev, None) * math.pi / 180
    zoom = torch.exp(_uniform(b, math.log(cfg.scale_min), math.log(cfg.scale_max), dev, None))
    fx = torch.where(_bernoulli(b, cfg.flip_prob, dev, None), -1.0, 1.0)
    fy = torch.where(_bernoulli(b, cfg.flip_prob, dev, None), -1.0, 1.0)
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
    c = _uniform(b, 1 - cfg.contrast, 1 + cfg.contrast, dev, None).view(b, 1, 1, 1)
    offset = _uniform(b, -cfg.brightness, cfg.brightness, dev, None).view(b, 1, 1, 1)
    img = (img - mean) * c + mean + offset
    if cfg.gamma_prob > 0:
        log_g = _uniform(b, -math.log(cfg.gamma_max), math.log(cfg.gamma_max), dev, None)
        g = torch.exp(log_g).view(b, 1, 1, 1)
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
        std = _uniform(b, 0, cfg.noise_std, dev, None).view(b, 1, 1, 1)
        std = std * (torch.rand(b, device=dev) < cfg.noise_prob).view(b, 1, 1, 1)
        img = img + torch.randn_like(img) * std
    return img, lab
