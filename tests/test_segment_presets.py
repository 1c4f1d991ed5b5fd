"""Segmentation presets: the GPU preset's nnU-Net-like DynUNet (deep supervision) trains on a CPU
too, and the strong augmentation keeps labels valid."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from cardioclr.data.augment import SegmentationAugmentConfig as AugmentConfig
from cardioclr.data.augment import augment_segmentation_batch as augment_batch
from cardioclr.data.prepare import PrepareConfig, prepare
from cardioclr.data.store import SliceStore
from cardioclr.segment.model import build_network, label_map
from cardioclr.segment.predict import PredictConfig, predict
from cardioclr.segment.train import PRESETS, STRONG_AUGMENT, preset_config, train
from conftest import write_tiny_acdc


def test_gpu_preset_network_has_deep_supervision_only_while_training():
    net = build_network(PRESETS["gpu"]["network"])
    x = torch.randn(2, 1, 64, 64)
    net.train()
    assert net(x).shape == (2, 3, 4, 64, 64)  # main output + 2 deep-supervision heads
    net.eval()
    with torch.no_grad():
        assert net(x).shape == (2, 4, 64, 64)


@pytest.mark.slow
def test_gpu_preset_trains_and_predicts_on_a_cpu(tmp_path: Path):
    root = tmp_path / "data"
    write_tiny_acdc(root, n_per_class=3, seed=5)
    work = tmp_path / "work"
    prepare(PrepareConfig(data=str(root), out=str(work), spacing_mm=3.5, image_size=64, workers=1,
                          test_fraction=0.34, n_folds=2))
    cfg = preset_config(work, "gpu", max_epochs=1, batch_size=4, accelerator="cpu",
                        limit_train_batches=2, progress_bar=False)
    cfg = dataclasses.replace(cfg, crop=64, val_fraction=0.2)  # 2 x 2 px at the bottleneck
    info = train(cfg)
    assert info["epochs"] == 1 and info["config"]["network"]["deep_supervision"] == 2
    # Two patients: the big network's CPU inference over the whole tiny cohort was most of
    # this test's time, and two show the GPU preset's model file predicting as well.
    two = SliceStore(work).patient_ids[:2]
    s = predict(PredictConfig(work=str(work), tta=False, qc_png=False, device="cpu"), two)
    assert s["segmented"] == s["patients"] == 2 and not s["failed"]


def test_strong_augmentation_keeps_labels_valid_and_intensity_only_leaves_them_alone():
    torch.manual_seed(0)
    img = torch.rand(8, 1, 64, 64)
    lab = torch.zeros(8, 64, 64, dtype=torch.long)
    lab[:, 20:40, 20:40] = 3
    centre = torch.full((8, 2), 30.0)
    x, y = augment_batch(img, lab, centre, 32, STRONG_AUGMENT)
    assert x.shape == (8, 1, 32, 32) and y.shape == (8, 32, 32)
    assert torch.isfinite(x).all() and set(y.unique().tolist()) <= {0, 3}
    still = AugmentConfig(rotate_deg=0, scale_min=1, scale_max=1, flip_prob=0, jitter=0,
                          random_crop_prob=0, bias_prob=1.0, lowres_prob=1.0, gamma_prob=1.0)
    x2, y2 = augment_batch(img, lab, centre, 32, still)
    plain = AugmentConfig(rotate_deg=0, scale_min=1, scale_max=1, flip_prob=0, jitter=0, random_crop_prob=0,
                          contrast=0, brightness=0, gamma_prob=0, noise_prob=0)
    x0, y0 = augment_batch(img, lab, centre, 32, plain)
    assert torch.equal(y2, y0)  # bias field, low resolution, gamma: the image only
    assert not torch.allclose(x2, x0)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_crops_fit_their_networks(name):
    from cardioclr.segment.model import size_divisor

    cfg = preset_config("w", name)
    assert cfg.crop % size_divisor(cfg.network) == 0


def test_label_map_is_argmax_with_first_class_on_ties():
    scores = torch.randint(0, 3, (4, 4, 9, 7)).float()  # many ties between classes
    scores[0] = 0.0  # all classes tied: class 0
    expected = scores.argmax(dim=1)
    assert torch.equal(label_map(scores), expected)
    assert label_map(scores).dtype == torch.long and bool((label_map(scores)[0] == 0).all())
