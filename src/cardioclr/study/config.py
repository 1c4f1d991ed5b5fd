"""The study configuration: one frozen dataclass, built from a preset plus YAML overrides.

A study is fully described by :class:`StudyConfig`. It is assembled in three layers, each
overriding the one before:

1. a preset (:data:`PRESETS`): ``demo`` (synthetic cohort, ``smallcnn``, minutes on a CPU),
   ``real-cpu`` (real data on a CPU: full-quality segmentation, small classification grid) or
   ``paper`` (VGG16 + DenseNet121 at the paper's settings, meant for a GPU); without a named
   preset, :func:`default_preset` picks one from the data and the machine;
2. a YAML file (``--config study.yaml``), any subset of the full form written to
   ``OUT/study.yaml`` (see ``configs/study_demo.yaml`` / ``configs/study_paper.yaml``);
3. command-line options (``--data``, ``--split``, ``--imagenet-weights``, ``--devices``).

Stage settings that belong to another stage's own config dataclass (epochs, batch sizes, ...)
are passed through ``options`` mappings, checked against that dataclass's fields before
anything runs (see :func:`cardioclr.study.stages.check_options`), so a typo fails in the first
second rather than after an hour of training. Batch sizes differ in scope: fine-tuning's
``finetune.options.grid_batch`` is per device, pretraining's ``pretrain.options.batch_size`` is
global (see :class:`FinetuneSettings`).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cardioclr.atomic import write_text
from cardioclr.choices import INITS, INPUT_MODES, MASK_SOURCES, PAPER_INITS
from cardioclr.errors import CardioclrError
from cardioclr.provenance import to_plain
from cardioclr.run_identity import differences
from cardioclr.segment.grid import CPU_GRID


@dataclass(frozen=True)
class SyntheticSettings:
    """The built-in synthetic cohort, used when no ``--data`` is given."""

    patients: int = 80
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PrepareSettings:
    """Store grid and patient split (see :class:`cardioclr.data.prepare.PrepareConfig`)."""

    image_size: int = 192
    spacing_mm: float = 1.5
    split: str = "random"
    test_fraction: float = 0.3
    n_folds: int = 5
    seed: int = 0
    workers: int = 2
    #: With a pack as the data: decode it into the work folder's store once (read faster after).
    unpack: bool = False


@dataclass(frozen=True)
class StageSettings:
    """One stage: field overrides of the stage's own config dataclass (nested ones as mappings)."""

    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SegmentSettings(StageSettings):
    """Segmentation: the segment stage's preset (``cpu``/``gpu``) plus ``options`` overriding its
    training config, and ``predict_options`` overriding its prediction config."""

    preset: str = "cpu"
    predict_options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PretrainSettings(StageSettings):
    """SimCLR pretraining: one encoder per (encoder, input) pair of ``inputs``."""

    inputs: tuple[str, ...] = ("full", "segmented")


@dataclass(frozen=True)
class FinetuneSettings(StageSettings):
    """The fine-tuning grid: ``inits`` x downstream ``inputs`` x encoders.

    ``options`` override :class:`cardioclr.classify.finetune.FinetuneConfig`. Its
    ``grid_batch`` values are PER-DEVICE batch sizes (ED+ES slice pairs per process and step):
    with ``devices`` N > 1 (DDP) one step sees N times as many, whereas ``pretrain.options``'
    ``batch_size`` is the GLOBAL SimCLR batch, split over the N processes. ``devices`` may
    change between runs of a study (:data:`RUNTIME_FIELDS`), so fine-tuning cells run with
    another device count train with a different effective batch.
    """

    inits: tuple[str, ...] = PAPER_INITS
    inputs: tuple[str, ...] = ("full", "segmented")
    #: Cells run at once from the fine-tuning stage on, each in its own process: the fine-tuning
    #: cells and the beyond-paper, clinical and hybrid baseline cells that are ready then
    #: (:data:`cardioclr.study.kinds.CONCURRENT_KINDS`). One cell's small batches and per-epoch
    #: bookkeeping leave a large GPU, or the second of two cores, mostly idle. 1: one after the
    #: other, in-process.
    concurrent: int = 1


