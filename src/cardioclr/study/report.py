"""``cardioclr report OUT``: the paper's tables and figures, rebuilt from a study's files alone.

Inputs (all optional; a section whose files are missing says so):

* ``OUT/finetune/*/metrics.json`` (+ ``predictions.csv``, ``curves.csv``, ``saliency/``) - the
  grid cells; ``OUT/study_state.json`` adds the cells that did not run, with the reason;
* ``OUT/baseline/{clinical,hybrid}/metrics.json`` (+ ``predictions.csv``); the hybrid joins
  the indices with the label-free features of one SimCLR pretraining
  (``OUT/work/pretrain/<encoder>-<input>/deep_features.csv``);
* ``OUT/work/segmentation/metrics.json``, ``qc_flags.csv``, ``qc/``;
* ``OUT/work/pretrain/*/metrics.json``; ``OUT/work/dataset.json``, ``manifest.csv``,
  ``splits.json``, ``skipped.csv``;
* ``OUT/study.yaml``, ``OUT/study_environment.json`` (provenance).

Outputs: ``OUT/results.csv`` (one row per cell), ``OUT/report.md`` (+ ``OUT/figures/*.png``)
and ``OUT/report.html`` (self-contained: images embedded, no external resource).

Tables 1-3 follow the paper's layout: macro one-vs-rest ROC AUC on the test split with its
95% stratified-bootstrap CI, the best AUC of each row in bold, and under every pretrained cell
the p-value of its paired comparison with no pretraining (same encoder, same downstream input;
:func:`cardioclr.evaluate.compare.compare_predictions`: DeLong for two classes, paired
bootstrap of the macro AUC otherwise).
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cardioclr.atomic import atomic_path, read_json, write_text
from cardioclr.study.config import PRETRAININGS, StudyConfig, read_saved_config
from cardioclr.study.grid import DATA_DIR, WORK_DIR
from cardioclr.study.html import (
    Block,
    Code,
    Figure,
    Gallery,
    Heading,
    Para,
    Table,
    TCell,
    figure_files,
    render_html,
    render_markdown,
)
from cardioclr.study.progress import format_seconds
from cardioclr.study.state import read_state

log = logging.getLogger(__name__)

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

PRETRAINING_LABELS = {"none": "No pretraining", "imagenet": "ImageNet",
                      "simclr-full": "SimCLR (full)", "simclr-segmented": "SimCLR (segmented)"}
INPUT_LABELS = {"full": "full images", "segmented": "segmented images", "roi": "heart ROI"}
RESULT_COLUMNS = ["cell", "kind", "encoder", "pretraining", "downstream_input", "mask_source",
                  "status", "auc", "auc_ci_low", "auc_ci_high", "accuracy", "accuracy_ci_low",
                  "accuracy_ci_high", "balanced_accuracy", "balanced_accuracy_ci_low",
                  "balanced_accuracy_ci_high", "p_vs_none", "auc_diff_vs_none",
                  "saliency_in_heart_share", "n_test", "seconds", "reason"]


# ------------------------------------------------------------------------------ collection


@dataclass
class CellResult:
    """One fine-tuning or baseline cell as found on disk."""

    cell: str
    kind: str
    path: Path
    encoder: str = ""
    pretraining: str = ""
    downstream_input: str = ""
    status: str = "done"
    reason: str = ""
    seconds: float | None = None
    metrics: dict[str, Any] | None = None
    p_vs_none: float | None = None
    diff_vs_none: float | None = None
    comparison_test: str = ""

    @property
    def test(self) -> dict[str, Any]:
        """The test-set classification metrics (fine-tune: ``test``; baseline: top level)."""
        if not self.metrics:
            return {}
        t = self.metrics.get("test")
        return t if isinstance(t, dict) else self.metrics

    def estimate(self, key: str) -> tuple[float | None, float | None, float | None]:
        """(value, ci_low, ci_high) of ``macro_auc`` / ``accuracy`` / ``balanced_accuracy``."""
        e = self.test.get(key)
        if isinstance(e, dict):
            return _num(e.get("value")), _num(e.get("ci_low")), _num(e.get("ci_high"))
        return _num(e), None, None

    @property
    def auc(self) -> float | None:
        """Macro AUC on the test split (None when not available)."""
        return self.estimate("macro_auc")[0]

    @property
    def in_heart(self) -> float | None:
        """Mean share of saliency inside the heart mask (fine-tune cells)."""
        s = (self.metrics or {}).get("saliency") or {}
        return _num(s.get("in_heart_share_mean")) if isinstance(s, dict) else None

    @property
    def label(self) -> str:
        """Human-readable name: ``smallcnn, SimCLR (full) -> segmented images``."""
        if self.kind != "finetune":
            return self.cell
        return (f"{self.encoder}, {PRETRAINING_LABELS.get(self.pretraining, self.pretraining)} → "
                f"{INPUT_LABELS.get(self.downstream_input, self.downstream_input)}")


@dataclass
class StudyData:
    """Everything the report shows, read from ``OUT``."""

    out: Path
    cfg: StudyConfig | None
    state: dict[str, Any]
    cells: list[CellResult]
    baselines: list[CellResult]
    classes: list[str]
    dataset: dict[str, Any]
    segmentation: dict[str, Any] | None
    pretrain: list[tuple[str, dict[str, Any]]]
    environment: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    @property
    def work(self) -> Path:
        """``OUT/work``."""
        return self.out / WORK_DIR


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _read_json_or_none(path: Path, warnings: list[str]) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = read_json(path)
    except (OSError, ValueError) as err:
        warnings.append(f"{path}: unreadable ({err}); left out")
        return None
    return data if isinstance(data, dict) else None


def _split_cell_name(name: str) -> tuple[str, str, str]:
    parts = name.split("__")
    return (parts[0], parts[1], parts[2]) if len(parts) == 3 else (name, "", "")


def collect(out: str | os.PathLike[str]) -> StudyData:
    """Read a study directory (see the module docstring for what is read)."""
    out = Path(out)
    warnings: list[str] = []
    cfg = None
    if (out / "study.yaml").is_file():
        try:
            cfg = read_saved_config(out / "study.yaml")
        except Exception as err:  # noqa: BLE001 - the report works without the config
            warnings.append(f"{out / 'study.yaml'}: unreadable ({err})")
    state = read_state(out)
    state_cells: dict[str, dict[str, Any]] = state.get("cells", {}) or {}

    cells: dict[str, CellResult] = {}
    ft = out / "finetune"
    for d in sorted(ft.iterdir()) if ft.is_dir() else []:
        m = _read_json_or_none(d / "metrics.json", warnings)
        if m is None or not d.is_dir():
            continue
        enc, pre, inp = _split_cell_name(d.name)
        rec = state_cells.get(f"finetune/{d.name}", {})
        seconds = _num(rec.get("seconds")) or _num(m.get("train_seconds"))
        cells[d.name] = CellResult(d.name, "finetune", d, str(m.get("encoder") or enc),
                                   str(m.get("pretraining") or pre),
                                   str(m.get("downstream_input") or inp), "done", "",
                                   seconds, m)
    for cid, rec in state_cells.items():
        if rec.get("kind") != "finetune" or cid.removeprefix("finetune/") in cells:
            continue
        name = cid.removeprefix("finetune/")
        enc, pre, inp = _split_cell_name(name)
        status = rec.get("status") or "pending"
        reason = rec.get("reason") or rec.get("error") or ""
        if status == "done":  # recorded done but its metrics.json is gone
            status, reason = "failed", "metrics.json missing"
        cells[name] = CellResult(name, "finetune", out / rec.get("path", f"finetune/{name}"),
                                 enc, pre, inp, status, reason, _num(rec.get("seconds")))

    if cfg is not None:
        # Cells that cannot run with this configuration (ImageNet without weights) follow from
        # study.yaml alone, so the tables say why they are empty even without study_state.json.
        from cardioclr.study.grid import expand_grid

        try:
            grid = expand_grid(cfg)
        except Exception as err:  # noqa: BLE001 - the report works without the grid
            warnings.append(f"grid of {out / 'study.yaml'}: {err}")
            grid = []
        for gc in grid:
            name = gc.path.removeprefix("finetune/")
            if gc.kind == "finetune" and gc.not_run_reason and name not in cells:
                enc, pre, inp = _split_cell_name(name)
                cells[name] = CellResult(name, "finetune", out / gc.path, enc, pre, inp, "not-run",
                                         gc.not_run_reason)

    order_enc = list(cfg.encoders) if cfg else []
    order_enc += sorted({c.encoder for c in cells.values()} - set(order_enc))
    inputs = ["full", "segmented", "roi"]

    def key(c: CellResult) -> tuple[int, int, int]:
        return (order_enc.index(c.encoder) if c.encoder in order_enc else 99,
                inputs.index(c.downstream_input) if c.downstream_input in inputs else 9,
                PRETRAININGS.index(c.pretraining) if c.pretraining in PRETRAININGS else 9)

    cell_list = sorted(cells.values(), key=key)

    baselines: list[CellResult] = []
    for name in ("clinical", "hybrid"):
        d = out / "baseline" / name
        rec = state_cells.get(f"baseline/{name}", {})
        m = _read_json_or_none(d / "metrics.json", warnings)
        if m is not None:
            baselines.append(CellResult(f"baseline/{name}", "baseline", d, "", str(m.get("model", name)),
                                        "", "done", "", _num(rec.get("seconds")) or _num(m.get("seconds")),
                                        m))
        elif rec:
            baselines.append(CellResult(f"baseline/{name}", "baseline", d, "", name, "",
                                        rec.get("status") or "pending",
                                        rec.get("reason") or rec.get("error") or "",
                                        _num(rec.get("seconds"))))

    dataset = _read_json_or_none(out / WORK_DIR / "dataset.json", warnings) or {}
    classes = list(dataset.get("classes") or [])
    if not classes:
        for c in cell_list:
            if c.metrics and c.metrics.get("classes"):
                classes = list(c.metrics["classes"])
                break
    seg = _read_json_or_none(out / WORK_DIR / "segmentation" / "metrics.json", warnings)
    pretrain: list[tuple[str, dict[str, Any]]] = []
    pdir = out / WORK_DIR / "pretrain"
    for d in sorted(pdir.iterdir()) if pdir.is_dir() else []:
        m = _read_json_or_none(d / "metrics.json", warnings)
        if m is not None:
            pretrain.append((d.name, m))
    env = _read_json_or_none(out / "study_environment.json", warnings) or {}
    data = StudyData(out, cfg, state, cell_list, baselines, classes, dataset, seg, pretrain, env,
                     warnings)
    return data


# ------------------------------------------------------------------------------ comparisons


def _predictions(cell: CellResult) -> pd.DataFrame | None:
    p = cell.path / "predictions.csv"
    if cell.status != "done" or not p.is_file():
        return None
    try:
        return pd.read_csv(p, dtype={"patient_id": str})
    except (OSError, ValueError):
        return None


def single_class(cell: CellResult, classes: list[str]) -> str | None:
    """The class a cell predicts for every test patient, or None when it predicts several.

    A collapsed classifier (one class for everyone) has an accuracy equal to that class's
    share and a zero-width stratified-bootstrap CI; the report says so instead of leaving
    ``0.208 (0.208–0.208)`` unexplained.
    """
    df = _predictions(cell)
    if df is None or len(df) < 2:
        return None
    if "pred_label" in df.columns:
        predicted = df["pred_label"].astype(str)
    else:
        from cardioclr.evaluate.metrics import prob_columns

        cols = prob_columns(classes)
        if not classes or any(c not in df.columns for c in cols):
            return None
        predicted = pd.Series(np.asarray(classes)[df[cols].to_numpy(float).argmax(axis=1)])
    values = predicted.unique()
    return str(values[0]) if len(values) == 1 else None


def add_comparisons(data: StudyData, n_boot: int = 2000) -> None:
    """Fill ``p_vs_none`` of every pretrained cell: paired test against no pretraining."""
    from cardioclr.evaluate.compare import compare_predictions

    ref = {(c.encoder, c.downstream_input): c for c in data.cells if c.pretraining == "none"}
    for cell in data.cells:
        base = ref.get((cell.encoder, cell.downstream_input))
        if cell.pretraining == "none" or base is None or cell.status != "done" or not data.classes:
            continue
        a, b = _predictions(cell), _predictions(base)
        if a is None or b is None:
            continue
        try:
            cmp = compare_predictions(a, b, data.classes, n_boot=n_boot, seed=0)
        except Exception as err:  # noqa: BLE001 - a comparison problem must not sink the report
            data.warnings.append(f"p-value {cell.cell} vs {base.cell}: {err}")
            continue
        cell.p_vs_none = _num(cmp.get("p_value"))
        cell.diff_vs_none = _num((cmp.get("macro_auc_diff") or {}).get("value"))
        cell.comparison_test = str(cmp.get("test", ""))


# ------------------------------------------------------------------------------ results.csv


def results_frame(data: StudyData) -> pd.DataFrame:
    """One row per cell (fine-tuning grid, then baselines) with :data:`RESULT_COLUMNS`."""
    rows = []
    for c in [*data.cells, *data.baselines]:
        auc, acc, bacc = c.estimate("macro_auc"), c.estimate("accuracy"), c.estimate("balanced_accuracy")
        m = c.metrics or {}
        rows.append({
            "cell": c.cell, "kind": c.kind, "encoder": c.encoder, "pretraining": c.pretraining,
            "downstream_input": c.downstream_input,
            "mask_source": m.get("mask_source", data.cfg.mask_source if data.cfg else ""),
            "status": c.status,
            "auc": auc[0], "auc_ci_low": auc[1], "auc_ci_high": auc[2],
            "accuracy": acc[0], "accuracy_ci_low": acc[1], "accuracy_ci_high": acc[2],
            "balanced_accuracy": bacc[0], "balanced_accuracy_ci_low": bacc[1],
            "balanced_accuracy_ci_high": bacc[2],
            "p_vs_none": c.p_vs_none, "auc_diff_vs_none": c.diff_vs_none,
            "saliency_in_heart_share": c.in_heart, "n_test": c.test.get("n"),
            "seconds": c.seconds, "reason": c.reason,
        })
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


# ------------------------------------------------------------------------------ formatting


def fmt(v: float | None, digits: int = 3) -> str:
    """A number with ``digits`` decimals, or ``n/a``."""
    return "n/a" if v is None else f"{v:.{digits}f}"


def fmt_p(p: float | None) -> str:
    """p-value as in papers: ``p = 0.031``, ``p < 0.001``."""
    if p is None:
        return ""
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def auc_text(c: CellResult) -> str:
    """``0.853 (0.801–0.902)``: macro AUC and its 95% CI."""
    v, lo, hi = c.estimate("macro_auc")
    if v is None:
        return "n/a"
    return f"{v:.3f} ({fmt(lo)}–{fmt(hi)})" if lo is not None and hi is not None else f"{v:.3f}"


def _short_reason(reason: str) -> str:
    return reason if len(reason) <= 60 else reason[:57] + "..."


def auc_row(cells: list[CellResult | None]) -> list[TCell]:
    """Table cells for one row; the highest AUC of the row is bold (ties all bold)."""
    aucs = [c.auc if c is not None and c.status == "done" else None for c in cells]
    finite = [a for a in aucs if a is not None]
    best = max(finite) if finite else None
    out = []
    for c, a in zip(cells, aucs, strict=True):
        if c is None:
            out.append(TCell("—"))
        elif c.status != "done":
            # The reason is in the note under the table; the cell only says that there is one.
            out.append(TCell(c.status.replace("-", " "), sub="see note" if c.reason else ""))
        else:
            sub = "reference" if c.pretraining == "none" else fmt_p(c.p_vs_none)
            if c.p_vs_none is not None:
                sub += " vs none"
            out.append(TCell(auc_text(c), bold=best is not None and a is not None
                             and round(a, 3) == round(best, 3), sub=sub))
    return out


# ------------------------------------------------------------------------------ sections


def _find(data: StudyData, enc: str, pre: str, inp: str) -> CellResult | None:
    return next((c for c in data.cells if c.encoder == enc and c.pretraining == pre
                 and c.downstream_input == inp), None)


def _encoders(data: StudyData) -> list[str]:
    seen: list[str] = []
    for c in data.cells:
        if c.encoder not in seen:
            seen.append(c.encoder)
    return seen


def _not_run_notes(cells: list[CellResult | None]) -> list[str]:
    notes, seen = [], set()
    for c in cells:
        if c is not None and c.status != "done" and c.reason and c.reason not in seen:
            seen.add(c.reason)
            notes.append(f"{c.label}: {c.status.replace('-', ' ')} — {c.reason}")
    return notes


_AUC_NOTE = ("Macro one-vs-rest ROC AUC on the test split (95% CI: stratified patient bootstrap). "
             "Bold: best of the row. p: paired comparison with no pretraining (same encoder and "
             "downstream input; DeLong for two classes, paired bootstrap of the macro AUC otherwise).")


def _auc_note(data: StudyData) -> str:
    """:data:`_AUC_NOTE` preceded by the test split's size (the CIs' width depends on it)."""
    n = next((c.test.get("n") for c in data.cells if c.status == "done" and c.test.get("n")), None)
    size = f"Test split: {n} patients, " if n else ""
    return (f"{size}{len(data.classes)} classes (chance AUC 0.5). " if data.classes else size) + _AUC_NOTE


def _collapsed_notes(cells: list[CellResult | None], classes: list[str]) -> list[str]:
    notes = []
    for c in cells:
        one = single_class(c, classes) if c is not None else None
        if one:
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
        for enc in _encoders(data):
            cells = [_find(data, enc, p, inp) for p in pretrainings]
            if all(c is None for c in cells):
                continue
            all_cells += cells
            rows.append([TCell(enc), *auc_row(cells)])
        caption = (f"Table {number}. Downstream training on {INPUT_LABELS[inp]}: macro AUC (95% CI)")
        if rows:
            blocks.append(Table(caption, header, rows, [_auc_note(data), *_not_run_notes(all_cells),
                                                        *_collapsed_notes(all_cells, data.classes)]))
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
    for enc in _encoders(data):
        cells = [_find(data, enc, f"simclr-{p}", d) for p, d in combos]
        refs = [_find(data, enc, "none", d) for d in ("full", "segmented")]
        if all(c is None for c in cells):
            continue
        all_cells += cells + refs
        combo_cells = auc_row(cells)  # bold: best SimCLR combination of the row
        ref_cells = [TCell(auc_text(r), sub="reference") if r is not None and r.status == "done"
                     else TCell("—" if r is None else r.status) for r in refs]
        rows.append([TCell(enc), *combo_cells, *ref_cells])
    caption = ("Table 3. SimCLR pretraining input → downstream input: macro AUC (95% CI)")
    if not rows:
        return [Para(f"{caption}: no SimCLR cell was run.")]
    return [Table(caption, header, rows, [
        "Columns: images SimCLR was pretrained on → images the classifier was trained and "
        "tested on. " + _auc_note(data).replace("Bold: best of the row", "Bold: best SimCLR "
                                                "combination of the row"),
        *_not_run_notes(all_cells)])]


def all_cells_table(data: StudyData) -> Table:
    """Every cell: AUC, accuracy, balanced accuracy, in-heart saliency, time, status."""
    rows = []
    for c in [*data.cells, *data.baselines]:
        acc, bacc = c.estimate("accuracy"), c.estimate("balanced_accuracy")
        one = single_class(c, data.classes)
        single = f"predicts {one} for every test patient" if one else ""
        rows.append([TCell(c.label), TCell(auc_text(c) if c.status == "done" else "—"),
                     TCell(f"{fmt(acc[0])} ({fmt(acc[1])}–{fmt(acc[2])})" if acc[0] is not None else "—"),
                     TCell(fmt(bacc[0]) if bacc[0] is not None else "—"),
                     TCell(fmt(c.in_heart) if c.in_heart is not None else "—"),
                     TCell(format_seconds(c.seconds) if c.seconds else "—"),
                     TCell(c.status.replace("-", " "),
                           sub=_short_reason(c.reason) if c.status != "done" else single)])
    return Table("All cells (also in results.csv)",
                 ["Cell", "Macro AUC (95% CI)", "Accuracy (95% CI)", "Balanced accuracy",
                  "In-heart saliency", "Time", "Status"], rows)


def _curves(cell: CellResult) -> pd.DataFrame | None:
    p = cell.path / "curves.csv"
    if cell.status != "done" or not p.is_file():
        return None
    try:
        return pd.read_csv(p)
    except (OSError, ValueError):
        return None


def figure_1(data: StudyData) -> list[Block]:
    """Figure 1: validation loss / AUC per epoch by initialisation."""
    from cardioclr.study.plots import convergence_figure, curve_summary

    panels = []
    for enc in _encoders(data):
        for inp in ("full", "segmented", "roi"):
            curves = {}
            for c in data.cells:
                if c.encoder == enc and c.downstream_input == inp:
                    df = _curves(c)
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
    from cardioclr.evaluate.metrics import prob_columns
    from cardioclr.study.plots import roc_figure

    panels = []
    for enc in _encoders(data):
        for inp in ("full", "segmented", "roi"):
            curves = {}
            for c in data.cells:
                if c.encoder != enc or c.downstream_input != inp:
                    continue
                df = _predictions(c)
                cols = prob_columns(data.classes) if data.classes else []
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


def _saliency_images(cell: CellResult) -> dict[str, Path]:
    d = cell.path / "saliency"
    if cell.status != "done" or not d.is_dir():
        return {}
    return {p.stem: p for p in sorted(d.glob("*.png"))}


def saliency_section(data: StudyData, n: int) -> list[Block]:
    """In-heart saliency share per model and a few patients' overlays per model."""
    blocks: list[Block] = []
    rows, caveats, modes = [], [], []
    for c in data.cells:
        s = (c.metrics or {}).get("saliency")
        if c.status != "done" or not isinstance(s, dict):
            continue
        modes.append(c.downstream_input)
        sd = _num(s.get("in_heart_share_sd"))
        rows.append([TCell(c.label), TCell(fmt(_num(s.get("in_heart_share_mean")))),
                     TCell(fmt(sd) if sd is not None else "—"),
                     TCell(fmt(_num(s.get("mask_area_share_mean")))),
                     TCell(str(s.get("n", "")))])
        if s.get("caveat") and s["caveat"] not in caveats:
            caveats.append(str(s["caveat"]))
    if rows:
        # Bold: the best of each downstream input (full and segmented shares are not comparable:
        # a segmented image is zero outside the heart, see the caveat).
        vals = [_num(r[1].text) for r in rows]
        best = {m: max((v for v, mm in zip(vals, modes, strict=True) if mm == m and v is not None),
                       default=None) for m in set(modes)}
        rows = [[r[0], TCell(r[1].text, bold=v is not None and v == best[m]), *r[2:]]
                for r, v, m in zip(rows, vals, modes, strict=True)]
        blocks.append(Table(
            "In-heart saliency score per model: share of the Grad-CAM saliency inside the "
            "(dilated) predicted heart mask, mean over test patients; higher = the model looks at "
            "the heart. Chance level = the mask's share of the image. Bold: best per downstream "
            "input.",
            ["Model", "In-heart share (mean)", "SD", "Chance level (mask area share)", "Patients"],
            rows, [f"Note: {c}" for c in caveats]))
    images = {c.cell: _saliency_images(c) for c in data.cells}
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
        preds = _predictions(c)
        items = []
        for pid in chosen:
            cap = pid
            if preds is not None and data.classes:
                row = preds[preds["patient_id"] == pid]
                if len(row):
                    from cardioclr.evaluate.metrics import prob_columns

                    cols = [col for col in prob_columns(data.classes) if col in row.columns]
                    true = data.classes[int(row["label_index"].iloc[0])]
                    if cols:
                        pred = data.classes[int(np.argmax(row[cols].to_numpy(float)[0]))]
                        cap = f"{pid}: true {true}, predicted {pred}"
            items.append((f"saliency_{c.cell}_{pid}.png", images[c.cell][pid].read_bytes(), cap))
        share = f" — in-heart saliency {fmt(c.in_heart)}" if c.in_heart is not None else ""
        blocks.append(Gallery(f"{c.label}{share}", items))
    return blocks


