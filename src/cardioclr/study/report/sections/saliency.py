"""Saliency: the in-heart share of Grad-CAM per model and a few patients' overlays."""

from __future__ import annotations

import numpy as np

from cardioclr.artifacts import number
from cardioclr.evaluate.metrics import prob_columns
from cardioclr.study.html import Block, Gallery, Para, Table, TCell
from cardioclr.study.report.collect import StudyData, read_predictions, saliency_images
from cardioclr.study.report.format import fmt, value_or_dash
from cardioclr.study.report.results import best_by_group


def saliency_section(data: StudyData, n: int) -> list[Block]:
    """In-heart saliency share per model and a few patients' overlays per model."""
    blocks: list[Block] = []
    models, caveats = [], []
    for c in data.cells:
        if c.done and c.saliency is not None:
            models.append(c)
            caveat = c.saliency.get("caveat")
            if caveat and caveat not in caveats:
                caveats.append(str(caveat))
    if models:
        shares = [c.in_heart for c in models]
        # Bold: the best of each downstream input (full and segmented shares are not comparable:
        # a segmented image is zero outside the heart, see the caveat).
        bold = best_by_group(shares, [c.downstream_input for c in models])
        rows = []
        for c, share, b in zip(models, shares, bold, strict=True):
            s = c.saliency or {}
            rows.append([TCell(c.label), TCell(fmt(share), bold=b),
                         TCell(value_or_dash(number(s.get("in_heart_share_sd")))),
                         TCell(fmt(number(s.get("mask_area_share_mean")))),
                         TCell(str(s.get("n", "")))])
        blocks.append(Table(
            "In-heart saliency score per model: share of the Grad-CAM saliency inside the "
            "(dilated) predicted heart mask, mean over test patients; higher = the model looks at "
            "the heart. Chance level = the mask's share of the image. Bold: best per downstream "
            "input.",
            ["Model", "In-heart share (mean)", "SD", "Chance level (mask area share)", "Patients"],
            rows, [f"Note: {c}" for c in caveats]))
    images = {c.cell: saliency_images(c) for c in data.cells}
    images = {k: v for k, v in images.items() if v}
    if not images:
        blocks.append(Para("No saliency overlays (saliency/PID.png) were found."))
        return blocks
    # The same patients for every model, so the overlays can be compared side by side.
    common = sorted(set.intersection(*[set(v) for v in images.values()]))
    for c in data.cells:
        if c.cell not in images:
            continue
        chosen = (common or sorted(images[c.cell]))[:n]
        preds = read_predictions(c)
        items = []
        for pid in chosen:
            cap = pid
            if preds is not None and data.classes:
                row = preds[preds["patient_id"] == pid]
                if len(row):
                    cols = [col for col in prob_columns(data.classes) if col in row.columns]
                    true = data.classes[int(row["label_index"].iloc[0])]
                    if cols:
                        pred = data.classes[int(np.argmax(row[cols].to_numpy(float)[0]))]
                        cap = f"{pid}: true {true}, predicted {pred}"
            items.append((f"saliency_{c.cell}_{pid}.png", images[c.cell][pid].read_bytes(), cap))
        share_text = f" — in-heart saliency {fmt(c.in_heart)}" if c.in_heart is not None else ""
        blocks.append(Gallery(f"{c.label}{share_text}", items))
    return blocks
