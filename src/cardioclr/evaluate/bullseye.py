"""AHA bull's-eye plots of one patient's per-segment values (:mod:`cardioclr.clinical.regional`).

The standard polar map (Cerqueira et al., Circulation 2002) seen from the apex: basal segments
1-6 on the outer ring, mid 7-12 on the middle ring, apical 13-16 on the inner ring; anterior at
the top, septum on the left, lateral wall on the right. The apical cap (segment 17) is not
measured on a short-axis stack, so the centre stays empty. Each panel shows one quantity with a
fixed colour range (the same for every patient, so that maps can be compared) and the value in
each segment; a segment that could not be measured is grey with a dash.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: predictions run on servers
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from cardioclr.atomic import atomic_path  # noqa: E402
from cardioclr.clinical.regional import N_AHA, segment_arc_deg  # noqa: E402

#: Where the anterior RV insertion sits in the standard view (degrees counter-clockwise from the
#: lateral direction): segment 1 (anterior) is then centred at the top and 4 (inferior) below.
STANDARD_INSERTION_DEG = 120.0
#: Ring radii (inner, outer) per level; 0-1 is the unmeasured apical cap.
RING = {"apical": (1.0, 2.0), "mid": (2.0, 3.0), "basal": (3.0, 4.0)}


@dataclass(frozen=True)
class Panel:
    """One map: ``title`` (with unit), the feature-table column of segment ``s``
    (``column.format(s)``), the colour range (vmin, vmax) and a matplotlib colour map."""

    title: str
    column: str
    vmin: float
    vmax: float
    cmap: str


#: The maps ``cardioclr predict`` draws per patient. Thickening and segmental EF share a range
#: whose low end (red) is akinesis and whose high end (green) is a normally contracting segment.
PANELS: tuple[Panel, ...] = (
    Panel("ED wall thickness (mm)", "wt_ed_seg{:02d}_mm", 0.0, 16.0, "viridis"),
    Panel("Systolic thickening (%)", "thickening_seg{:02d}_pct", -20.0, 80.0, "RdYlGn"),
    Panel("Segmental ejection fraction (%)", "lv_ef_seg{:02d}_pct", -20.0, 80.0, "RdYlGn"),
)


def segment_wedge(segment: int) -> tuple[float, float, float, float]:
    """(inner radius, outer radius, start angle, end angle) of ``segment`` on the map; angles in
    degrees counter-clockwise from the right (lateral) side."""
    level, start, width = segment_arc_deg(segment)
    r0, r1 = RING[level]
    theta0 = STANDARD_INSERTION_DEG + start
    return r0, r1, theta0, theta0 + width


def bullseye_png(values: Sequence[Mapping[int, float]], panels: Sequence[Panel] = PANELS,
                 title: str = "") -> bytes:
    """PNG bytes: one bull's-eye per panel; ``values[i]`` maps segment (1-16) -> value of
    ``panels[i]`` (NaN or missing: not measured)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.6),
                             subplot_kw={"projection": "polar"}, squeeze=False)
    for ax, panel, vals in zip(axes[0], panels, values, strict=True):
        cmap = plt.get_cmap(panel.cmap)
        norm = matplotlib.colors.Normalize(panel.vmin, panel.vmax, clip=True)
        for s in range(1, N_AHA + 1):
            r0, r1, t0, t1 = segment_wedge(s)
            v = float(vals.get(s, math.nan))
            colour = cmap(norm(v)) if math.isfinite(v) else (0.8, 0.8, 0.8, 1.0)
            ax.bar(math.radians((t0 + t1) / 2), r1 - r0, width=math.radians(t1 - t0), bottom=r0,
                   color=colour, edgecolor="white", linewidth=1.5)
            luminance = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
            ax.text(math.radians((t0 + t1) / 2), (r0 + r1) / 2, f"{v:.0f}" if math.isfinite(v) else "-",
                    ha="center", va="center", fontsize=8, color="white" if luminance < 0.45 else "black")
        ax.set_ylim(0, RING["basal"][1])
        ax.set_axis_off()
        ax.set_title(panel.title, fontsize=10)
        fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, orientation="horizontal",
                     fraction=0.05, pad=0.04, extend="both")
    if title:
        fig.suptitle(title, fontsize=11)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def segment_values(row: pd.Series, panels: Sequence[Panel] = PANELS) -> list[dict[int, float]] | None:
    """Per panel, segment -> value from one row of a feature table (NaN where absent): the
    ``values`` of :func:`bullseye_png`; None when no segment of any panel has a value."""
    values = [{s: float(row.get(p.column.format(s), math.nan)) for s in range(1, N_AHA + 1)} for p in panels]
    return values if any(math.isfinite(v) for d in values for v in d.values()) else None


def write_bullseyes(features: pd.DataFrame, folder: Path, masks: str = "predicted",
                    panels: Sequence[Panel] = PANELS) -> int:
    """``folder/PID.png`` for every row of ``features`` (index: patient_id; columns as
    :func:`cardioclr.evaluate.clinical_features.feature_table` with ``regional=True``); returns
    how many were written; ``masks`` names their source in the title. A patient without any
    segment value gets no map."""
    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    for pid, row in features.iterrows():
        values = segment_values(row, panels)
        if values is None:
            continue
        with atomic_path(folder / f"{pid}.png") as tmp:
            tmp.write_bytes(bullseye_png(values, panels, title=f"{pid}: AHA segments ({masks} masks)"))
        n += 1
    return n
