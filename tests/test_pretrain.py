"""SimCLR pretraining: sample lists (never test), data loading, module, end-to-end CLI, checkpoint API."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from cardioclr.data.augment import AugmentConfig, augment_batch
from cardioclr.data.prepare import PrepareConfig, prepare
from cardioclr.data.store import SliceStore
from cardioclr.errors import CardioclrError, DataError
from cardioclr.models.checkpoint import ENCODER_FORMAT, load_encoder_weights, read_encoder_file, save_encoder
from cardioclr.models.encoders import build_encoder
from cardioclr.ssl.data import (
    MAIN,
    PatientRef,
    SliceDataset,
    Source,
    check_no_test,
    collate_slices,
    load_arrays,
    load_patient,
    resolve_extras,
    split_validation,
)
from cardioclr.ssl.pretrain import PretrainConfig, build_sample_lists, pretrain, run_key
from cardioclr.ssl.simclr import SimCLRModule
from conftest import write_tiny_acdc

SIZE = 32  # network input side in these tests: small enough for a fast CPU step


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # The CI box is shared by several jobs: two OpenMP threads on two busy cores spin-wait
    # ~40x slower than one thread.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _cfg(work: Path, out: Path, **kw: object) -> PretrainConfig:
    base = {"encoder": "smallcnn", "input_mode": "segmented", "masks": "expert", "image_size": SIZE,
            "batch_size": 16, "max_epochs": 2, "patience": 5, "accelerator": "cpu",
            "limit_train_batches": 2, "progress_bar": False}
    base.update(kw)
    return PretrainConfig(work=str(work), out=str(out), **base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def run(tiny_work: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[PretrainConfig, dict]:
    """One tiny end-to-end pretraining (smallcnn, segmented/expert, 32 px, 2 epochs x 2 batches)."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("pretrain") / "smallcnn-segmented"
    cfg = _cfg(tiny_work, out)
    return cfg, pretrain(cfg)


# --------------------------------------------------------------------------------------------
# Which patients
# --------------------------------------------------------------------------------------------


def test_sample_lists_exclude_test_patients(tiny_work: Path, tmp_path: Path) -> None:
    store = SliceStore(tiny_work)
    sources, train, val = build_sample_lists(_cfg(tiny_work, tmp_path / "o"), tmp_path / "o")
    test = set(store.splits.test)
    assert test  # the fixture has a test split, so the check below can fail
    ids = {r.patient_id for r in train + val}
    assert not ids & test
    assert {r.patient_id for r in val} <= set(store.splits.train)
    assert not {r.patient_id for r in val} & {r.patient_id for r in train}
    assert ids == set(store.splits.train) | set(store.splits.unlabelled)
    assert [s.name for s in sources] == [MAIN]
    with pytest.raises(CardioclrError, match="test patients"):
        check_no_test([PatientRef(MAIN, store.splits.test[0])], store)
    # A test ID under another source name (an extra dataset) is a different patient.
    check_no_test([PatientRef("extra:x", store.splits.test[0])], store)


def test_validation_split_is_by_patient_and_seeded() -> None:
    ids = [f"p{i:02d}" for i in range(20)]
    train, val = split_validation(ids, 0.1, seed=1)
    assert len(val) == 2 and not set(train) & set(val) and sorted(train + val) == ids
    assert split_validation(ids, 0.1, seed=1) == (train, val)
    assert split_validation(ids, 0.1, seed=2) != (train, val)
    assert len(split_validation(ids[:2], 0.1, 0)[1]) == 1
    with pytest.raises(CardioclrError, match="at least 2"):
        split_validation(ids[:1], 0.1, 0)


# --------------------------------------------------------------------------------------------
# Loading and augmenting slices
# --------------------------------------------------------------------------------------------


