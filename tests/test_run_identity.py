"""One run-identity helper: identity, differences, digest, and every stage's use of it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from cardioclr.atomic import write_json
from cardioclr.errors import CardioclrError
from cardioclr.provenance import to_plain
from cardioclr.run_identity import differences, digest, run_identity


def test_identity_drops_dotted_keys_and_their_subtrees() -> None:
    plain = {"work": "/a", "lr": 0.1, "trainer": {"devices": 4, "max_epochs": 9}, "report": {"n": 1}}
    assert run_identity(plain, ("work", "trainer.devices", "report")) == {
        "lr": 0.1, "trainer": {"max_epochs": 9}}


def test_differences_are_dotted_sorted_and_respect_ignore_and_additive() -> None:
    old = {"b": 1, "a": {"x": [1, 2], "y": 3}, "w": {"vgg16": "v.pth"}, "devices": 1}
    new = {"b": 2, "a": {"x": [1, 2], "y": 4}, "w": {"vgg16": "v.pth", "resnet18": "r.pth"},
           "devices": 8}
    assert differences(old, new, ignore=("devices",), additive=("w",)) == ["a.y: 3 -> 4", "b: 1 -> 2"]
    assert differences(old, new, ignore=("devices",)) == [
        "a.y: 3 -> 4", "b: 1 -> 2", "w.resnet18: None -> 'r.pth'"]


def test_digest_is_the_fingerprint_formula_of_finished_finetune_runs() -> None:
    """Finished fine-tuning runs keep their fingerprint (metrics.json) across this refactor."""
    from cardioclr.classify.finetune import NOT_IN_FINGERPRINT, FinetuneConfig, fingerprint

    cfg = FinetuneConfig(work="W", encoder="smallcnn", init="none", out="O")
    # Issue 11's options, all off, are left out so runs from before them keep their hash.
    issue11 = ("model", "pooling", "instance_loss_weight", "aux_seg_weight", "recipe")
    before = {k: v for k, v in to_plain(cfg).items() if k not in NOT_IN_FINGERPRINT + issue11}
    expected = hashlib.sha1(json.dumps(before, sort_keys=True).encode()).hexdigest()[:16]
    assert fingerprint(cfg) == digest(before) == expected
    assert fingerprint(dataclasses.replace(cfg, devices=4, out="elsewhere")) == expected
    assert fingerprint(dataclasses.replace(cfg, max_epochs=cfg.max_epochs + 1)) != expected


def test_segment_train_refuses_a_finished_model_of_another_configuration(tmp_path: Path) -> None:
    """``segment train`` used to skip on done.json whatever configuration trained the model."""
    from cardioclr.segment.train import model_dir, preset_config, train

    cfg = preset_config(tmp_path / "work", "cpu")
    done = {"config": to_plain(cfg), "epochs": 3, "best_val_dice": 0.8}
    write_json(model_dir(cfg.work) / "done.json", done)
    # Same configuration (hardware aside): skipped, nothing trained (there is no store here).
    assert train(dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, devices=2)))["epochs"] == 3
    other = dataclasses.replace(cfg, crop=cfg.crop // 2, seed=cfg.seed + 1)
    with pytest.raises(CardioclrError, match=r"another configuration \(crop: 128 -> 64; seed: 0 -> 1\)"):
        train(other)


def test_segment_train_refuses_to_resume_another_configuration(tmp_path: Path) -> None:
    import yaml

    from cardioclr.segment.train import check_same_run, model_dir, preset_config

    cfg = preset_config(tmp_path / "work", "cpu")
    out = model_dir(cfg.work)
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.ckpt").write_bytes(b"")
    (out / "config.yaml").write_text(yaml.safe_dump(to_plain(cfg)))
    check_same_run(out, cfg)
    with pytest.raises(CardioclrError, match="interrupted training"):
        check_same_run(out, dataclasses.replace(cfg, batch_size=cfg.batch_size * 2))
