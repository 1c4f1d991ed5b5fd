"""Which study preset runs when none is named, and that each preset's options are valid."""

from __future__ import annotations

import argparse

import pytest

from cardioclr.segment.grid import CPU_GRID
from cardioclr.study import cli as study_cli
from cardioclr.study.config import PRESETS, config_to_yaml, default_preset, load_config
from cardioclr.study.kinds import check_options
from cardioclr.study.stages import segment_train_config
from conftest import REPO


def test_default_preset_is_demo_for_synthetic_real_cpu_without_gpu_and_paper_with_one():
    assert default_preset(has_data=False, has_gpu=False) == "demo"
    assert default_preset(has_data=False, has_gpu=True) == "demo"  # make demo stays synthetic
    assert default_preset(has_data=True, has_gpu=False) == "real-cpu"
    assert default_preset(has_data=True, has_gpu=True) == "paper"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_valid_stage_configs(name, tmp_path):
    cfg = load_config(name)
    check_options(cfg)  # unknown stage options would raise here
    seg = segment_train_config(cfg, tmp_path)
    assert seg.preset == cfg.segment.preset


@pytest.mark.parametrize("name", ["demo", "paper"])
def test_the_written_out_presets_are_the_presets(name):
    # configs/study_<name>.yaml is documented as the preset in full: below its comments, the
    # same YAML as OUT/study.yaml of a study run with that preset.
    text = (REPO / "configs" / f"study_{name}.yaml").read_text()
    body = "".join(line for line in text.splitlines(keepends=True) if not line.startswith("#"))
    assert body == config_to_yaml(load_config(name))


def test_real_cpu_preset_segments_at_the_benchmarked_cpu_quality(tmp_path):
    cfg = load_config("real-cpu")
    # The grid the cpu preset was chosen on (segment/grid.py), not prepare's 1.5 mm default.
    assert (cfg.prepare.image_size, cfg.prepare.spacing_mm) == (CPU_GRID.image_size, CPU_GRID.spacing_mm)
    assert (CPU_GRID.image_size, CPU_GRID.spacing_mm) == (224, 1.25)
    seg = segment_train_config(cfg, tmp_path)
    assert seg.network.norm == "instance" and seg.optim.time_budget_s == 28 * 60
    assert load_config("paper").segment.preset == "gpu"


def test_study_cli_resolves_the_preset_from_data_and_gpu(monkeypatch, tmp_path):
    seen: list[str] = []

    def fake_run(cfg, out, **kwargs):
        seen.append(cfg.preset)
        raise SystemExit(0)

    import cardioclr.study.runner as runner

    monkeypatch.setattr(runner, "run_study", fake_run)
    data = tmp_path / "data"
    data.mkdir()
    for gpu, data_arg, expected in ((False, None, "demo"), (False, str(data), "real-cpu"),
                                    (True, str(data), "paper")):
        monkeypatch.setattr(study_cli, "_has_gpu", lambda gpu=gpu: gpu)
        args = argparse.Namespace(out=str(tmp_path / f"out{len(seen)}"), preset=None, config=None,
                                  data=data_arg, split=None, encoders=None, devices=None,
                                  accelerator=None, threads=None, imagenet_weights=None)
        with pytest.raises(SystemExit):
            study_cli._run_study(args)
        assert seen[-1] == expected
