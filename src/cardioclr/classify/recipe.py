"""Training details for small-data image classification, as small pieces any classifier reuses.

A :class:`TrainingRecipe` names which of them a run uses; every field's default is "off", so
``TrainingRecipe()`` trains exactly as the paper's protocol did (Adam at a constant learning
rate, uniform shuffling, hard cross-entropy, last weights, one view at prediction). The pieces:

* **class-balanced sampling** (:func:`patient_balanced_weights`, :func:`balanced_sampler`): slice
  pairs drawn with replacement so that every class is equally likely and, inside a class, every
  *patient* is equally likely whatever its slice count (a patient with 14 slices must not
  count twice as much as one with 7);
* **label smoothing** and **mixup / cutmix** (:func:`soft_targets`, :func:`mix_batch`,
  :func:`soft_cross_entropy`): targets are probability vectors. A training item is an ED/ES
  slice *pair* (B, 2, H, W), mixed as one sample: ED and ES get the same partner, the same
  lambda and (cutmix) the same box, so the pair stays one anatomy at two times. The heart masks
  are mixed with them (union for mixup, the pasted box for cutmix), so ``segmented`` inputs keep
  both hearts' pixels;
* **cosine schedule with linear warm-up** (:func:`warmup_cosine_lambda`), stepped per batch, over
  a horizon in *epochs* that CV runs and final models share (``schedule_epochs``), so the final
  model trained for the CV epoch count sees the same learning rates as the CV runs up to that epoch;
* **weight averaging**: an exponential moving average of the weights
  (:func:`ema_callback`, Lightning's ``WeightAveraging`` over ``torch.optim.swa_utils``, with
  the usual decay warm-up so that the average leaves the random initial weights in a few steps),
  evaluated at every validation and copied into the model when training ends, so the EMA
  weights are the ones selected, saved and tested;
* **test-time augmentation** (:func:`tta_angles`, :func:`rotate_pairs`, :func:`tta_proba`):
  softmax probabilities averaged over the identity and small rotations (image and masks
  rotated together). No flips: a mirrored short-axis slice puts the RV on the wrong side of the
  LV, which no real image shows (the fine-tuning augmentation never flips either);
* **seed ensembles** are the ``--seeds`` of ``cardioclr finetune`` (one final model per seed,
  patient probabilities averaged); the recipe does not change them.

:data:`RECIPES` holds the named presets (``none``, ``small-data``). ``small-data``'s values are the
common small-data settings (label smoothing 0.1, light mixup, short warm-up, EMA over a few
epochs, a few TTA views), set before measuring; ``benchmarks/recipe_cv.py`` checks them against
``none`` by repeated CV on the train patients, and ``benchmarks/README.md`` holds what was
measured. All tensors may have any channel count (anatomy channels, patient
bags): the pieces act on the batch dimension and the last two (spatial) dimensions only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import WeightedRandomSampler

from cardioclr.accel import Batch, DeviceBatches
from cardioclr.choices import RECIPE_NAMES, SCHEDULES
from cardioclr.data.augment import rotate_about_centre
from cardioclr.errors import CardioclrError

#: Largest TTA rotation in degrees: inside the fine-tuning augmentation's +-15 degrees, so every
#: view is one the network saw during training.
TTA_MAX_DEG = 10.0


@dataclass(frozen=True)
class TrainingRecipe:
    """Which small-data training details a classifier run uses (every default = off).

    ``balanced_sampling``: draw slice pairs class- and patient-balanced (with replacement, as many
    per epoch as there are pairs). ``label_smoothing``: epsilon in [0, 1) (target = (1 - eps)
    one-hot + eps / K). ``mixup_alpha`` / ``cutmix_alpha``: Beta(alpha, alpha) concentration of
    the mixing weight, 0 = off; with both on, each batch uses one of them with probability 1/2.
    ``schedule``: ``constant`` or ``cosine`` (to 0 at the end of the schedule horizon) with
    ``warmup_epochs`` of linear warm-up. ``ema_decay``: per-step EMA decay of the weights in
    (0, 1), 0 = off. ``tta``: number of prediction views (1 = off): the identity plus
    ``tta - 1`` rotations evenly spread in [-TTA_MAX_DEG, +TTA_MAX_DEG] degrees.
    ``name``: the preset this recipe is, or ``custom`` when its fields differ from every
    preset it was built from (a record; the fields are what count).
    """

    name: str = "none"
    balanced_sampling: bool = False
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    schedule: str = "constant"
    warmup_epochs: int = 0
    ema_decay: float = 0.0
    tta: int = 1

    def __post_init__(self) -> None:
        if not 0.0 <= self.label_smoothing < 1.0:
            raise CardioclrError(f"label smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.mixup_alpha < 0 or self.cutmix_alpha < 0:
            raise CardioclrError("mixup and cutmix alphas must be >= 0 (0 = off)")
        if self.schedule not in SCHEDULES:
            raise CardioclrError(f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if self.warmup_epochs < 0:
            raise CardioclrError(f"warm-up epochs must be >= 0, got {self.warmup_epochs}")
        if not (self.ema_decay == 0.0 or 0.0 < self.ema_decay < 1.0):
            raise CardioclrError(f"EMA decay must be 0 (off) or in (0, 1), got {self.ema_decay}")
        if self.tta < 1:
            raise CardioclrError(f"--tta needs at least 1 view, got {self.tta}")

    @property
    def mixes(self) -> bool:
        """True when batches are mixed (mixup or cutmix)."""
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    @property
    def soft_labels(self) -> bool:
        """True when the loss needs probability targets (smoothing or mixing)."""
        return self.label_smoothing > 0 or self.mixes


#: Named presets (``small-data``: see the module docstring for how its values were set and checked).
RECIPES: dict[str, TrainingRecipe] = {
    "none": TrainingRecipe(),
    "small-data": TrainingRecipe(name="small-data", balanced_sampling=True, label_smoothing=0.1,
                                 mixup_alpha=0.2, schedule="cosine", warmup_epochs=2,
                                 ema_decay=0.99, tta=5),
}
assert tuple(RECIPES) == RECIPE_NAMES  # the names --help lists (choices.py) are the presets here


#: The name of a recipe that is no preset (a preset with some fields changed).
CUSTOM = "custom"


def named_recipe(name: str) -> TrainingRecipe:
    """The preset ``name`` of :data:`RECIPES`; unknown names raise naming the choices."""
    if name not in RECIPES:
        raise CardioclrError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return RECIPES[name]


def as_recipe(value: TrainingRecipe | str | Mapping[str, Any] | None) -> TrainingRecipe:
    """A recipe from a preset name, a plain mapping (``config.yaml``, study options: its
    ``name``, a preset or ``custom``, is the base its other fields override) or a recipe
    (returned as is). A result whose fields differ from its base is named ``custom``."""
    if value is None:
        return TrainingRecipe()
    if isinstance(value, TrainingRecipe):
        # A preset with fields changed in place (study options patch the fields) is no longer it.
        preset = RECIPES.get(value.name)
        return value if preset is None or value == preset else replace(value, name=CUSTOM)
    if isinstance(value, str):
        return named_recipe(value)
    known = {f.name for f in fields(TrainingRecipe)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise CardioclrError(f"unknown recipe field(s) {unknown}; known: {', '.join(sorted(known))}")
    name = str(value.get("name", "none"))
    base = TrainingRecipe() if name == CUSTOM else named_recipe(name)
    recipe = replace(base, **{k: v for k, v in value.items() if k != "name"})
    return recipe if recipe == base else replace(recipe, name=CUSTOM)


# --------------------------------------------------------------------------- balanced sampling


def patient_balanced_weights(patient: np.ndarray | Tensor, labels: np.ndarray | Tensor) -> Tensor:
    """Sampling weight per item (N,) float64, summing to 1.

    ``patient`` (N,): patient key of each item (a slice pair); ``labels`` (N,): its class
    (constant within a patient). Weight = 1 / (classes present x patients of the item's class x
    items of the item's patient): every present class has probability 1/C and, inside a class,
    every patient the same share, whatever its number of slices.
    """
    pat = np.asarray(patient)
    lab = np.asarray(labels)
    if pat.shape != lab.shape or pat.ndim != 1 or pat.size == 0:
        raise ValueError("patient and labels must be equal-length non-empty 1-D arrays")
    _, p_inv, p_count = np.unique(pat, return_inverse=True, return_counts=True)
    w = np.zeros(pat.size, dtype=np.float64)
    classes = np.unique(lab)
    for c in classes:
        in_c = lab == c
        n_patients = np.unique(p_inv[in_c]).size
        w[in_c] = 1.0 / (classes.size * n_patients * p_count[p_inv[in_c]])
    return torch.from_numpy(w / w.sum())


def balanced_sampler(weights: Tensor, generator: torch.Generator) -> WeightedRandomSampler:
    """A DataLoader sampler drawing ``len(weights)`` items per epoch with replacement."""
    return WeightedRandomSampler(weights.tolist(), num_samples=int(weights.numel()), replacement=True,
                                 generator=generator)


class WeightedDeviceBatches(DeviceBatches):
    """:class:`~cardioclr.accel.DeviceBatches` whose epoch order is drawn with replacement
    from ``weights`` (N,) (the GPU-resident path of :func:`balanced_sampler`)."""

    def __init__(self, tensors: Any, batch_size: int, weights: Tensor,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(tensors, batch_size, shuffle=True, generator=generator)
        if int(weights.numel()) != self.n:
            raise ValueError("WeightedDeviceBatches: one weight per item needed")
        self.weights = weights.double().cpu()

    def __iter__(self) -> Any:
        order = torch.multinomial(self.weights, self.n, replacement=True,
                                  generator=self.generator).to(self.device)
        for i in range(len(self)):
            batch: Batch = self._take(order[i * self.batch_size:(i + 1) * self.batch_size])
            yield batch


# ------------------------------------------------------------------ soft targets and mixing


def soft_targets(labels: Tensor, n_classes: int, smoothing: float = 0.0) -> Tensor:
    """(B,) int64 class labels -> (B, K) float32 targets ``(1 - eps) one-hot + eps / K``."""
    t = F.one_hot(labels.long(), n_classes).float()
    return t * (1.0 - smoothing) + smoothing / n_classes


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean over the batch of ``-sum_k targets_k log softmax(logits)_k`` (targets (B, K) sum to 1)."""
    return -(targets * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


@dataclass(frozen=True)
class Mix:
    """How a batch was mixed: ``partner`` (B,) int64 permutation, ``lam`` the weight kept by each
    sample (its own share of the pixels for cutmix), ``kind`` ``mixup`` | ``cutmix`` | ``none``."""

    partner: Tensor
    lam: float
    kind: str


def mix_batch(images: Tensor, hearts: Tensor, targets: Tensor, recipe: TrainingRecipe,
              generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor, Mix]:
    """Mixup or cutmix of a batch of samples (each sample mixed with one partner).

    ``images`` (B, C, H, W) float, e.g. C = 2 for an ED/ES pair: every channel of a sample gets
    the same partner, lambda and box. ``hearts`` (B, M, H, W) 0/1 masks (any M), mixed the same
    way (mixup: union of the two hearts; cutmix: the pasted box carries the partner's mask).
    ``targets`` (B, K) probabilities -> ``lam * t + (1 - lam) * t[partner]`` (rows still sum
    to 1). One lambda ~ Beta(alpha, alpha) per batch (timm's default); for cutmix it is
    corrected to the box's true area after clipping to the image. Returns the mixed
    ``(images, hearts, targets, Mix)``; a recipe without mixing returns the inputs unchanged.
    """
    b = images.shape[0]
    dev = images.device
    identity = Mix(torch.arange(b, device=dev), 1.0, "none")
    if not recipe.mixes or b < 2:
        return images, hearts, targets, identity
    use_cutmix = recipe.cutmix_alpha > 0 and (
        recipe.mixup_alpha <= 0 or float(torch.rand((), generator=generator)) < 0.5)
    alpha = recipe.cutmix_alpha if use_cutmix else recipe.mixup_alpha
    beta = torch.distributions.Beta(torch.tensor(alpha), torch.tensor(alpha))
    # Drawn from the global RNG (Beta takes no generator); the partner order uses `generator`.
    lam = float(beta.sample())
    partner = torch.randperm(b, generator=generator).to(dev)
    if use_cutmix:
        h, w = images.shape[-2:]
        cut_h, cut_w = int(h * math.sqrt(1.0 - lam)), int(w * math.sqrt(1.0 - lam))
        cy = int(torch.randint(h, (), generator=generator))
        cx = int(torch.randint(w, (), generator=generator))
        y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
        x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
        box = torch.zeros(h, w, dtype=torch.bool, device=dev)
        box[y0:y1, x0:x1] = True
        lam = 1.0 - float((y1 - y0) * (x1 - x0)) / float(h * w)
        images = torch.where(box, images[partner], images)
        hearts = torch.where(box, hearts[partner], hearts)
        kind = "cutmix"
    else:
        images = lam * images + (1.0 - lam) * images[partner]
        hearts = torch.maximum(hearts, hearts[partner])
        kind = "mixup"
    targets = lam * targets + (1.0 - lam) * targets[partner]
    return images, hearts, targets, Mix(partner, lam, kind)


# ----------------------------------------------------------------------------- schedule


def warmup_cosine_lambda(steps_per_epoch: float, warmup_epochs: int, schedule_epochs: int
                         ) -> Callable[[int], float]:
    """Learning-rate factor of optimiser step ``t`` for ``torch.optim.lr_scheduler.LambdaLR``.

    Linear warm-up from ``1 / (warm-up steps)`` to 1 over ``warmup_epochs``, then half a cosine
    from 1 to 0 at ``schedule_epochs`` (and 0 after it). Epochs, not steps, define the horizon,
    so runs with more patients per epoch (final models) follow the same curve per epoch.
    """
    warm = warmup_epochs * steps_per_epoch
    total = max(schedule_epochs * steps_per_epoch, warm + 1.0)

    def factor(step: int) -> float:
        t = float(step)
        if t < warm:
            return (t + 1.0) / warm
        progress = min((t - warm) / (total - warm), 1.0)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def lr_scheduler_config(optimizer: torch.optim.Optimizer, recipe: TrainingRecipe, steps_per_epoch: float,
                        schedule_epochs: int) -> dict[str, Any] | None:
    """Lightning's ``lr_scheduler`` entry (stepped per batch), or None for a constant rate."""
    if recipe.schedule == "constant" and recipe.warmup_epochs == 0:
        return None
    factor: Callable[[int], float]
    if recipe.schedule == "constant":
        warm = recipe.warmup_epochs * steps_per_epoch
        factor = lambda step: min(1.0, (step + 1.0) / warm)  # noqa: E731 - warm-up, then constant
    else:
        factor = warmup_cosine_lambda(steps_per_epoch, recipe.warmup_epochs, schedule_epochs)
    return {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, factor), "interval": "step"}


# ------------------------------------------------------------------------- weight averaging


def ema_decay_at(decay: float, n_averaged: int) -> float:
    """EMA decay used for the update after ``n_averaged`` earlier updates (>= 1).

    ``min(decay, (1 + n) / (10 + n))``: the warm-up of TensorFlow's ExponentialMovingAverage and
    timm's ModelEma. Why: a fixed 0.99 on a small cohort (16 steps per epoch on 56 ACDC
    patients) keeps 85% of the random initial weights after the first epoch and 53% after the
    fourth; validated and early-stopped on those near-initial weights, the CV (val AUC 0.42) and the
    final model stayed at chance (ACDC macro AUC 0.50; benchmarks/README.md, classification_quality).
    With the warm-up the average follows the weights early and settles to ``decay`` later.
    """
    n = max(int(n_averaged), 1)
    return min(decay, (1.0 + n) / (10.0 + n))


def warmup_ema_avg_fn(decay: float) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """``avg_fn`` for ``torch.optim.swa_utils.AveragedModel``: EMA with :func:`ema_decay_at`."""

    def avg_fn(averaged: Tensor, current: Tensor, num_averaged: Tensor) -> Tensor:
        d = ema_decay_at(decay, int(num_averaged))
        return averaged * d + current * (1.0 - d)

    return avg_fn


def ema_callback(decay: float) -> Any:
    """Lightning's weight averaging (parameters and BatchNorm buffers) as an EMA of the weights
    with decay ``decay`` per step after a warm-up (:func:`ema_decay_at`): the averaged weights
    are evaluated at every validation, checkpointed, and copied into the model when training
    ends."""
    # Imported here: the callback pulls in Lightning, which the recipe's pure parts do not need.
    # WeightAveraging (updates after every optimiser step) with our avg_fn, not EMAWeightAveraging,
    # whose decay is fixed from the first step.
    from lightning.pytorch.callbacks import WeightAveraging

    return WeightAveraging(avg_fn=warmup_ema_avg_fn(decay))


# -------------------------------------------------------------------- test-time augmentation


def tta_angles(n_views: int) -> list[float]:
    """Rotation angles in degrees of ``n_views`` TTA views: 0 first, then +-TTA_MAX_DEG * k / m
    (e.g. 3 -> [0, -10, 10]; 5 -> [0, -5, 5, -10, 10])."""
    if n_views < 1:
        raise ValueError("n_views must be >= 1")
    others = n_views - 1
    m = (others + 1) // 2
    angles = [0.0]
    for k in range(1, m + 1):
        a = TTA_MAX_DEG * k / m
        angles += [-a, a]
    return angles[:n_views]


def rotate_pairs(images: Tensor, hearts: Tensor, degrees: float) -> tuple[Tensor, Tensor]:
    """Rotate (B, C, H, W) images and (B, M, H, W) masks by ``degrees`` about the centre.

    One sampling grid for both (bilinear images, masks thresholded at 0.5); 0 degrees returns
    the inputs themselves (an exact identity view).
    """
    if degrees == 0.0:
        return images, hearts
    c = images.shape[1]
    out = rotate_about_centre(torch.cat([images.float(), hearts.float()], dim=1), degrees)
    return out[:, :c], (out[:, c:] > 0.5).float()


def tta_proba(logits_fn: Callable[[Tensor, Tensor], Tensor], images: Tensor, hearts: Tensor,
              n_views: int) -> Tensor:
    """Mean softmax (B, K) float32 of ``logits_fn(images, hearts)`` over :func:`tta_angles` views.

    ``logits_fn`` does the input masking (e.g. ``network_inputs`` then the model), so a
    ``segmented`` view is masked with its rotated heart. ``n_views`` = 1 is the plain prediction.
    """
    total: Tensor | None = None
    for angle in tta_angles(n_views):
        x, hm = rotate_pairs(images, hearts, angle)
        p = torch.softmax(logits_fn(x, hm).float(), dim=1)
        total = p if total is None else total + p
    assert total is not None  # at least one view
    return total / float(n_views)