def segmentation_section(data: StudyData) -> list[Block]:
    """Dice / HD95 per structure and phase, clinical-index agreement, QC flags."""
    seg = data.segmentation
    sdir = data.work / "segmentation"
    if not seg:
        return [Para("No segmentation metrics (work/segmentation/metrics.json) were found.")]
    blocks: list[Block] = []
    dice, hd = seg.get("dice") or {}, seg.get("hd95") or {}
    structures = sorted({s for ph in dice.values() if isinstance(ph, dict) for s in ph},
                        key=lambda s: ["LV", "MYO", "RV"].index(s) if s in ("LV", "MYO", "RV") else 9)
    if structures:
        rows = []
        for ph in dice:
            rows.append([TCell(ph), *[TCell(fmt(_num(dice[ph].get(s)))) for s in structures],
                         *[TCell(fmt(_num((hd.get(ph) or {}).get(s)), 1)) for s in structures]])
        blocks.append(Table(
            f"Segmentation on the test split ({seg.get('n_test', '?')} patients): Dice and HD95 "
            f"(mm); mean Dice {fmt(_num(seg.get('mean_dice')))}, mean HD95 "
            f"{fmt(_num(seg.get('mean_hd95')), 1)} mm",
            ["Phase", *[f"Dice {s}" for s in structures], *[f"HD95 {s} (mm)" for s in structures]],
            rows, [f"Computed on the {seg['grid']}." if seg.get("grid") else ""]))
    agree = seg.get("indices_agreement") or {}
    if agree:
        rows = []
        for k, a in agree.items():
            if not isinstance(a, dict):
                continue
            rows.append([TCell(k), TCell(str(a.get("n", ""))), TCell(fmt(_num(a.get("pearson_r")))),
                         TCell(f"{fmt(_num(a.get('bias')), 2)} ± {fmt(_num(a.get('sd')), 2)}")])
        blocks.append(Table("Clinical indices from predicted vs expert masks (test patients)",
                            ["Index", "n", "Pearson r", "Bias ± SD (predicted − expert)"], rows))
    qc = sdir / "qc_flags.csv"
    if qc.is_file():
        try:
            flags = pd.read_csv(qc, dtype={"patient_id": str})
        except (OSError, ValueError, pd.errors.EmptyDataError):
            flags = pd.DataFrame(columns=["patient_id"])
        flagged = _flagged(flags)
        ids = sorted(set(flagged["patient_id"])) if "patient_id" in flagged.columns else []
        summary = _read_json_or_none(sdir / "predict_summary.json", data.warnings) or {}
        total = summary.get("patients") or data.dataset.get("patients") or "?"
        kinds = Counter(flagged["flag"]) if "flag" in flagged.columns else Counter()
        blocks.append(Para(f"**QC flags:** {len(ids)} of {total} segmented patients flagged, "
                           f"{len(flagged)} flags" + (" (" + ", ".join(f"{k}: {v}" for k, v in
                                                                     kinds.most_common()) + ")"
                                                      if kinds else "") + " — qc_flags.csv."))
        if len(flagged):
            cols = list(flagged.columns)[:6]
            rows = [[TCell(_cell_str(v)) for v in r] for r in flagged[cols].head(20).itertuples(index=False)]
            more = ([f"{len(flagged) - 20} more flags in work/segmentation/qc_flags.csv"]
                    if len(flagged) > 20 else [])
            blocks.append(Table("QC flags (first 20)", cols, rows, more))
        qc_imgs = sorted((sdir / "qc").glob("*.png")) if (sdir / "qc").is_dir() else []
        if qc_imgs:
            flagged_set = set(ids)
            pick = ([p for p in qc_imgs if p.stem in flagged_set][:2]
                    + [p for p in qc_imgs if p.stem not in flagged_set][:2]) or qc_imgs[:4]
            blocks.append(Gallery("Segmentation QC images (predicted contours solid, expert dashed)", [
                (f"qc_{p.stem}.png", p.read_bytes(), p.stem + (" (flagged)" if p.stem in flagged_set else ""))
                for p in pick]))
    else:
        blocks.append(Para("No QC flags file (work/segmentation/qc_flags.csv) was found."))
    return blocks


