"""Quality control of predicted masks: automatic flags and a contour picture per patient.

Flags (one row each in ``qc_flags.csv``: patient_id, phase, flag, detail):

* ``structure_missing``: LV cavity, myocardium or RV absent on a mid-ventricular slice (the
  middle third of the slices that show the LV), or no LV at all;
* ``fragmented``: more than :data:`FRAGMENT_FRACTION` of a structure's predicted voxels lay in
  pieces apart from its main body (removed by post-processing: the network was unsure);
* ``myo_not_enclosing``: on a mid slice, more than :data:`OPEN_FRACTION` of the LV cavity's
  border touches something other than myocardium (the wall has a gap);
* ``implausible_volume``: LV or RV end-diastolic volume outside :data:`EDV_RANGE_ML`;
* ``implausible_ef``: LV ejection fraction outside :data:`EF_RANGE_PCT` (or ESV > EDV);
* ``predict_failed``: the patient could not be segmented (the reason is in ``detail``);
* ``heart_not_localised``: the first, whole-slice pass found no heart, so whole slices were
  segmented instead of a heart-centred window (a fallback, usually a poor mask);
* ``low_confidence``: the per-patient quality estimate, the disagreement between the test-time
  views (mirrored, or rotated for a model trained without mirroring; segment/predict.py) and the
  models of a cross-fitted ensemble, is above :func:`low_confidence_threshold` of those views
  (every patient's value is in ``quality.csv``, the threshold in ``predict_summary.json``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from cardioclr.atomic import atomic_path
from cardioclr.clinical.labels import LV_CAVITY, LV_MYOCARDIUM, RV_CAVITY, STRUCTURES

FRAGMENT_FRACTION = 0.05
OPEN_FRACTION = 0.10
EDV_RANGE_ML = (20.0, 500.0)
EF_RANGE_PCT = (5.0, 90.0)
QC_COLUMNS = ("patient_id", "phase", "flag", "detail")
#: Per-patient quality estimate: 1 - mean Dice of each test-time-augmented (and ensemble)
#: prediction with their average, over RV, MYO and LV of ED and ES together. Calibrated on
#: train patients only, never on test (benchmarks/qc_calibration.py, benchmarks/README.md): the
#: 70 ACDC train patients' out-of-fold masks of a 5-fold cross-fit (CPU preset, 10 min per fold
#: model), Youden's J for "mean Dice < 0.85" (12 of 70) chose 0.0515 (sensitivity 0.92,
#: specificity 0.88; Spearman r with Dice -0.71), rounded to 0.05; a second cross-fit (compiled
#: fold models, 2026-12-02) chose 0.0529 (J 0.68). The value set before any measurement, 0.10,
#: flagged no test patient of the CPU preset. The disagreement depends on the grid (fewer
#: boundary pixels disagree, relatively, on a finer one): on the cpu preset's 1.25 mm grid
#: (segment/grid.py) the out-of-fold masks of a 5-fold cross-fit (2026-12-06) chose 0.0390 (J
#: 0.84, sensitivity 1.00 for the 7 of 70 below 0.85, specificity 0.84; Spearman -0.73), hence
#: 0.04; two more cross-fits of that design (seeds 0 and 1, same day) chose 0.048 and 0.049
#: (sensitivity 1.00 both): 0.04, the most sensitive of the three, is kept. For a model trained
#: without mirroring (the cpu preset since 2026-12-07), predicted with rotated views, a cross-fit
#: of that training (seed 1) chose 0.040 (J 0.98, sensitivity 1.00 for the 4 of 70 below 0.85;
#: Spearman -0.74 against -0.64 for its mirror-trained twin): the same 0.04 serves both. Fully
#: trained (28 min) such models flag nobody at 0.04: none of the 100 held-out patients of their
#: 5-fold CV (disagreement <= 0.037, Spearman with Dice -0.73); that CV's 70 train patients
#: would calibrate 0.026 from the one mask below 0.85 among them, too little to adopt. Those
#: models' flag uses :data:`ROTATED_VIEWS_DISAGREEMENT_FLAG`; this value stays the mirrored
#: views' threshold and the orientation search's trigger (segment/predict.py, measured at 0.04).
DISAGREEMENT_FLAG = 0.04
#: The ``low_confidence`` threshold for models trained without mirroring (rotated test-time
#: views: the cpu preset). Fully trained, they rarely make a mask below Dice 0.85 (1 of 70
#: out-of-fold train patients in their 5-fold CV), so "poor" was fixed in advance, before the
#: calibration run, as the worst decile of the train patients' out-of-fold mean Dice, i.e. the
#: flag marks about one patient in ten for a second look. Calibrated with
#: ``benchmarks/qc_calibration.py --poor-quantile 0.1`` on the 70 train patients' out-of-fold
#: masks of the preset's 5-fold CV (2026-12-07, benchmarks/README.md): 0.0256 (J 0.89,
#: sensitivity 1.00 for the 7 worst, below Dice 0.886; specificity 0.89; Spearman -0.74),
#: rounded to 0.005. The same CV's 30 test patients at 0.025: 7 flagged, mean Dice 0.879, against 0.914.
ROTATED_VIEWS_DISAGREEMENT_FLAG = 0.025
#: ``WORK/segmentation/quality.csv``: one row per segmented patient (window: "y0,x0,size" or "";
#: basal_es_rv_slices: ES slices whose RV the basal rule removed; orientation: the one the slices
#: were segmented in, :func:`cardioclr.segment.orientation.describe`).
QUALITY_FILE = "quality.csv"
QUALITY_COLUMNS = ("patient_id", "disagreement", "localised", "window", "basal_es_rv_slices", "orientation")
#: Contour colours (structure name -> matplotlib colour).
COLOURS = {"LV": "tab:red", "MYO": "tab:green", "RV": "tab:blue"}


def mid_slices(labels: np.ndarray) -> list[int]:
    """Indices of the middle third (at least one slice) of the slices showing the LV."""
    zs = np.nonzero(((labels == LV_CAVITY) | (labels == LV_MYOCARDIUM)).any(axis=(1, 2)))[0]
    if zs.size == 0:
        return []
    z0, z1 = int(zs.min()), int(zs.max())
    third = (z1 - z0 + 1) // 3
    return list(range(z0 + third, z1 - third + 1))


def open_fraction(slice_labels: np.ndarray) -> float:
    """Share of LV-cavity border pixels (4-neighbourhood) touching neither cavity nor myocardium."""
    cav = slice_labels == LV_CAVITY
    if not cav.any():
        return 0.0
    lv = np.pad(cav | (slice_labels == LV_MYOCARDIUM), 1, constant_values=False)
    c = np.pad(cav, 1, constant_values=False)
    inner = c[1:-1, 1:-1]
    nbrs = (lv[:-2, 1:-1], lv[2:, 1:-1], lv[1:-1, :-2], lv[1:-1, 2:])
    cnbrs = (c[:-2, 1:-1], c[2:, 1:-1], c[1:-1, :-2], c[1:-1, 2:])
    border = inner & ~np.logical_and.reduce(cnbrs)
    leaking = inner & ~np.logical_and.reduce(nbrs)
    n_border = int(border.sum())
    return float(leaking.sum()) / n_border if n_border else 0.0


def volume_ml(labels: np.ndarray, value: int, spacing_zyx: Sequence[float]) -> float:
    """Volume in mL of one label (voxel count x voxel volume)."""
    return float((labels == value).sum()) * float(np.prod(spacing_zyx)) / 1000.0


def qc_flags(labels: dict[str, np.ndarray], removed: dict[str, dict[str, float]],
             spacing_zyx: Sequence[float]) -> list[dict[str, str]]:
    """Flags for one patient's post-processed ``{"ED": labels, "ES": labels}`` (uint8 (z, S, S)).

    ``removed``: per phase, the fraction of each structure removed by post-processing
    (:func:`cardioclr.segment.postprocess.postprocess_with_stats`). Rows lack ``patient_id``.
    """
    rows: list[dict[str, str]] = []

    def flag(phase: str, name: str, detail: str) -> None:
        rows.append({"phase": phase, "flag": name, "detail": detail})

    for phase, lab in labels.items():
        mids = mid_slices(lab)
        if not mids:
            flag(phase, "structure_missing", "no LV (cavity or myocardium) on any slice")
        else:
            for name, value in STRUCTURES.items():
                absent = [k for k in mids if not (lab[k] == value).any()]
                if absent:
                    flag(phase, "structure_missing",
                         f"{name} absent on mid-ventricular slice(s) {', '.join(map(str, absent))}")
            open_slices = [k for k in mids if open_fraction(lab[k]) > OPEN_FRACTION]
            if open_slices:
                flag(phase, "myo_not_enclosing", "LV cavity touches background/RV over more than "
                     f"{OPEN_FRACTION:.0%} of its border on slice(s) {', '.join(map(str, open_slices))}")
        for name, frac in removed.get(phase, {}).items():
            if frac > FRAGMENT_FRACTION:
                flag(phase, "fragmented", f"{name}: {frac:.1%} of the predicted voxels lay in pieces "
                     "apart from the main one (removed)")
    if "ED" in labels:
        lo, hi = EDV_RANGE_ML
        for name, value in (("LV", LV_CAVITY), ("RV", RV_CAVITY)):
            v = volume_ml(labels["ED"], value, spacing_zyx)
            if not lo <= v <= hi:
                flag("ED", "implausible_volume", f"{name} EDV {v:.1f} mL outside {lo:g}-{hi:g} mL")
    if "ED" in labels and "ES" in labels:
        edv = volume_ml(labels["ED"], LV_CAVITY, spacing_zyx)
        esv = volume_ml(labels["ES"], LV_CAVITY, spacing_zyx)
        ef = 100.0 * (edv - esv) / edv if edv > 0 else math.nan
        lo, hi = EF_RANGE_PCT
        if not (math.isfinite(ef) and lo <= ef <= hi):
            flag("ED/ES", "implausible_ef", f"LV EF {ef:.1f} % (EDV {edv:.1f} mL, ESV {esv:.1f} mL) "
                 f"outside {lo:g}-{hi:g} %")
    return rows


def low_confidence_threshold(mirrored_views: bool) -> float:
    """The disagreement above which a patient is flagged ``low_confidence``: the views differ
    (mirrored for models trained with mirroring, rotated otherwise) and so does their agreement
    on the same patient, so each kind has its own calibration (see the constants)."""
    return DISAGREEMENT_FLAG if mirrored_views else ROTATED_VIEWS_DISAGREEMENT_FLAG


def quality_flags(disagreement: float, localised: bool, threshold: float) -> list[dict[str, str]]:
    """``low_confidence`` (disagreement above ``threshold``, :func:`low_confidence_threshold`) /
    ``heart_not_localised`` rows (without ``patient_id``) of one patient."""
    rows: list[dict[str, str]] = []
    if not localised:
        rows.append({"phase": "ED/ES", "flag": "heart_not_localised",
                     "detail": "no heart found on whole slices; segmented whole slices instead"})
    if math.isfinite(disagreement) and disagreement > threshold:
        rows.append({"phase": "ED/ES", "flag": "low_confidence",
                     "detail": f"test-time prediction disagreement {disagreement:.3f} > {threshold:g}"})
    return rows


def calibrate_disagreement_threshold(disagreement: Sequence[float], mean_dice: Sequence[float],
                                     poor_below: float) -> dict[str, Any] | None:
    """The disagreement threshold that best separates poor masks from good ones (Youden's J).

    ``disagreement``, ``mean_dice``: one value per patient whose masks came from a model that
    never saw it (out-of-fold patients of a cross-fitted segmentation; never the test split),
    non-finite values ignored. A patient is *poor* when its mean Dice (RV, MYO, LV at ED and ES)
    is below ``poor_below``. Candidates are the midpoints between consecutive distinct values;
    the one maximising sensitivity + specificity - 1 for "flagged = poor" wins, ties going to
    the higher threshold (fewer flags). Returns ``{"threshold", "youden_j", "sensitivity",
    "specificity", "n", "n_poor"}``, or None when there are no poor or no good patients (nothing
    to separate).
    """
    d = np.asarray(disagreement, dtype=float)
    q = np.asarray(mean_dice, dtype=float)
    keep = np.isfinite(d) & np.isfinite(q)
    d, poor = d[keep], q[keep] < poor_below
    if poor.all() or not poor.any():
        return None
    values = np.unique(d)
    if values.size < 2:
        return None
    best: dict[str, Any] | None = None
    for t in (values[:-1] + values[1:]) / 2:
        flagged = d > t
        sens = float((flagged & poor).sum() / poor.sum())
        spec = float((~flagged & ~poor).sum() / (~poor).sum())
        j = sens + spec - 1
        if best is None or j >= best["youden_j"]:
            best = {"threshold": float(t), "youden_j": j, "sensitivity": sens, "specificity": spec}
    assert best is not None
    return {**best, "n": int(d.size), "n_poor": int(poor.sum())}


def _view_slices(labels: np.ndarray) -> list[tuple[str, int]]:
    """(name, z) of a basal, a mid and an apical slice of the heart in ``labels`` (z, S, S).

    The end of the LV extent with the larger LV cavity is taken as the base (slice order varies
    between datasets). Without any heart, the first, middle and last slices.
    """
    nz = labels.shape[0]
    zs = np.nonzero((labels > 0).any(axis=(1, 2)))[0]
    if zs.size == 0:
        return [("first", 0), ("mid", nz // 2), ("last", nz - 1)]
    z0, z1 = int(zs.min()), int(zs.max())
    area = (labels == LV_CAVITY).sum(axis=(1, 2))
    base, apex = (z0, z1) if area[z0] >= area[z1] else (z1, z0)
    return [("basal", base), ("mid", (z0 + z1) // 2), ("apical", apex)]


def _window(arrays: list[np.ndarray], size: int, margin: int = 12) -> tuple[slice, slice]:
    heart = np.zeros((size, size), bool)
    for a in arrays:
        heart |= (a > 0).any(axis=0)
    if not heart.any():
        return slice(0, size), slice(0, size)
    ys, xs = np.nonzero(heart)
    cy, cx = (ys.min() + ys.max()) // 2, (xs.min() + xs.max()) // 2
    half = max(ys.max() - ys.min(), xs.max() - xs.min()) // 2 + margin
    y0, x0 = max(cy - half, 0), max(cx - half, 0)
    return slice(y0, min(cy + half, size)), slice(x0, min(cx + half, size))


def qc_figure(path: str | os.PathLike[str], patient_id: str, images: dict[str, np.ndarray],
              predicted: dict[str, np.ndarray], expert: dict[str, np.ndarray] | None,
              flags: list[dict[str, Any]] | None = None) -> None:
    """Write a PNG: rows ED/ES, columns basal/mid/apical, predicted contours solid, expert dashed.

    Column titles name the view and slice index (the same slices for every row); the row's
    phase is its y-label. ``images``/``predicted``/``expert``: ``{"ED": (z, S, S), "ES":
    (z, S, S)}`` on the store grid (S x S pixels).
    """
    fig = qc_figure_object(patient_id, images, predicted, expert, flags)  # selects Agg first
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)


def qc_figure_object(patient_id: str, images: dict[str, np.ndarray],
                     predicted: dict[str, np.ndarray], expert: dict[str, np.ndarray] | None,
                     flags: list[dict[str, Any]] | None = None) -> Any:
    """The matplotlib ``Figure`` that :func:`qc_figure` saves (the caller closes it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    size = next(iter(images.values())).shape[-1]
    win = _window(list(predicted.values()) + (list(expert.values()) if expert else []), size)
    views = _view_slices(predicted["ED"] if predicted["ED"].any() or not expert else expert["ED"])
    phases = list(images)
    # Constrained layout reserves room for every label, the suptitle and the legend, whatever
    # the window's aspect ratio; tight_layout left the ES titles touching the ED images above.
    # Titles sit only above the first row (the view and its slice, shared by ED and ES) and the
    # phase is each row's y-label, so no text lies between two rows of images.
    fig, axes = plt.subplots(len(phases), len(views), figsize=(3 * len(views), 3 * len(phases) + 0.6),
                             squeeze=False, layout="constrained")
    for i, phase in enumerate(phases):
        for j, (view, z) in enumerate(views):
            ax = axes[i, j]
            ax.imshow(images[phase][z][win], cmap="gray", vmin=-0.1, vmax=1.1, interpolation="nearest")
            for source, style in ((predicted, "solid"), (expert, "dashed")):
                if source is None:
                    continue
                for name, value in STRUCTURES.items():
                    m = source[phase][z][win] == value
                    if m.any() and m.shape[0] > 1 and m.shape[1] > 1:
                        ax.contour(m.astype(np.float32), levels=[0.5], colors=COLOURS[name],
                                   linewidths=1.2, linestyles=style)
            # Ticks and frame hidden by hand: axis("off") would hide the y-label too.
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if i == 0:
                ax.set_title(f"{view} (z={z})", fontsize=9)
            if j == 0:
                ax.set_ylabel(phase, fontsize=10, fontweight="bold")
    handles = [Line2D([], [], color=c, label=n) for n, c in COLOURS.items()]
    handles.append(Line2D([], [], color="k", label="predicted"))
    if expert:
        handles.append(Line2D([], [], color="k", linestyle="dashed", label="expert"))
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8,
               frameon=False)
    title = patient_id
    if flags:
        title += "  FLAGS: " + "; ".join(sorted({f["flag"] for f in flags}))
    fig.suptitle(title, fontsize=10, color="darkred" if flags else "black")
    return fig
