"""What the report computes from the collected numbers: paired comparisons with no
pretraining, collapsed classifiers, the best value of a row, and the ``results.csv`` rows."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from cardioclr.artifacts import RESULT_COLUMNS, ResultRow, number
from cardioclr.evaluate.compare import compare_predictions
from cardioclr.evaluate.metrics import prob_columns
from cardioclr.study.report.collect import CellResult, StudyData, read_predictions


def single_class(cell: CellResult, classes: list[str]) -> str | None:
    """The class a cell predicts for every test patient, or None when it predicts several.

    A collapsed classifier (one class for everyone) has an accuracy equal to that class's
    share and a zero-width stratified-bootstrap CI; the report says so instead of leaving
    ``0.208 (0.208–0.208)`` unexplained.
    """
    df = read_predictions(cell)
    if df is None or len(df) < 2:
        return None
    if "pred_label" in df.columns:
        predicted = df["pred_label"].astype(str)
    else:
        cols = prob_columns(classes)
        if not classes or any(c not in df.columns for c in cols):
            return None
        predicted = pd.Series(np.asarray(classes)[df[cols].to_numpy(float).argmax(axis=1)])
    values = predicted.unique()
    return str(values[0]) if len(values) == 1 else None


def add_comparisons(data: StudyData, n_boot: int = 2000) -> None:
    """Fill ``p_vs_none`` of every pretrained cell: paired test against no pretraining."""
    ref = {(c.encoder, c.downstream_input): c for c in data.cells if c.pretraining == "none"}
    for cell in data.cells:
        base = ref.get((cell.encoder, cell.downstream_input))
        if cell.pretraining == "none" or base is None or not cell.done or not data.classes:
            continue
        a, b = read_predictions(cell), read_predictions(base)
        if a is None or b is None:
            continue
        try:
            cmp = compare_predictions(a, b, data.classes, n_boot=n_boot, seed=0)
        except Exception as err:  # noqa: BLE001 - a comparison problem must not sink the report
            data.warnings.append(f"p-value {cell.cell} vs {base.cell}: {err}")
            continue
        cell.p_vs_none = number(cmp.get("p_value"))
        cell.diff_vs_none = number((cmp.get("macro_auc_diff") or {}).get("value"))
        cell.comparison_test = str(cmp.get("test", ""))


def best_flags(values: Sequence[float | None], digits: int = 3) -> list[bool]:
    """Which values are the best (highest) as shown with ``digits`` decimals (ties all best)."""
    shown = [round(v, digits) if v is not None else None for v in values]
    finite = [v for v in shown if v is not None]
    top = max(finite) if finite else None
    return [top is not None and v is not None and v == top for v in shown]


def best_by_group(values: Sequence[float | None], groups: Sequence[str],
                  digits: int = 3) -> list[bool]:
    """:func:`best_flags` within each group (e.g. per downstream input)."""
    flags = [False] * len(values)
    for g in dict.fromkeys(groups):
        idx = [i for i, gg in enumerate(groups) if gg == g]
        for i, f in zip(idx, best_flags([values[i] for i in idx], digits), strict=True):
            flags[i] = f
    return flags


def result_rows(data: StudyData) -> list[ResultRow]:
    """One :class:`ResultRow` per cell (fine-tuning grid, then baselines)."""
    rows = []
    default_masks = data.cfg.mask_source if data.cfg else ""
    for c in [*data.cells, *data.baselines]:
        auc, acc, bacc = c.auc_estimate, c.accuracy, c.balanced_accuracy
        mask_source = c.mask_source if c.metrics is not None and "mask_source" in c.metrics else default_masks
        rows.append(ResultRow(
            cell=c.cell, kind=c.kind, encoder=c.encoder, pretraining=c.pretraining,
            downstream_input=c.downstream_input, mask_source=mask_source or "", status=c.status,
            auc=auc.value, auc_ci_low=auc.ci_low, auc_ci_high=auc.ci_high,
            accuracy=acc.value, accuracy_ci_low=acc.ci_low, accuracy_ci_high=acc.ci_high,
            balanced_accuracy=bacc.value, balanced_accuracy_ci_low=bacc.ci_low,
            balanced_accuracy_ci_high=bacc.ci_high,
            p_vs_none=c.p_vs_none, auc_diff_vs_none=c.diff_vs_none,
            saliency_in_heart_share=c.in_heart, n_test=c.n_test, seconds=c.seconds,
            reason=c.reason))
    return rows


def results_frame(data: StudyData) -> pd.DataFrame:
    """``results.csv`` as a table: :func:`result_rows` with :data:`RESULT_COLUMNS`."""
    return pd.DataFrame([vars(r) for r in result_rows(data)], columns=RESULT_COLUMNS)
