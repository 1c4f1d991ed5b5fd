"""Typed definitions of the files the stages write and the report reads back.

One definition per artifact, shared by its writer (the stage annotates the dict it writes),
the report (which reads through :func:`estimate` / :func:`number` into numbers once, in
``cardioclr.study.report.collect``) and the test fakes (which build the same types):

* ``WORK/segmentation/metrics.json`` -> :class:`SegmentationMetrics`
* ``WORK/pretrain/<encoder>-<input>/metrics.json`` -> :class:`PretrainMetrics`
* ``OUT/finetune/<cell>/metrics.json`` -> :class:`FinetuneMetrics` (``test`` is a
  :class:`ClassificationMetrics`, ``saliency`` a :class:`SaliencySummary`)
* ``OUT/baseline/{clinical,hybrid}/metrics.json`` -> :class:`BaselineMetrics` (the
  :class:`ClassificationMetrics` keys at the top level)
* one row of ``OUT/results.csv`` -> :class:`ResultRow` (:data:`RESULT_COLUMNS` in order)

The JSON files are TypedDicts (``total=False``: older studies may lack a key; a reader must
not assume one is there). Numbers are JSON floats, ``null`` where undefined (NaN is written as
``null`` by :func:`cardioclr.evaluate.metrics.to_jsonable`). This module imports nothing heavy
(no torch, no pandas), so every layer may import it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, TypedDict

# ------------------------------------------------------------------------------ file names

#: Label-free per-patient features of a SimCLR encoder (``cardioclr pretrain``), the only
#: features the hybrid baseline accepts: ``patient_id, f0..fN``.
DEEP_FEATURES_FILE = "deep_features.csv"
#: Per-patient features of a fine-tuned classifier (``cardioclr finetune``), same columns. For
#: inspection only: fitted to the train patients' labels, so the hybrid baseline refuses them.
FINETUNED_FEATURES_FILE = "finetuned_features.csv"


# ------------------------------------------------------------------------------ shared pieces


class EstimateJSON(TypedDict, total=False):
    """A point estimate and its bootstrap CI, as written: ``{"value", "ci_low", "ci_high"}``."""

    value: float | None
    ci_low: float | None
    ci_high: float | None


class ClassificationMetrics(TypedDict, total=False):
    """:func:`cardioclr.evaluate.metrics.classification_metrics` (patient level, test split)."""

    n: int
    n_per_class: dict[str, int]
    classes: list[str]
    predicted_by: str
    macro_auc: EstimateJSON
    per_class_auc: dict[str, EstimateJSON]
    accuracy: EstimateJSON
    balanced_accuracy: EstimateJSON
    confusion_matrix: dict[str, Any]
    bootstrap: dict[str, Any]
    notes: list[str]


class SaliencySummary(TypedDict, total=False):
    """:func:`cardioclr.evaluate.saliency.summarise`: Grad-CAM share inside the heart mask."""

    in_heart_share_mean: float | None
    in_heart_share_sd: float | None
    n: int
    n_empty_maps: int
    margin_mm: float
    mask_source: str
    mask_area_share_mean: float | None
    method: str
    caveat: str


class DeepFeaturesInfo(TypedDict, total=False):
    """Where a model's deep features were written or read (``file`` relative or absolute)."""

    file: str | None
    n_features: int
    n_input: int
    pca_components: int
    model: str


# ------------------------------------------------------------------------------ stage metrics


class SegmentationMetrics(TypedDict, total=False):
    """``WORK/segmentation/metrics.json`` (:func:`cardioclr.segment.evaluate.evaluate`).

    ``dice`` / ``hd95``: phase (``ED``/``ES``) -> structure (``LV``/``MYO``/``RV``) -> mean over
    test patients (HD95 in mm); ``indices_agreement``: clinical index -> ``{n, pearson_r, bias,
    sd}`` of predicted minus expert.
    """

    grid: str
    dice: dict[str, dict[str, float | None]]
    hd95: dict[str, dict[str, float | None]]
    mean_dice: float | None
    mean_hd95: float | None
    dice_per_structure: dict[str, float | None]
    hd95_undefined: int
    n_test: int
    test_without_prediction: list[str]
    indices_agreement: dict[str, dict[str, float | int | None]]
    train_seconds: float | None
    n_train: int
    n_val: int
    config: dict[str, Any] | None


class PretrainMetrics(TypedDict, total=False):
    """``WORK/pretrain/<encoder>-<input>/metrics.json`` (:func:`cardioclr.ssl.pretrain.pretrain`).

    ``config`` is the run identity (:func:`cardioclr.ssl.pretrain.run_key`); its presence with
    the same value is what "finished with this configuration" means.
    """

    best_val_loss: float | None
    best_epoch: int
    epochs: int
    stopped_early: bool
    optimizer_steps: int
    images_seen: int
    views_seen: int
    images_per_second: float | None
    train_seconds: float
    fit_seconds: float
    n_train_images: int
    n_val_images: int
    n_train_patients: int
    n_val_patients: int
    images_per_source: dict[str, int]
    global_batch: int
    per_device_batch: int
    world_size: int
    precision: str
    accelerator: str
    feature_dim: int
    config: dict[str, Any]
    deep_features: dict[str, Any] | None


