"""Read a study directory into :class:`StudyData`: every number the report needs, parsed once.

The stages' ``metrics.json`` files are read through their typed definitions
(:mod:`cardioclr.artifacts`); the numbers the tables show (AUC, accuracy, balanced accuracy with
their CIs, in-heart saliency, test size) become attributes of :class:`CellResult` here, so the
sections compute on numbers and never reach into the raw dicts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pandas as pd

from cardioclr.artifacts import (
    BaselineMetrics,
    ClassificationMetrics,
    Estimate,
    FinetuneMetrics,
    PretrainMetrics,
    SaliencySummary,
    SegmentationMetrics,
    number,
)
from cardioclr.atomic import read_json
from cardioclr.choices import INPUT_MODES, PRETRAININGS
from cardioclr.layout import StudyLayout
from cardioclr.study.config import StudyConfig, read_saved_config
from cardioclr.study.grid import expand_grid
from cardioclr.study.report.format import INPUT_LABELS, PRETRAINING_LABELS
from cardioclr.study.state import read_state

#: Downstream inputs in table order.
INPUTS = INPUT_MODES


@dataclass
class CellResult:
    """One fine-tuning or baseline cell as found on disk, its numbers parsed.

    ``metrics`` is the raw typed ``metrics.json`` (None when the cell did not finish); the
    report's sections use the parsed attributes (``auc``, ``accuracy``, ...), not ``metrics``.
    """

    cell: str
    kind: str
    path: Path
    encoder: str = ""
    pretraining: str = ""
    downstream_input: str = ""
    status: str = "done"
    reason: str = ""
    seconds: float | None = None
    metrics: FinetuneMetrics | BaselineMetrics | None = None
    p_vs_none: float | None = None
    diff_vs_none: float | None = None
    comparison_test: str = ""
    auc_estimate: Estimate = field(default_factory=Estimate)
    accuracy: Estimate = field(default_factory=Estimate)
    balanced_accuracy: Estimate = field(default_factory=Estimate)
    n_test: int | None = None
    saliency: SaliencySummary | None = None
    mask_source: str | None = None

    def __post_init__(self) -> None:
        test = self.test
        self.auc_estimate = Estimate.read(test.get("macro_auc"))
        self.accuracy = Estimate.read(test.get("accuracy"))
        self.balanced_accuracy = Estimate.read(test.get("balanced_accuracy"))
        n = number(test.get("n"))
        self.n_test = int(n) if n is not None else None
        sal = self.metrics.get("saliency") if self.metrics is not None else None
        self.saliency = cast(SaliencySummary, sal) if isinstance(sal, dict) else None
        ms = self.metrics.get("mask_source") if self.metrics is not None else None
        self.mask_source = str(ms) if ms is not None else None

    @property
    def test(self) -> ClassificationMetrics:
        """The test-set classification metrics (fine-tune: ``test``; baseline: top level)."""
        if not self.metrics:
            return {}
        t = self.metrics.get("test")
        return cast(ClassificationMetrics, t) if isinstance(t, dict) else cast(ClassificationMetrics,
                                                                                 self.metrics)

    @property
    def done(self) -> bool:
        """Whether the cell finished."""
        return self.status == "done"

    @property
    def auc(self) -> float | None:
        """Macro AUC on the test split (None when not available)."""
        return self.auc_estimate.value

    @property
    def in_heart(self) -> float | None:
        """Mean share of saliency inside the heart mask (fine-tune cells)."""
        return number(self.saliency.get("in_heart_share_mean")) if self.saliency else None

    @property
    def cv_auc(self) -> float | None:
        """Mean validation macro AUC over the CV folds of the chosen grid point (train only)."""
        sel = self.metrics.get("selected") if self.metrics is not None else None
        return number(sel.get("cv_val_auc_mean")) if isinstance(sel, dict) else None

    @property
    def label(self) -> str:
        """Human-readable name: ``smallcnn, SimCLR (full) -> segmented images``."""
        if self.kind != "finetune":
            return self.cell
        return (f"{self.encoder}, {PRETRAINING_LABELS.get(self.pretraining, self.pretraining)} → "
                f"{INPUT_LABELS.get(self.downstream_input, self.downstream_input)}")


@dataclass
class PairedComparison:
    """Cell ``a`` against cell ``b`` on the same test patients (differences are a - b).

    ``auc_p``: paired test of the macro AUC (``auc_test``: DeLong for two classes, paired
    bootstrap otherwise); ``accuracy_p``: exact McNemar test; CIs: paired stratified bootstrap.
    """

    a: CellResult
    b: CellResult
    auc_diff: Estimate
    auc_p: float | None
    auc_test: str
    accuracy_diff: Estimate
    accuracy_p: float | None


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
    segmentation: SegmentationMetrics | None
    pretrain: list[tuple[str, PretrainMetrics]]
    environment: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    #: Cells beyond the paper's grid (``OUT/beyond/<name>``), in the order of ``beyond_paper``.
    beyond: list[CellResult] = field(default_factory=list)
    #: Filled by :func:`cardioclr.study.report.results.add_beyond_comparisons`: the paper cell
    #: the beyond cells are compared with (and how it was chosen), the comparisons, and the
    #: paper's questions (does SimCLR help, does heart masking help) as paired comparisons.
    reference: CellResult | None = None
    reference_rule: str = ""
    beyond_vs_reference: list[PairedComparison] = field(default_factory=list)
    questions: list[tuple[str, PairedComparison]] = field(default_factory=list)

    @property
    def layout(self) -> StudyLayout:
        """The study's folders."""
        return StudyLayout(self.out)

    @property
    def work(self) -> Path:
        """``OUT/work``."""
        return self.layout.work

    def find(self, encoder: str, pretraining: str, downstream_input: str) -> CellResult | None:
        """The fine-tuning cell of (encoder, pretraining, downstream input), if listed."""
        return next((c for c in self.cells if c.encoder == encoder and c.pretraining == pretraining
                     and c.downstream_input == downstream_input), None)

    def encoders(self) -> list[str]:
        """Encoders of the fine-tuning cells, in table order."""
        seen: list[str] = []
        for c in self.cells:
            if c.encoder not in seen:
                seen.append(c.encoder)
        return seen

    @property
    def is_synthetic(self) -> bool:
        """Whether the study ran on the built-in synthetic cohort."""
        if self.cfg is not None:
            return self.cfg.data is None
        src = str(self.dataset.get("source", ""))
        return bool(src) and Path(src).resolve() == self.layout.data.resolve()

    @property
    def is_acdc(self) -> bool:
        """Whether the dataset is ACDC (its citation is then mandatory)."""
        if self.is_synthetic:
            return False
        src = str(self.dataset.get("source") or (self.cfg.data if self.cfg else "") or "")
        if not src:
            return False
        from cardioclr.data.acdc import is_acdc_root

        return "acdc" in src.lower() or (Path(src).is_dir() and is_acdc_root(src))


