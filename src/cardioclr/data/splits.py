"""Patient-level splits: stratified by label, seeded, written once."""

from __future__ import annotations

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
            raise CardioclrError(f"class(es) {rare} have fewer than 2 patients; cannot stratify")
        train, test = train_test_split(ids, test_size=test_fraction, stratify=y, random_state=seed)
    else:
        raise CardioclrError(f"unknown split method {method!r}; choose random or official")
    train, test = sorted(train), sorted(test)
    y_train = [labels[p] for p in train]
    train_counts = Counter(y_train)
    if max(train_counts.values()) < 2:  # sklearn would raise a bare ValueError
        raise CardioclrError(f"too few patients: the training split has {dict(train_counts)} "
                             "patients per class; cross-validation folds need at least 2 training "
                             "patients in some class (add patients or lower --test-fraction)")
    k = max(2, min(n_folds, min(train_counts.values())))
    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    folds = [sorted(train[i] for i in val) for _, val in skf.split(train, y_train)]
    return {"method": method, "seed": seed, "test_fraction": test_fraction if method == "random"
            else None, "train": train, "test": test, "folds": folds}
