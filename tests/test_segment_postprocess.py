"""Post-processing of predicted labels: largest component per structure, holes filled."""

from __future__ import annotations

import numpy as np

from cardioclr.segment.postprocess import largest_component, postprocess, postprocess_with_stats


def _ring(shape: tuple[int, int], centre: tuple[int, int], r_in: float, r_out: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    d2 = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2
    return (d2 <= r_out**2) & (d2 > r_in**2)


def test_largest_component_keeps_the_big_blob_and_reports_removed_fraction():
    lab = np.zeros((3, 20, 20), np.uint8)
    lab[:, 2:8, 2:8] = 3  # 3 x 36 = 108 voxels
    lab[1, 15:17, 15:17] = 3  # stray 4-voxel piece
    lab[0, 15:18, 2:5] = 1  # RV: 9 voxels
    lab[2, 10:12, 10:12] = 1  # RV stray piece: 4 voxels
    out, removed = postprocess_with_stats(lab)
    assert (out[1, 15:17, 15:17] == 0).all()
    assert (out[:, 2:8, 2:8] == 3).all()
    assert removed["LV"] == 4 / 112
    assert removed["RV"] == 4 / 13
    assert (out[2, 10:12, 10:12] == 0).all()
    assert removed["MYO"] == 0.0


def test_connectivity_is_face_only_across_slices():
    m = np.zeros((2, 6, 6), bool)
    m[0, 0:2, 0:2] = True
    m[1, 2:5, 2:5] = True  # touches slice 0 only diagonally (corner (1,1) -> (2,2))
    keep = largest_component(m)
    assert keep[1].sum() == 9 and keep[0].sum() == 0
    m[1, 1, 1] = True  # now face-connected through (0,1,1) -> (1,1,1)
    assert largest_component(m).sum() == m.sum()


def test_holes_filled_and_cavity_enclosed_by_myocardium():
    sl = np.zeros((32, 32), np.uint8)
    ring = _ring((32, 32), (16, 16), 6, 9)
    sl[ring] = 2
    inner = _ring((32, 32), (16, 16), -1, 6)
    sl[inner] = 3
    sl[16, 16] = 0  # background hole inside the cavity
    sl[14:17, 13:15] = 1  # "RV" speck inside the cavity (a papillary-muscle confusion)
    sl[2:8, 2:8] = 1
    sl[4, 4] = 0  # hole in the RV
    lab = np.stack([sl, sl])
    out = postprocess(lab)
    assert out[0, 16, 16] == 3
    assert out[0, 4, 4] == 1
    # The speck is a separate RV component (smaller) -> removed, then enclosed -> cavity.
    assert (out[:, 14:17, 13:15] == 3).all()
    assert ((out == 2) == np.stack([ring, ring])).all()


def test_one_slice_and_empty_volumes():
    one = np.zeros((1, 10, 10), np.uint8)
    one[0, 2:5, 2:5] = 3
    one[0, 7, 7] = 3
    out, removed = postprocess_with_stats(one)
    assert out.shape == (1, 10, 10) and out.dtype == np.uint8
    assert out[0, 7, 7] == 0 and (out[0, 2:5, 2:5] == 3).all()
    assert removed["LV"] == 1 / 10
    empty, r = postprocess_with_stats(np.zeros((4, 8, 8), np.uint8))
    assert not empty.any() and set(r.values()) == {0.0}