def read_json_or_none(path: Path, warnings: list[str]) -> dict[str, Any] | None:
    """``path``'s JSON object, or None when absent; an unreadable file adds a warning."""
    if not path.is_file():
        return None
    try:
        data = read_json(path)
    except (OSError, ValueError) as err:
        warnings.append(f"{path}: unreadable ({err}); left out")
        return None
    return data if isinstance(data, dict) else None


def split_cell_name(name: str) -> tuple[str, str, str]:
    """``encoder__pretraining__input`` -> its three parts (``(name, "", "")`` otherwise)."""
    parts = name.split("__")
    return (parts[0], parts[1], parts[2]) if len(parts) == 3 else (name, "", "")


def collect(out: str | os.PathLike[str]) -> StudyData:
    """Read a study directory (see the package docstring for what is read)."""
    layout = StudyLayout(Path(out))
    out = layout.out
    warnings: list[str] = []
    cfg = None
    if layout.config.is_file():
        try:
            cfg = read_saved_config(layout.config)
        except Exception as err:  # noqa: BLE001 - the report works without the config
            warnings.append(f"{layout.config}: unreadable ({err})")
    state = read_state(out)
    state_cells: dict[str, dict[str, Any]] = state.get("cells", {}) or {}

    cells: dict[str, CellResult] = {}
    ft = layout.finetune
    for d in sorted(ft.iterdir()) if ft.is_dir() else []:
        raw = read_json_or_none(d / "metrics.json", warnings)
        if raw is None or not d.is_dir():
            continue
        m = cast(FinetuneMetrics, raw)
        enc, pre, inp = split_cell_name(d.name)
        rec = state_cells.get(f"finetune/{d.name}", {})
        seconds = number(rec.get("seconds")) or number(m.get("train_seconds"))
        cells[d.name] = CellResult(d.name, "finetune", d, str(m.get("encoder") or enc),
                                   str(m.get("pretraining") or pre),
                                   str(m.get("downstream_input") or inp), "done", "",
                                   seconds, m)
    for cid, rec in state_cells.items():
        if rec.get("kind") != "finetune" or cid.removeprefix("finetune/") in cells:
            continue
        name = cid.removeprefix("finetune/")
        enc, pre, inp = split_cell_name(name)
        status = rec.get("status") or "pending"
        reason = rec.get("reason") or rec.get("error") or ""
        if status == "done":  # recorded done but its metrics.json is gone
            status, reason = "failed", "metrics.json missing"
        cells[name] = CellResult(name, "finetune", out / rec.get("path", f"finetune/{name}"),
                                 enc, pre, inp, status, reason, number(rec.get("seconds")))

    if cfg is not None:
        # Cells that cannot run with this configuration (ImageNet without weights) follow from
        # study.yaml alone, so the tables say why they are empty even without study_state.json.
        try:
            grid = expand_grid(cfg)
        except Exception as err:  # noqa: BLE001 - the report works without the grid
            warnings.append(f"grid of {layout.config}: {err}")
            grid = []
        for gc in grid:
            name = gc.path.removeprefix("finetune/")
            if gc.kind == "finetune" and gc.not_run_reason and name not in cells:
                enc, pre, inp = split_cell_name(name)
                cells[name] = CellResult(name, "finetune", out / gc.path, enc, pre, inp, "not-run",
                                         gc.not_run_reason)

    order_enc = list(cfg.encoders) if cfg else []
    order_enc += sorted({c.encoder for c in cells.values()} - set(order_enc))

    def key(c: CellResult) -> tuple[int, int, int]:
        return (order_enc.index(c.encoder) if c.encoder in order_enc else 99,
                INPUTS.index(c.downstream_input) if c.downstream_input in INPUTS else 9,
                PRETRAININGS.index(c.pretraining) if c.pretraining in PRETRAININGS else 9)

    cell_list = sorted(cells.values(), key=key)

    baselines: list[CellResult] = []
    for name in ("clinical", "hybrid"):
        d = layout.baseline(name)
        rec = state_cells.get(f"baseline/{name}", {})
        braw = read_json_or_none(d / "metrics.json", warnings)
        if braw is not None:
            b = cast(BaselineMetrics, braw)
            seconds = number(rec.get("seconds")) or number(b.get("seconds"))
            baselines.append(CellResult(f"baseline/{name}", "baseline", d, "",
                                        str(b.get("model", name)), "", "done", "", seconds, b))
        elif rec:
            baselines.append(CellResult(f"baseline/{name}", "baseline", d, "", name, "",
                                        rec.get("status") or "pending",
                                        rec.get("reason") or rec.get("error") or "",
                                        number(rec.get("seconds"))))

    beyond = collect_beyond(layout, cfg, state_cells, warnings)
    dataset = read_json_or_none(layout.dataset_json, warnings) or {}
    classes = list(dataset.get("classes") or [])
    if not classes:
        for c in cell_list:
            if c.metrics and c.metrics.get("classes"):
                classes = list(c.metrics.get("classes") or [])
                break
    seg = cast("SegmentationMetrics | None",
               read_json_or_none(layout.segmentation_metrics, warnings))
    pretrain: list[tuple[str, PretrainMetrics]] = []
    pdir = layout.pretrain
    for d in sorted(pdir.iterdir()) if pdir.is_dir() else []:
        praw = read_json_or_none(d / "metrics.json", warnings)
        if praw is not None:
            pretrain.append((d.name, cast(PretrainMetrics, praw)))
    env = read_json_or_none(layout.environment, warnings) or {}
    return StudyData(out, cfg, state, cell_list, baselines, classes, dataset, seg, pretrain, env,
                     warnings, beyond)


