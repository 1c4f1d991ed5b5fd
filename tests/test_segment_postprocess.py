"""Post-processing of predicted labels: largest component per structure, holes filled."""

from __future__ import annotations

import numpy as np
import pytest

from cardioclr.segment.postprocess import (
    largest_component,
    postprocess,
    postprocess_with_stats,
    trim_basal_es_rv,
)


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


def test_rv_keeps_the_piece_beside_the_myocardium_not_a_larger_blob_away_from_the_heart():
    """A 2D network may label a bright organ below the heart (stomach, liver) RV; when that blob
    is larger than the ventricle, the largest-component rule alone kept it and erased the RV
    (two out-of-fold ACDC patients had ES RV Dice 0 so)."""
    lab = np.zeros((4, 40, 40), np.uint8)
    for z in range(4):
        lab[z][_ring((40, 40), (12, 12), 4, 7)] = 2  # myocardium ring
        lab[z][_ring((40, 40), (12, 12), -1, 4)] = 3  # LV cavity inside
    lab[:2, 6:18, 20:24] = 1  # the RV, against the ring's right side: 2 x 48 voxels
    lab[:, 28:38, 25:38] = 1  # a larger RV-labelled blob touching nothing: 4 x 130 voxels
    out, removed = postprocess_with_stats(lab)
    assert (out[:2, 6:18, 20:24] == 1).all()
    assert not (out[:, 28:38, 25:38] == 1).any()
    assert removed["RV"] == pytest.approx(520 / 616)
    assert list(removed) == ["RV", "MYO", "LV"]
    # Without any myocardium the largest piece is kept, as for every other structure.
    no_myo = np.where(lab == 2, 0, lab).astype(np.uint8)
    assert (postprocess_with_stats(no_myo)[0][:, 28:38, 25:38] == 1).all()


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


def _basal_heart(z: int = 6, es_rv_basal: int = 4,
                 es_myo_basal: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """ED/ES labels of a stack whose base is slice 0: the LV (ring + cavity) shrinks to the apex;
    the RV is a square beside it. On ES slice 0 the RV half-width is ``es_rv_basal`` (ED: 6) and
    the ring ``es_myo_basal`` thick (the next slices: 3)."""
    ed = np.zeros((z, 48, 48), np.uint8)
    es = np.zeros_like(ed)
    for k in range(z):
        r = 12 - k
        es_half, es_thick = (es_rv_basal, es_myo_basal) if k == 0 else (5, 3.0)
        for lab, half, thick in ((ed, 6, 3.0), (es, es_half, es_thick)):
            lab[k][_ring((48, 48), (24, 28), r - thick, r)] = 2
            lab[k][_ring((48, 48), (24, 28), -1, r - thick)] = 3
            square = lab[k, 24 - half:24 + half, 4:4 + 2 * half]  # a view: the RV where empty
            square[square == 0] = 1
    return ed, es


def test_basal_es_rv_is_dropped_where_the_ventricle_left_the_slice():
    ed, es = _basal_heart(es_rv_basal=3, es_myo_basal=1.0)  # ES RV 36 vs ED 144 px, thin ring
    out, n = trim_basal_es_rv(ed, es)
    assert n == 1
    assert not (out[0] == 1).any() and (out[1:] == es[1:]).all()
    assert (out[0][es[0] != 1] == es[0][es[0] != 1]).all()  # only the RV changed
    # a stack stored apex first: the same slice, now the last one, is found and dropped
    flipped, m = trim_basal_es_rv(ed[::-1].copy(), es[::-1].copy())
    assert m == 1 and (flipped[::-1] == out).all()


def test_basal_es_rv_stays_when_either_ratio_says_ventricle():
    ed, es = _basal_heart(es_rv_basal=6, es_myo_basal=1.0)  # RV as large as at ED
    assert trim_basal_es_rv(ed, es)[1] == 0
    ed, es = _basal_heart(es_rv_basal=3, es_myo_basal=3.0)  # full basal ring
    out, n = trim_basal_es_rv(ed, es)
    assert n == 0 and (out == es).all()


def test_basal_es_rv_leaves_short_stacks_and_stops_after_max_slices():
    ed, es = _basal_heart(z=2, es_rv_basal=3, es_myo_basal=1.0)
    assert trim_basal_es_rv(ed, es)[1] == 0  # two ES RV slices: too few to judge a base
    ed, es = _basal_heart(es_rv_basal=3, es_myo_basal=1.0)
    es[1][es[1] == 1] = 0
    es[1, 22:26, 4:8] = 1  # slice 1 also looks basal: small RV, thin ring
    es[1][es[1] == 2] = 3
    es[1][_ring((48, 48), (24, 28), 10, 11)] = 2
    es[0, :, 28:][es[0, :, 28:] == 2] = 0  # slice 0: half a thin ring, less than slice 1's
    assert trim_basal_es_rv(ed, es)[1] == 2
    assert trim_basal_es_rv(ed, es, max_slices=1)[1] == 1
    with pytest.raises(ValueError, match="one shape"):
        trim_basal_es_rv(ed, es[:3])
