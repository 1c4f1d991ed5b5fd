"""Figures of the study report, returned as PNG bytes (embedded in the HTML, saved for the md).

* :func:`convergence_figure` - Figure 1 of the paper: validation loss and validation AUC per
  epoch, one line per initialisation, one row of panels per (encoder, downstream input).
* :func:`roc_figure` - test ROC curves (one-vs-rest, macro-averaged over classes) per cell.

Both use matplotlib's non-interactive Agg backend (no display needed) and a fixed DPI so the
report's size stays predictable.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: the report is built on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

DPI = 100
#: One colour per initialisation, the same in every figure of the report.
INIT_COLOURS = {"none": "#7f7f7f", "imagenet": "#1f77b4", "simclr-full": "#ff7f0e",
                "simclr-segmented": "#2ca02c"}
INIT_LABELS = {"none": "No pretraining", "imagenet": "ImageNet", "simclr-full": "SimCLR (full)",
               "simclr-segmented": "SimCLR (segmented)"}
#: Preferred validation split names in curves.csv, most preferred first (cross-validation folds
#: are the validation data the paper's Figure 1 shows; a final refit may have none).
_VAL_SPLITS = ("cv", "val", "validation", "fold", "train")


def _png(fig: plt.Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def curve_summary(curves: pd.DataFrame) -> pd.DataFrame:
    """Mean (over folds and seeds) val_loss and val_auc per epoch of one cell's ``curves.csv``.

    Rows without any validation value are dropped; when several ``split`` values have
    validation values, the first of :data:`_VAL_SPLITS` present is used. Returns columns
    ``epoch, val_loss, val_auc, n`` (n = runs averaged), sorted by epoch.
    """
    df = curves.copy()
    for col in ("val_loss", "val_auc"):
        if col not in df.columns:
            df[col] = np.nan
        df[col] = pd.to_numeric(df[col], errors="coerce")
    df = df[df["val_loss"].notna() | df["val_auc"].notna()]
    if df.empty or "epoch" not in df.columns:
        return pd.DataFrame(columns=["epoch", "val_loss", "val_auc", "n"])
    if "split" in df.columns and df["split"].nunique() > 1:
        splits = [s for s in _VAL_SPLITS if s in set(df["split"].astype(str))]
        if splits:
            df = df[df["split"].astype(str) == splits[0]]
    g = df.groupby("epoch")
    out = pd.DataFrame({"val_loss": g["val_loss"].mean(), "val_auc": g["val_auc"].mean(),
                        "n": g.size()}).reset_index()
    return out.sort_values("epoch").reset_index(drop=True)


def convergence_figure(panels: Sequence[tuple[str, dict[str, pd.DataFrame]]]) -> bytes | None:
    """Figure 1: ``panels`` = [(title, {pretraining: curve_summary}), ...], one row each.

    Left column: validation loss per epoch; right: validation macro AUC. None when no panel
    has any curve.
    """
    panels = [(t, {k: v for k, v in d.items() if not v.empty}) for t, d in panels]
    panels = [(t, d) for t, d in panels if d]
    if not panels:
        return None
    fig, axes = plt.subplots(len(panels), 2, figsize=(10, 2.8 * len(panels)), squeeze=False)
    for row, (title, curves) in enumerate(panels):
        ax_loss, ax_auc = axes[row]
        for name, c in curves.items():
            colour = INIT_COLOURS.get(name)
            label = INIT_LABELS.get(name, name)
            ax_loss.plot(c["epoch"], c["val_loss"], marker="o", ms=3, color=colour, label=label)
            ax_auc.plot(c["epoch"], c["val_auc"], marker="o", ms=3, color=colour, label=label)
        ax_loss.set_title(f"{title}: validation loss", fontsize=10)
        ax_auc.set_title(f"{title}: validation macro AUC", fontsize=10)
        for ax in (ax_loss, ax_auc):
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no "epoch 0.5" ticks
            ax.grid(alpha=0.3)
        ax_loss.set_ylabel("cross-entropy")
        ax_auc.set_ylabel("AUC")
        ax_auc.set_ylim(0.0, 1.02)
        ax_auc.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return _png(fig)


def macro_roc(y: np.ndarray, proba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Macro-averaged one-vs-rest ROC: (fpr grid, mean tpr) over classes present in ``y``.

    Each class's ROC is interpolated onto the union of all classes' false-positive rates and
    the true-positive rates are averaged (the usual macro ROC; its area approximates the macro
    AUC of the tables, which is the mean of the per-class AUCs).
    """
    from sklearn.metrics import roc_curve

    curves = []
    for c in range(proba.shape[1]):
        pos = y == c
        if pos.all() or not pos.any():
            continue
        fpr, tpr, _ = roc_curve(pos.astype(int), proba[:, c])
        curves.append((fpr, tpr))
    if not curves:
        return np.array([0.0, 1.0]), np.array([0.0, 1.0])
    grid = np.unique(np.concatenate([f for f, _ in curves]))
    mean_tpr = np.mean([np.interp(grid, f, t) for f, t in curves], axis=0)
    return grid, mean_tpr


def roc_figure(panels: Sequence[tuple[str, dict[str, tuple[np.ndarray, np.ndarray, float]]]],
               ) -> bytes | None:
    """Test ROC curves: ``panels`` = [(title, {pretraining: (y, proba, macro_auc)}), ...].

    One panel per (encoder, downstream input), one macro one-vs-rest curve per initialisation,
    the legend giving the macro AUC of the tables. None when there is nothing to draw.
    """
    panels = [(t, d) for t, d in panels if d]
    if not panels:
        return None
    n = len(panels)
    cols = min(n, 2)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 4.4 * rows), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    for ax, (title, cells) in zip(axes.ravel(), panels, strict=False):
        ax.plot([0, 1], [0, 1], ls="--", color="#bbbbbb", lw=1)
        for name, (y, proba, auc) in cells.items():
            fpr, tpr = macro_roc(y, proba)
            ax.plot(fpr, tpr, color=INIT_COLOURS.get(name), lw=1.8,
                    label=f"{INIT_LABELS.get(name, name)} (AUC {auc:.3f})")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate (macro, one-vs-rest)")
        ax.set_xlim(-0.01, 1.01)
        ax.set_ylim(-0.01, 1.01)
        ax.set_aspect("equal")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return _png(fig)


def bar_figure(labels: Sequence[str], values: Sequence[float], lows: Sequence[float],
               highs: Sequence[float], title: str, ylabel: str) -> bytes | None:
    """Horizontal bars with error bars (e.g. macro AUC with 95% CI of every model)."""
    keep = [i for i, v in enumerate(values) if v is not None and np.isfinite(v)]
    if not keep:
        return None
    labels = [labels[i] for i in keep]
    vals = np.array([values[i] for i in keep], float)
    lo = np.array([lows[i] if lows[i] is not None else values[i] for i in keep], float)
    hi = np.array([highs[i] if highs[i] is not None else values[i] for i in keep], float)
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(vals) + 1.2))
    ypos = np.arange(len(vals))[::-1]
    err = np.vstack([np.clip(vals - lo, 0, None), np.clip(hi - vals, 0, None)])
    ax.barh(ypos, vals, xerr=err, color="#4c72b0", alpha=0.85, capsize=3)
    ax.set_yticks(ypos, labels, fontsize=8)
    ax.set_xlabel(ylabel)
    ax.set_xlim(0, 1.0)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _png(fig)