def test_load_patient_modes(tiny_work: Path) -> None:
    store = SliceStore(tiny_work)
    pid = store.splits.train[0]
    z = store.load(pid).n_slices
    full, no_heart = load_patient(store, pid, "full", SIZE, "expert")
    assert full.shape == (2 * z, SIZE, SIZE) and full.dtype == np.float16 and no_heart is None
    seg, hearts = load_patient(store, pid, "segmented", SIZE, "expert")
    assert hearts is not None and hearts.shape == seg.shape and hearts.dtype == np.uint8
    assert hearts.reshape(len(hearts), -1).any(axis=1).all()  # empty-heart slices are dropped
    assert len(seg) <= 2 * z
    roi, _ = load_patient(store, pid, "roi", SIZE, "expert")
    assert roi.shape == full.shape and not np.allclose(roi, full, atol=1e-2)  # zoomed on the heart


def _strip_groups(root: Path) -> None:
    """Make a tiny ACDC folder unlabelled (no Group line), as extra pretraining data is."""
    for info in root.rglob("Info.cfg"):
        info.write_text("".join(x for x in info.read_text().splitlines(True) if not x.startswith("Group")))


def test_cine_frames_are_used_without_duplicating_ed_es(tmp_path: Path) -> None:
    import nibabel as nib

    raw = tmp_path / "cine"
    (d,) = write_tiny_acdc(raw, n_per_class=1, seed=4, groups=("NOR",))
    _strip_groups(raw)
    ed_file, es_file = sorted(d.glob("*_frame??.nii.gz"))
    ed, es = (np.asarray(nib.load(f).dataobj) for f in (ed_file, es_file))  # (x, y, z)
    # 4 cine frames: ED, a blend, ES, another blend -> 2 new frames beyond ED and ES.
    frames = [ed, (0.5 * ed + 0.5 * es).astype(ed.dtype), es, (0.3 * ed + 0.7 * es).astype(ed.dtype)]
    cine = nib.Nifti1Image(np.stack(frames, axis=-1), nib.load(ed_file).affine)
    nib.save(cine, str(d / f"{d.name}_4d.nii.gz"))
    work = tmp_path / "cine_work"
    prepare(PrepareConfig(data=str(raw), out=str(work), spacing_mm=3.0, image_size=64, unlabelled=True,
                          workers=1))
    store = SliceStore(work)
    z = store.load(d.name).n_slices
    with_cine, _ = load_patient(store, d.name, "full", SIZE, "expert", use_cine=True)
    without, _ = load_patient(store, d.name, "full", SIZE, "expert", use_cine=False)
    assert len(without) == 2 * z and len(with_cine) == 4 * z
    np.testing.assert_array_equal(with_cine[: 2 * z], without)
    # Cine frames in segmented mode use the union of the ED and ES hearts.
    seg, hearts = load_patient(store, d.name, "segmented", SIZE, "expert", use_cine=True)
    assert hearts is not None and len(seg) > len(load_patient(store, d.name, "segmented", SIZE, "expert",
                                                              use_cine=False)[0])


def test_segmented_views_are_masked(tiny_work: Path) -> None:
    store = SliceStore(tiny_work)
    refs = [PatientRef(MAIN, p) for p in store.splits.train[:3]]
    arrays = load_arrays([Source(MAIN, tiny_work, "expert")], refs, "segmented", SIZE)
    ds = SliceDataset(arrays.images, arrays.hearts)
    batch = collate_slices(ds.__getitems__(list(range(min(24, len(ds))))))
    assert batch["image"].shape == (min(24, len(ds)), SIZE, SIZE) and "heart" in batch
    cfg = dataclasses.replace(AugmentConfig(), p_intensity=1.0, brightness=0.4, p_noise=1.0)
    views, warped = augment_batch(batch["image"], batch["heart"], "segmented", cfg,
                                  torch.Generator().manual_seed(0))
    assert warped is not None and (warped == 0).any()
    assert (views[warped == 0] == 0).all()  # nothing outside the (augmented) heart
    assert (views[warped == 1] != 0).float().mean() > 0.9
    # The module's own view maker does the same: compare with full-mode views of the batch.
    module = SimCLRModule("smallcnn", "segmented", SIZE)
    v0, v1 = module.make_views(batch, torch.Generator().manual_seed(1))
    assert v0.shape == (len(batch["image"]), 1, SIZE, SIZE)
    assert (v0 == 0).float().mean() > 0.3  # most of the field of view is background


