"""AHA bull's-eye maps: segment placement in the standard view and the PNG they draw."""

from __future__ import annotations

import io
import math

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest

from cardioclr.clinical.regional import _segment_of, segment_arc_deg
from cardioclr.evaluate.bullseye import PANELS, Panel, bullseye_png, segment_wedge, write_bullseyes


def _centre_deg(segment: int) -> float:
    _, _, t0, t1 = segment_wedge(segment)
    return ((t0 + t1) / 2) % 360.0


@pytest.mark.parametrize(("segment", "centre"), [(1, 90.0), (2, 150.0), (3, 210.0), (4, 270.0), (5, 330.0),
                                                 (6, 30.0), (7, 90.0), (10, 270.0), (13, 90.0), (14, 180.0),
                                                 (15, 270.0), (16, 0.0)])
def test_segments_sit_where_the_aha_map_puts_them(segment: int, centre: float):
    # Anterior at the top (90 degrees), septum on the left (180), inferior at the bottom (270).
    assert abs((_centre_deg(segment) - centre + 180.0) % 360.0 - 180.0) < 1e-9


def test_rings_go_basal_outside_to_apical_inside():
    radii = {s: segment_wedge(s)[:2] for s in range(1, 17)}
    assert all(radii[s][0] >= radii[s + 6][1] for s in range(1, 7))  # basal outside mid
    assert all(radii[s][0] >= radii[13][1] for s in range(7, 13))  # mid outside apical
    assert radii[13][0] > 0  # the unmeasured apical cap stays empty


@pytest.mark.parametrize("segment", range(1, 17))
def test_each_segments_arc_is_where_the_features_measure_it(segment: int):
    level, start, width = segment_arc_deg(segment)
    anchor = 0.7  # rad: any anterior insertion angle
    angle = np.array([anchor + math.radians(start + width / 2)])
    assert int(_segment_of(angle, anchor, level)[0]) == segment


def _green_and_red_centroids(png: bytes) -> tuple[np.ndarray, np.ndarray]:
    rgb = mpimg.imread(io.BytesIO(png))[..., :3]
    green = (rgb[..., 1] > 0.35) & (rgb[..., 0] < 0.1) & (rgb[..., 2] < 0.3)
    red = (rgb[..., 0] > 0.55) & (rgb[..., 1] < 0.05) & (rgb[..., 2] < 0.2)
    assert green.sum() > 200 and red.sum() > 200
    return np.argwhere(green).mean(axis=0), np.argwhere(red).mean(axis=0)  # (row, column)


@pytest.mark.parametrize(("segment", "down", "right"), [(4, True, None), (1, False, None), (3, None, False),
                                                         (6, None, True)])
def test_a_segment_is_drawn_on_its_side_of_the_map(segment: int, down: bool | None, right: bool | None):
    panel = Panel("x", "x{:02d}", 0.0, 1.0, "RdYlGn")
    values = {s: 1.0 if s == segment else 0.0 for s in range(1, 17)}  # green there, red elsewhere
    g, r = _green_and_red_centroids(bullseye_png([values], [panel]))
    if down is not None:
        assert (g[0] > r[0] + 20) if down else (g[0] < r[0] - 20), (g, r)
    if right is not None:
        assert (g[1] > r[1] + 20) if right else (g[1] < r[1] - 20), (g, r)


def test_one_map_per_patient_with_any_segment_value(tmp_path):
    cols = [p.column.format(s) for p in PANELS for s in range(1, 17)]
    feats = pd.DataFrame([np.linspace(-10, 70, len(cols)), np.full(len(cols), np.nan)],
                         index=pd.Index(["p1", "p2"], name="patient_id"), columns=cols)
    feats.loc["p1", "lv_ef_seg04_pct"] = np.nan  # one unmeasured segment: still a map
    assert write_bullseyes(feats, tmp_path) == 1
    assert sorted(f.name for f in tmp_path.iterdir()) == ["p1.png"]
    assert (tmp_path / "p1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