def _flagged(flags: pd.DataFrame) -> pd.DataFrame:
    """Rows of qc_flags.csv that carry a flag: one row per flag (``patient_id, phase, flag,
    detail``); a boolean ``flagged`` column is honoured too."""
    if flags.empty:
        return flags
    if "flagged" in flags.columns:
        return flags[flags["flagged"].astype(str).str.lower().isin(("true", "1", "yes"))]
    for col in ("flag", "flags", "reason"):
        if col in flags.columns:
            return flags[flags[col].fillna("").astype(str).str.strip() != ""]
    return flags


def _cell_str(v: Any) -> str:
    f = _num(v)
    if f is not None and not isinstance(v, (bool, np.bool_)) and not float(f).is_integer():
        return f"{f:.3g}"
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)


def baseline_section(data: StudyData) -> list[Block]:
    """Clinical-feature random forest and the hybrid, next to the best fine-tuned model."""
    if not data.baselines:
        return [Para("No baseline was run.")]
    rows = []
    for b in data.baselines:
        m = b.metrics or {}
        acc, bacc = b.estimate("accuracy"), b.estimate("balanced_accuracy")
        extra = ""
        if m.get("deep_features"):
            # e.g. "deep features: smallcnn-segmented/deep_features.csv" (the pretraining cell).
            f = Path(str(m["deep_features"].get("file") or ""))
            extra = f"deep features: {f.parent.name + '/' if f.parent.name else ''}{f.name or '?'}"
        rows.append([TCell(str(m.get("model", b.pretraining))),
                     TCell(auc_text(b) if b.status == "done" else b.status, sub=b.reason),
                     TCell(f"{fmt(acc[0])} ({fmt(acc[1])}–{fmt(acc[2])})" if acc[0] is not None else "—"),
                     TCell(fmt(bacc[0]) if bacc[0] is not None else "—"),
                     TCell(str(m.get("mask_source", ""))), TCell(extra)])
    done = [c for c in data.cells if c.auc is not None]
    if done:
        best = max(done, key=lambda c: c.auc or -1)
        acc = best.estimate("accuracy")
        rows.append([TCell(f"best fine-tuned: {best.label}"), TCell(auc_text(best)),
                     TCell(f"{fmt(acc[0])} ({fmt(acc[1])}–{fmt(acc[2])})" if acc[0] is not None else "—"),
                     TCell(fmt(best.estimate("balanced_accuracy")[0])), TCell(""), TCell("")])
    aucs = [_num(r[1].text.split(" ")[0]) for r in rows]
    top = max((a for a in aucs if a is not None), default=None)
    rows = [[TCell(r[0].text), TCell(r[1].text, bold=a is not None and a == top, sub=r[1].sub), *r[2:]]
            for r, a in zip(rows, aucs, strict=True)]
    blocks: list[Block] = [Table(
        "Clinical-feature baseline (random forest on indices measured on the segmentation; the "
        "ACDC challenge winners' approach) and the hybrid (clinical indices + PCA of "
        "self-supervised SimCLR features, which never saw the labels)",
        ["Model", "Macro AUC (95% CI)", "Accuracy (95% CI)", "Balanced accuracy", "Masks", "Notes"],
        rows, ["The 'best fine-tuned' row is chosen by test AUC for display only; it is not a "
               "selected model."])]
    imp = next(((b.metrics or {}).get("feature_importances") for b in data.baselines
                if b.metrics and b.metrics.get("feature_importances")), None)
    if isinstance(imp, dict) and imp:
        top_imp = list(imp.items())[:10]
        blocks.append(Table("Most important clinical features (first baseline)",
                            ["Feature", "Importance"], [[TCell(k), TCell(fmt(_num(v)))] for k, v in top_imp]))
    return blocks


