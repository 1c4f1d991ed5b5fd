"""Orientation search for models trained without mirroring: the 8 orientations of a square
slice, windows under them, and a patient stored turned from the model's orientation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cardioclr.data.store import Geometry, PatientSlices
from cardioclr.segment.crop import Box, crop, uncrop
from cardioclr.segment.orientation import AS_STORED, ORIENTATIONS, describe, orient, orient_box
from cardioclr.segment.predict import LoadedModel, segment_patient


def test_every_orientation_is_distinct_and_undone_by_its_inverse():
    a = np.arange(2 * 5 * 5).reshape(2, 5, 5)
    seen = set()
    for o in ORIENTATIONS:
        b = orient(a, o)
        assert np.array_equal(orient(b, o, inverse=True), a)
        seen.add(b.tobytes())
    assert len(seen) == 8 and len({describe(o) for o in ORIENTATIONS}) == 8
    assert np.array_equal(orient(a, AS_STORED), a)
    named = {describe(o): orient(a, o) for o in ORIENTATIONS}
    assert np.array_equal(named["mirrored_left_right"], a[..., ::-1])
    assert np.array_equal(named["mirrored_up_down"], a[..., ::-1, :])
    assert np.array_equal(named["turned_90"], np.rot90(a, 1, axes=(-2, -1)))


@pytest.mark.parametrize("box", [Box(3, 10, 8), Box(-4, 20, 12), Box(25, -3, 10)])
def test_a_window_follows_its_pixels_into_every_orientation_and_back(box):
    side = 30
    ones = uncrop(np.ones((box.size, box.size), np.uint8), box, (side, side))
    for o in ORIENTATIONS:
        turned = orient_box(box, o, side)
        assert np.array_equal(uncrop(np.ones((box.size, box.size), np.uint8), turned, (side, side)),
                              orient(ones, o))
        assert orient_box(turned, o, side, inverse=True) == box
        img = np.random.default_rng(0).random((side, side))
        assert np.array_equal(crop(orient(img, o), turned), orient(crop(img, box), o))


class _TopLeftOnly(torch.nn.Module):
    """A network that knows one orientation: it calls bright pixels LV in the top-left quarter
    of the slice only (as a model trained without mirroring knows hearts in one orientation)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        h, w = x.shape[-2:]
        out = torch.zeros(x.shape[0], 4, h, w)
        out[:, 0] = 0.5
        out[:, 3, : h // 2, : w // 2] = x[:, 0, : h // 2, : w // 2]
        return out


def _turned_patient(s: int = 96) -> tuple[PatientSlices, np.ndarray]:
    """A bright disc in the bottom-right quarter (the network's top-left, turned by 180 degrees)."""
    yy, xx = np.mgrid[:s, :s]
    disc = ((yy - 0.75 * s) ** 2 + (xx - 0.7 * s) ** 2 < (0.12 * s) ** 2)
    vol = np.repeat(disc[None].astype(np.float32), 2, axis=0)
    geo = Geometry(np.eye(4), (2, s, s), (8.0, 1.5, 1.5), (s, s), (0, 0))
    return PatientSlices("p1", vol, vol.copy(), None, None, None, (8.0, 1.5, 1.5), geo), disc


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def test_a_patient_stored_turned_is_segmented_in_the_models_orientation_and_returned_as_stored():
    ps, disc = _turned_patient()
    model = LoadedModel(_TopLeftOnly(), 16, 96, 1.5, Path("model.pt"), {}, mirrored_training=False)
    as_stored = segment_patient(model, ps, torch.device("cpu"), tta=True, orientation_search=False)
    assert not as_stored.labels["ED"].any()  # the model cannot see the heart where it is stored
    res = segment_patient(model, ps, torch.device("cpu"), tta=True)
    assert res.orientation != AS_STORED
    assert res.disagreement < 0.04
    for phase in ("ED", "ES"):
        assert _dice(res.labels[phase][0] == 3, disc) > 0.95  # labels back in the stored orientation


def test_a_mirror_trained_model_and_a_cohorts_known_orientation_need_one_pass():
    ps, _ = _turned_patient()
    net = _TopLeftOnly()
    mirrored = LoadedModel(net, 16, 96, 1.5, Path("model.pt"), {}, mirrored_training=True)
    res = segment_patient(mirrored, ps, torch.device("cpu"), tta=True)
    assert res.orientation == AS_STORED  # sees every orientation already: no search
    found = segment_patient(LoadedModel(net, 16, 96, 1.5, Path("model.pt"), {}, mirrored_training=False),
                            ps, torch.device("cpu"), tta=True)
    net.calls = 0
    again = segment_patient(LoadedModel(net, 16, 96, 1.5, Path("model.pt"), {}, mirrored_training=False),
                            ps, torch.device("cpu"), tta=True, first_orientation=found.orientation)
    assert again.orientation == found.orientation and net.calls == 3  # one orientation, 3 views