class FinetuneMetrics(TypedDict, total=False):
    """``OUT/finetune/<cell>/metrics.json`` (:func:`cardioclr.classify.finetune.finetune`)."""

    encoder: str
    pretraining: str
    init: str
    pretraining_details: dict[str, Any]
    weights: str | None
    downstream_input: str
    mask_source: str
    shared_encoder: bool
    linear_probe: bool
    #: ``slice`` (the paper's slice-pair model) or ``patient`` (issue 11 item 2); absent in
    #: runs older than the patient-level model, which are slice models.
    model: str
    #: The patient-level model's pooling over slices (None for the slice model).
    pooling: str | None
    image_size: int
    classes: list[str]
    test: ClassificationMetrics
    per_seed: list[dict[str, Any]]
    seed_spread: dict[str, Any]
    ensemble: str
    #: Models averaged into the test probabilities (one final model per seed).
    ensemble_size: int
    #: The training recipe's fields (:class:`cardioclr.classify.recipe.TrainingRecipe`).
    recipe: dict[str, Any]
    cv: list[dict[str, Any]]
    cv_folds: list[dict[str, Any]]
    selected: dict[str, Any]
    saliency: SaliencySummary | None
    patients: dict[str, Any]
    #: The fine-tuned model's own features (``finetuned_features.csv``): fitted to the train
    #: patients' labels, so they must never feed the hybrid baseline.
    finetuned_features: DeepFeaturesInfo
    train_seconds: float
    seconds: float
    fingerprint: str


class BaselineMetrics(ClassificationMetrics, total=False):
    """``OUT/baseline/{clinical,hybrid}/metrics.json`` (:func:`cardioclr.evaluate.baseline.run_baseline`):
    the test-split :class:`ClassificationMetrics` at the top level, plus the model's details."""

    model: str
    mask_source: str
    hyperparameters: dict[str, Any]
    cv: dict[str, Any]
    feature_importances: dict[str, float]
    feature_importance_kind: str
    features: dict[str, Any]
    test_errors: list[dict[str, Any]]
    feature_notes: dict[str, list[str]]
    n_train: int
    n_test: int
    deep_features: DeepFeaturesInfo | None
    config: dict[str, Any]
    seconds: float


# ------------------------------------------------------------------------------ reading numbers


def number(v: object) -> float | None:
    """``v`` as a finite float, or None (missing, ``null``, NaN, not a number)."""
    if v is None or isinstance(v, bool):
        return None
    try:
        f = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


@dataclass(frozen=True)
class Estimate:
    """A number with its 95% CI, each None when not available."""

    value: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None

    @classmethod
    def read(cls, raw: object) -> Estimate:
        """From an :class:`EstimateJSON` (or a bare number, which has no CI)."""
        if isinstance(raw, dict):
            return cls(number(raw.get("value")), number(raw.get("ci_low")), number(raw.get("ci_high")))
        return cls(number(raw))

    @property
    def has_ci(self) -> bool:
        """Whether both CI bounds are known."""
        return self.ci_low is not None and self.ci_high is not None


# ------------------------------------------------------------------------------ results.csv


@dataclass(frozen=True)
class ResultRow:
    """One row of ``OUT/results.csv``: one fine-tuning or baseline cell (columns in this order).

    ``auc`` is the test split's macro one-vs-rest ROC AUC with its stratified-bootstrap 95% CI;
    ``p_vs_none`` / ``auc_diff_vs_none`` the paired comparison with no pretraining (same encoder
    and downstream input); ``seconds`` the cell's wall time (all runs).
    """

    cell: str
    kind: str
    encoder: str
    pretraining: str
    downstream_input: str
    mask_source: str
    status: str
    auc: float | None
    auc_ci_low: float | None
    auc_ci_high: float | None
    accuracy: float | None
    accuracy_ci_low: float | None
    accuracy_ci_high: float | None
    balanced_accuracy: float | None
    balanced_accuracy_ci_low: float | None
    balanced_accuracy_ci_high: float | None
    p_vs_none: float | None
    auc_diff_vs_none: float | None
    saliency_in_heart_share: float | None
    n_test: int | None
    seconds: float | None
    reason: str
    #: Cells beyond the paper's grid (kind ``beyond``): the paired comparison with the paper's
    #: best cell ``reference`` (AUC: paired bootstrap / DeLong; accuracy: exact McNemar).
    reference: str = ""
    auc_diff_vs_reference: float | None = None
    p_vs_reference: float | None = None
    accuracy_diff_vs_reference: float | None = None
    accuracy_p_vs_reference: float | None = None


#: The columns of ``results.csv``, in order.
RESULT_COLUMNS: list[str] = [f.name for f in fields(ResultRow)]
