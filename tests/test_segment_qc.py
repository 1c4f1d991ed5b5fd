"""QC flags: silent on a plausible heart, firing on broken masks."""

from __future__ import annotations

import numpy as np
import pytest

from cardioclr.segment.qc import mid_slices, open_fraction, qc_figure, qc_figure_object, qc_flags

SPACING = (10.0, 1.5, 1.5)


def _heart(n_slices: int = 8, r_lv: float = 20, wall: float = 6, r_rv: float = 16) -> np.ndarray:
    """Cartoon stack (z, 96, 96): LV cavity disk, myocardium ring, RV disk beside it."""
    yy, xx = np.mgrid[:96, :96]
    lab = np.zeros((n_slices, 96, 96), np.uint8)
    for k in range(n_slices):
        t = 1.0 - 0.4 * k / max(n_slices - 1, 1)
        d = np.hypot(yy - 48, xx - 52)
        rv = np.hypot(yy - 48, xx - (52 - (r_lv + wall) * t - 0.6 * r_rv * t)) <= r_rv * t
        lab[k][rv] = 1
        lab[k][d <= (r_lv + wall) * t] = 2
        lab[k][d <= r_lv * t] = 3
    return lab


def _flags(labels: dict, removed: dict | None = None) -> set[tuple[str, str]]:
    return {(r["phase"], r["flag"]) for r in qc_flags(labels, removed or {}, SPACING)}


def test_plausible_heart_has_no_flags():
    ed, es = _heart(), _heart(r_lv=14, wall=8)
    assert _flags({"ED": ed, "ES": es}) == set()


def test_flags_fire_for_broken_masks():
    ed, es = _heart(), _heart(r_lv=14, wall=8)
    mids = mid_slices(ed)
    assert mids == [2, 3, 4, 5]
    broken = es.copy()
    broken[mids[1]][broken[mids[1]] == 1] = 0  # RV missing on a mid slice
    gap = ed.copy()
    gap[mids[0], 40:56, 20:52] = np.where(gap[mids[0], 40:56, 20:52] == 2, 0, gap[mids[0], 40:56, 20:52])
    f = _flags({"ED": gap, "ES": broken}, {"ED": {"MYO": 0.2, "LV": 0.01}})
    assert ("ES", "structure_missing") in f
    assert ("ED", "myo_not_enclosing") in f
    assert ("ED", "fragmented") in f and ("ES", "fragmented") not in f
    assert open_fraction(gap[mids[0]]) > 0.1 and open_fraction(ed[mids[0]]) == 0.0


def test_volume_and_ef_flags():
    tiny = _heart(n_slices=2, r_lv=5, wall=3)  # LV EDV ~ 2 mL
    f = _flags({"ED": tiny, "ES": tiny})
    assert ("ED", "implausible_volume") in f
    assert ("ED/ES", "implausible_ef") in f  # ES = ED: EF 0 %
    no_lv = np.zeros_like(tiny)
    f = _flags({"ED": no_lv, "ES": no_lv})
    assert ("ED", "structure_missing") in f and ("ED/ES", "implausible_ef") in f


def test_qc_figure_writes_a_png(tmp_path):
    ed, es = _heart(), _heart(r_lv=14, wall=8)
    img = {"ED": (ed > 0).astype(np.float32), "ES": (es > 0).astype(np.float32)}
    out = tmp_path / "qc" / "p1.png"
    qc_figure(out, "p1", img, {"ED": ed, "ES": es}, {"ED": ed, "ES": es}, [{"flag": "fragmented"}])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(out.parent.iterdir()) == [out]  # no temporary file left behind


def _overlaps(a, b) -> bool:
    """True when two display-space boxes share more than a pixel of area."""
    return min(a.x1, b.x1) - max(a.x0, b.x0) > 1 and min(a.y1, b.y1) - max(a.y0, b.y0) > 1


@pytest.mark.parametrize("shift_x", [0, -40])  # -40: heart at the edge, a tall narrow window
def test_qc_figure_text_does_not_overlap_images(shift_x):
    import matplotlib.pyplot as plt

    ed = np.roll(_heart(), shift_x, axis=2)
    es = np.roll(_heart(r_lv=14, wall=8), shift_x, axis=2)
    img = {"ED": (ed > 0).astype(np.float32), "ES": (es > 0).astype(np.float32)}
    fig = qc_figure_object("patient001", img, {"ED": ed, "ES": es}, {"ED": ed, "ES": es},
                           [{"flag": "fragmented"}, {"flag": "implausible_ef"}])
    try:
        fig.set_dpi(80)  # as saved
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        panels = [ax.get_window_extent(renderer) for ax in fig.axes]
        texts = [t for ax in fig.axes for t in (ax.title, ax.yaxis.label) if t.get_text()]
        texts += [fig._suptitle, *fig.legends]
        assert len(texts) >= 3 + 2 + 2  # 3 view titles, 2 phase labels, suptitle, legend
        # Between the ED row's bottom and the ES row's top there is no text at all: a title there
        # reads as a caption of the images above it (and overlapped them with tight_layout).
        ed_bottom = min(p.y0 for p in panels[:3])
        es_top = max(p.y1 for p in panels[3:])
        for t in texts:
            box = t.get_window_extent(renderer)
            name = t.get_text() if hasattr(t, "get_text") else "legend"
            hits = [i for i, p in enumerate(panels) if _overlaps(box, p)]
            assert not hits, f"{name!r} overlaps image(s) {hits}"
            between = min(box.y1, ed_bottom) - max(box.y0, es_top) > 0
            assert not between, f"{name!r} lies between the rows"
    finally:
        plt.close(fig)


def test_disagreement_threshold_separates_poor_from_good_masks():
    from cardioclr.segment.qc import calibrate_disagreement_threshold

    # Poor masks (Dice < 0.85) disagree more, except one good patient at 0.06.
    dis = [0.01, 0.02, 0.03, 0.06, 0.04, 0.08, 0.09, float("nan")]
    dice = [0.92, 0.91, 0.90, 0.89, 0.88, 0.80, 0.70, 0.95]
    got = calibrate_disagreement_threshold(dis, dice, poor_below=0.85)
    assert got is not None
    assert got["threshold"] == pytest.approx(0.07)  # between 0.06 (good) and 0.08 (poor)
    assert got["sensitivity"] == 1.0 and got["specificity"] == 1.0 and got["youden_j"] == 1.0
    assert got["n"] == 7 and got["n_poor"] == 2
    # Poor, good, poor, good by rising disagreement: cutting at 0.015 (sensitivity 1, specificity
    # 0.5) and at 0.035 (0.5, 1) tie at J = 0.5; the higher threshold (fewer flags) wins.
    tied = calibrate_disagreement_threshold([0.01, 0.02, 0.03, 0.04], [0.9, 0.8, 0.9, 0.8], 0.85)
    assert tied is not None and tied["threshold"] == pytest.approx(0.035)
    assert tied["youden_j"] == pytest.approx(0.5)
    assert calibrate_disagreement_threshold([0.01, 0.2], [0.9, 0.95], 0.85) is None  # none poor
    assert calibrate_disagreement_threshold([0.01, 0.2], [0.5, 0.6], 0.85) is None  # all poor
