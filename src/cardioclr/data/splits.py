"""Patient-level splits: stratified by label, seeded, written once."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from sklearn.model_selection import StratifiedKFold, train_test_split

from cardioclr.errors import CardioclrError


def make_splits(
    labels: dict[str, str],
    subsets: dict[str, str | None],
    method: str = "random",
    test_fraction: float = 0.3,
    n_folds: int = 5,
    seed: int = 0,
) -> dict[str, Any]:
    """Split labelled patients into ``train``/``test`` and cross-validation ``folds`` of train.

    ``labels``: patient -> class name (labelled patients only); ``subsets``: patient -> the
    dataset's own partition (``training``/``testing``/None). ``method='random'`` draws a
    stratified ``test_fraction`` (the paper: 70/30); ``'official'`` uses the dataset's own
    partition. Folds are stratified; k is reduced when a class has fewer than ``n_folds``
    training patients. Returns the JSON-ready dict stored in ``splits.json``.
    """
    ids = sorted(labels)
    if method == "official":
        train = [p for p in ids if subsets.get(p) == "training"]
        test = [p for p in ids if subsets.get(p) == "testing"]
        if not train or not test:
            raise CardioclrError("--split official needs labelled patients in both training/ and "
                                 f"testing/ (found {len(train)} and {len(test)})")
    elif method == "random":
        y = [labels[p] for p in ids]
        counts = Counter(y)
        if len(counts) < 2:
            raise CardioclrError(f"need at least two classes to split, found {sorted(counts)}")
        if min(counts.values()) < 2:
            rare = [c for c, n in counts.items() if n < 2]
            raise CardioclrError(f"class(es) {rare} have fewer than 2 patients; cannot stratify "
                                 "(add patients of that class, or leave it out with --classes)")
        _check_random_split_sizes(len(ids), counts, test_fraction)
        train, test = train_test_split(ids, test_size=test_fraction, stratify=y, random_state=seed)
    else:
        raise CardioclrError(f"unknown split method {method!r}; choose random or official")
    train, test = sorted(train), sorted(test)
    y_train = [labels[p] for p in train]
    train_counts = Counter(y_train)
    if max(train_counts.values()) < 2:  # sklearn would raise a bare ValueError
        advice = ("lower --test-fraction" if method == "random" else
                  "move patients from testing/ to training/ or use --split random")
        raise CardioclrError(f"too few patients: the training split has {dict(train_counts)} "
                             "patients per class; cross-validation folds need at least 2 training "
                             f"patients in some class (add patients or {advice})")
    k = max(2, min(n_folds, min(train_counts.values())))
    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    folds = [sorted(train[i] for i in val) for _, val in skf.split(train, y_train)]
    return {"method": method, "seed": seed, "test_fraction": test_fraction if method == "random"
            else None, "train": train, "test": test, "folds": folds}


def _check_random_split_sizes(n: int, counts: Counter[str], test_fraction: float) -> None:
    """Refuse, with advice that works, a stratified split scikit-learn would reject.

    A stratified test split needs one patient per class (t >= k), its training split one per
    class too, plus a second patient in some class for the cross-validation folds
    (n - t >= k + 1). scikit-learn draws ``t = ceil(test_fraction * n)`` test patients.
    """
    k = len(counts)
    if not 0.0 < test_fraction < 1.0:
        raise CardioclrError(f"--test-fraction must be between 0 and 1, got {test_fraction}")
    if n < 2 * k + 1:
        raise CardioclrError(
            f"too few patients for a stratified train/test split: {n} labelled patients in {k} "
            f"classes ({dict(sorted(counts.items()))}); it needs at least {2 * k + 1} (one per "
            "class in test, one per class plus one in train for cross-validation). Add patients, "
            "or use --split official with the dataset's own training/testing partition")
    t = math.ceil(test_fraction * n)
    if k <= t <= n - k - 1:
        return
    # Advice in two decimals, checked with the very formula scikit-learn uses.
    fits = [c / 100 for c in range(1, 100) if k <= math.ceil(c / 100 * n) <= n - k - 1]
    low, high = (fits[0], fits[-1]) if fits else (k / n, (n - k - 1) / n)
    raise CardioclrError(
        f"--test-fraction {test_fraction:g} puts {t} of {n} patients in test; with {k} classes "
        f"the test split needs {k} to {n - k - 1} patients: use --test-fraction between "
        f"{low:.2f} and {high:.2f}")