@dataclass(frozen=True)
class BaselineSettings(StageSettings):
    """Clinical-feature random forest, and the hybrid (clinical indices + self-supervised features).

    ``hybrid_from``: the pretraining input (``full``/``segmented``/``roi``, one of
    ``pretrain.inputs``) of the first encoder's SimCLR pretraining whose ``deep_features.csv``
    feeds the hybrid. Those features never saw a label; a fine-tuned model's would (its train
    patients' features are fitted to their labels, so the hybrid would over-trust them). Fixed
    in advance, never chosen by test AUC (that would leak).
    """

    enabled: bool = True
    hybrid: bool = True
    hybrid_from: str = "segmented"


@dataclass(frozen=True)
class ReportSettings:
    """What the report shows: saliency patients per model, bootstrap resamples of p-values."""

    saliency_patients: int = 3
    n_boot: int = 2000
    #: How this preset departs from the paper's protocol; printed at the top of the report.
    deviations: tuple[str, ...] = ()


@dataclass(frozen=True)
class BeyondCell:
    """One configuration "beyond the paper" (``beyond_paper:`` list of the study YAML).

    A fine-tuning cell outside Tables 1-3 (``OUT/beyond/<name>``), compared in the report's
    fourth table with the paper's best cell on the same test patients. ``input``: downstream
    input mode; ``init``: encoder initialisation (``none``, ``simclr``, or any init the finetune
    stage knows); ``pretrain_input``: the SimCLR pretraining's input when ``init`` is
    ``simclr``; ``pretrain_options``: overrides of the study's ``pretrain.options`` for that
    pretraining (empty: the paper grid's pretraining of that input is reused, when the grid has
    it); ``finetune_options``: overrides of the study's ``finetune.options`` (new finetune
    options of issue 11, e.g. another model or training recipe); ``encoder``: default the
    study's first encoder. ``benchmarks/classification_quality.py`` names its configurations
    in this same form.
    """

    name: str
    input: str = "segmented"
    init: str = "none"
    pretrain_input: str | None = None
    pretrain_options: dict[str, Any] = field(default_factory=dict)
    finetune_options: dict[str, Any] = field(default_factory=dict)
    encoder: str | None = None


@dataclass(frozen=True)
class StudyConfig:
    """Everything a study needs; saved as ``OUT/study.yaml`` and compared on every re-run.

    ``data``: dataset path (ACDC layout or CSV manifest); None = the built-in synthetic cohort
    written to ``OUT/data``. ``imagenet_weights``: encoder name -> local torchvision weight
    file; ImageNet cells of encoders without one are listed as not run, with the reason. A
    re-run may add an encoder's file (its ImageNet cells then run and ``study.yaml`` is
    updated) but not change or remove one (see :data:`ADDITIVE_FIELDS`).
    ``threads``: torch CPU threads of the study process (None: torch's default, all cores). On a
    shared CPU, intra-op threads that outnumber the free cores spin-wait: on the 2-core
    development machine under load, a U-Net forward pass took 1.44 s with 2 threads and 0.15 s
    with 1.
    """

    preset: str = "demo"
    data: str | None = None
    encoders: tuple[str, ...] = ("smallcnn",)
    imagenet_weights: dict[str, str] = field(default_factory=dict)
    mask_source: str = "predicted"
    accelerator: str = "auto"
    devices: int = 1
    threads: int | None = None
    seed: int = 0
    synthetic: SyntheticSettings = SyntheticSettings()
    prepare: PrepareSettings = PrepareSettings()
    segment: SegmentSettings = SegmentSettings()
    pretrain: PretrainSettings = PretrainSettings()
    finetune: FinetuneSettings = FinetuneSettings()
    baseline: BaselineSettings = BaselineSettings()
    report: ReportSettings = ReportSettings()
    #: Extra fine-tuning cells beyond the paper's grid (issue 11), run after the baselines.
    beyond_paper: tuple[BeyondCell, ...] = ()


