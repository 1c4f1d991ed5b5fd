"""Figure 1 (convergence of downstream training by initialisation) and the test ROC curves."""

from __future__ import annotations

from cardioclr.evaluate.metrics import prob_columns
from cardioclr.study.html import Block, Figure, Para
from cardioclr.study.plots import convergence_figure, curve_summary, roc_figure
from cardioclr.study.report.collect import INPUTS, StudyData, read_curves, read_predictions
from cardioclr.study.report.format import INPUT_LABELS


def figure_1(data: StudyData) -> list[Block]:
    """Figure 1: validation loss / AUC per epoch by initialisation."""
    panels = []
    for enc in data.encoders():
        for inp in INPUTS:
            curves = {}
            for c in data.cells:
                if c.encoder == enc and c.downstream_input == inp:
                    df = read_curves(c)
                    if df is not None:
                        curves[c.pretraining] = curve_summary(df)
            if curves:
                panels.append((f"{enc}, {INPUT_LABELS[inp]}", curves))
    png = convergence_figure(panels)
    if png is None:
        return [Para("Figure 1: no convergence curves (curves.csv) were found.")]
    return [Figure("figure1_convergence.png", png,
                   "Figure 1. Convergence of downstream training by initialisation: validation "
                   "loss (left) and validation macro AUC (right) per epoch, mean over "
                   "cross-validation folds and seeds.")]


def roc_section(data: StudyData) -> list[Block]:
    """ROC curves on the test split per (encoder, downstream input)."""
    panels = []
    cols = prob_columns(data.classes) if data.classes else []
    for enc in data.encoders():
        for inp in INPUTS:
            curves = {}
            for c in data.cells:
                if c.encoder != enc or c.downstream_input != inp:
                    continue
                df = read_predictions(c)
                if df is None or not cols or any(col not in df.columns for col in cols) or c.auc is None:
                    continue
                curves[c.pretraining] = (df["label_index"].to_numpy(int), df[cols].to_numpy(float), c.auc)
            if curves:
                panels.append((f"{enc}, {INPUT_LABELS[inp]}", curves))
    png = roc_figure(panels)
    if png is None:
        return [Para("No test predictions (predictions.csv) were found for ROC curves.")]
    return [Figure("roc_test.png", png, "Test ROC curves, one-vs-rest macro-averaged over classes; "
                   "the legend gives the macro AUC of the tables.")]
