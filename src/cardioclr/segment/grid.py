"""The store grid the CPU segmentation preset was chosen on (importable without torch).

``prepare`` fixes one in-plane grid for a whole work directory (``--spacing``, ``--size``), and
the segmentation network sees structures at that pixel size. The ``cpu`` preset
(:data:`cardioclr.segment.train.PRESETS`) segments 128-pixel heart crops; on a 1.25 mm grid a
crop spans 160 mm (the largest ACDC heart with its margin: 122 + 16 pixels, so the window grows
to 144 for 3 of the 100 patients) and the myocardium is 1.2 times as many pixels thick as at
1.5 mm, for the same cost per training step.

Chosen on the 70 ACDC train patients only (5-fold cross-fit, 33 epochs per fold, scored on each
patient's source grid against the dataset's expert files: benchmarks/segmentation_crossfit.py
``--grid source``, 2026-12-06): out-of-fold mean Dice 0.898 at 1.25 mm / 224 px against 0.892
at 1.5 mm / 192 px, paired difference +0.006 (bootstrap 95% CI 0.003 to 0.008, 59 of 70
patients better), every structure better, ES RV +0.013 (benchmarks/README.md).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StoreGrid:
    """An in-plane store grid: ``spacing_mm`` (mm per pixel) and ``image_size`` (pixels a side)."""

    spacing_mm: float
    image_size: int


#: The ``cpu`` segmentation preset's grid: a 280 mm field of view (the 1.5 mm / 192 px default of
#: ``prepare`` spans 288 mm, so the classification stages see almost the same field).
CPU_GRID = StoreGrid(spacing_mm=1.25, image_size=224)
