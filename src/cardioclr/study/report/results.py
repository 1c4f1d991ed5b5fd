"""What the report computes from the collected numbers: paired comparisons with no
pretraining, the beyond-the-paper cells against the paper's best cell, the paper's questions
(does SimCLR help, does heart masking help), collapsed classifiers, the best value of a row,
and the ``results.csv`` rows."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from cardioclr.artifacts import RESULT_COLUMNS, Estimate, ResultRow, number
from cardioclr.evaluate.compare import compare_accuracy, compare_predictions
from cardioclr.evaluate.metrics import prob_columns
from cardioclr.study.report.collect import (
    CellResult,
    PairedComparison,
    StudyData,
    read_predictions,
)


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


def paired_comparison(a: CellResult, b: CellResult, data: StudyData,
                      n_boot: int = 2000) -> PairedComparison | None:
    """Cell ``a`` vs cell ``b`` on the same test patients (None, with a warning, when their
    predictions are missing or cannot be paired)."""
    if not (a.done and b.done and data.classes):
        return None
    pa, pb = read_predictions(a), read_predictions(b)
    if pa is None or pb is None:
        return None
    try:
        auc = compare_predictions(pa, pb, data.classes, n_boot=n_boot, seed=0)
        acc = compare_accuracy(pa, pb, data.classes, n_boot=n_boot, seed=0)
    except Exception as err:  # noqa: BLE001 - a comparison problem must not sink the report
        data.warnings.append(f"paired comparison {a.cell} vs {b.cell}: {err}")
        return None
    return PairedComparison(a, b, Estimate.read(auc.get("macro_auc_diff")), number(auc.get("p_value")),
                            str(auc.get("test", "")), Estimate.read(acc.get("accuracy_diff")),
                            number(acc.get("mcnemar_p_value")))


def paper_reference(data: StudyData) -> tuple[CellResult | None, str]:
    """The paper's best cell, chosen WITHOUT the test split: the finished grid cell with the
    highest cross-validated AUC on train (the ``selected`` grid point's mean validation AUC).
    Only when no cell has CV numbers (an old study) is the test AUC used, and the rule says so."""
    done = [c for c in data.cells if c.done]
    with_cv = [c for c in done if c.cv_auc is not None]
    if with_cv:
        best = max(with_cv, key=lambda c: c.cv_auc or 0.0)
        return best, (f"the paper-grid cell with the highest cross-validated macro AUC on the "
                      f"train split ({best.cv_auc:.3f}), chosen without looking at the test split")
    with_auc = [c for c in done if c.auc is not None]
    if with_auc:
        best = max(with_auc, key=lambda c: c.auc or 0.0)
        return best, ("the paper-grid cell with the highest TEST macro AUC (no cell has "
                      "cross-validation numbers; a choice on the test split favours the reference)")
    return None, ""


def add_beyond_comparisons(data: StudyData, n_boot: int = 2000) -> None:
    """Fill ``data.reference``, ``data.beyond_vs_reference`` and ``data.questions``.

    Questions (the paper's, fixed in advance; every available pair is reported, significant
    or not): SimCLR: each SimCLR cell against no pretraining with the same encoder and
    downstream input. Heart masking: segmented against full downstream input with the same
    encoder and pretraining, and the anatomic prior in both stages (SimCLR on segmented ->
    segmented) against none in either (SimCLR on full -> full).
    """
    data.reference, data.reference_rule = paper_reference(data)
    if data.reference is not None:
        for cell in data.beyond:
            cmp = paired_comparison(cell, data.reference, data, n_boot)
            if cmp is not None:
                data.beyond_vs_reference.append(cmp)
    questions: list[tuple[str, PairedComparison]] = []
    for enc in data.encoders():
        for inp in ("full", "segmented"):
            none = data.find(enc, "none", inp)
            for pre in ("simclr-full", "simclr-segmented"):
                simclr = data.find(enc, pre, inp)
                cmp = paired_comparison(simclr, none, data, n_boot) if simclr and none else None
                if cmp is not None:
                    questions.append(("simclr", cmp))
        for pre in ("none", "simclr-full", "simclr-segmented"):
            seg, full = data.find(enc, pre, "segmented"), data.find(enc, pre, "full")
            cmp = paired_comparison(seg, full, data, n_boot) if seg and full else None
            if cmp is not None:
                questions.append(("masking", cmp))
        both, neither = data.find(enc, "simclr-segmented", "segmented"), data.find(enc, "simclr-full", "full")
        cmp = paired_comparison(both, neither, data, n_boot) if both and neither else None
        if cmp is not None:
            questions.append(("masking", cmp))
    data.questions = questions


def verdict(cmp: PairedComparison) -> str:
    """``helps`` / ``hurts`` when the 95% CI of the AUC difference excludes 0, else
    ``no significant difference`` (the paired bootstrap p < 0.05 exactly then)."""
    d = cmp.auc_diff
    if d.ci_low is not None and d.ci_low > 0:
        return "helps"
    if d.ci_high is not None and d.ci_high < 0:
        return "hurts"
    return "no significant difference"


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
    """One :class:`ResultRow` per cell (fine-tuning grid, baselines, then beyond the paper)."""
    rows = []
    default_masks = data.cfg.mask_source if data.cfg else ""
    vs_ref = {cmp.a.cell: cmp for cmp in data.beyond_vs_reference}
    for c in [*data.cells, *data.baselines, *data.beyond]:
        ref = vs_ref.get(c.cell)
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
            reason=c.reason, reference=ref.b.cell if ref else "",
            auc_diff_vs_reference=ref.auc_diff.value if ref else None,
            p_vs_reference=ref.auc_p if ref else None,
            accuracy_diff_vs_reference=ref.accuracy_diff.value if ref else None,
            accuracy_p_vs_reference=ref.accuracy_p if ref else None))
    return rows


def results_frame(data: StudyData) -> pd.DataFrame:
    """``results.csv`` as a table: :func:`result_rows` with :data:`RESULT_COLUMNS`."""
    return pd.DataFrame([vars(r) for r in result_rows(data)], columns=RESULT_COLUMNS)