def pretraining_section(data: StudyData) -> list[Block]:
    """One row per SimCLR pretraining: the scalar numbers its metrics.json reports."""
    if not data.pretrain:
        return [Para("No SimCLR pretraining metrics were found.")]
    keys: list[str] = []
    for _, m in data.pretrain:
        keys += [k for k, v in m.items() if k not in keys and _num(v) is not None
                 and not isinstance(v, bool)]
    keys = keys[:8]
    rows = [[TCell(name), *[TCell(_cell_str(m.get(k))) for k in keys]] for name, m in data.pretrain]
    return [Table("SimCLR pretraining runs", ["Encoder-input", *keys], rows)]


def dataset_section(data: StudyData) -> list[Block]:
    """Patients, classes, split sizes and skipped patients."""
    ds = data.dataset
    if not ds:
        return [Para("No prepared dataset (work/dataset.json) was found.")]
    blocks: list[Block] = []
    synthetic = _is_synthetic(data)
    source = "built-in synthetic cohort (phantoms in the ACDC layout)" if synthetic else str(ds.get("source"))
    blocks.append(Para(f"**Source:** {source}. **Patients:** {ds.get('patients')} prepared, "
                       f"{ds.get('skipped', 0)} skipped. **Store grid:** {ds.get('image_size')} px at "
                       f"{ds.get('spacing_mm')} mm. **Split:** train {ds.get('train')}, test "
                       f"{ds.get('test')}."))
    manifest_p, splits_p = data.work / "manifest.csv", data.work / "splits.json"
    if manifest_p.is_file() and splits_p.is_file():
        try:
            man = pd.read_csv(manifest_p, dtype={"patient_id": str, "label": str})
            splits = read_json(splits_p)
            label = dict(zip(man["patient_id"], man["label"].fillna(""), strict=True))
            counts = {s: Counter(label.get(p, "") for p in splits.get(s, [])) for s in ("train", "test")}
            classes = data.classes or sorted({c for cnt in counts.values() for c in cnt if c})
            rows = [[TCell(c), TCell(str(counts["train"][c])), TCell(str(counts["test"][c])),
                     TCell(str(counts["train"][c] + counts["test"][c]))] for c in classes]
            # "**total**": bold text; TCell(bold=True) means "best of the row" (highlighted).
            rows.append([TCell("**total**"), TCell(str(sum(counts["train"].values()))),
                         TCell(str(sum(counts["test"].values()))),
                         TCell(str(sum(counts["train"].values()) + sum(counts["test"].values())))])
            folds = splits.get("folds") or []
            blocks.append(Table("Patients per class and split", ["Class", "Train", "Test", "All"], rows,
                                [f"Split: {splits.get('method')} (seed {splits.get('seed')}), by patient; "
                                 f"{len(folds)} cross-validation folds within train."]))
        except (OSError, ValueError, KeyError) as err:
            data.warnings.append(f"dataset summary: {err}")
    skipped_p = data.work / "skipped.csv"
    if skipped_p.is_file():
        try:
            sk = pd.read_csv(skipped_p, dtype=str)
        except (OSError, ValueError, pd.errors.EmptyDataError):
            sk = pd.DataFrame()
        if len(sk):
            rows = [[TCell(_cell_str(v)) for v in r] for r in sk.head(30).itertuples(index=False)]
            blocks.append(Table(f"Skipped patients ({len(sk)})", list(sk.columns), rows))
        else:
            blocks.append(Para("No patient was skipped."))
    return blocks


