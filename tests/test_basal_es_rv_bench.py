"""benchmarks/basal_es_rv.py: the nested choice keeps a patient's masks from several cross-fits
on one side of each fold."""

from __future__ import annotations

import numpy as np

from conftest import load_benchmark


def test_nested_choice_never_scores_a_patient_with_a_choice_its_other_mask_made():
    bench = load_benchmark("basal_es_rv")
    pids = [f"p{i:02d}" for i in range(10)]
    keys = [(w, p) for w in ("a", "b") for p in pids]  # two cross-fits of the same 10 patients
    base = np.zeros(len(keys))
    # (0.9,) helps only patient p00, hugely; (0.5,) helps every other patient a little. A fold
    # that held out p00's mask of cross-fit "a" while fitting on its mask of "b" would choose
    # (0.9,) because of p00 and score p00 with it: a gain of at least 1/20 from a leak.
    scores = {(0.9,): np.array([1.0 if p == "p00" else 0.0 for _, p in keys]),
              (0.5,): np.array([0.0 if p == "p00" else 0.01 for _, p in keys])}
    for seed in range(10):
        assert bench.nested_choice_gain(keys, scores, base, seed) < 0.01
