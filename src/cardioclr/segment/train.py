"""``cardioclr segment train WORK``: fit the 2D U-Net on the train split's expert masks.

Writes ``WORK/segmentation/model/``: ``checkpoints/last.ckpt`` (resumable) and, with validation
patients, ``best.ckpt`` (best validation Dice), ``logs/``, ``config.yaml`` + ``versions.json``,
then ``model.pt`` (the weights of the best epoch, or of the last one without validation, and
everything ``predict`` needs, loadable with ``weights_only=True``)
and ``done.json`` last: its presence marks a finished training, which a re-run skips.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml

from cardioclr.atomic import atomic_path, read_json, write_json
from cardioclr.data.augment import SegmentationAugmentConfig
from cardioclr.data.store import SliceStore
from cardioclr.errors import CardioclrError
from cardioclr.layout import WorkLayout
from cardioclr.provenance import save_run_info, to_plain
from cardioclr.run_identity import differences, run_identity
from cardioclr.segment.crossfit import (
    fold_model_dir,
    folds_dir,
    plan_folds,
    read_assignment,
    write_assignment,
)
from cardioclr.segment.datamodule import SegDataModule, select_patients
from cardioclr.segment.grid import CPU_GRID
from cardioclr.segment.model import (
    NetworkConfig,
    OptimConfig,
    SegModule,
    network_config_dict,
    size_divisor,
)
from cardioclr.training import TrainerSettings, inference_device, make_trainer, resume_checkpoint

log = logging.getLogger(__name__)

MODEL_FORMAT = 1


@dataclass(frozen=True)
class SegTrainConfig:
    """Everything that defines a segmentation training run (saved as config.yaml).

    ``crop``: training crop side in store pixels (the store's in-plane spacing is kept, so the
    network sees real mm; predictions run on whole slices). ``val_fraction``: share of the
    usable train-split patients held out for validation / early stopping (the best epoch is
    exported); 0: none, every usable patient trains and the last epoch is exported.
    ``window``: least side of the heart-centred window that ``segment predict`` segments (and
    validation scores), store pixels; None = ``crop``. ``folds``: number of
    cross-fitted models (:mod:`cardioclr.segment.crossfit`; 1 = one model on the whole train
    split); ``fold``: which one this run trains (set by :func:`train_crossfit`).
    ``compile_network``: compile the network with TorchInductor (:func:`cardioclr.accel.compile_in_place`);
    a speed setting only, not part of the run's identity.
    """

    work: str
    preset: str = "cpu"
    network: NetworkConfig = field(default_factory=NetworkConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: SegmentationAugmentConfig = field(default_factory=SegmentationAugmentConfig)
    trainer: TrainerSettings = field(default_factory=TrainerSettings)
    crop: int = 128
    window: int | None = None
    batch_size: int = 16
    val_fraction: float = 0.1
    seed: int = 0
    folds: int = 1
    fold: int | None = None
    compile_network: bool = False


#: nnU-Net's 2D augmentation set (rotation, scaling, mirroring, elastic deformation, gamma,
#: contrast/brightness, multiplicative bias field, low-resolution simulation, noise), batched on
#: the device (:mod:`cardioclr.data.augment`), with full rotation and mirroring: the ``gpu``
#: preset's (its training without mirroring is not measured yet).
STRONG_AUGMENT = SegmentationAugmentConfig(rotate_deg=180.0, scale_min=0.75, scale_max=1.3, flip_prob=0.5,
                               jitter=0.25, random_crop_prob=0.1, contrast=0.3, brightness=0.1,
                               gamma_prob=0.3, gamma_max=1.5, noise_prob=0.3, noise_std=0.05,
                               elastic_prob=0.2, elastic_px=2.5, bias_prob=0.3, bias_strength=0.3,
                               lowres_prob=0.25, lowres_max=2.0)
#: The ``cpu`` preset's: the same set, but rotation within 45 degrees and no mirroring, i.e. hearts
#: in about one orientation (ACDC shows every heart with the RV left of the LV, within about
#: -60..+40 degrees). At equal time on the 70 ACDC train patients' out-of-fold masks, 45 degrees
#: with mirroring changed nothing (-0.0007 mean Dice) while 45 degrees without mirroring gained
#: +0.004 and +0.005 in two seeds (95% CI -0.001..0.009 and 0.001..0.010; ES RV +0.011, +0.018),
#: and +0.008 with the rotated test-time views such a model is predicted with (segment/predict.py).
#: A cohort stored in another orientation (mirrored, transposed, turned) is segmented in the
#: orientation whose views agree best (:func:`cardioclr.segment.predict.segment_patient`): on
#: the 100 ACDC patients, stored in any of the 8 orientations, that search gave the Dice of the
#: true orientation (0.9025 against 0.9027; benchmarks/README.md).
ONE_ORIENTATION_AUGMENT = dataclasses.replace(STRONG_AUGMENT, rotate_deg=45.0, flip_prob=0.0)

#: Presets. Both train on heart-centred crops of ED and ES slices together (Dice + cross-entropy,
#: poly learning rate) and predict localise-then-segment (a whole-slice pass finds the heart, a
#: pass with test-time views segments a ``crop``-pixel window around it; segment/predict.py).
#:
#: ``cpu``: MONAI ``UNet`` with residual units and instance norm, 30-minute wall-clock budget on
#: 2 CPU cores. Not DynUNet: measured on the 2-core development machine (batch 16, 128 px, one
#: thread), a training step of DynUNet 16-256 with deep supervision costs 5.4x that of this UNet
#: (3.7x without residual blocks, 2x at 8-128 features), i.e. 2-5x fewer epochs in the budget.
#: Compiled (TorchInductor): on 2 threads a training step (batch 16, 128 px) took 420 instead of
#: 557 ms and a validation forward 180 instead of 305 ms, for ~1-2 min of compilation per run.
#: bf16 autocast on CPUs with bf16 instructions (``cpu_bf16``; float32 elsewhere): a compiled
#: step 271 -> 178 ms on the Zen 4 development VM (:func:`cardioclr.training.cpu_has_native_bf16`).
#:
#: ``gpu``: nnU-Net-like DynUNet (32-512 features, 6 levels, residual blocks, instance norm, 2
#: deep-supervision outputs), bf16 and channels_last on the GPU, batch 64 of 160 px crops,
#: sized for a 9-minute budget on one H100/H200 (not measured in this repository yet).
PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {
        # 2D input (context_slices 0): a 2.5D input with 1 neighbour on each side was worse on the
        # 70 train patients' out-of-fold masks, 5 folds at equal epochs: mean Dice -0.012 (95% CI
        # -0.016..-0.009, 57 of 70 patients worse, every structure worse; benchmarks/README.md)
        # No phase channel (``phase_channel`` stays an option): on the 70 train patients'
        # out-of-fold masks (5 folds, equal epochs) it raised ES RV Dice by 0.012 and mean Dice by
        # 0.002 (95% CI -0.000..0.005) with the basal ES RV rule and cut the RV ESV bias, but the
        # diagnosis from those masks was worse in 5x5 CV on the same 70 patients (best candidate
        # 0.923 vs 0.960; benchmarks/README.md).
        "network": NetworkConfig(arch="unet", channels=(16, 32, 64, 128, 256), num_res_units=2,
                                 norm="instance"),
        "optim": OptimConfig(lr=2e-3, weight_decay=1e-4, time_budget_s=28 * 60),
        "augment": ONE_ORIENTATION_AUGMENT,
        "trainer": TrainerSettings(max_epochs=300, patience=40, cpu_bf16=True),
        "crop": 128,
        "batch_size": 16,
        "compile_network": True,
        # No validation patients: all of them train and the last epoch is the model. On the 70
        # train patients' out-of-fold masks (5 folds of 9.5 minutes each, side by side, equal
        # time) mean Dice +0.0038 (95% CI 0.0018..0.0058, 51 better / 19 worse, every structure
        # better, ES RV +0.012) against holding 10% out for the best epoch (benchmarks/README.md).
        "val_fraction": 0.0,
    },
    "gpu": {
        "network": NetworkConfig(arch="dynunet", channels=(32, 64, 128, 256, 512, 512),
                                 norm="instance", deep_supervision=2),
        "optim": OptimConfig(lr=2e-3, weight_decay=3e-5, time_budget_s=9 * 60),
        "augment": STRONG_AUGMENT,
        "trainer": TrainerSettings(max_epochs=1000, patience=100),
        "crop": 160,
        "batch_size": 64,
    },
}


def preset_config(work: str | os.PathLike[str], preset: str = "cpu", **overrides: Any) -> SegTrainConfig:
    """The config of a preset, with ``overrides`` (None values ignored) applied on top.

    Trainer fields (``max_epochs``, ``devices``, ``patience``, ...) may be given directly.
    """
    if preset not in PRESETS:
        raise CardioclrError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    cfg = SegTrainConfig(work=str(work), preset=preset, **PRESETS[preset])
    trainer_fields = {f.name for f in dataclasses.fields(TrainerSettings)}
    top, tr = {}, {}
    for k, v in overrides.items():
        if v is None:
            continue
        (tr if k in trainer_fields else top)[k] = v
    if tr:
        top["trainer"] = dataclasses.replace(cfg.trainer, **tr)
    return dataclasses.replace(cfg, **top)


class TrainClock(L.Callback):
    """Training wall-clock time, kept across resumes (in the checkpoint), with an optional budget.

    Stops training at the end of an epoch when another epoch would exceed ``budget_s``.
    """

    def __init__(self, budget_s: float | None = None) -> None:
        self.budget_s = budget_s
        self._before = 0.0  # seconds from earlier (resumed) runs
        self._start: float | None = None
        self._epoch_start = 0.0
        self._epoch_seconds: list[float] = []
        self.stopped_by_budget = False

    def elapsed(self) -> float:
        """Seconds of training so far, over all resumed runs."""
        return self._before + (time.perf_counter() - self._start if self._start is not None else 0.0)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:  # noqa: D102
        self._start = time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:  # noqa: D102
        self._epoch_start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:  # noqa: D102
        # After the epoch's validation (Lightning validates before this hook), and also without one.
        if not self._epoch_start:
            return
        self._epoch_seconds.append(time.perf_counter() - self._epoch_start)
        per_epoch = sum(self._epoch_seconds[-3:]) / len(self._epoch_seconds[-3:])
        if self.budget_s and self.elapsed() + per_epoch > self.budget_s:
            log.info("training time budget of %.0f s reached after %.0f s; stopping",
                     self.budget_s, self.elapsed())
            self.stopped_by_budget = True
            trainer.should_stop = True

    def state_dict(self) -> dict[str, float]:  # noqa: D102
        return {"elapsed_s": self.elapsed()}

    def load_state_dict(self, state_dict: dict[str, float]) -> None:  # noqa: D102
        self._before = float(state_dict.get("elapsed_s", 0.0))


def limit_cpu_threads(uses_gpu: bool | None = None) -> None:
    """Use one intra-op thread when the CPU is already oversubscribed (load >= cores).

    With OpenMP's default active waiting, 2 threads on 2 busy cores run 5-10x slower than one
    (threads spin waiting for each other while descheduled). Setting ``OMP_WAIT_POLICY=PASSIVE``
    before torch is imported avoids this too; this is the fallback when it was not set.
    ``uses_gpu``: whether the run computes on a GPU (default: whether one is present); a run
    forced onto the CPU of a GPU machine (``--accelerator cpu``) is limited like any CPU run.
    """
    if uses_gpu is None:
        uses_gpu = torch.cuda.is_available()
    if uses_gpu or os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE":
        return
    try:
        load = os.getloadavg()[0]
    except OSError:
        return
    cores = os.cpu_count() or 1
    if cores > 1 and load >= cores and torch.get_num_threads() > 1:
        log.info("CPU load %.1f on %d cores: using 1 torch thread", load, cores)
        torch.set_num_threads(1)


def model_dir(work: str | os.PathLike[str]) -> Path:
    """``WORK/segmentation/model``."""
    return WorkLayout(work).segmentation_model


#: Fields of :class:`SegTrainConfig` that do not change what the model learns (where and how
#: visibly it runs); every other field is part of the run's identity (:mod:`cardioclr.run_identity`).
NOT_IN_IDENTITY = ("work", "compile_network", "trainer.accelerator", "trainer.devices", "trainer.num_nodes",
                   "trainer.strategy", "trainer.precision", "trainer.cpu_bf16", "trainer.progress_bar")
#: Fields that only extend training (as in ``pretrain``): an interrupted run asked for more
#: epochs resumes, and a finished one is kept.
EXTENDABLE = ("trainer.max_epochs", "trainer.patience")


def check_same_run(out: Path, cfg: SegTrainConfig) -> None:
    """Refuse to skip to, or resume, a model in ``out`` trained with another configuration.

    Compares ``done.json``'s ``config`` (a finished model), else ``config.yaml`` when a
    checkpoint exists (an interrupted one), with ``cfg``; raises :class:`CardioclrError` naming
    the differing fields.
    """
    done, saved = out / "done.json", out / "config.yaml"
    old: Any = read_json(done).get("config") if done.is_file() else None
    if old is None and (out / "checkpoints" / "last.ckpt").is_file() and saved.is_file():
        old = yaml.safe_load(saved.read_text(encoding="utf-8"))
    if not isinstance(old, dict):
        return
    ignore = (*NOT_IN_IDENTITY, *EXTENDABLE)
    diff = differences(run_identity(old, ignore), run_identity(to_plain(cfg), ignore))
    if diff:
        state = "a trained" if done.is_file() else "an interrupted training of a"
        raise CardioclrError(f"{out} holds {state} segmentation model with another configuration ("
                             + "; ".join(diff[:8]) + ("; ..." if len(diff) > 8 else "")
                             + "); pass --overwrite to retrain, or prepare another work folder")


def train_crossfit(cfg: SegTrainConfig, overwrite: bool = False) -> dict[str, Any]:
    """Train the ``cfg.folds`` fold models (each resumes or is skipped when finished).

    Returns ``folds/done.json``'s dict: the per-fold infos and their totals, with the keys of a
    single model's done.json (``train_seconds`` summed, ``best_val_dice`` averaged, ...).
    """
    done = folds_dir(cfg.work) / "done.json"
    if overwrite and folds_dir(cfg.work).exists():
        shutil.rmtree(folds_dir(cfg.work))
    if not overwrite:
        check_same_run(folds_dir(cfg.work), cfg)  # finished folds of another configuration: refuse
    if done.is_file():
        log.info("cross-fitted segmentation models already trained (%s); skipping", done)
        return read_json(done)
    store = SliceStore(cfg.work)
    folds = plan_folds(store.splits.train, store.splits.folds, cfg.folds, cfg.seed)
    same = len(store.splits.folds) == cfg.folds and folds == [sorted(set(f) & set(store.splits.train))
                                                             for f in store.splits.folds]
    write_assignment(cfg.work, folds, "splits.json folds" if same else f"seeded partition (seed {cfg.seed})")
    infos = []
    for k in range(cfg.folds):
        log.info("cross-fitting: fold model %d/%d (without %d patients)", k + 1, cfg.folds, len(folds[k]))
        infos.append(train(dataclasses.replace(cfg, fold=k)))
    if not all(infos):  # a non-zero DDP rank returns {}
        return {}
    scores = [i["best_val_dice"] for i in infos if i.get("best_val_dice") is not None]
    summary = {
        "folds": cfg.folds,
        "train_seconds": round(sum(i["train_seconds"] for i in infos), 1),
        "epochs": max(i["epochs"] for i in infos),
        "stopped_by": ", ".join(sorted({i["stopped_by"] for i in infos})),
        "best_val_dice": float(sum(scores) / len(scores)) if scores else None,
        "train_patients": sorted(set().union(*(i["train_patients"] for i in infos))),
        "val_patients": sorted(set().union(*(i["val_patients"] for i in infos))),
        "excluded_patients": {k: v for i in infos for k, v in i["excluded_patients"].items()},
        "fold_infos": [{k: v for k, v in i.items() if k != "config"} for i in infos],
        "config": to_plain(cfg),
    }
    write_json(done, summary)  # last: every fold model is finished
    return summary


def train(cfg: SegTrainConfig, overwrite: bool = False) -> dict[str, Any]:
    """Train (or resume, or skip when finished with the same configuration) and export
    ``model.pt``; returns done.json's dict.

    ``cfg.folds > 1``: the cross-fitted fold models instead (:func:`train_crossfit`).
    """
    from monai.data import set_track_meta

    if cfg.folds > 1 and cfg.fold is None:
        return train_crossfit(cfg, overwrite)
    if cfg.folds < 1:
        raise CardioclrError(f"folds must be >= 1, got {cfg.folds}")
    if not 0 <= cfg.val_fraction < 1:
        raise CardioclrError(f"val_fraction must be in [0, 1), got {cfg.val_fraction}")
    held_out: list[str] = []
    if cfg.fold is not None:
        folds = read_assignment(cfg.work)
        if folds is None or not 0 <= cfg.fold < len(folds):
            raise CardioclrError(f"{folds_dir(cfg.work)}: no fold {cfg.fold} in assignment.json")
        held_out = folds[cfg.fold]
        out = fold_model_dir(cfg.work, cfg.fold)
    else:
        out = model_dir(cfg.work)
    done = out / "done.json"
    if not overwrite:
        check_same_run(out, cfg)
    if done.is_file() and not overwrite:
        info = read_json(done)
        log.info("segmentation model already trained (%s); skipping. Pass --overwrite to retrain.", done)
        return info
    if overwrite and out.exists():
        shutil.rmtree(out)
    store = SliceStore(cfg.work)
    if cfg.preset == "cpu" and abs(store.spacing_mm - CPU_GRID.spacing_mm) > 1e-6:
        log.info("note: the cpu preset was chosen on a %g mm store grid and this store is %g mm; for "
                 "its measured quality prepare with --spacing %g --size %d (segment/grid.py)",
                 CPU_GRID.spacing_mm, store.spacing_mm, CPU_GRID.spacing_mm, CPU_GRID.image_size)
    div = size_divisor(cfg.network)
    if cfg.crop % div:
        raise CardioclrError(f"crop {cfg.crop} must be a multiple of {div} for {len(cfg.network.channels)} "
                             "resolution levels")
    limit_cpu_threads(uses_gpu=inference_device(cfg.trainer.accelerator).type == "cuda")
    set_track_meta(False)  # plain tensors: MetaTensor bookkeeping only costs time here
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    selection = select_patients(store, cfg.val_fraction, cfg.seed, held_out=set(held_out))
    window = cfg.window or cfg.crop
    if window % div:
        raise CardioclrError(f"window {window} must be a multiple of {div}")
    dm = SegDataModule(cfg.work, selection, cfg.batch_size, div, val_window=window,
                       context_slices=cfg.network.context_slices)
    module = SegModule(network=network_config_dict(cfg.network), optim=asdict(cfg.optim),
                       augment=asdict(cfg.augment), crop=cfg.crop, compile_network=cfg.compile_network)
    clock = TrainClock(cfg.optim.time_budget_s)
    module.clock = clock
    save_run_info(out, cfg)
    # No validation patients (val_fraction 0): every usable patient trains, the last epoch is the
    # model (as nnU-Net's final checkpoint; the poly schedule has brought the learning rate to ~0).
    validate = bool(selection.val)
    trainer = make_trainer(out, cfg.trainer, monitor="val_dice" if validate else None, mode="max",
                           extra_callbacks=[clock])
    with warnings.catch_warnings():
        # In-memory data, augmentation on the device: loader workers would only add overhead.
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer.fit(module, datamodule=dm, ckpt_path=resume_checkpoint(out))
    if trainer.interrupted:
        raise KeyboardInterrupt
    if not trainer.is_global_zero:
        return {}
    exported = out / "checkpoints" / ("best.ckpt" if validate else "last.ckpt")
    if not exported.is_file():
        raise CardioclrError(f"{exported} was not written (no epoch finished?)")
    ckpt = torch.load(exported, map_location="cpu", weights_only=True)
    state = {k.removeprefix("network."): v for k, v in ckpt["state_dict"].items() if k.startswith("network.")}
    best_score = trainer.checkpoint_callback.best_model_score if validate else None
    export = {
        "format": MODEL_FORMAT,
        "state_dict": state,
        "network": network_config_dict(cfg.network),
        "image_size": store.image_size,
        "spacing_mm": store.spacing_mm,
        "best_val_dice": float(best_score) if best_score is not None else None,
        "trained_on": str(Path(cfg.work).resolve()),
        "window": window,
        # segment/predict.py's test-time views follow it (mirrored or rotated).
        "mirrored_training": cfg.augment.flip_prob > 0,
    }
    with atomic_path(out / "model.pt") as tmp:
        torch.save(export, tmp)
    info = {
        "train_seconds": round(clock.elapsed(), 1),
        "epochs": int(trainer.current_epoch),
        "stopped_by": ("time budget" if clock.stopped_by_budget else
                       "early stopping" if trainer.current_epoch < cfg.trainer.max_epochs else "max epochs"),
        "best_val_dice": export["best_val_dice"],
        "precision": str(trainer.precision),  # as resolved: auto -> bf16-mixed or 32-true here
        "train_patients": selection.train,
        "val_patients": selection.val,
        "excluded_patients": selection.excluded,
        "held_out_patients": sorted(held_out),
        "image_size": store.image_size,
        "spacing_mm": store.spacing_mm,
        "config": to_plain(cfg),
    }
    write_json(done, info)  # last: marks the training finished
    return info
