"""Report blocks of the diagnosis baselines: the classifier (fixed, or chosen by CV on train), the test
confusion matrix, and for each test error the indices that drove it.

Self-contained: it reads only the baselines' ``metrics.json`` dicts (written by
:func:`cardioclr.evaluate.baseline.run_baseline`), so the report package calls it with one line.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from cardioclr.study.html import Block, Para, Table, TCell


def _f(v: Any, digits: int = 3) -> str:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return "—"
    return "—" if math.isnan(x) else f"{x:.{digits}g}"


def _choice_para(model: str, m: dict[str, Any]) -> Para | None:
    cv = m.get("cv") or {}
    chosen, fs = cv.get("chosen"), cv.get("chosen_features")
    if not chosen:
        return None
    res = (cv.get("results") or {}).get(f"{chosen}/{fs}") or {}
    acc = (res.get("accuracy") or {})
    auc = (res.get("macro_auc") or {})
    # Log-loss (metrics.json since it was recorded): the calibration that accuracy cannot show.
    loss = (res.get("log_loss") or {}).get("mean")
    scores = (f"accuracy {_f(acc.get('mean'))} ± {_f(acc.get('sd'), 2)}, macro AUC {_f(auc.get('mean'), 4)}"
              + (f", log-loss {_f(loss)}" if loss is not None else ""))
    t = cv.get("temperature")
    if t is not None:  # since the baseline calibrates (a number in metrics.json)
        scores += (f"; its probabilities are temperature-scaled (T = {_f(t, 2)}, fitted on these "
                   "out-of-fold probabilities; T < 1 sharpens)")
    n_pairs = len(cv.get("results") or {})
    if n_pairs == 1:  # a fixed model (the default vote): nothing was chosen
        return Para(f"**{model}**: {chosen} on the {fs} features, fixed in advance (not chosen per "
                    f"run); its {cv.get('n_repeats')}x{cv.get('n_splits')} repeated stratified "
                    f"cross-validation on the training patients only: {scores}; the test patients were "
                    "read once, after the refit." + _rows_sentence(m))
    return Para(f"**{model}**: {chosen} on the {fs} features, chosen among {n_pairs} classifier x "
                f"feature-set pairs by {cv.get('n_repeats')}x{cv.get('n_splits')} repeated stratified "
                f"cross-validation on the training patients only ({scores}); the test patients were "
                "read once, after the choice and the refit." + _rows_sentence(m))


def _rows_sentence(m: dict[str, Any]) -> str:
    """What the model was fitted on, when the training patients' other masks added rows
    (``training_rows`` of metrics.json; ``BaselineConfig.both_masks``); else empty."""
    rows = dict(m.get("training_rows") or {})
    source = m.get("mask_source")
    first = rows.pop(source, None) if source else None
    if first is None or len(rows) != 1:
        return ""
    other, n = next(iter(rows.items()))
    return (f" Fitted (and cross-validated) on {first} training patients' features from their {source} "
            f"masks plus, as second rows, {n} of them from their {other} masks, a patient's two rows "
            f"always on the same side of a fold; every patient is predicted from its {source} masks.")


def _confusion_table(model: str, classes: Sequence[str], m: dict[str, Any]) -> Table | None:
    cm = (m.get("confusion_matrix") or {}).get("value")
    if not cm or len(cm) != len(classes):
        return None
    rows = [[TCell(c, bold=True), *[TCell(str(int(v)), bold=i == j and int(v) > 0)
                                    for j, v in enumerate(row)]]
            for i, (c, row) in enumerate(zip(classes, cm, strict=True))]
    return Table(f"Confusion matrix on the test patients: {model} (rows: true class, columns: "
                 "predicted)", ["True \\ predicted", *classes], rows)


def _errors_table(model: str, m: dict[str, Any]) -> Table | Para | None:
    errors = m.get("test_errors")
    if errors is None:
        return None
    if not errors:
        return Para(f"{model}: no test patient misclassified.")
    # Predicted masks: each error's segmentation QC flags (None with expert masks: no column).
    with_flags = any(e.get("segmentation_flags") is not None for e in errors)
    rows = []
    for e in errors:
        drivers = "; ".join(
            f"{d['feature']} = {_f(d['value'])} (median {e['label']} {_f(d['true_class_median'])}, "
            f"{e['predicted']} {_f(d['predicted_class_median'])})" for d in e.get("drivers", []))
        row = [TCell(str(e["patient_id"])), TCell(str(e["label"])),
               TCell(f"{e['predicted']} ({_f(e.get('prob_predicted'), 2)})"), TCell(drivers or "—")]
        if with_flags:
            row.append(TCell(str(e.get("segmentation_flags") or "none")))
        rows.append(row)
    header = ["Patient", "True", "Predicted (probability)", "Indices that pulled it away from its class"]
    notes = ["For each error, the three features whose replacement by the true class's "
             "training median raises the true class's probability most (one at a time)."]
    if with_flags:
        header.append("Segmentation QC flags")
        notes.append("QC flags of the patient's predicted masks (qc_flags.csv): an error on flagged "
                     "masks may come from the segmentation rather than the classifier.")
    return Table(f"Test errors of {model} and the indices that drove them", header, rows, notes)


def diagnosis_blocks(classes: Sequence[str], baselines: Sequence[dict[str, Any]]) -> list[Block]:
    """Blocks for every baseline ``metrics.json`` dict that has the CV choice / error records
    (paper-style grid baselines without them contribute only their confusion matrix)."""
    blocks: list[Block] = []
    for m in baselines:
        model = str(m.get("model", "baseline"))
        for b in (_choice_para(model, m), _confusion_table(model, classes, m), _errors_table(model, m)):
            if b is not None:
                blocks.append(b)
    return blocks
