"""SimCLR pretraining on every cine frame: the phantom's 4D cine, through prepare, into pretraining.

The paper pretrains on cine frames; ACDC's snapshot here has no 4D files, so the synthetic
phantom's cine (``write_synthetic_cohort(cine=True)``) stands in: every stored cine frame of every
slice of the train and unlabelled patients reaches SimCLR, and no slice of a test patient does.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cardioclr.data.prepare import PrepareConfig, prepare
from cardioclr.data.store import SliceStore
from cardioclr.ssl.data import load_arrays, load_patient
from cardioclr.ssl.pretrain import PretrainConfig, build_sample_lists, pretrain

SIZE = 32
UNLABELLED = "patient004"


@pytest.fixture(scope="module")
def cine_work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 phantoms with 4D cine (4 training, 2 testing), one training patient unlabelled."""
    from cardioclr.data.synthetic import write_synthetic_cohort

    root = tmp_path_factory.mktemp("cine_data") / "cohort"
    write_synthetic_cohort(root, n_patients=6, seed=3, cine=True, matrix=64, test_fraction=0.34)
    info = root / "training" / UNLABELLED / "Info.cfg"
    info.write_text("".join(x for x in info.read_text().splitlines(True) if not x.startswith("Group")))
    work = tmp_path_factory.mktemp("cine_work")
    # Hand-set splits (6 phantoms are too few to stratify): written first, prepare keeps them.
    train, test = ["patient001", "patient002", "patient003"], ["patient005", "patient006"]
    (work / "splits.json").write_text(json.dumps({
        "method": "official", "seed": 0, "test_fraction": None, "train": train, "test": test,
        "folds": [train[:1], train[1:2]], "unlabelled": [UNLABELLED]}))
    prepare(PrepareConfig(data=str(root), out=str(work), spacing_mm=4.0, image_size=SIZE, workers=1,
                          split="official", n_folds=2, unlabelled=True))
    return work


def _digests(images: np.ndarray) -> set[bytes]:
    return {hashlib.sha1(np.ascontiguousarray(i).tobytes()).digest() for i in images}


def test_prepare_stores_every_cine_frame(cine_work: Path) -> None:
    store = SliceStore(cine_work)
    for pid in store.patient_ids:
        n_frames = int(store.manifest.at[pid, "cine_frames"])
        assert n_frames >= 13  # the phantom's NbFrame (13-35)
        ps = store.load(pid, with_cine=True)
        assert ps.cine is not None and ps.cine.shape == (n_frames, ps.n_slices, SIZE, SIZE)


def test_pretraining_uses_every_cine_frame_of_train_and_unlabelled_never_test(cine_work: Path,
                                                                           tmp_path: Path) -> None:
    store = SliceStore(cine_work)
    splits = store.splits
    assert UNLABELLED in splits.unlabelled and splits.test
    cfg = PretrainConfig(work=str(cine_work), encoder="smallcnn", use_cine=True, val_fraction=0.3)
    sources, train, val = build_sample_lists(cfg, tmp_path / "pre")
    used = {r.patient_id for r in train + val}
    assert used == set(splits.train) | set(splits.unlabelled) and not used & set(splits.test)

    def frames_times_slices(refs: list) -> int:
        return sum(int(store.manifest.at[r.patient_id, "cine_frames"]) * store.load(r.patient_id).n_slices
                   for r in refs)

    with_cine = load_arrays(sources, train, "full", SIZE, use_cine=True)
    # ED and ES are cine frames too: each slice of each of the t frames exactly once.
    assert len(with_cine) == frames_times_slices(train)
    ed_es_only = load_arrays(sources, train, "full", SIZE, use_cine=False)
    assert len(ed_es_only) == sum(2 * store.load(r.patient_id).n_slices for r in train)
    assert len(with_cine) > 5 * len(ed_es_only)
    # No slice of a test patient, by content (not only by id).
    seen = _digests(with_cine.images) | _digests(load_arrays(sources, val, "full", SIZE).images)
    for pid in splits.test:
        test_slices, _ = load_patient(store, pid, "full", SIZE, "expert", use_cine=True)
        assert not seen & _digests(test_slices)


@pytest.mark.slow
def test_pretrain_run_reports_the_cine_slices(cine_work: Path, tmp_path: Path) -> None:
    cfg = PretrainConfig(work=str(cine_work), encoder="smallcnn", out=str(tmp_path / "pre"), batch_size=16,
                         max_epochs=1, patience=1, image_size=SIZE, accelerator="cpu", val_fraction=0.3,
                         limit_train_batches=2, progress_bar=False, use_cine=True)
    metrics = pretrain(cfg)
    store = SliceStore(cine_work)
    _, train, _ = build_sample_lists(cfg, tmp_path / "pre")
    assert metrics["n_train_images"] == sum(int(store.manifest.at[r.patient_id, "cine_frames"])
                                            * store.load(r.patient_id).n_slices for r in train)
    assert metrics["config"]["use_cine"] is True


def test_cine_positives_are_the_same_slice_in_other_frames_of_one_patient(cine_work: Path,
                                                                         tmp_path: Path) -> None:
    """--positives cine/anatomy on a stored 4D cine: partners are other frames of the same slice."""
    from cardioclr.ssl.positives import FIRST_CINE, PositivePairs, PositiveSpec

    store = SliceStore(cine_work)
    cfg = PretrainConfig(work=str(cine_work), encoder="smallcnn", use_cine=True, val_fraction=0.3)
    sources, train, _ = build_sample_lists(cfg, tmp_path / "pre")
    arrays = load_arrays(sources, train, "full", SIZE, use_cine=True)
    meta = arrays.meta
    assert (meta.frame >= FIRST_CINE).any()
    for name in ("cine", "anatomy"):
        pairs = PositivePairs(arrays.images, None, meta, PositiveSpec(name, 0.25))
        index = torch.arange(len(arrays))
        rows = pairs.table.draw(index, torch.Generator().manual_seed(0)).numpy()
        assert np.array_equal(meta.patient[rows], meta.patient)  # never another patient
        assert {arrays.patients[int(c)].patient_id for c in meta.patient} & set(store.splits.test) == set()
        moved = rows != index.numpy()
        assert moved.mean() > 0.5  # many frames per slice: the partner is rarely the slice itself
        if name == "cine":
            assert np.array_equal(meta.z[rows], meta.z)  # the same slice position ...
            assert (meta.frame[rows] != meta.frame)[moved].all()  # ... in another frame
        else:
            assert (np.abs(meta.position[rows] - meta.position) <= 0.25 + 1e-6).all()