# Dotted keys that may change between runs of the same study without changing which cells it
# has or what they compute: where it runs (hardware, worker processes) and how it is reported.
RUNTIME_FIELDS = ("accelerator", "devices", "threads", "prepare.workers", "report",
                  "finetune.concurrent")

# Mappings to which a re-run may ADD keys but in which it may not change or remove one.
# ``imagenet_weights``: a study first run without an encoder's weight file lists that encoder's
# ImageNet cells as not run; giving the file later only makes those cells runnable and changes
# no other cell. Changing or dropping a file that is already there would mix (or orphan) results
# fine-tuned from different weights, so that is still a different configuration.
ADDITIVE_FIELDS = ("imagenet_weights",)


# ------------------------------------------------------------------------------------ presets

# The demo preset is sized so that the full grid for smallcnn (synthetic cohort, prepare,
# segmentation, 2 SimCLR pretrainings, 6 fine-tunings, 2 baselines) finishes in under 10
# minutes on 2 CPU cores: small images, a single CV fold and grid point, one seed, few epochs.
# It shows the pipeline working end to end; its numbers are not the paper's.
_DEMO: dict[str, Any] = {
    "preset": "demo",
    "encoders": ["smallcnn"],
    "accelerator": "cpu",
    # One thread: measured on the idle 2-core development machine (2026-12-01), the whole demo
    # took 507 s with 1 thread and 569 s with 2 (fine-tuning cells 23-46 s vs 39-70 s).
    "threads": 1,
    # A fixed 128 px matrix (~2.3-3.1 mm pixels) instead of ACDC-like ~220 px: 2.5x faster to
    # generate and prepare, and the store is 2.5 mm anyway.
    "synthetic": {"patients": 80, "seed": 0, "options": {"matrix": 128}},
    "prepare": {"image_size": 64, "spacing_mm": 2.5, "n_folds": 2, "workers": 2},
    "segment": {"preset": "cpu", "options": {
        # The small fast U-Net of the demo (batch norm, one residual unit, light augmentation):
        # the cpu preset's instance-norm network with nnU-Net's augmentation set costs ~2.5x the
        # time per epoch, which would take the demo past 5 minutes on 2 cores.
        "network": {"channels": [8, 16, 32, 64, 128], "num_res_units": 1, "norm": "batch"},
        # Uncompiled: ~1 min of compilation would be a third of this 12-epoch training.
        "compile_network": False,
        # Full rotation and mirroring (the cpu preset turns both down, as measured on ACDC): the
        # demo's schedule was measured with them.
        "augment": {"rotate_deg": 180.0, "flip_prob": 0.5, "scale_min": 0.8, "scale_max": 1.25,
                    "jitter": 0.35, "random_crop_prob": 0.2, "contrast": 0.25, "noise_prob": 0.5,
                    "elastic_prob": 0.0, "bias_prob": 0.0, "lowres_prob": 0.0},
        # An epoch cap, not a wall-clock budget: a re-run (or a resumed run) gives the same
        # model whatever the machine's load. 12 epochs, not 18 (79 steps each): in two runs of
        # the 18-epoch schedule (2026-12-01) the validation Dice was 0.81-0.83 from epoch 5-8 on
        # and ended at 0.85-0.86, and the poly schedule anneals over whatever the cap is. 10, not
        # 12, since 2026-12-03: the whole demo took 304-320 s on the 2-core VM that day (286 s the
        # day before), over the 300 s limit; this and 3 SimCLR epochs below buy ~25 s.
        "optim": {"lr": 3e-3, "time_budget_s": None},
        "trainer": {"max_epochs": 10, "patience": 6}, "crop": 64, "batch_size": 16,
        # Validated, unlike the cpu preset (measured there on ACDC, not on this 10-epoch schedule):
        # the best of the 10 epochs is kept, as every demo so far measured.
        "val_fraction": 0.1},
        # No test-time mirroring: it runs the network 4 times instead of once per slice (5 passes
        # with the localisation pass instead of 2); the per-patient quality estimate it gives
        # (TTA disagreement) is then not computed in the demo.
        "predict_options": {"qc_png": False, "tta": False}},
    # 4 SimCLR epochs and 8 fine-tuning epochs (were 6 and 10): the whole demo measured 301 s on
    # the idle 2-core machine (2026-12-01, benchmarks/study_speed.py; SimCLR 42 s and fine-tuning
    # 22 s per cell), on the 300 s limit of `make demo` with no margin for a busier machine.
    # 3 since 2026-12-03 (see the segmentation epochs above).
    "pretrain": {"options": {"batch_size": 64, "lr": 1e-3, "max_epochs": 3, "patience": 3,
                             "use_cine": False}},
    # Patience 5, not less: at lr 1e-3 with ~9 steps per epoch the patient-level validation loss
    # spikes in epochs 1-4 (batch-norm statistics lag the weights) before it falls; a shorter
    # patience stopped every demo run after epoch 0 and left near-chance classifiers.
    # Saliency overlays drawn only for the 3 patients the report shows (matplotlib took 28 of a
    # cell's 42 s of saliency for all 24 test patients); the shares still cover every patient.
    "finetune": {"options": {"grid_lr": [1e-3], "grid_batch": [32], "max_folds": 1,
                             "seeds": [0], "max_epochs": 8, "patience": 5, "n_boot": 500,
                             "saliency_figures": 3},
                 # Two cells at once, each a 1-thread process on its own core: the cells are
                 # small (64 px smallcnn, batch 32), which leaves a second intra-op thread in one
                 # process mostly waiting (see "threads" above); two processes keep both cores
                 # busy. Measured on the 2-core VM (2026-12-03, make demo): the 6 cells took
                 # 138 s one after the other (19-29 s each) and 104 s two at a time (33-38 s
                 # each), the whole demo 288 s -> 249 s, with the same AUCs.
                 "concurrent": 2},
    # The two fast candidates chosen by 2 CV repeats ("auto"), not the default vote of 8 members:
    # in make demo the vote took 69 + 93 s for the clinical and hybrid cells (2026-12-08, beside
    # a one-thread benchmark) against 8.4 + 13.8 s for this choice (the same day, alone); the
    # regional features are kept.
    "baseline": {"options": {"model": "auto", "candidates": ["logistic", "svm"], "cv_repeats": 2,
                             "features": "regional"}},
    "report": {"saliency_patients": 3, "n_boot": 1000},
}