def test_validation_loss_is_reproducible() -> None:
    torch.manual_seed(0)
    module = SimCLRModule("smallcnn", "full", SIZE).eval()
    batch = {"image": torch.rand(8, SIZE, SIZE).half()}
    module.log = lambda *a, **k: None  # type: ignore[method-assign]  # no trainer attached
    with torch.no_grad():
        a = module.validation_step(batch, 0)
        b = module.validation_step(batch, 0)
        c = module.validation_step(batch, 1)
    assert a.item() == b.item() and a.item() != c.item()


# --------------------------------------------------------------------------------------------
# End to end
# --------------------------------------------------------------------------------------------


def test_end_to_end_outputs(run: tuple[PretrainConfig, dict]) -> None:
    cfg, metrics = run
    out = Path(cfg.out or "")
    for name in ("encoder.pt", "metrics.json", "config.yaml", "versions.json",
                 "checkpoints/last.ckpt", "checkpoints/best.ckpt", "logs/csv/metrics.csv"):
        assert (out / name).is_file(), name
    assert any((out / "logs" / "tensorboard").iterdir())
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["config"] == run_key(cfg) and metrics["epochs"] == 2
    assert np.isfinite(on_disk["best_val_loss"]) and on_disk["best_val_loss"] > 0
    assert on_disk["images_seen"] == 2 * 2 * 16  # epochs x limited batches x global batch
    assert on_disk["n_train_images"] > on_disk["n_val_images"] > 0
    assert on_disk["images_per_second"] > 0 and on_disk["train_seconds"] > 0
    assert yaml.safe_load((out / "config.yaml").read_text())["encoder"] == "smallcnn"
    csv = (out / "logs" / "csv" / "metrics.csv").read_text()
    assert "val/loss" in csv and "train/loss_step" in csv
    # The label-free features of the hybrid baseline, summarised in metrics.json.
    assert (out / "deep_features.csv").is_file()
    assert on_disk["deep_features"]["n_features"] == 2 * 256
    assert on_disk["deep_features"]["input_mode"] == "segmented"


# --------------------------------------------------------------------------------------------
# SimCLR features of every patient (the hybrid baseline's deep features)
# --------------------------------------------------------------------------------------------


def _relabelled_copy(work: Path, dest: Path) -> Path:
    """A copy of ``work`` whose every patient has another label (store files shared by link)."""
    import pandas as pd

    dest.mkdir()
    for item in work.iterdir():
        if item.name != "manifest.csv":
            (dest / item.name).symlink_to(item)
    df = pd.read_csv(work / "manifest.csv", dtype={"patient_id": str, "label": str})
    classes = json.loads((work / "dataset.json").read_text())["classes"]
    df["label_index"] = (df["label_index"] + 1) % len(classes)
    df["label"] = [classes[i] for i in df["label_index"]]
    df.to_csv(dest / "manifest.csv", index=False)
    return dest


def test_features_one_row_per_patient_from_encoder_only(run: tuple[PretrainConfig, dict],
                                                        tmp_path: Path) -> None:
    import pandas as pd

    from cardioclr.ssl.features import write_simclr_features

    cfg, _ = run
    out = Path(cfg.out or "")
    store = SliceStore(cfg.work)
    df = pd.read_csv(out / "deep_features.csv", dtype={"patient_id": str})
    # Every stored patient (train and test alike), [ED, ES] x D = 256 features, all finite.
    assert sorted(df["patient_id"]) == sorted(store.patient_ids)
    assert set(store.splits.test) <= set(df["patient_id"]) and store.splits.test
    assert list(df.columns) == ["patient_id"] + [f"f{i}" for i in range(512)]
    feats = df.drop(columns="patient_id").to_numpy()
    assert np.isfinite(feats).all() and feats.std(axis=0).max() > 0  # patients differ

    # The same encoder on a store whose labels all changed: byte-identical features.
    relabelled = _relabelled_copy(Path(cfg.work), tmp_path / "relabelled")
    pid = store.splits.train[0]
    assert SliceStore(relabelled).label_index(pid) != store.label_index(pid)
    write_simclr_features(out / "encoder.pt", relabelled, tmp_path / "again.csv")
    assert (tmp_path / "again.csv").read_bytes() == (out / "deep_features.csv").read_bytes()

    # ... while other encoder weights give other features: they do come from encoder.pt.
    other, dim = build_encoder("smallcnn")
    save_encoder(tmp_path / "other.pt", other, "smallcnn", dim, "segmented", SIZE,
                 mask_source="expert")
    write_simclr_features(tmp_path / "other.pt", cfg.work, tmp_path / "other.csv")
    assert (tmp_path / "other.csv").read_bytes() != (out / "deep_features.csv").read_bytes()


