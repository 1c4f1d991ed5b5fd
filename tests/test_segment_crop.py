"""Localise-then-segment: heart windows, exact crop / un-crop, the whole-slice fallback, and the
per-patient quality estimate (test-time disagreement)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cardioclr.data.augment import rotate_about_centre
from cardioclr.data.store import Geometry, PatientSlices
from cardioclr.segment.crop import Box, crop, full_box, heart_box, uncrop
from cardioclr.segment.model import NetworkConfig, build_network, network_config_dict
from cardioclr.segment.predict import (
    Agreement,
    LoadedModel,
    infer_slices,
    load_model,
    segment_patient,
)
from cardioclr.segment.qc import (
    DISAGREEMENT_FLAG,
    ROTATED_VIEWS_DISAGREEMENT_FLAG,
    low_confidence_threshold,
    quality_flags,
)
from cardioclr.segment.train import MODEL_FORMAT


def test_crop_uncrop_round_trip_is_exact_inside_and_background_outside():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 4, size=(3, 50, 60)).astype(np.uint8)
    for box in (Box(5, 7, 32), Box(-10, 40, 32), Box(30, -5, 32), Box(-8, -8, 80)):
        c = crop(a, box)
        assert c.shape == (3, box.size, box.size)
        back = uncrop(c, box, (50, 60))
        inside = np.zeros((50, 60), bool)
        inside[max(box.y0, 0):box.y0 + box.size, max(box.x0, 0):box.x0 + box.size] = True
        assert np.array_equal(back[:, inside], a[:, inside])  # exact on the original grid
        assert not back[:, ~inside].any()  # nothing invented outside the window
    # A window covering the slice gives the slice back unchanged.
    assert np.array_equal(uncrop(crop(a, full_box((50, 60), 16)), full_box((50, 60), 16), (50, 60)), a)


def test_a_mask_predicted_on_the_crop_lands_where_the_heart_is():
    labels = np.zeros((2, 96, 96), np.uint8)
    labels[:, 60:75, 10:30] = 3
    box = heart_box(labels, size=32, divisor=16)
    assert box is not None and box.size % 16 == 0 and box.size >= 32
    assert np.array_equal(uncrop(crop(labels, box), box, (96, 96)), labels)


def test_heart_box_grows_to_fit_a_big_heart_and_is_none_without_one():
    labels = np.zeros((1, 128, 128), np.uint8)
    assert heart_box(labels, 32, 16) is None
    labels[0, 10:90, 20:70] = 1  # 80 px tall
    box = heart_box(labels, 32, 16, margin_px=4)
    assert box is not None and box.size == 96  # 80 + 2 * 4 -> next multiple of 16
    assert box.y0 <= 10 - 4 and box.y0 + box.size >= 90 + 4


class _Constant(torch.nn.Module):
    """Logits that always pick one class: a network that finds no heart (class 0) or all heart."""

    def __init__(self, cls: int) -> None:
        super().__init__()
        self.cls = cls

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(x.shape[0], 4, *x.shape[2:])
        out[:, self.cls] = 1.0
        return out


def _patient(z: int = 2, s: int = 48) -> PatientSlices:
    img = np.random.default_rng(1).random((z, s, s)).astype(np.float32)
    geo = Geometry(np.eye(4), (z, s, s), (8.0, 1.5, 1.5), (s, s), (0, 0))
    return PatientSlices("p1", img, img.copy(), None, None, None, (8.0, 1.5, 1.5), geo)


def test_patient_whose_heart_is_not_found_gets_whole_slices_and_a_flag():
    model = LoadedModel(_Constant(0), 16, 48, 1.5, Path("model.pt"), {}, window=32)
    res = segment_patient(model, _patient(), torch.device("cpu"), tta=True)
    assert not res.localised and res.box is None
    assert res.labels["ED"].shape == (2, 48, 48)
    flags = quality_flags(res.disagreement, res.localised, DISAGREEMENT_FLAG)
    assert [f["flag"] for f in flags] == ["heart_not_localised"]


def test_found_heart_is_segmented_in_a_window_on_the_store_grid():
    model = LoadedModel(_Constant(3), 16, 48, 1.5, Path("model.pt"), {}, window=32)
    res = segment_patient(model, _patient(), torch.device("cpu"), tta=False)
    assert res.localised and res.box is not None
    lab = res.labels["ES"]
    assert lab.shape == (2, 48, 48)
    expected = uncrop(np.full((2, res.box.size, res.box.size), 3, np.uint8), res.box, (48, 48))
    assert np.array_equal(lab, expected)


class _Bright(torch.nn.Module):
    """Logits that call every pixel brighter than 0.5 LV cavity, the rest background."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(x.shape[0], 4, *x.shape[2:])
        out[:, 0] = 0.5
        out[:, 3] = x[:, 0]
        return out


