"""Numbers -> text: the only place the report turns a number into a string.

Choices that depend on values (which cell is bold, which share is best) are made on numbers
by :mod:`cardioclr.study.report.results`; these helpers only render.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from cardioclr.artifacts import Estimate, number

PRETRAINING_LABELS = {"none": "No pretraining", "imagenet": "ImageNet",
                      "simclr-full": "SimCLR (full)", "simclr-segmented": "SimCLR (segmented)"}
INPUT_LABELS = {"full": "full images", "segmented": "segmented images", "roi": "heart ROI",
                "anatomy": "heart ROI + LV/MYO/RV masks"}


def fmt(v: float | None, digits: int = 3) -> str:
    """A number with ``digits`` decimals, or ``n/a``."""
    return "n/a" if v is None else f"{v:.{digits}f}"


def fmt_p(p: float | None) -> str:
    """p-value as in papers: ``p = 0.031``, ``p < 0.001``."""
    if p is None:
        return ""
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def estimate_text(e: Estimate) -> str:
    """``0.853 (0.801–0.902)``: a value and its 95% CI (``n/a`` when there is no value)."""
    if e.value is None:
        return "n/a"
    return f"{e.value:.3f} ({fmt(e.ci_low)}–{fmt(e.ci_high)})" if e.has_ci else f"{e.value:.3f}"


def estimate_or_dash(e: Estimate) -> str:
    """``0.812 (0.700–0.900)`` with ``n/a`` for a missing bound; ``—`` without a value."""
    return f"{fmt(e.value)} ({fmt(e.ci_low)}–{fmt(e.ci_high)})" if e.value is not None else "—"


def value_or_dash(v: float | None) -> str:
    """``0.812``, or ``—`` without a value."""
    return fmt(v) if v is not None else "—"


def short_reason(reason: str) -> str:
    """A reason cut to 60 characters for a table cell (the full text is in a note)."""
    return reason if len(reason) <= 60 else reason[:57] + "..."


def status_text(status: str) -> str:
    """``not-run`` -> ``not run``."""
    return status.replace("-", " ")


def cell_str(v: Any) -> str:
    """A CSV value for a table cell: 3 significant digits for non-integers, empty for missing."""
    f = number(v)
    if f is not None and not isinstance(v, (bool, np.bool_)) and not float(f).is_integer():
        return f"{f:.3g}"
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)



def signed_estimate(e: Estimate) -> str:
    """A difference and its 95% CI with signs: ``+0.031 (-0.020 to +0.080)``; ``n/a`` without."""
    if e.value is None:
        return "n/a"
    ci = f" ({e.ci_low:+.3f} to {e.ci_high:+.3f})" if e.has_ci else ""
    return f"{e.value:+.3f}{ci}"