def test_features_match_the_encoder_on_the_classifier_inputs(run: tuple[PretrainConfig, dict]
                                                             ) -> None:
    import pandas as pd

    from cardioclr.data.pairs import InputSpec, load_patient_inputs, network_inputs

    cfg, _ = run
    out = Path(cfg.out or "")
    encoder, _ = build_encoder("smallcnn")
    encoder.load_state_dict(load_encoder_weights(out / "encoder.pt", "smallcnn"))
    pid = SliceStore(cfg.work).splits.test[0]
    pi = load_patient_inputs(SliceStore(cfg.work), pid, InputSpec("segmented", "expert", SIZE))
    ed, es = network_inputs(torch.from_numpy(pi.images), torch.from_numpy(pi.hearts).float(),
                            "segmented")
    with torch.no_grad():
        expected = torch.cat([encoder.eval()(ed), encoder(es)], dim=1).mean(dim=0).numpy()
    df = pd.read_csv(out / "deep_features.csv", dtype={"patient_id": str}).set_index("patient_id")
    np.testing.assert_allclose(df.loc[pid].to_numpy(), expected, rtol=1e-5, atol=1e-6)


def test_skipped_run_writes_missing_features(run: tuple[PretrainConfig, dict], tmp_path: Path) -> None:
    cfg, _ = run
    out = tmp_path / "copy"
    shutil.copytree(Path(cfg.out or ""), out)
    (out / "deep_features.csv").unlink()  # a run finished before features were written
    again = pretrain(dataclasses.replace(cfg, out=str(out)))
    assert again["skipped"] is True
    assert (out / "deep_features.csv").read_bytes() == (
        Path(cfg.out or "") / "deep_features.csv").read_bytes()


def test_encoder_file_loads_strictly(run: tuple[PretrainConfig, dict]) -> None:
    cfg, _ = run
    path = Path(cfg.out or "") / "encoder.pt"
    payload = read_encoder_file(path)
    assert payload["format"] == ENCODER_FORMAT and payload["encoder"] == "smallcnn"
    assert payload["feature_dim"] == 256 and payload["input_mode"] == "segmented"
    assert payload["image_size"] == SIZE and payload["mask_source"] == "expert"
    weights = load_encoder_weights(path, "smallcnn")
    encoder, _ = build_encoder("smallcnn")
    fresh = {k: v.clone() for k, v in encoder.state_dict().items()}
    encoder.load_state_dict(weights, strict=True)
    # It is the best checkpoint's encoder, and training changed it.
    best_ckpt = Path(cfg.out or "") / "checkpoints" / "best.ckpt"
    best = torch.load(best_ckpt, map_location="cpu", weights_only=True)["state_dict"]
    torch.testing.assert_close(weights["features.0.weight"], best["encoder.features.0.weight"])
    assert not torch.equal(weights["features.0.weight"], fresh["features.0.weight"])
    with torch.no_grad():
        assert encoder.eval()(torch.rand(2, 1, SIZE, SIZE)).shape == (2, 256)


