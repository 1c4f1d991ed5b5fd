"""Table 4: the configurations beyond the paper against the paper's best cell (paired tests
on the same test patients), and the plain answers to the paper's questions: does SimCLR
pretraining help, does heart masking help."""

from __future__ import annotations

from cardioclr.study.html import Block, Para, Table, TCell
from cardioclr.study.report.collect import PairedComparison, StudyData
from cardioclr.study.report.format import (
    INPUT_LABELS,
    PRETRAINING_LABELS,
    estimate_or_dash,
    estimate_text,
    fmt_p,
    short_reason,
    signed_estimate,
    status_text,
    value_or_dash,
)
from cardioclr.study.report.results import verdict

TABLE_4_NOTE = (
    "Δ: the configuration minus the reference on the same test patients, 95% CI of a paired "
    "stratified patient bootstrap (the same resamples for both). AUC p: paired bootstrap of the "
    "macro AUC (DeLong for two classes); accuracy p: exact McNemar test on the patients only one "
    "of the two classifies correctly. p-values are not corrected for multiple comparisons.")


def _options_text(options: object) -> str:
    if not isinstance(options, dict) or not options:
        return ""
    return ", ".join(f"{k}={v}" for k, v in options.items())


def table_4(data: StudyData) -> list[Block]:
    """Table 4 (only when the study has ``beyond_paper`` cells)."""
    if not data.beyond:
        return []
    caption = "Table 4. Beyond the paper: each configuration against the paper's best cell"
    ref = data.reference
    if ref is None:
        return [Para(f"{caption}: no finished cell of the paper's grid to compare with.")]
    by_cell = {cmp.a.cell: cmp for cmp in data.beyond_vs_reference}
    options = {b.name: b for b in data.cfg.beyond_paper} if data.cfg else {}
    rows = []
    for c in data.beyond:
        name = c.cell.removeprefix("beyond/")
        spec = options.get(name)
        what = ", ".join(x for x in (
            INPUT_LABELS.get(c.downstream_input or (spec.input if spec else ""),
                             c.downstream_input or (spec.input if spec else "")),
            PRETRAINING_LABELS.get(c.pretraining, c.pretraining),
            _options_text(spec.finetune_options) if spec else "",
            ("SimCLR " + _options_text(spec.pretrain_options)) if spec and spec.pretrain_options
            else "") if x)
        if not c.done:
            rows.append([TCell(name), TCell(what), TCell(status_text(c.status),
                                                         sub=short_reason(c.reason)),
                         TCell("—"), TCell("—"), TCell("—"), TCell("—")])
            continue
        cmp = by_cell.get(c.cell)
        rows.append([
            TCell(name), TCell(what), TCell(estimate_text(c.auc_estimate)),
            TCell(signed_estimate(cmp.auc_diff) if cmp else "—", sub=fmt_p(cmp.auc_p) if cmp else ""),
            TCell(estimate_or_dash(c.accuracy)),
            TCell(signed_estimate(cmp.accuracy_diff) if cmp else "—",
                  sub=fmt_p(cmp.accuracy_p) if cmp else ""),
            TCell(value_or_dash(c.cv_auc))])
    rows.append([TCell(f"reference: {ref.label}", bold=True), TCell("paper's grid"),
                 TCell(estimate_text(ref.auc_estimate)), TCell("—"),
                 TCell(estimate_or_dash(ref.accuracy)), TCell("—"), TCell(value_or_dash(ref.cv_auc))])
    header = ["Configuration", "What", "Macro AUC (95% CI)", "Δ AUC vs reference (95% CI)",
              "Accuracy (95% CI)", "Δ accuracy vs reference (95% CI)", "CV AUC (train)"]
    return [Table(caption, header, rows, [f"Reference: {data.reference_rule}.", TABLE_4_NOTE])]


def _sentence(cmp: PairedComparison) -> str:
    return (f"{cmp.a.label} vs {cmp.b.label}: Δ macro AUC {signed_estimate(cmp.auc_diff)}, "
            f"{fmt_p(cmp.auc_p)}; Δ accuracy {signed_estimate(cmp.accuracy_diff)}, "
            f"{fmt_p(cmp.accuracy_p)} (McNemar) — {verdict(cmp)}")


def answer(question: str, comparisons: list[PairedComparison]) -> str:
    """One plain paragraph: the overall answer, then every comparison behind it."""
    if not comparisons:
        return f"{question} Not answerable from this study (the cells to compare did not finish)."
    verdicts = [verdict(c) for c in comparisons]
    if all(v == "helps" for v in verdicts):
        overall = "Yes: it improves the macro AUC significantly in every comparison."
    elif all(v == "hurts" for v in verdicts):
        overall = "No: it lowers the macro AUC significantly in every comparison."
    elif "helps" in verdicts or "hurts" in verdicts:
        overall = (f"Mixed: significant improvement in {verdicts.count('helps')}, significant "
                   f"loss in {verdicts.count('hurts')} and no significant difference in "
                   f"{verdicts.count('no significant difference')} of {len(verdicts)} comparisons.")
    else:
        overall = ("No significant difference in any comparison (at the 5% level; with this "
                   "test split the study cannot show an effect of this size either way).")
    return f"{question} {overall} " + "; ".join(_sentence(c) for c in comparisons) + "."


def questions_section(data: StudyData) -> list[Block]:
    """The paper's two questions, answered plainly with CIs and p-values whatever the answer."""
    simclr = [c for q, c in data.questions if q == "simclr"]
    masking = [c for q, c in data.questions if q == "masking"]
    return [Para(answer("Does SimCLR pretraining help?", simclr)),
            Para(answer("Does heart masking (segmented instead of full images) help?", masking)),
            Para("Each comparison pairs two cells on the same test patients: Δ with the 95% CI "
                 "of a paired stratified patient bootstrap; macro-AUC p from the paired "
                 "bootstrap (DeLong for two classes), accuracy p from the exact McNemar test; "
                 "not corrected for multiple comparisons. A verdict is \"helps\" or \"hurts\" "
                 "only when the CI of the AUC difference excludes 0.")]
