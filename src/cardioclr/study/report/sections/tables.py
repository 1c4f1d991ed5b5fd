"""Tables 1-3 of the paper (macro AUC with 95% CIs, best of each row in bold, p-values against
no pretraining) and the table of every cell."""

from __future__ import annotations

from cardioclr.study.html import Block, Para, Table, TCell
from cardioclr.study.progress import format_seconds
from cardioclr.study.report.collect import CellResult, StudyData
from cardioclr.study.report.format import (
    INPUT_LABELS,
    estimate_or_dash,
    estimate_text,
    fmt_p,
    short_reason,
    status_text,
    value_or_dash,
)
from cardioclr.study.report.results import best_flags, single_class

AUC_NOTE = ("Macro one-vs-rest ROC AUC on the test split (95% CI: stratified patient bootstrap). "
            "Bold: best of the row. p: paired comparison with no pretraining (same encoder and "
            "downstream input; DeLong for two classes, paired bootstrap of the macro AUC otherwise).")


def auc_row(cells: list[CellResult | None]) -> list[TCell]:
    """Table cells for one row; the highest AUC of the row is bold (ties all bold)."""
    bold = best_flags([c.auc if c is not None and c.done else None for c in cells])
    out = []
    for c, b in zip(cells, bold, strict=True):
        if c is None:
            out.append(TCell("—"))
        elif not c.done:
            # The reason is in the note under the table; the cell only says that there is one.
            out.append(TCell(status_text(c.status), sub="see note" if c.reason else ""))
        else:
            sub = "reference" if c.pretraining == "none" else fmt_p(c.p_vs_none)
            if c.p_vs_none is not None:
                sub += " vs none"
            out.append(TCell(estimate_text(c.auc_estimate), bold=b, sub=sub))
    return out


def not_run_notes(cells: list[CellResult | None]) -> list[str]:
    """One note per distinct reason a cell of the table did not run."""
    notes, seen = [], set()
    for c in cells:
        if c is not None and not c.done and c.reason and c.reason not in seen:
            seen.add(c.reason)
            notes.append(f"{c.label}: {status_text(c.status)} — {c.reason}")
    return notes


def auc_note(data: StudyData) -> str:
    """:data:`AUC_NOTE` preceded by the test split's size (the CIs' width depends on it)."""
    n = next((c.n_test for c in data.cells if c.done and c.n_test), None)
    size = f"Test split: {n} patients, " if n else ""
    return (f"{size}{len(data.classes)} classes (chance AUC 0.5). " if data.classes else size) + AUC_NOTE


def collapsed_notes(cells: list[CellResult | None], classes: list[str]) -> list[str]:
    """A note for every cell that predicts one class for every test patient."""
    notes = []
    for c in cells:
        one = single_class(c, classes) if c is not None else None
        if c is not None and one:
            notes.append(f"{c.label}: predicts {one} for every test patient (a collapsed "
                         "classifier; its accuracy CI has zero width).")
    return notes


def tables_1_2(data: StudyData) -> list[Block]:
    """Tables 1 and 2: encoders x {none, ImageNet, SimCLR} on full / segmented images."""
    blocks: list[Block] = []
    for number, inp in ((1, "full"), (2, "segmented")):
        pretrainings = ["none", "imagenet", f"simclr-{inp}"]
        header = ["Encoder", "No pretraining", "ImageNet", f"SimCLR (pretrained on {inp} images)"]
        rows, all_cells = [], []
        for enc in data.encoders():
            cells = [data.find(enc, p, inp) for p in pretrainings]
            if all(c is None for c in cells):
                continue
            all_cells += cells
            rows.append([TCell(enc), *auc_row(cells)])
        caption = (f"Table {number}. Downstream training on {INPUT_LABELS[inp]}: macro AUC (95% CI)")
        if rows:
            blocks.append(Table(caption, header, rows, [auc_note(data), *not_run_notes(all_cells),
                                                        *collapsed_notes(all_cells, data.classes)]))
        else:
            blocks.append(Para(f"{caption}: no cell of this table was run."))
    return blocks


def table_3(data: StudyData) -> list[Block]:
    """Table 3: SimCLR pretraining input x downstream input, per encoder (no pretraining for
    reference)."""
    combos = [("full", "full"), ("full", "segmented"), ("segmented", "full"), ("segmented", "segmented")]
    header = ["Encoder", *[f"{p} → {d}" for p, d in combos], "No pretraining → full",
              "No pretraining → segmented"]
    rows, all_cells = [], []
    for enc in data.encoders():
        cells = [data.find(enc, f"simclr-{p}", d) for p, d in combos]
        refs = [data.find(enc, "none", d) for d in ("full", "segmented")]
        if all(c is None for c in cells):
            continue
        all_cells += cells + refs
        combo_cells = auc_row(cells)  # bold: best SimCLR combination of the row
        ref_cells = [TCell(estimate_text(r.auc_estimate), sub="reference") if r is not None and r.done
                     else TCell("—" if r is None else r.status) for r in refs]
        rows.append([TCell(enc), *combo_cells, *ref_cells])
    caption = ("Table 3. SimCLR pretraining input → downstream input: macro AUC (95% CI)")
    if not rows:
        return [Para(f"{caption}: no SimCLR cell was run.")]
    return [Table(caption, header, rows, [
        "Columns: images SimCLR was pretrained on → images the classifier was trained and "
        "tested on. " + auc_note(data).replace("Bold: best of the row", "Bold: best SimCLR "
                                               "combination of the row"),
        *not_run_notes(all_cells)])]


def all_cells_table(data: StudyData) -> Table:
    """Every cell: AUC, accuracy, balanced accuracy, in-heart saliency, time, status."""
    rows = []
    for c in [*data.cells, *data.baselines, *data.beyond]:
        one = single_class(c, data.classes)
        single = f"predicts {one} for every test patient" if one else ""
        rows.append([TCell(c.label), TCell(estimate_text(c.auc_estimate) if c.done else "—"),
                     TCell(estimate_or_dash(c.accuracy)),
                     TCell(value_or_dash(c.balanced_accuracy.value)),
                     TCell(value_or_dash(c.in_heart)),
                     TCell(format_seconds(c.seconds) if c.seconds else "—"),
                     TCell(status_text(c.status),
                           sub=short_reason(c.reason) if not c.done else single)])
    return Table("All cells (also in results.csv)",
                 ["Cell", "Macro AUC (95% CI)", "Accuracy (95% CI)", "Balanced accuracy",
                  "In-heart saliency", "Time", "Status"], rows)