def test_the_window_is_found_on_the_end_diastolic_slices_only():
    # ED shows the "heart" at the top left, ES (wrongly) at the bottom right: the window must be
    # the ED heart's (ED+ES together would give a window grown over both).
    s = 96
    ed = np.zeros((2, s, s), np.float32)
    es = np.zeros((2, s, s), np.float32)
    ed[:, 10:26, 12:28] = 1.0
    es[:, 70:86, 70:86] = 1.0
    geo = Geometry(np.eye(4), (2, s, s), (8.0, 1.5, 1.5), (s, s), (0, 0))
    ps = PatientSlices("p1", ed, es, None, None, None, (8.0, 1.5, 1.5), geo)
    model = LoadedModel(_Bright(), 16, s, 1.5, Path("model.pt"), {}, window=32)
    res = segment_patient(model, ps, torch.device("cpu"), tta=False)
    assert res.box == heart_box(np.where(ed > 0.5, 3, 0).astype(np.uint8), 32, 16)
    assert res.box is not None and res.box.size == 32
    assert res.labels["ED"][:, 10:26, 12:28].min() == 3


def test_disagreement_is_zero_for_agreeing_members_and_flags_above_threshold():
    model = LoadedModel(_Constant(3), 16, 48, 1.5, Path("model.pt"), {})
    agree = Agreement()
    infer_slices(model, np.zeros((2, 32, 32), np.float32), torch.device("cpu"), tta=True, agreement=agree)
    assert agree.disagreement() == 0.0
    half = Agreement()
    a = torch.zeros(1, 4, 4, dtype=torch.long)
    b = a.clone()
    a[0, :2] = 3
    b[0, :, :2] = 3
    half.add([a, b], a)  # member b overlaps the consensus on 4 of 8 + 8 voxels
    assert half.disagreement() == pytest.approx(1 - (1.0 + 0.5) / 2)
    assert quality_flags(DISAGREEMENT_FLAG + 0.01, True, DISAGREEMENT_FLAG)[0]["flag"] == "low_confidence"
    assert quality_flags(DISAGREEMENT_FLAG / 2, True, DISAGREEMENT_FLAG) == []
    assert quality_flags(math.nan, True, DISAGREEMENT_FLAG) == []


def test_rotated_views_have_their_own_low_confidence_threshold():
    rotated = low_confidence_threshold(mirrored_views=False)
    assert low_confidence_threshold(mirrored_views=True) == DISAGREEMENT_FLAG
    assert rotated == ROTATED_VIEWS_DISAGREEMENT_FLAG < DISAGREEMENT_FLAG
    between = (rotated + DISAGREEMENT_FLAG) / 2  # flagged for rotated views only
    assert quality_flags(between, True, rotated)[0]["flag"] == "low_confidence"
    assert f"> {rotated:g}" in quality_flags(between, True, rotated)[0]["detail"]
    assert quality_flags(between, True, DISAGREEMENT_FLAG) == []


class _PaddingBlob(torch.nn.Module):
    """LV cavity where pixels are 1, RV where they are 0.7, and RV also wherever the input is
    exactly 0 (the zero padding of a window that reaches past the slice border)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(x.shape[0], 4, *x.shape[2:])
        out[:, 0] = 0.5
        out[:, 3] = (x[:, 0] == 1).float()
        out[:, 1] = ((x[:, 0] == 0) | (x[:, 0] == 0.7)).float()
        return out


def test_what_the_network_predicts_on_the_padding_never_reaches_the_mask():
    # The heart sits in the top-left corner, so its window reaches past the slice border; the
    # network "sees" a large RV on the zero padding. Post-processing on the window must not let
    # that blob in (it is outside the image) nor let it win over the real, smaller RV.
    s = 64
    img = np.full((2, s, s), 0.1, np.float32)
    img[:, 2:14, 2:14] = 1.0
    img[:, 2:8, 16:20] = 0.7
    geo = Geometry(np.eye(4), (2, s, s), (8.0, 1.5, 1.5), (s, s), (0, 0))
    ps = PatientSlices("p1", img, img.copy(), None, None, None, (8.0, 1.5, 1.5), geo)
    model = LoadedModel(_PaddingBlob(), 16, s, 1.5, Path("model.pt"), {}, window=32)
    res = segment_patient(model, ps, torch.device("cpu"), tta=False)
    assert res.box is not None and (res.box.y0 < 0 or res.box.x0 < 0)
    for phase in ("ED", "ES"):
        lab = res.labels[phase]
        assert lab.shape == (2, s, s)
        assert (lab[:, 2:8, 16:20] == 1).all() and (lab == 1).sum() == 2 * 6 * 4  # the real RV only
        assert (lab[:, 2:14, 2:14] == 3).all() and (lab == 3).sum() == 2 * 12 * 12
        assert res.removed[phase]["RV"] == 0.0  # the padding's blob was never counted


class _RecordsAutocast(torch.nn.Module):
    """Background everywhere; records whether each call ran under CPU bf16 autocast."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(torch.is_autocast_enabled("cpu")
                          and torch.get_autocast_dtype("cpu") == torch.bfloat16)
        out = torch.zeros(x.shape[0], 4, *x.shape[2:])
        out[:, 0] = 1.0
        return out


