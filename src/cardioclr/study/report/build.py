"""Assemble the report: collect -> comparisons -> results.csv -> sections -> Markdown and HTML."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from cardioclr.atomic import atomic_path, write_text
from cardioclr.errors import CardioclrError
from cardioclr.layout import StudyLayout
from cardioclr.study.html import Block, Heading, Para, figure_files, render_html, render_markdown
from cardioclr.study.report.collect import StudyData, collect
from cardioclr.study.report.format import short_reason
from cardioclr.study.report.results import add_beyond_comparisons, add_comparisons, results_frame
from cardioclr.study.report.sections.baselines import baseline_section
from cardioclr.study.report.sections.beyond import questions_section, table_4
from cardioclr.study.report.sections.dataset import dataset_section
from cardioclr.study.report.sections.figures import figure_1, roc_section
from cardioclr.study.report.sections.pretraining import pretraining_section
from cardioclr.study.report.sections.provenance import provenance_section
from cardioclr.study.report.sections.saliency import saliency_section
from cardioclr.study.report.sections.segmentation import segmentation_section
from cardioclr.study.report.sections.tables import all_cells_table, table_3, tables_1_2

PAPER_CITATION = (
    "M. Nakashima, I. Jang, R. Basnet, M. Benovoy, W. H. W. Tang, C. Nguyen, D. Kwon, T. H. Hwang, "
    "D. Chen. Interaction of a priori Anatomic Knowledge with Self-Supervised Contrastive Learning "
    "in Cardiac Magnetic Resonance Imaging. arXiv:2205.12429, 2022. "
    "[arxiv.org/abs/2205.12429](https://arxiv.org/abs/2205.12429)")
ACDC_CITATION = (
    "O. Bernard, A. Lalande, C. Zotti, F. Cervenansky, et al. Deep Learning Techniques for "
    "Automatic MRI Cardiac Multi-structures Segmentation and Diagnosis: Is the Problem Solved? "
    "IEEE Transactions on Medical Imaging 37(11):2514-2525, 2018. doi: 10.1109/TMI.2018.2837502 "
    "[doi.org/10.1109/TMI.2018.2837502](https://doi.org/10.1109/TMI.2018.2837502)")



def build_blocks(data: StudyData) -> list[Block]:
    """The report's content, in order."""
    n_sal = data.cfg.report.saliency_patients if data.cfg else 3
    blocks: list[Block] = [Heading(1, "cardioclr study report")]
    cfg = data.cfg
    desc = (f"Preset **{cfg.preset}**, encoders {', '.join(cfg.encoders)}, masks: {cfg.mask_source} "
            "segmentation." if cfg else "")
    blocks.append(Para(f"Reproduction of Nakashima et al. (anatomic prior + SimCLR pretraining + "
                       f"dual-phase ED/ES classifier) on this dataset. {desc} Output folder: {data.out}"))
    if cfg and cfg.report.deviations:
        blocks.append(Para(f"Deviations of preset {cfg.preset} from the paper's protocol: "
                           + "; ".join(cfg.report.deviations) + ".", css="warn"))
    if data.is_synthetic:
        blocks.append(Para("These results come from the built-in **synthetic** cohort: they "
                           "check that the pipeline runs end to end and carry no clinical meaning.",
                           css="warn"))
    for w in data.warnings:
        blocks.append(Para(f"Warning: {w}", css="warn"))
    failed = [c for c in [*data.cells, *data.baselines, *data.beyond] if c.status == "failed"]
    if failed:
        blocks.append(Para(f"{len(failed)} cell(s) failed: " + "; ".join(
            f"{c.cell} ({short_reason(c.reason)})" for c in failed), css="warn"))

    blocks += [Heading(2, "Tables 1–3: diagnostic performance", "tables")]
    blocks += tables_1_2(data)
    blocks += table_3(data)
    blocks += table_4(data)
    blocks += [Heading(2, "Does SimCLR help? Does heart masking help?", "questions")]
    blocks += questions_section(data)
    blocks.append(all_cells_table(data))
    blocks += [Heading(2, "Figure 1: convergence", "figure1")]
    blocks += figure_1(data)
    blocks += [Heading(2, "ROC curves (test split)", "roc")]
    blocks += roc_section(data)
    blocks += [Heading(2, "Saliency", "saliency")]
    blocks += saliency_section(data, n_sal)
    blocks += [Heading(2, "Baselines: clinical features and hybrid", "baselines")]
    blocks += baseline_section(data)
    blocks += [Heading(2, "Segmentation quality", "segmentation")]
    blocks += segmentation_section(data)
    blocks += [Heading(2, "SimCLR pretraining", "pretraining")]
    blocks += pretraining_section(data)
    blocks += [Heading(2, "Dataset", "dataset")]
    blocks += dataset_section(data)
    blocks += [Heading(2, "Provenance", "provenance")]
    blocks += provenance_section(data)
    blocks += [Heading(2, "References", "references"), Para("[1] " + PAPER_CITATION)]
    if data.is_acdc:
        blocks.append(Para("[2] ACDC data: " + ACDC_CITATION))
    return blocks


def build_report(out: str | os.PathLike[str]) -> dict[str, Path]:
    """Write ``results.csv``, ``report.md`` (+ ``figures/``) and ``report.html`` into ``out``."""
    out = Path(out)
    if not out.is_dir():
        raise CardioclrError(f"{out}: no such study directory")
    data = collect(out)
    n_boot = data.cfg.report.n_boot if data.cfg else 2000
    add_comparisons(data, n_boot=n_boot)
    add_beyond_comparisons(data, n_boot=n_boot)
    results = results_frame(data)
    layout = StudyLayout(out)
    paths = {"results": layout.results_csv, "markdown": layout.report_md, "html": layout.report_html}
    write_text(paths["results"], results.to_csv(index=False, float_format="%.4f"))
    blocks = build_blocks(data)
    title = "cardioclr study report"
    for name, png in figure_files(blocks).items():
        with atomic_path(layout.figures / name) as tmp:
            tmp.write_bytes(png)
    write_text(paths["markdown"], render_markdown(title, blocks))
    write_text(paths["html"], render_html(title, blocks))
    return paths


def summary_lines(out: str | os.PathLike[str]) -> list[str]:
    """A few lines for the terminal: the grid's AUCs from ``results.csv``."""
    p = StudyLayout(Path(out)).results_csv
    if not p.is_file():
        return []
    df = pd.read_csv(p)
    lines = []
    for r in df.itertuples(index=False):
        if not pd.isna(r.auc):
            detail = f"AUC {r.auc:.3f} ({r.auc_ci_low:.3f}-{r.auc_ci_high:.3f})"
        else:
            reason = getattr(r, "reason", None)
            detail = "" if reason is None or pd.isna(reason) else str(reason)
        lines.append(f"  {r.cell:<45} {r.status:<8} {detail}")
    return lines

