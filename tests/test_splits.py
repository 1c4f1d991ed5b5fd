"""Patient-level splits: stratified, seeded, disjoint, folds partition train, official subsets."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from cardioclr.data.prepare import PrepareConfig, prepare
from cardioclr.data.splits import make_splits
from cardioclr.data.store import read_splits
from cardioclr.errors import CardioclrError
from conftest import write_tiny_acdc

# Imbalanced, like real small cohorts.
COUNTS = {"DCM": 13, "HCM": 7, "MINF": 22, "NOR": 5, "RV": 3}


def _labels(counts: dict[str, int] = COUNTS) -> dict[str, str]:
    # Interleave classes so that a split by order would not be stratified by accident.
    out, i = {}, 0
    for n_round in range(max(counts.values())):
        for c, n in counts.items():
            if n_round < n:
                out[f"p{i:03d}"] = c
                i += 1
    return out


def _assert_stratified(subset: list[str], labels: dict[str, str], fraction: float) -> None:
    total, got = Counter(labels.values()), Counter(labels[p] for p in subset)
    for c, n in total.items():
        assert abs(got[c] - fraction * n) <= 1, (c, got[c], fraction * n)


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_random_split_is_stratified_disjoint_and_complete(seed: int) -> None:
    labels = _labels()
    s = make_splits(labels, {}, "random", test_fraction=0.3, n_folds=5, seed=seed)
    train, test = set(s["train"]), set(s["test"])
    assert not train & test
    assert train | test == set(labels)
    assert len(test) == pytest.approx(0.3 * len(labels), abs=1)
    _assert_stratified(s["test"], labels, 0.3)
    assert (s["method"], s["seed"], s["test_fraction"]) == ("random", seed, 0.3)


def test_folds_partition_train_and_are_stratified() -> None:
    labels = _labels()
    s = make_splits(labels, {}, "random", n_folds=5, seed=3)
    folds = s["folds"]
    # The smallest class (RV, 3 patients) has 2 in train: k is reduced to 2 so every fold has one.
    assert len(folds) == min(5, Counter(labels[p] for p in s["train"])["RV"])
    flat = [p for f in folds for p in f]
    assert len(flat) == len(set(flat)) and set(flat) == set(s["train"])
    train_labels = {p: labels[p] for p in s["train"]}
    for f in folds:
        _assert_stratified(f, train_labels, 1 / len(folds))


def test_five_folds_when_every_class_is_large_enough() -> None:
    labels = _labels({"ICM": 40, "NICM": 25})
    s = make_splits(labels, {}, "random", n_folds=5, seed=0)
    assert len(s["folds"]) == 5
    assert sorted(p for f in s["folds"] for p in f) == s["train"]


def test_seeded() -> None:
    labels = _labels()
    a = make_splits(labels, {}, "random", seed=11)
    assert make_splits(dict(reversed(list(labels.items()))), {}, "random", seed=11) == a
    b = make_splits(labels, {}, "random", seed=12)
    assert a["test"] != b["test"]
    assert a["folds"] != b["folds"]


def test_official_uses_dataset_partition() -> None:
    labels = _labels({"A": 4, "B": 4})
    subsets = {p: ("testing" if i % 4 == 0 else "training") for i, p in enumerate(labels)}
    s = make_splits(labels, subsets, "official", n_folds=2, seed=0)
    assert s["test"] == sorted(p for p in labels if subsets[p] == "testing")
    assert s["train"] == sorted(p for p in labels if subsets[p] == "training")
    assert s["test_fraction"] is None and s["method"] == "official"


@pytest.mark.parametrize(("labels", "subsets", "method", "message"), [
    ({"a": "X", "b": "X", "c": "X"}, {}, "random", "at least two classes"),
    ({"a": "X", "b": "X", "c": "Y"}, {}, "random", r"\['Y'\] have fewer than 2"),
    ({"a": "X", "b": "Y"}, {"a": "training", "b": "training"}, "official", "both training/"),
    ({"a": "X", "b": "Y"}, {}, "kfold", "unknown split method"),
    ({"a": "X", "b": "X", "c": "Y", "d": "Y"}, {}, "random", "too few patients"),
])
def test_split_errors_are_clear(labels: dict[str, str], subsets: dict[str, str], method: str,
                                message: str) -> None:
    with pytest.raises(CardioclrError, match=message):
        make_splits(labels, subsets, method, test_fraction=0.5, seed=0)


def test_prepare_official_split_and_unlabelled(tmp_path: Path) -> None:
    data = tmp_path / "data"
    train_dirs = write_tiny_acdc(data, n_per_class=2, groups=("DCM", "NOR"), subset="training")
    test_dirs = write_tiny_acdc(data, n_per_class=1, groups=("DCM", "NOR"), subset="testing",
                                start_index=101, seed=1)
    # An unlabelled extra patient (no Group): allowed with unlabelled=True, listed apart.
    extra = write_tiny_acdc(data, n_per_class=1, groups=("NOR",), subset="training",
                            start_index=201, seed=2)[0]
    cfg = extra / "Info.cfg"
    cfg.write_text(cfg.read_text().replace("Group: NOR", "Group: "))
    work = tmp_path / "work"
    prepare(PrepareConfig(data=str(data), out=str(work), spacing_mm=3.0, image_size=32,
                          split="official", workers=1, unlabelled=True, n_folds=2))
    s = read_splits(work)
    assert s.method == "official"
    assert s.train == sorted(d.name for d in train_dirs)
    assert s.test == sorted(d.name for d in test_dirs)
    assert s.unlabelled == [extra.name]
    assert sorted(p for f in s.folds for p in f) == s.train
    assert s.fold_train(0) == sorted(set(s.train) - set(s.folds[0]))
    raw = json.loads((work / "splits.json").read_text())
    assert set(raw) >= {"train", "test", "folds", "unlabelled", "seed", "method"}


def test_prepare_official_without_testing_folder_fails(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_tiny_acdc(data, n_per_class=2, groups=("DCM", "NOR"))
    with pytest.raises(CardioclrError, match="both training/ and testing/"):
        prepare(PrepareConfig(data=str(data), out=str(tmp_path / "w"), image_size=32,
                              split="official", workers=1))
    assert not (tmp_path / "w" / "dataset.json").exists()
    assert not (tmp_path / "w" / "store").exists()
