"""The report's sentences about the segmentation: quality, provenance of masks, their use."""

from __future__ import annotations

from cardioclr.segment.summary import segmentation_notes

METRICS = {"mean_dice": 0.9012, "mean_hd95": 4.21, "n_test": 30, "n_train": 63, "train_seconds": 1680,
           "config": {"preset": "cpu", "network": {"arch": "unet"}},
           "quality_flag": {"threshold": 0.1, "estimate": "TTA disagreement",
                            "flagged": {"n": 3, "mean_dice": 0.80}, "unflagged": {"n": 27, "mean_dice": 0.91},
                            "spearman_disagreement_vs_dice": -0.6}}


def test_notes_state_quality_use_and_in_sample_training_masks():
    text = " ".join(segmentation_notes(METRICS))
    assert "mean Dice 0.901" in text and "4.2 mm" in text and "30 held-out" in text
    assert "optimistic" in text  # single model: training patients' masks are in-sample
    assert "clinical indices" in text and "segmented and heart-ROI" in text
    assert "3 flagged test patients" in text and "0.800 vs 0.910" in text


def test_notes_say_masks_are_out_of_fold_when_cross_fitted_and_unused_with_expert_masks():
    text = " ".join(segmentation_notes({**METRICS, "mask_sources": {"out_of_fold": 70, "ensemble": 30}},
                                       mask_source="expert"))
    assert "never saw it" in text and "may be slightly optimistic" not in text
    assert "70 training patients" in text
    assert "expert masks" in text


def test_notes_name_the_2_5d_input_only_when_the_network_has_one():
    assert "2.5D" not in " ".join(segmentation_notes(METRICS))
    two_five = {**METRICS, "config": {"preset": "cpu", "network": {"arch": "unet", "context_slices": 1}}}
    assert "unet network on 2.5D input (each slice with 1 neighbour on each side)" in " ".join(
        segmentation_notes(two_five))
    assert "cardiac phase" not in " ".join(segmentation_notes(two_five))
    phase = {**METRICS, "config": {"preset": "cpu", "network": {"arch": "unet", "phase_channel": True}}}
    assert "unet network told the cardiac phase (ED/ES input channel)" in " ".join(segmentation_notes(phase))


def test_notes_say_when_the_basal_es_rv_rule_changed_masks():
    assert "basal slices" not in " ".join(segmentation_notes(METRICS))
    assert "basal slices" not in " ".join(segmentation_notes({**METRICS, "basal_es_rv": False}))
    text = " ".join(segmentation_notes({**METRICS, "basal_es_rv": True, "basal_es_rv_patients": 41}))
    assert "removed from basal slices" in text and "in 41 patients" in text


def test_notes_name_the_test_time_views_the_model_was_trained_for():
    assert "test-time mirroring" in " ".join(segmentation_notes(METRICS))  # older configs mirrored
    one = {**METRICS, "config": {"preset": "cpu", "network": {"arch": "unet"}, "augment": {"flip_prob": 0.0}}}
    text = " ".join(segmentation_notes(one))
    assert "rotated test-time views" in text and "test-time mirroring" not in text
