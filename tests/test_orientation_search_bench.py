"""benchmarks/orientation_search.py: the summary of disagreement per orientation (the
segmentation itself is the real model's in the benchmark)."""

from __future__ import annotations

from conftest import load_benchmark

_NAMES = ["as_stored", "turned_90", "turned_180", "turned_270", "transposed", "mirrored_up_down",
          "anti_transposed", "mirrored_left_right"]


def _rows(best: dict[str, str]) -> list[dict[str, object]]:
    """Disagreement 0.02 in each patient's ``best`` orientation, 0.2 elsewhere; Dice follows."""
    return [{"patient_id": pid, "orientation": o, "disagreement": 0.02 if o == b else 0.2,
             "mean_dice": 0.9 if o == b else 0.6} for pid, b in best.items() for o in _NAMES]


def test_counts_patients_whose_stored_orientation_agrees_best_and_names_the_others():
    bench = load_benchmark("orientation_search")
    s = bench.summarise(_rows({"p1": "as_stored", "p2": "as_stored", "p3": "turned_90"}), flag=0.04)
    assert s["patients"] == 3 and s["stored_agrees_best"] == 2
    assert s["chosen_orientations"] == {"as_stored": 2, "turned_90": 1}
    assert s["predict_as_stored"] == {"reoriented": 1, "mean_dice": 0.9}  # p3 searched, p1/p2 kept
    assert s["stored_above_flag"] == 1  # p3's stored orientation disagrees at 0.2
    assert abs(s["mean_dice_found_orientation"] - 0.9) < 1e-9  # the search takes each best one
    assert abs(s["mean_dice_as_stored"] - (0.9 + 0.9 + 0.6) / 3) < 1e-9
    assert abs(s["margin_to_runner_up"]["min"] - (0.02 - 0.2)) < 1e-9
