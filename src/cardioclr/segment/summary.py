"""Plain-language sentences about a study's segmentation for its report.

Kept here, beside the metrics they read (``WORK/segmentation/metrics.json`` written by
:func:`cardioclr.segment.evaluate.evaluate`), so the report only places them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def _f(x: Any, digits: int = 3) -> str:
    return f"{x:.{digits}f}" if isinstance(x, (int, float)) and math.isfinite(x) else "n/a"


def _views_text(cfg: Mapping[str, Any]) -> str:
    """The test-time views of the training config ``cfg`` (segment/predict.py), in words."""
    # Configs without the key come from presets that mirrored (as segment/predict.load_model reads
    # model files without ``mirrored_training``).
    if float((cfg.get("augment") or {}).get("flip_prob", 0.5)) > 0:
        return "test-time mirroring"
    return "rotated test-time views (the network was trained without mirroring)"


def segmentation_notes(metrics: Mapping[str, Any], mask_source: str = "predicted") -> list[str]:
    """Sentences on how good the masks are, how they were made and what they were used for.

    ``metrics``: the segmentation ``metrics.json``; ``mask_source``: the study's ``mask_source``
    (``predicted`` or ``expert``).
    """
    notes: list[str] = []
    cfg = metrics.get("config") or {}
    net = cfg.get("network") or {}
    n_train = metrics.get("n_train")
    k = int(net.get("context_slices") or 0)
    arch = f"{net.get('arch', '?')} network" + (
        f" on 2.5D input (each slice with {k} neighbour{'s' if k > 1 else ''} on each side)" if k else "") + (
        " told the cardiac phase (ED/ES input channel)" if net.get("phase_channel") else "")
    notes.append(
        f"Quality: mean Dice {_f(metrics.get('mean_dice'))} and mean HD95 "
        f"{_f(metrics.get('mean_hd95'), 1)} mm on {metrics.get('n_test', '?')} held-out test patients"
        + (f" ({cfg.get('preset')} preset, {arch}, trained on {n_train} "
           f"patients in {_f(metrics.get('train_seconds'), 0)} s)" if cfg else "")
        + "; localise-then-segment with " + _views_text(cfg) + " and per-structure largest-component "
        "post-processing"
        + (f"; the end-systolic RV was removed from basal slices the ventricle had left (as ACDC's "
           f"experts draw it) in {metrics.get('basal_es_rv_patients', '?')} patients"
           if metrics.get("basal_es_rv") else "")
        + ".")
    sources = metrics.get("mask_sources") or {}
    if sources.get("out_of_fold"):
        notes.append(f"Cross-fitted masks: each of the {sources['out_of_fold']} training patients was "
                     "segmented by a fold model that never saw it, the other patients by the average "
                     "of the fold models, so cross-validation on masks is not optimistic.")
    else:
        notes.append("Training patients were segmented by the model trained on them (their masks are "
                     "better than a new patient's would be), so cross-validated scores on segmented "
                     "inputs and on clinical indices may be slightly optimistic; `segment train "
                     "--folds K` gives out-of-fold masks.")
    qf = metrics.get("quality_flag") or {}
    if qf.get("flagged"):
        f, u = qf["flagged"], qf.get("unflagged") or {}
        notes.append(
            f"Per-patient quality estimate ({qf.get('estimate', 'TTA disagreement')}, flag "
            f"low_confidence above {qf.get('threshold')}): {f.get('n', 0)} flagged test patients, mean "
            f"Dice {_f(f.get('mean_dice'))} vs {_f(u.get('mean_dice'))} for {u.get('n', 0)} others; "
            f"Spearman r with Dice {_f(qf.get('spearman_disagreement_vs_dice'), 2)}.")
    if mask_source == "expert":
        notes.append("Used for: nothing downstream; this study used the expert masks "
                     "(mask_source: expert).")
    else:
        notes.append("Used for: the segmented and heart-ROI network inputs (SimCLR pretraining and "
                     "fine-tuning), the clinical indices of the clinical-feature baseline and the "
                     "hybrid, QC flags, and the saliency-inside-heart scores.")
    return notes