def test_inference_precision_follows_the_cpu_and_the_option(monkeypatch: pytest.MonkeyPatch):
    from cardioclr.segment import predict as predict_mod

    cpu = torch.device("cpu")
    net = _RecordsAutocast()
    model = LoadedModel(net, 16, 32, 1.5, Path("model.pt"), {})
    images = np.zeros((2, 32, 32), np.float32)
    for native, precision, expected in ((True, "auto", True), (False, "auto", False),
                                        (True, "32-true", False)):
        monkeypatch.setattr(predict_mod, "cpu_has_native_bf16", lambda n=native: n)
        assert predict_mod.use_bf16(cpu, precision) is expected
        net.calls.clear()
        infer_slices(model, images, cpu, tta=False, bf16=predict_mod.use_bf16(cpu, precision))
        assert net.calls == [expected]
    with pytest.raises(Exception, match="unknown inference precision"):
        predict_mod.use_bf16(cpu, "16-mixed")


def test_rotation_of_a_square_slice_is_exact_and_undone_by_the_opposite_angle():
    x = torch.arange(64.0).reshape(1, 1, 8, 8)
    assert torch.allclose(rotate_about_centre(x, 90.0), torch.rot90(x, 1, (2, 3)), atol=1e-4)
    yy, xx = torch.meshgrid(torch.arange(48.0), torch.arange(48.0), indexing="ij")
    blob = torch.exp(-((yy - 12) ** 2 + (xx - 34) ** 2) / 60.0)[None, None]  # off-centre: it moves
    turned = rotate_about_centre(blob, 20.0, padding_mode="border")
    assert (turned - blob).abs().max() > 0.3
    inside = ((yy - 23.5) ** 2 + (xx - 23.5) ** 2) < 21**2  # the corners leave the grid and come back as edge
    assert (rotate_about_centre(turned, -20.0, padding_mode="border") - blob)[0, 0][inside].abs().max() < 0.05


@pytest.mark.parametrize("mirrored", [True, False])
def test_test_time_views_follow_how_the_model_was_trained(mirrored):
    # A pixel-wise network gives the same labels in every view, so every view must be inverted
    # onto the grid it came from; the members counted are 4 mirrorings or 3 rotations.
    model = LoadedModel(_Bright(), 16, 48, 1.5, Path("model.pt"), {}, mirrored_training=mirrored)
    img = np.zeros((2, 48, 48), np.float32)
    yy, xx = np.mgrid[0:48, 0:48]
    img[:, ((yy - 20) ** 2 + (xx - 27) ** 2) < 64] = 1.0
    plain = infer_slices(model, img, torch.device("cpu"), tta=False)
    agree = Agreement()
    views = infer_slices(model, img, torch.device("cpu"), tta=True, agreement=agree)
    assert plain[:, 20, 27].min() == 3 and np.array_equal(views, plain)
    assert agree.counts is not None and agree.counts.shape[0] == (4 if mirrored else 3)
    assert agree.disagreement() < 0.02


def test_model_files_say_whether_the_network_saw_mirrored_hearts(tmp_path):
    cfg = NetworkConfig(arch="unet", channels=(4, 8), num_res_units=1, norm="batch")
    blob = {"format": MODEL_FORMAT, "state_dict": build_network(cfg).state_dict(),
            "network": network_config_dict(cfg), "image_size": 48, "spacing_mm": 1.5}
    torch.save(blob, tmp_path / "old.pt")  # written before the key existed: the presets mirrored
    torch.save({**blob, "mirrored_training": False}, tmp_path / "new.pt")
    assert load_model(tmp_path / "old.pt", torch.device("cpu")).mirrored_training
    assert not load_model(tmp_path / "new.pt", torch.device("cpu")).mirrored_training