# The paper: VGG16 and DenseNet121, 224 px, SimCLR batch 256 (the top of the paper's 64-256
# grid), Adam lr 1e-4, temperature 0.1, early stopping; downstream lr x batch (64-256) grid by
# 5-fold CV on the training patients; 3 seeds. The SimCLR batch is global, the downstream
# grid_batch per device: the paper's downstream batches on one device (devices: 1).
_PAPER: dict[str, Any] = {
    "preset": "paper",
    "encoders": ["vgg16", "densenet121"],
    "accelerator": "auto",
    "prepare": {"image_size": 224, "spacing_mm": 1.5, "n_folds": 5, "workers": 8},
    "segment": {"preset": "gpu", "options": {}},
    "pretrain": {"options": {"batch_size": 256, "lr": 1e-4, "temperature": 0.1, "max_epochs": 200,
                             "patience": 20, "image_size": 224, "workers": 4}},
    "finetune": {"options": {"grid_lr": [1e-4, 3e-4], "grid_batch": [64, 128, 256],
                             "seeds": [0, 1, 2], "max_epochs": 100, "patience": 10,
                             "image_size": 224, "n_boot": 2000}},
    "baseline": {"options": {}},
    "report": {"saliency_patients": 4, "n_boot": 2000},
}

# Real data on a CPU (a laptop or workstation without a GPU): the default of `cardioclr study
# --data DIR` there. Segmentation at the quality its benchmark measures (the segment stage's
# ``cpu`` preset on the store grid it was chosen on, 224 px / 1.25 mm (segment/grid.py):
# 28-minute budget, residual U-Net, localise-then-segment; benchmarks/segmentation_quality.py),
# then the demo's small classification grid at 64 px (smallcnn), meant to fit in the rest of an
# hour on 2 cores. Measured (benchmarks/study_speed.py --data, benchmarks/README.md): 44.5 min
# on a 2-core Zen 4 VM with bf16 (2026-12-07: segmentation training 28 min + prediction 1.7 min,
# both SimCLR pretrainings 3 min, the fine-tuning pool ~12 min; 42 min the day before);
# ~78 min on a 2x slower VM without bf16.
# One segmentation model, not cross-fitted: K fold models would cost K x 28 minutes on a CPU
# (set segment.options.folds: 5 to have them; the report then says masks are out-of-fold).
_REAL_CPU: dict[str, Any] = {
    "preset": "real-cpu",
    "encoders": ["smallcnn"],
    "accelerator": "cpu",
    "threads": None,
    "prepare": {"image_size": CPU_GRID.image_size, "spacing_mm": CPU_GRID.spacing_mm, "n_folds": 5,
                "workers": 2},
    "segment": {"preset": "cpu", "options": {}, "predict_options": {}},
    "pretrain": {"options": {"batch_size": 64, "lr": 1e-3, "max_epochs": 15, "patience": 5,
                             "image_size": 64, "use_cine": False}},
    "finetune": {"options": {"grid_lr": [1e-3], "grid_batch": [32], "max_folds": 3,
                             "seeds": [0], "max_epochs": 20, "patience": 5, "image_size": 64,
                             "n_boot": 1000},
                 # The 6 fine-tuning cells, the roi cell and the two baselines two at a time,
                 # each a 1-thread process: one after the other they took 801 + 162 s with two
                 # threads and 142 + 164 s of one-thread scikit-learn (2026-12-02, 53.9 min in
                 # all); two at a time 710 s (2026-12-03, 44.0 min in all; benchmarks/README.md).
                 "concurrent": 2},
    "baseline": {"options": {}},
    "report": {"saliency_patients": 3, "n_boot": 2000},
    # Beyond the paper (issue 11; report Table 4): the heart-ROI input without pretraining,
    # ~5 minutes on 2 cores. More configurations: benchmarks/classification_quality.py --list.
    "beyond_paper": [{"name": "roi", "input": "roi", "init": "none"}],
}