def test_wrong_encoder_name_is_a_clear_error(run: tuple[PretrainConfig, dict]) -> None:
    path = Path(run[0].out or "") / "encoder.pt"
    with pytest.raises(DataError, match=r"encoder\.pt.*'smallcnn' encoder, not 'vgg16'"):
        load_encoder_weights(path, "vgg16")
    with pytest.raises(DataError, match="not a cardioclr encoder file"):
        load_encoder_weights(path.parent / "checkpoints" / "last.ckpt", "smallcnn")
    with pytest.raises(DataError, match="does not exist"):
        load_encoder_weights(path.parent / "nope.pt", "smallcnn")


def test_same_config_is_skipped_other_config_refused(run: tuple[PretrainConfig, dict]) -> None:
    cfg, _ = run
    out = Path(cfg.out or "")
    mtime = (out / "encoder.pt").stat().st_mtime_ns
    again = pretrain(dataclasses.replace(cfg, workers=0, progress_bar=True))  # hardware-only change
    assert again["skipped"] is True and (out / "encoder.pt").stat().st_mtime_ns == mtime
    with pytest.raises(CardioclrError, match="lr: 0.0001 -> 0.001"):
        pretrain(dataclasses.replace(cfg, lr=1e-3))


def test_resume_continues_from_last_checkpoint(run: tuple[PretrainConfig, dict], tmp_path: Path) -> None:
    cfg, first = run
    out = tmp_path / "resumed"
    shutil.copytree(Path(cfg.out or ""), out)
    # A longer run in the same folder resumes from last.ckpt (epoch 2) instead of restarting.
    metrics = pretrain(dataclasses.replace(cfg, out=str(out), max_epochs=3))
    assert metrics["epochs"] == 3 and metrics["images_seen"] == 3 * 2 * 16
    assert metrics["images_seen"] - first["images_seen"] == 2 * 16  # one new epoch only
    # The first session's CSV log survives the resume (Lightning would delete it).
    kept = (out / "logs" / "csv" / "metrics.before-1.csv").read_text()
    assert kept == (Path(cfg.out or "") / "logs" / "csv" / "metrics.csv").read_text()