def _is_synthetic(data: StudyData) -> bool:
    if data.cfg is not None:
        return data.cfg.data is None
    src = str(data.dataset.get("source", ""))
    return bool(src) and Path(src).resolve() == (data.out / DATA_DIR).resolve()


def _is_acdc(data: StudyData) -> bool:
    if _is_synthetic(data):
        return False
    src = str(data.dataset.get("source") or (data.cfg.data if data.cfg else "") or "")
    if not src:
        return False
    from cardioclr.data.acdc import is_acdc_root

    return "acdc" in src.lower() or (Path(src).is_dir() and is_acdc_root(src))


def cell_revisions(out: Path) -> dict[str, list[str]]:
    """Git revision -> stage directories (relative to ``out``) whose ``versions.json`` has it."""
    found: dict[str, list[str]] = {}
    # The cells' own directories only: a recursive glob would walk the whole slice store.
    patterns = ("finetune/*/versions.json", "baseline/*/versions.json",
                f"{WORK_DIR}/*/versions.json", f"{WORK_DIR}/segmentation/*/versions.json",
                f"{WORK_DIR}/pretrain/*/versions.json")
    for p in sorted({q for pattern in patterns for q in out.glob(pattern)}):
        rel = p.parent.relative_to(out)
        try:
            rev = str(read_json(p).get("git_revision") or "unknown")
        except (OSError, ValueError, AttributeError):
            continue
        found.setdefault(rev, []).append(rel.as_posix())
    return found