# The paper's grid within one short GPU slot (one H100/H200, <= 8 min of study wall time; see
# docs/gpu_slot.md and scripts/device_run.sh): the paper's encoders, image size, SimCLR batch,
# learning rates and temperature, with fewer epochs, folds, grid points and seeds. Every
# deviation from ``paper`` is listed in ``report.deviations`` and printed in the report.
_PAPER_FAST: dict[str, Any] = {
    "preset": "paper-fast",
    "encoders": ["vgg16", "densenet121"],
    "accelerator": "auto",
    "mask_source": "expert",
    # unpack: the packed data is decoded once; the ~20 stage processes then read the store.
    "prepare": {"image_size": 224, "spacing_mm": 1.5, "n_folds": 5, "workers": 8,
                "unpack": True},
    "segment": {"preset": "gpu", "options": {"optim": {"time_budget_s": 60}},
                "predict_options": {"qc_png": False}},
    "pretrain": {"options": {"batch_size": 256, "lr": 1e-4, "temperature": 0.1, "max_epochs": 25,
                             "patience": 8, "image_size": 224, "workers": 0, "use_cine": False}},
    "finetune": {"options": {"grid_lr": [1e-4], "grid_batch": [64], "seeds": [0, 1],
                             "max_folds": 2, "max_epochs": 15, "patience": 4, "image_size": 224,
                             "n_boot": 1000},
                 "concurrent": 4},
    "baseline": {"options": {}},
    "report": {"saliency_patients": 2, "n_boot": 1000, "deviations": [
        "masks: the expert (ACDC) masks feed the segmented inputs of every patient, test "
        "patients included (paper: automatic segmentation); the segmentation cells still train "
        "the GPU U-Net for a 60 s budget and report its Dice, but its masks are not used",
        "SimCLR: at most 25 epochs (patience 8) instead of 200 (patience 20); no cine frames",
        "fine-tuning: one grid point (lr 1e-4, batch 64) instead of lr {1e-4, 3e-4} x batch "
        "{64, 128, 256}; 2 of the 5 CV folds; 2 seeds instead of 3; at most 15 epochs "
        "(patience 4) instead of 100 (patience 10)",
        "bootstrap: 1000 resamples instead of 2000; saliency on 2 patients per cell instead of 4",
    ]},
}

