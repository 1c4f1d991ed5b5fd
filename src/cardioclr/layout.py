"""Where every stage's files live: the one owner of the work-folder and study-folder layout.

A prepared work folder (``cardioclr prepare DATA WORK``)::

    WORK/dataset.json, manifest.csv, splits.json, skipped.csv, store/
    WORK/segmentation/model/        segment train (model.pt, done.json, checkpoints/)
    WORK/segmentation/masks/        segment predict (PID.npz), nifti/, qc/, qc_flags.csv,
                                    predict_summary.json
    WORK/segmentation/metrics.json  segment evaluate (also indices.csv, metrics_per_patient.csv)
    WORK/pretrain/<encoder>-<input>/  SimCLR pretraining (encoder.pt, deep_features.csv)

A study folder (``cardioclr study --out OUT``)::

    OUT/study.yaml, study_state.json, study_environment.json, results.csv, report.{md,html}
    OUT/data/        the synthetic cohort (only without --data)
    OUT/work/        the prepared work folder above
    OUT/finetune/<encoder>__<pretraining>__<input>/   OUT/baseline/{clinical,hybrid}/
    OUT/beyond/<name>/   (cells beyond the paper's grid)
    OUT/logs/<cell>.log

Both objects are plain paths (nothing is created); a layout over ``Path()`` gives the paths
relative to its root (the study grid stores cell folders that way).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DATA_DIR, WORK_DIR = "data", "work"


@dataclass(frozen=True)
class WorkLayout:
    """Paths of a prepared work folder ``root`` (see the module docstring)."""

    root: Path

    def __init__(self, root: str | os.PathLike[str]) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def dataset_json(self) -> Path:
        """``WORK/dataset.json``: written last by prepare (marks the store finished)."""
        return self.root / "dataset.json"

    @property
    def manifest(self) -> Path:
        """``WORK/manifest.csv``."""
        return self.root / "manifest.csv"

    @property
    def splits(self) -> Path:
        """``WORK/splits.json`` (written once)."""
        return self.root / "splits.json"

    @property
    def skipped(self) -> Path:
        """``WORK/skipped.csv``: patients prepare left out, with the reason."""
        return self.root / "skipped.csv"

    @property
    def segmentation(self) -> Path:
        """``WORK/segmentation``: model, masks, NIfTI, metrics and QC of the segmentation stage."""
        return self.root / "segmentation"

    @property
    def segmentation_model(self) -> Path:
        """``WORK/segmentation/model``: segment train's output."""
        return self.segmentation / "model"

    @property
    def segmentation_folds(self) -> Path:
        """Cross-fitted fold models (:mod:`cardioclr.segment.crossfit`)."""
        return self.segmentation / "folds"

    @property
    def segmentation_masks(self) -> Path:
        """``WORK/segmentation/masks``: predicted masks ``PID.npz``."""
        return self.segmentation / "masks"

    @property
    def segmentation_metrics(self) -> Path:
        """``WORK/segmentation/metrics.json``: segment evaluate's result."""
        return self.segmentation / "metrics.json"

    @property
    def qc_flags(self) -> Path:
        """``WORK/segmentation/qc_flags.csv``."""
        return self.segmentation / "qc_flags.csv"

    @property
    def qc_images(self) -> Path:
        """``WORK/segmentation/qc``: contour pictures ``PID.png``."""
        return self.segmentation / "qc"

    @property
    def predict_summary(self) -> Path:
        """``WORK/segmentation/predict_summary.json``."""
        return self.segmentation / "predict_summary.json"

    @property
    def pretrain(self) -> Path:
        """``WORK/pretrain``: one folder per SimCLR pretraining."""
        return self.root / "pretrain"


@dataclass(frozen=True)
class StudyLayout:
    """Paths of a study folder ``out`` (see the module docstring)."""

    out: Path

    def __init__(self, out: str | os.PathLike[str] = "") -> None:
        object.__setattr__(self, "out", Path(out))

    @property
    def config(self) -> Path:
        """``OUT/study.yaml``: the full configuration of the study."""
        return self.out / "study.yaml"

    @property
    def state(self) -> Path:
        """``OUT/study_state.json``."""
        return self.out / "study_state.json"

    @property
    def environment(self) -> Path:
        """``OUT/study_environment.json`` (rewritten by every run)."""
        return self.out / "study_environment.json"

    @property
    def data(self) -> Path:
        """``OUT/data``: the synthetic cohort (a study without ``--data``)."""
        return self.out / DATA_DIR

    @property
    def work(self) -> Path:
        """``OUT/work``: the prepared work folder."""
        return self.out / WORK_DIR

    @property
    def work_layout(self) -> WorkLayout:
        """The layout of ``OUT/work``."""
        return WorkLayout(self.work)

    @property
    def dataset_json(self) -> Path:
        """``OUT/work/dataset.json``."""
        return self.work_layout.dataset_json

    @property
    def segmentation(self) -> Path:
        """``OUT/work/segmentation``."""
        return self.work_layout.segmentation

    @property
    def segmentation_metrics(self) -> Path:
        """``OUT/work/segmentation/metrics.json``."""
        return self.work_layout.segmentation_metrics

    @property
    def pretrain(self) -> Path:
        """``OUT/work/pretrain``."""
        return self.work_layout.pretrain

    def pretrain_cell(self, encoder: str, pretrain_input: str) -> Path:
        """``OUT/work/pretrain/<encoder>-<input>`` (the ssl stage's own naming)."""
        return self.pretrain / f"{encoder}-{pretrain_input}"

    @property
    def finetune(self) -> Path:
        """``OUT/finetune``."""
        return self.out / "finetune"

    def finetune_cell(self, encoder: str, pretraining: str, downstream_input: str) -> Path:
        """``OUT/finetune/<encoder>__<pretraining>__<input>``."""
        return self.finetune / f"{encoder}__{pretraining}__{downstream_input}"

    @property
    def beyond(self) -> Path:
        """``OUT/beyond``: the fine-tuning cells beyond the paper's grid."""
        return self.out / "beyond"

    def beyond_cell(self, name: str) -> Path:
        """``OUT/beyond/<name>`` (a ``beyond_paper:`` configuration of the study)."""
        return self.beyond / name

    def baseline(self, name: str) -> Path:
        """``OUT/baseline/<name>`` (``clinical`` or ``hybrid``)."""
        return self.out / "baseline" / name

    @property
    def logs(self) -> Path:
        """``OUT/logs``: one log per cell."""
        return self.out / "logs"

    @property
    def results_csv(self) -> Path:
        """``OUT/results.csv``."""
        return self.out / "results.csv"

    @property
    def report_md(self) -> Path:
        """``OUT/report.md``."""
        return self.out / "report.md"

    @property
    def report_html(self) -> Path:
        """``OUT/report.html``."""
        return self.out / "report.html"

    @property
    def figures(self) -> Path:
        """``OUT/figures``: the report's PNGs (the Markdown links them)."""
        return self.out / "figures"


def rel(path: Path) -> str:
    """A relative layout path as the study grid stores it (POSIX, e.g. ``work/segmentation``)."""
    return path.as_posix()