def provenance_section(data: StudyData) -> list[Block]:
    """Git revision, versions, hardware, durations per stage and the saved configuration."""
    env = data.environment
    blocks: list[Block] = []
    if env:
        pk = env.get("packages") or {}
        blocks.append(Para(
            f"**cardioclr** {env.get('cardioclr')} at git revision `{env.get('git_revision')}`; "
            f"Python {env.get('python')}; " + ", ".join(f"{k} {v}" for k, v in pk.items() if v)
            + f". **Hardware:** {env.get('platform')}, {env.get('cpu_count')} CPU cores, GPUs: "
            + (", ".join(env.get("cuda_devices") or []) or "none")
            # study_environment.json is rewritten by every (re-)run; the state keeps the first.
            + f". **Study started:** {(data.state or {}).get('started') or env.get('time_utc')}; "
            f"**last run started:** {env.get('time_utc')}. **Command:** `{env.get('command')}`."))
    revisions = cell_revisions(data.out)
    if len(revisions) > 1:
        blocks.append(Table(
            "The cells ran at different code revisions (the checkout changed while the study "
            "ran or between its runs); results may not be comparable", ["Git revision", "Cells"],
            [[TCell(f"`{rev}`"), TCell(", ".join(dirs))] for rev, dirs in revisions.items()],
            css="warn"))
    cells = (data.state or {}).get("cells") or {}
    if cells:
        by_kind: dict[str, list[float]] = {}
        status = Counter(r.get("status") for r in cells.values())
        for r in cells.values():
            if r.get("seconds"):
                by_kind.setdefault(r.get("kind", "?"), []).append(float(r["seconds"]))
        rows = [[TCell(k), TCell(str(len(v))), TCell(format_seconds(sum(v))),
                 TCell(format_seconds(sum(v) / len(v)))] for k, v in by_kind.items()]
        total = sum(sum(v) for v in by_kind.values())
        rows.append([TCell("**total**"), TCell(str(sum(len(v) for v in by_kind.values()))),
                     TCell(f"**{format_seconds(total)}**"), TCell("")])
        blocks.append(Table("Durations per stage (all runs of this study)",
                            ["Stage", "Cells", "Total", "Per cell"], rows,
                            ["Cell status: " + ", ".join(f"{k} {v}" for k, v in status.items())]))
        failed = [(k, r) for k, r in cells.items() if r.get("status") == "failed"]
        if failed:
            blocks.append(Table("Failed cells", ["Cell", "Error"],
                                [[TCell(k), TCell(str(r.get("error") or ""))] for k, r in failed]))
    if (data.out / "study.yaml").is_file():
        blocks.append(Para("**Configuration** (OUT/study.yaml; every cell also keeps its own "
                           "config.yaml and versions.json):"))
        blocks.append(Code((data.out / "study.yaml").read_text(encoding="utf-8"), "show study.yaml"))
    return blocks