PRESETS: dict[str, dict[str, Any]] = {"demo": _DEMO, "paper": _PAPER, "real-cpu": _REAL_CPU,
                                     "paper-fast": _PAPER_FAST}


def default_preset(has_data: bool, has_gpu: bool) -> str:
    """The study preset used when none is named (no ``--preset``, no ``preset:`` in a YAML).

    No ``--data``: ``demo`` (the built-in synthetic cohort, ``make demo``). Real data: ``paper``
    on a machine with a GPU, else ``real-cpu``.
    """
    if not has_data:
        return "demo"
    return "paper" if has_gpu else "real-cpu"


# ------------------------------------------------------------------------------ construction


def preset_dict(name: str) -> dict[str, Any]:
    """The plain (YAML) form of preset ``name``; raises naming the choices when unknown."""
    if name not in PRESETS:
        raise CardioclrError(f"unknown study preset {name!r}; choose one of {', '.join(PRESETS)}")
    return to_plain(from_dict(copy.deepcopy(PRESETS[name])))


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``override`` recursively (dicts merge, everything else replaces)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key not in (
                "options", "predict_options", "imagenet_weights"):
            out[key] = deep_merge(out[key], value)
        else:
            # options/imagenet_weights merge one level (key by key) but their values replace.
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                merged = dict(out[key])
                merged.update(value)
                out[key] = merged
            else:
                out[key] = copy.deepcopy(value)
    return out