def test_full_mode_cli(tiny_work: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from cardioclr.ssl import cli

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    out = tmp_path / "cli"
    args = parser.parse_args(["pretrain", str(tiny_work), "--encoder", "smallcnn", "--input", "full",
                              "--image-size", str(SIZE), "--batch-size", "32", "--max-epochs", "1",
                              "--accelerator", "cpu", "--out", str(out), "--cosine",
                              "--precision", "bf16-mixed"])
    assert args.func(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["epochs"] == 1 and summary["n_train_images"] > 0
    assert read_encoder_file(out / "encoder.pt")["input_mode"] == "full"
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["cosine"] is True and config["batch_size"] == 32
    # --precision reaches the trainer (auto would be 32-true on a CPU).
    assert json.loads((out / "metrics.json").read_text())["precision"] == "bf16-mixed"
    with pytest.raises(SystemExit):
        parser.parse_args(["pretrain", str(tiny_work), "--encoder", "nope", "--input", "full"])


# --------------------------------------------------------------------------------------------
# Extra data
# --------------------------------------------------------------------------------------------


def test_extra_raw_dataset_is_prepared_and_used(tiny_work: Path, tmp_path: Path) -> None:
    raw = tmp_path / "more"
    write_tiny_acdc(raw, n_per_class=1, seed=9, groups=("NOR", "DCM"))
    _strip_groups(raw)
    out = tmp_path / "o"
    sources, train, val = build_sample_lists(_cfg(tiny_work, out, extra=(str(raw),)), out)
    assert (out / "extra" / "more" / "dataset.json").is_file()
    extra = [r for r in train if r.source == "extra:more"]
    assert sorted(r.patient_id for r in extra) == ["patient001", "patient002"]  # all, no split
    assert all(r.source == MAIN for r in val)
    arrays = load_arrays(sources, extra, "segmented", SIZE)  # expert masks found ("auto")
    assert arrays.per_source["extra:more"] == len(arrays) > 0


def test_extra_without_masks_needs_segment_predict(tiny_work: Path, tmp_path: Path) -> None:
    raw = tmp_path / "nomask"
    write_tiny_acdc(raw, n_per_class=1, seed=3, groups=("NOR",))
    for gt in raw.rglob("*_gt.nii.gz"):
        gt.unlink()
    _strip_groups(raw)
    work = tmp_path / "nomask_work"
    prepare(PrepareConfig(data=str(raw), out=str(work), spacing_mm=3.0, image_size=64,
                          unlabelled=True, workers=1))
    (src,) = resolve_extras([work], tmp_path / "o", SliceStore(tiny_work))
    assert src.work == work and not src.all_patients
    refs = [PatientRef(src.name, p) for p in SliceStore(work).patient_ids]
    with pytest.raises(CardioclrError, match=f"cardioclr segment predict {work}"):
        load_arrays([src], refs, "segmented", SIZE)
    assert len(load_arrays([src], refs, "full", SIZE)) > 0  # full mode needs no mask


def test_extra_refuses_main_work_and_its_source(tiny_work: Path, tmp_path: Path) -> None:
    main = SliceStore(tiny_work)
    with pytest.raises(CardioclrError, match="main work directory"):
        resolve_extras([tiny_work], tmp_path, main)
    with pytest.raises(CardioclrError, match="prepared from"):
        resolve_extras([main.info["source"]], tmp_path, main)
    # A folder holding the main raw data (it would be discovered inside) is refused too.
    with pytest.raises(CardioclrError, match="prepared from"):
        resolve_extras([Path(main.info["source"]).parent], tmp_path, main)


def test_extra_work_dir_of_the_same_raw_data_is_refused(tiny_work: Path, tmp_path: Path) -> None:
    # Another preparation of the main raw data (here: a copy with another split seed) has its
    # own train/test split, so its train patients include main test patients.
    main = SliceStore(tiny_work)
    other = tmp_path / "other_work"
    shutil.copytree(tiny_work, other)
    with pytest.raises(CardioclrError, match="main test patients"):
        resolve_extras([other], tmp_path, main)


# --------------------------------------------------------------------------------------------
# Checkpoint API
# --------------------------------------------------------------------------------------------


def test_save_encoder_round_trip_and_validation(tmp_path: Path) -> None:
    encoder, dim = build_encoder("smallcnn")
    path = save_encoder(tmp_path / "e.pt", encoder, "smallcnn", dim, "full", 64, note="x")
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert set(raw) >= {"format", "encoder", "feature_dim", "input_mode", "image_size", "state_dict"}
    weights = load_encoder_weights(path, "smallcnn")
    assert weights.keys() == encoder.state_dict().keys()
    with pytest.raises(TypeError, match="primitive"):
        save_encoder(tmp_path / "f.pt", encoder, "smallcnn", dim, "full", 64, bad=object())
    torch.save({"format": "something-else"}, tmp_path / "g.pt")
    with pytest.raises(DataError, match=r"g\.pt.*not a cardioclr encoder file"):
        read_encoder_file(tmp_path / "g.pt")
    assert not list(tmp_path.glob(".*.tmp*"))  # atomic writes leave no temporary files


def test_resumed_pretraining_matches_an_uninterrupted_one(run: tuple[PretrainConfig, dict],
                                                          tmp_path: Path) -> None:
    # The 2-epoch fixture run resumed to 3 epochs must end with the same encoder as a 3-epoch run
    # from scratch: shuffling and view sampling continue from the checkpointed random state.
    from cardioclr.models.checkpoint import load_encoder_weights

    cfg, _ = run
    resumed = tmp_path / "resumed"
    shutil.copytree(Path(cfg.out or ""), resumed)
    pretrain(dataclasses.replace(cfg, out=str(resumed), max_epochs=3))
    straight = tmp_path / "straight"
    pretrain(dataclasses.replace(cfg, out=str(straight), max_epochs=3))
    a = load_encoder_weights(resumed / "encoder.pt", "smallcnn")
    b = load_encoder_weights(straight / "encoder.pt", "smallcnn")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