# ------------------------------------------------------------------------------ assembly


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
    if _is_synthetic(data):
        blocks.append(Para("These results come from the built-in **synthetic** cohort: they "
                           "check that the pipeline runs end to end and carry no clinical meaning.",
                           css="warn"))
    for w in data.warnings:
        blocks.append(Para(f"Warning: {w}", css="warn"))
    failed = [c for c in [*data.cells, *data.baselines] if c.status == "failed"]
    if failed:
        blocks.append(Para(f"{len(failed)} cell(s) failed: " + "; ".join(
            f"{c.cell} ({_short_reason(c.reason)})" for c in failed), css="warn"))

    blocks += [Heading(2, "Tables 1–3: diagnostic performance", "tables")]
    blocks += tables_1_2(data)
    blocks += table_3(data)
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
    if _is_acdc(data):
        blocks.append(Para("[2] ACDC data: " + ACDC_CITATION))
    return blocks


def build_report(out: str | os.PathLike[str]) -> dict[str, Path]:
    """Write ``results.csv``, ``report.md`` (+ ``figures/``) and ``report.html`` into ``out``."""
    out = Path(out)
    if not out.is_dir():
        from cardioclr.errors import CardioclrError

        raise CardioclrError(f"{out}: no such study directory")
    data = collect(out)
    n_boot = data.cfg.report.n_boot if data.cfg else 2000
    add_comparisons(data, n_boot=n_boot)
    results = results_frame(data)
    paths = {"results": out / "results.csv", "markdown": out / "report.md", "html": out / "report.html"}
    write_text(paths["results"], results.to_csv(index=False, float_format="%.4f"))
    blocks = build_blocks(data)
    title = "cardioclr study report"
    for name, png in figure_files(blocks).items():
        with atomic_path(out / "figures" / name) as tmp:
            tmp.write_bytes(png)
    write_text(paths["markdown"], render_markdown(title, blocks))
    write_text(paths["html"], render_html(title, blocks))
    return paths


def summary_lines(out: str | os.PathLike[str]) -> list[str]:
    """A few lines for the terminal: the grid's AUCs from ``results.csv``."""
    p = Path(out) / "results.csv"
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