def from_dict(data: dict[str, Any]) -> StudyConfig:
    """Build a :class:`StudyConfig` from its plain form; unknown keys are errors naming the path."""
    return _build(StudyConfig, data, "study")


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise CardioclrError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise CardioclrError(f"{where}: unknown key(s) {unknown}; known: {', '.join(fields)}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        default = fields[name].default
        if dataclasses.is_dataclass(default):
            kwargs[name] = _build(type(default), value, f"{where}.{name}")
        elif name == "beyond_paper":
            if not isinstance(value, (list, tuple)):
                raise CardioclrError(f"{where}.{name}: expected a list of configurations")
            kwargs[name] = tuple(_build(BeyondCell, v, f"{where}.{name}[{i}]")
                                 for i, v in enumerate(value))
        elif isinstance(value, list):
            kwargs[name] = tuple(value)  # frozen: tuples, and YAML lists compare equal after to_plain
        elif name in ("options", "predict_options", "imagenet_weights", "pretrain_options",
                      "finetune_options"):
            if value is None:
                value = {}
            if not isinstance(value, dict):
                raise CardioclrError(f"{where}.{name}: expected a mapping")
            kwargs[name] = dict(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


def load_config(preset: str | None = None, config_file: str | os.PathLike[str] | None = None,
                overrides: dict[str, Any] | None = None, default: str = "demo") -> StudyConfig:
    """Preset, then YAML file, then ``overrides`` (plain form); validated.

    The preset is ``preset`` if given, else the YAML's ``preset`` key, else ``default`` (see
    :func:`default_preset`).
    """
    file_data: dict[str, Any] = {}
    if config_file is not None:
        p = Path(config_file)
        if not p.is_file():
            raise CardioclrError(f"{p}: study config file not found")
        try:
            file_data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise CardioclrError(f"{p}: not valid YAML ({err})") from err
        if not isinstance(file_data, dict):
            raise CardioclrError(f"{p}: expected a mapping at the top level")
    name = preset or file_data.get("preset") or default
    merged = deep_merge(preset_dict(name), file_data)
    merged["preset"] = name
    merged = deep_merge(merged, {k: v for k, v in (overrides or {}).items() if v is not None})
    cfg = from_dict(merged)
    validate(cfg)
    return cfg


def validate(cfg: StudyConfig) -> None:
    """Checks that need no other stage: names, inputs, inits, weights files."""
    from cardioclr.models.encoders import ENCODERS

    if not cfg.encoders:
        raise CardioclrError("study: no encoder listed (encoders: [...])")
    for enc in cfg.encoders:
        if enc not in ENCODERS:
            raise CardioclrError(f"study.encoders: unknown encoder {enc!r}; choose from "
                                 f"{', '.join(ENCODERS)}")
    for name in cfg.imagenet_weights:
        if name not in cfg.encoders:
            raise CardioclrError(f"study.imagenet_weights: {name!r} is not one of the study's "
                                 f"encoders ({', '.join(cfg.encoders)})")
    for enc, path in cfg.imagenet_weights.items():
        if not Path(path).is_file():
            raise CardioclrError(f"{path}: ImageNet weight file for {enc} not found")
    for where, values, allowed in (("pretrain.inputs", cfg.pretrain.inputs, INPUT_MODES),
                                   ("finetune.inputs", cfg.finetune.inputs, INPUT_MODES),
                                   ("finetune.inits", cfg.finetune.inits, INITS)):
        bad = [v for v in values if v not in allowed]
        if bad or len(set(values)) != len(values):
            raise CardioclrError(f"study.{where}: {list(values)} must be distinct values of "
                                 f"{', '.join(allowed)}")
    if cfg.mask_source not in MASK_SOURCES:
        raise CardioclrError("study.mask_source must be predicted or expert")
    if cfg.prepare.split not in ("random", "official"):
        raise CardioclrError("study.prepare.split must be random or official")
    if cfg.baseline.hybrid_from not in INPUT_MODES:
        raise CardioclrError(f"study.baseline.hybrid_from must be the input of a SimCLR "
                             f"pretraining ({', '.join(INPUT_MODES)}), e.g. segmented; got "
                             f"{cfg.baseline.hybrid_from!r} (the hybrid no longer uses a "
                             "fine-tuned model's features, which were fitted to the labels)")
    if cfg.devices < 1:
        raise CardioclrError("study.devices must be >= 1")
    if cfg.finetune.concurrent < 1:
        raise CardioclrError("study.finetune.concurrent must be >= 1")
    if cfg.threads is not None and cfg.threads < 1:
        raise CardioclrError("study.threads must be >= 1 (or null for torch's default)")
    validate_beyond(cfg)


#: A beyond-the-paper cell's name: its folder ``OUT/beyond/<name>`` and its row in results.csv.
BEYOND_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


def validate_beyond(cfg: StudyConfig) -> None:
    """Names unique and folder-safe, inputs known, a SimCLR init with its pretraining input."""
    from cardioclr.models.encoders import ENCODERS

    seen: set[str] = set()
    for i, b in enumerate(cfg.beyond_paper):
        where = f"study.beyond_paper[{i}]"
        if not BEYOND_NAME.match(b.name) or b.name in seen:
            raise CardioclrError(f"{where}.name {b.name!r} must be unique, lower case letters, "
                                 "digits, '.', '_' or '-'")
        seen.add(b.name)
        if b.input not in INPUT_MODES:
            raise CardioclrError(f"{where}.input {b.input!r}: choose one of {', '.join(INPUT_MODES)}")
        if b.encoder is not None and b.encoder not in ENCODERS:
            # Any registered encoder: e.g. the segmentation network's (segunet) for a cell
            # initialised from it, without adding it to the paper grid's encoders.
            raise CardioclrError(f"{where}.encoder {b.encoder!r}: unknown; choose from "
                                 f"{', '.join(ENCODERS)}")
        if b.init == "simclr":
            if b.pretrain_input not in INPUT_MODES:
                raise CardioclrError(f"{where}: init simclr needs pretrain_input, one of "
                                     f"{', '.join(INPUT_MODES)}")
        elif b.pretrain_input is not None or b.pretrain_options:
            raise CardioclrError(f"{where}: pretrain_input / pretrain_options need init simclr "
                                 f"(init is {b.init!r})")


def resolve_imagenet_weights(values: list[str] | None, encoders: tuple[str, ...]) -> dict[str, str]:
    """``--imagenet-weights`` values (``FILE`` or ``ENCODER=FILE``) -> encoder -> file.

    A bare ``FILE`` goes to the encoder whose name appears in the file name (torchvision's
    ``vgg16-397923af.pth``, ``densenet121-a639ec97.pth``), or to the only encoder of the study.
    """
    out: dict[str, str] = {}
    for value in values or []:
        if "=" in value and value.split("=", 1)[0] in encoders:
            enc, path = value.split("=", 1)
        else:
            path = value
            named = [e for e in encoders if e in Path(value).name.lower()]
            if len(named) == 1:
                enc = named[0]
            elif len(encoders) == 1:
                enc = encoders[0]
            else:
                raise CardioclrError(f"--imagenet-weights {value}: cannot tell which encoder of "
                                     f"{', '.join(encoders)} it is for; write ENCODER={value}")
        out[enc] = str(Path(path).expanduser().resolve())
    return out


def config_to_yaml(cfg: StudyConfig) -> str:
    """The full plain form of ``cfg`` as YAML (what ``OUT/study.yaml`` holds)."""
    return yaml.safe_dump(to_plain(cfg), sort_keys=False)


def save_config(cfg: StudyConfig, path: str | os.PathLike[str]) -> None:
    """Write ``cfg`` atomically as YAML."""
    write_text(path, config_to_yaml(cfg))


def read_saved_config(path: str | os.PathLike[str]) -> StudyConfig:
    """Read an ``OUT/study.yaml`` written by :func:`save_config` (no preset layering)."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise CardioclrError(f"{p}: unreadable study config ({err})") from err
    return from_dict(data)


def config_differences(old: StudyConfig, new: StudyConfig) -> list[str]:
    """Dotted keys whose values differ, ignoring :data:`RUNTIME_FIELDS`, keys that ``new``
    adds to one of the :data:`ADDITIVE_FIELDS` and entries appended to ``beyond_paper`` (see
    :func:`config_additions`)."""
    a, b = to_plain(old), to_plain(new)
    diffs = differences(a, b, ignore=(*RUNTIME_FIELDS, "beyond_paper"), additive=ADDITIVE_FIELDS)
    # Cells beyond the paper may be appended to a finished study (only the new ones run); an
    # entry that is changed or removed would leave results of another configuration behind.
    before, after = a.get("beyond_paper") or [], b.get("beyond_paper") or []
    if after[:len(before)] != before:
        changed = [x.get("name") for x in before if x not in after]
        diffs.append(f"beyond_paper: entries {changed} changed or removed (entries may only be "
                     "appended)")
    return diffs


def config_additions(old: StudyConfig, new: StudyConfig) -> list[str]:
    """Dotted keys that ``new`` adds to the :data:`ADDITIVE_FIELDS` of ``old``, and
    ``beyond_paper.<name>`` for each entry appended to ``old``'s ``beyond_paper``.

    These are the differences :func:`config_differences` lets through, e.g.
    ``imagenet_weights.vgg16`` when a weight file is given to a study first run without it.
    """
    a, b = to_plain(old), to_plain(new)
    added: list[str] = []
    for name in ADDITIVE_FIELDS:
        before, after = a.get(name) or {}, b.get(name) or {}
        added += [f"{name}.{k}" for k, v in after.items()
                  if v is not None and before.get(k) is None]
    n_old = len(a.get("beyond_paper") or [])
    added += [f"beyond_paper.{x.get('name')}" for x in (b.get("beyond_paper") or [])[n_old:]]
    return added
