"""Baselines: the clinical-feature classifier and the hybrid, next to the best fine-tuned
model, and the clinical features' importances."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from cardioclr.artifacts import number
from cardioclr.evaluate.bullseye import bullseye_png, segment_values
from cardioclr.study.html import Block, Gallery, Para, Table, TCell
from cardioclr.study.report.collect import CellResult, StudyData
from cardioclr.study.report.format import estimate_or_dash, estimate_text, fmt, value_or_dash
from cardioclr.study.report.results import best_flags
from cardioclr.study.report.sections.diagnosis import diagnosis_blocks


def _features_note(b: CellResult) -> str:
    """``deep features: smallcnn-segmented/deep_features.csv`` (the pretraining cell), or ''."""
    deep = b.metrics.get("deep_features") if b.metrics is not None else None
    if not deep or not isinstance(deep, dict):
        return ""
    f = Path(str(deep.get("file") or ""))
    return f"deep features: {f.parent.name + '/' if f.parent.name else ''}{f.name or '?'}"


log = logging.getLogger(__name__)


def error_maps(baselines: list[CellResult]) -> Gallery | None:
    """AHA bull's-eye maps (:mod:`cardioclr.evaluate.bullseye`) of every test patient a baseline
    misclassified, from the test rows of its ``features.csv``; one map per patient, captioned
    with each baseline's prediction. None without errors or features."""
    calls: dict[str, list[str]] = {}
    rows: dict[str, pd.Series] = {}
    for b in baselines:
        m = b.metrics or {}
        errors = m.get("test_errors")
        path = b.path / "features.csv"
        if not isinstance(errors, list) or not errors or not path.is_file():
            continue
        try:
            feats = pd.read_csv(path, index_col=0)
        except (OSError, ValueError) as err:  # a damaged file costs the maps, not the report
            log.warning("%s: %s", path, err)
            continue
        test = feats[feats["subset"] == "test"] if "subset" in feats.columns else feats.iloc[0:0]
        for e in errors:
            pid = str(e.get("patient_id"))
            if pid in test.index:
                rows.setdefault(pid, test.loc[pid])
                calls.setdefault(pid, [f"true {e.get('label')}"]).append(
                    f"{m.get('model', b.pretraining)} -> {e.get('predicted')}")
    items = []
    for pid, row in rows.items():
        values = segment_values(row)
        if values is not None:
            items.append((f"bullseye_{pid}.png", bullseye_png(values, title=f"{pid}: AHA segments"),
                          f"{pid}: {'; '.join(calls[pid])}"))
    if not items:
        return None
    return Gallery("Test errors: AHA bull's-eye maps of ED wall thickness, systolic thickening and "
                   "segmental ejection fraction (the masks the baseline read)", items)


def baseline_section(data: StudyData) -> list[Block]:
    """Clinical-feature classifier and the hybrid, next to the best fine-tuned model."""
    if not data.baselines:
        return [Para("No baseline was run.")]
    # (row's cells without the AUC cell, AUC value shown, AUC cell text, AUC cell sub-line)
    entries: list[tuple[list[TCell], float | None, str, str]] = []
    for b in data.baselines:
        m = b.metrics or {}
        auc = b.auc_estimate.value if b.done else None
        entries.append(([TCell(str(m.get("model", b.pretraining))),
                         TCell(estimate_or_dash(b.accuracy)),
                         TCell(value_or_dash(b.balanced_accuracy.value)),
                         TCell(str(m.get("mask_source", ""))), TCell(_features_note(b))],
                        auc, estimate_text(b.auc_estimate) if b.done else b.status, b.reason))
    done = [c for c in data.cells if c.auc is not None]
    if done:
        best = max(done, key=lambda c: c.auc or -1)
        entries.append(([TCell(f"best fine-tuned: {best.label}"), TCell(estimate_or_dash(best.accuracy)),
                         TCell(fmt(best.balanced_accuracy.value)), TCell(""), TCell("")],
                        best.auc, estimate_text(best.auc_estimate), ""))
    bold = best_flags([auc for _, auc, _, _ in entries])
    rows = [[cells[0], TCell(text, bold=b, sub=sub), *cells[1:]]
            for (cells, _, text, sub), b in zip(entries, bold, strict=True)]
    blocks: list[Block] = [Table(
        "Clinical-feature baseline (classifier on indices and regional features measured on the "
        "segmentation; the "
        "ACDC challenge winners' approach) and the hybrid (clinical indices + PCA of "
        "self-supervised SimCLR features, which never saw the labels)",
        ["Model", "Macro AUC (95% CI)", "Accuracy (95% CI)", "Balanced accuracy", "Masks", "Notes"],
        rows, ["The 'best fine-tuned' row is chosen by test AUC for display only; it is not a "
               "selected model."])]
    first = next((b.metrics for b in data.baselines
                  if b.metrics and b.metrics.get("feature_importances")), None)
    imp = first.get("feature_importances") if first else None
    if isinstance(imp, dict) and imp and first:
        top_imp = list(imp.items())[:10]
        kind = first.get("feature_importance_kind")
        blocks.append(Table(f"Most important clinical features ({first.get('model', 'first baseline')}"
                            f"{': ' + str(kind) if kind else ''})",
                            ["Feature", "Importance"],
                            [[TCell(k), TCell(fmt(number(v)))] for k, v in top_imp]))
    blocks += diagnosis_blocks(data.classes, [dict(b.metrics) for b in data.baselines if b.metrics])
    maps = error_maps(data.baselines)
    if maps is not None:
        blocks.append(maps)
    return blocks