def collect_beyond(layout: StudyLayout, cfg: StudyConfig | None,
                   state_cells: dict[str, dict[str, Any]], warnings: list[str]) -> list[CellResult]:
    """The beyond-the-paper cells: finished ones from their ``metrics.json``, the others from
    the state; in the order of the config's ``beyond_paper`` (then by name)."""
    found: dict[str, CellResult] = {}
    root = layout.beyond
    for d in sorted(root.iterdir()) if root.is_dir() else []:
        raw = read_json_or_none(d / "metrics.json", warnings) if d.is_dir() else None
        if raw is None:
            continue
        m = cast(FinetuneMetrics, raw)
        rec = state_cells.get(f"beyond/{d.name}", {})
        seconds = number(rec.get("seconds")) or number(m.get("train_seconds"))
        found[d.name] = CellResult(f"beyond/{d.name}", "beyond", d, str(m.get("encoder") or ""),
                                   str(m.get("pretraining") or ""),
                                   str(m.get("downstream_input") or ""), "done", "", seconds, m)
    for cid, rec in state_cells.items():
        name = cid.removeprefix("beyond/")
        if rec.get("kind") != "beyond" or name in found:
            continue
        status = rec.get("status") or "pending"
        reason = rec.get("reason") or rec.get("error") or ""
        if status == "done":
            status, reason = "failed", "metrics.json missing"
        found[name] = CellResult(cid, "beyond", layout.out / rec.get("path", cid), "", "", "",
                                 status, reason, number(rec.get("seconds")))
    order = [b.name for b in cfg.beyond_paper] if cfg is not None else []
    return sorted(found.values(), key=lambda c: (
        order.index(c.cell.removeprefix("beyond/")) if c.cell.removeprefix("beyond/") in order
        else len(order), c.cell))


# ------------------------------------------------------------------------------ per-cell files


def read_predictions(cell: CellResult) -> pd.DataFrame | None:
    """The cell's ``predictions.csv`` (None when it did not finish or the file is unreadable)."""
    p = cell.path / "predictions.csv"
    if not cell.done or not p.is_file():
        return None
    try:
        return pd.read_csv(p, dtype={"patient_id": str})
    except (OSError, ValueError):
        return None


def read_curves(cell: CellResult) -> pd.DataFrame | None:
    """The cell's ``curves.csv`` (per-epoch validation loss / AUC), or None."""
    p = cell.path / "curves.csv"
    if not cell.done or not p.is_file():
        return None
    try:
        return pd.read_csv(p)
    except (OSError, ValueError):
        return None


def saliency_images(cell: CellResult) -> dict[str, Path]:
    """Patient id -> ``saliency/PID.png`` of a finished cell."""
    d = cell.path / "saliency"
    if not cell.done or not d.is_dir():
        return {}
    return {p.stem: p for p in sorted(d.glob("*.png"))}
