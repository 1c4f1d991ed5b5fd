"""``cardioclr pretrain``: SimCLR pretraining of one encoder on one input mode.

Reads ``WORK`` (slice store + splits, and predicted/expert masks for segmented/roi modes) and
writes ``OUT`` (default ``WORK/pretrain/<encoder>-<input>/``)::

    OUT/encoder.pt              the encoder of the best held-out epoch (cardioclr.models.checkpoint)
    OUT/deep_features.csv       patient_id, f0..f{2D-1}: that encoder's mean [ED, ES] features of
                                every stored patient (cardioclr.ssl.features); the label-free
                                deep half of the hybrid baseline (``cardioclr baseline
                                --deep-features OUT``)
    OUT/metrics.json            best held-out loss, epochs, images seen, images/s, sizes, config;
                                written last: its presence with the same config = run finished
    OUT/config.yaml             the full PretrainConfig; OUT/versions.json: git + packages
    OUT/checkpoints/last.ckpt   resume point (re-running the same command resumes)
    OUT/checkpoints/best.ckpt   best ``val/loss``
    OUT/logs/{csv,tensorboard}  per-step/epoch ``train/loss``, per-epoch ``val/loss``
    OUT/extra/<name>/           raw ``--extra`` datasets prepared here (unlabelled)

Batch size: ``batch_size`` is the GLOBAL number of images per optimiser step (each seen in two
views), as in the SimCLR/Nakashima papers, so a run means the same thing on 1 CPU or 8 GPUs:
each of the W processes gets ``batch_size / W`` images and NT-Xent gathers the projections
of all processes, so every image still has 2 * batch_size - 2 negatives.

Positives: ``positives="augment"`` is the paper's SimCLR (two views of one slice). The other
values (:mod:`cardioclr.ssl.positives`) add positives from the same patient: the same slice at
ED and ES, neighbouring slices, cine frames; negatives are then other patients only. Their
runs go to ``WORK/pretrain/<encoder>-<input>-<positives>/`` by default.

Throughput convention (here and in ``benchmarks/pretrain_throughput.py``): *images/s* counts
each image once per step although the encoder sees it twice (two views); views/s = 2 x that.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader

from cardioclr.accel import DeviceBatches, configure_backends
from cardioclr.artifacts import PretrainMetrics
from cardioclr.atomic import read_json, write_json
from cardioclr.choices import INPUT_MODES, MASK_SOURCES, POSITIVES
from cardioclr.data.augment import AugmentConfig
from cardioclr.data.store import SliceStore
from cardioclr.errors import CardioclrError
from cardioclr.models.checkpoint import save_encoder
from cardioclr.models.encoders import ENCODERS, encoder_names, load_widened
from cardioclr.provenance import save_run_info, to_plain
from cardioclr.run_identity import differences, run_identity
from cardioclr.segment.encoder import default_segmentation_model, load_segmentation_encoder
from cardioclr.ssl.data import (
    MAIN,
    PatientRef,
    SliceDataset,
    Source,
    SSLArrays,
    check_no_test,
    collate_slices,
    load_arrays,
    resolve_extras,
    split_validation,
)
from cardioclr.ssl.features import DEEP_FEATURES_FILE, write_simclr_features
from cardioclr.ssl.positives import PositivePairs, PositiveSpec
from cardioclr.ssl.simclr import MONITOR, SimCLRModule
from cardioclr.training import (
    TrainerSettings,
    inference_device,
    is_rank_zero,
    make_trainer,
    resume_checkpoint,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PretrainConfig:
    """Settings of ``cardioclr pretrain`` (sizes in pixels, margins in mm).

    ``batch_size`` is global (see the module docstring). ``val_fraction`` of the ``train``
    patients is held out for early stopping. ``limit_train_batches`` caps batches per epoch
    (int: count, float: fraction), for smoke tests. ``precision``: a Lightning precision
    (``auto``: bf16-mixed on a bf16-capable GPU, 32-true on CPU; see
    :func:`cardioclr.training.resolve_precision`). ``positives``: ``augment`` (the paper's
    SimCLR) or an anatomy-aware set (:mod:`cardioclr.ssl.positives`), ``neighbour_bound`` the
    relative base-to-apex distance of neighbour positives.
    """

    work: str
    encoder: str
    input_mode: str = "full"
    masks: str = "predicted"
    extra: tuple[str, ...] = ()
    out: str | None = None
    batch_size: int = 64
    lr: float = 1e-4
    cosine: bool = False
    temperature: float = 0.1
    max_epochs: int = 100
    patience: int = 10
    image_size: int = 96
    devices: int = 1
    accelerator: str = "auto"
    num_nodes: int = 1
    precision: str = "auto"
    imagenet_weights: str | None = None
    #: ``segmentation``: start from the trained segmentation network's encoder ("segmentation
    #: followed by SimCLR", issue 11 item 4; ``--encoder segunet`` only). ``segmentation_model``:
    #: its ``model.pt`` (None: ``WORK/segmentation/model/model.pt``).
    init: str = "none"
    segmentation_model: str | None = None
    seed: int = 0
    workers: int = 0
    val_fraction: float = 0.1
    use_cine: bool = True
    mask_margin_mm: float = 0.0
    roi_margin_mm: float = 10.0
    limit_train_batches: int | float = 1.0
    progress_bar: bool = True
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    positives: str = "augment"
    neighbour_bound: float = 0.25


# Fields that do not change what is learnt: a run may be resumed/skipped with other values
# (precision, like the number of devices, changes only rounding).
_HARDWARE = ("work", "out", "devices", "accelerator", "num_nodes", "precision", "workers",
             "progress_bar")
# Fields that only extend training: a finished run with other values is resumed, not redone.
_EXTENDABLE = ("max_epochs", "patience")


def default_out(work: str | os.PathLike[str], encoder: str, input_mode: str,
                positives: str = "augment") -> Path:
    """``WORK/pretrain/<encoder>-<input>`` (``-<positives>`` appended unless ``augment``)."""
    suffix = "" if positives == "augment" else f"-{positives}"
    return Path(work) / "pretrain" / f"{encoder}-{input_mode}{suffix}"


def run_key(cfg: PretrainConfig | dict[str, Any]) -> dict[str, Any]:
    """The fields that define what a run learns (hardware fields dropped; plain types).

    The mask source is irrelevant (and dropped) in ``full`` mode, which reads no mask. The
    positives are dropped when they are the paper's (``augment``), and the neighbour bound when
    no neighbour positives are used, so runs made before these options existed keep their key.
    """
    key = run_identity(to_plain(cfg) if isinstance(cfg, PretrainConfig) else cfg, _HARDWARE)
    key["extra"] = [str(Path(e).resolve()) for e in key.get("extra") or []]
    if key.get("imagenet_weights"):
        key["imagenet_weights"] = str(Path(key["imagenet_weights"]).resolve())
    if key.get("input_mode") == "full":
        key.pop("masks", None)
    if key.get("init", "none") == "none":
        # Absent before issue 11: runs without the option keep their identity.
        key.pop("init", None)
        key.pop("segmentation_model", None)
    elif key.get("segmentation_model"):
        key["segmentation_model"] = str(Path(key["segmentation_model"]).resolve())
    positives = key.get("positives", "augment")
    if positives == "augment":
        key.pop("positives", None)
    if positives not in ("neighbour", "anatomy"):
        key.pop("neighbour_bound", None)
    return key


def finished_metrics(out: Path, cfg: PretrainConfig) -> dict[str, Any] | None:
    """metrics.json of a finished run in ``out`` with the same config, else None."""
    metrics_path, encoder_path = out / "metrics.json", out / "encoder.pt"
    if not (metrics_path.is_file() and encoder_path.is_file()):
        return None
    metrics = read_json(metrics_path)
    return metrics if metrics.get("config") == run_key(cfg) else None


def _check_compatible(out: Path, cfg: PretrainConfig) -> None:
    """Refuse to resume or overwrite a run in ``out`` that learnt something else."""
    config_path = out / "config.yaml"
    started = (out / "checkpoints" / "last.ckpt").is_file() or (out / "encoder.pt").is_file()
    if not (started and config_path.is_file()):
        return
    old = run_key(yaml.safe_load(config_path.read_text(encoding="utf-8")) or {})
    diff = differences(old, run_key(cfg), ignore=_EXTENDABLE)
    if diff:
        raise CardioclrError(f"{out} holds a pretraining run with a different configuration "
                             f"({'; '.join(diff)}); choose another --out or delete {out}")


class _Throughput(L.Callback):
    """Wall time of the training part of each epoch (data + augmentation + steps, no validation)."""

    def __init__(self) -> None:
        self.train_seconds = 0.0
        self.start_step = 0
        self._t: float | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start_step = trainer.global_step

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t = time.perf_counter()

    def _stop(self) -> None:
        if self._t is not None:
            self.train_seconds += time.perf_counter() - self._t
            self._t = None

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop()


def _uses_gpu(accelerator: str) -> bool:
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def _validate(cfg: PretrainConfig) -> None:
    if cfg.encoder not in ENCODERS:
        raise CardioclrError(f"unknown encoder {cfg.encoder!r}; choose one of: {', '.join(encoder_names())}")
    if cfg.input_mode not in INPUT_MODES:
        raise CardioclrError(f"unknown input mode {cfg.input_mode!r}; choose one of: "
                             f"{', '.join(INPUT_MODES)}")
    if cfg.masks not in MASK_SOURCES:
        raise CardioclrError(f"unknown mask source {cfg.masks!r}; choose one of: {', '.join(MASK_SOURCES)}")
    if cfg.batch_size < 2:
        raise CardioclrError("--batch-size must be >= 2 (NT-Xent needs negatives)")
    if not 0 < cfg.val_fraction < 1:
        raise CardioclrError(f"val_fraction must be in (0, 1), got {cfg.val_fraction}")
    if not cfg.temperature > 0:
        raise CardioclrError(f"--temperature must be > 0, got {cfg.temperature}")
    if cfg.init not in ("none", "segmentation"):
        raise CardioclrError(f"unknown pretraining --init {cfg.init!r}; choose none or segmentation")
    if cfg.init == "segmentation" and cfg.encoder != "segunet":
        raise CardioclrError("--init segmentation needs --encoder segunet (the segmentation U-Net's "
                             f"down path), not {cfg.encoder!r}")
    if cfg.init == "segmentation" and cfg.imagenet_weights:
        raise CardioclrError("--init segmentation and --imagenet-weights exclude each other")
    if cfg.positives not in POSITIVES:
        raise CardioclrError(f"unknown positives {cfg.positives!r}; choose one of: {', '.join(POSITIVES)}")
    PositiveSpec(cfg.positives, cfg.neighbour_bound)  # checks the bound


def build_sample_lists(cfg: PretrainConfig, out: Path, rank_zero: bool = True
                       ) -> tuple[list[Source], list[PatientRef], list[PatientRef]]:
    """The sources and the train/validation patient lists of a run.

    Train = main ``train`` minus the held-out patients, + main ``unlabelled``, + every patient
    of the extra sources (their own test patients excluded); validation = held-out main
    ``train`` patients. Raises :class:`CardioclrError` if a main ``test`` patient got in.
    """
    main = SliceStore(cfg.work)
    extras = resolve_extras(cfg.extra, out, main, workers=cfg.workers or 2,
                            rank=0 if rank_zero else 1)
    main_source = Source(MAIN, main.work, cfg.masks)
    train_ids, val_ids = split_validation(main.splits.train, cfg.val_fraction, cfg.seed)
    test = set(main.splits.test)
    unlabelled = [p for p in sorted(main.splits.unlabelled) if p not in test and p not in set(train_ids)]
    train = [PatientRef(MAIN, p) for p in train_ids + unlabelled]
    for src in extras:
        train += [PatientRef(src.name, p) for p in src.patients()]
    val = [PatientRef(MAIN, p) for p in val_ids]
    check_no_test(train + val, main)
    overlap = {r.patient_id for r in train if r.source == MAIN} & {r.patient_id for r in val}
    if overlap:  # cannot happen by construction; the val loss would be meaningless
        raise CardioclrError(f"patients in both pretraining train and validation: {sorted(overlap)}")
    return [main_source, *extras], train, val


def _loaders(train: SSLArrays, val: SSLArrays, batch: int, val_batch: int, workers: int,
             pin: bool, shuffle: torch.Generator, with_index: bool = False,
             ) -> tuple[DataLoader[dict[str, torch.Tensor]], DataLoader[dict[str, torch.Tensor]]]:
    """In-memory loaders; Lightning swaps in a DistributedSampler under DDP.

    ``with_index``: batches carry each slice's row (anatomy-aware positives draw partners).
    """
    common: dict[str, Any] = {"num_workers": workers, "pin_memory": pin, "collate_fn": collate_slices,
                              "persistent_workers": workers > 0}
    train_loader = DataLoader(SliceDataset(train.images, train.hearts, with_index), batch_size=batch,
                              shuffle=True,
                              drop_last=True,  # equal batches on every rank for the gather
                              generator=shuffle, **common)
    # Fixed val batches of equal size: NT-Xent's value depends on the number of negatives.
    val_loader = DataLoader(SliceDataset(val.images, val.hearts, with_index), batch_size=val_batch,
                            shuffle=False, drop_last=True, **common)
    return train_loader, val_loader


def _device_loaders(train: SSLArrays, val: SSLArrays, batch: int, val_batch: int,
                    shuffle: torch.Generator, with_index: bool = False,
                    ) -> tuple[DeviceBatches, DeviceBatches]:
    """GPU-resident train/validation batches (one process): same batches as :func:`_loaders`
    (equal sizes, a new order per epoch from ``shuffle``), no DataLoader on the hot path."""
    device = inference_device("gpu")
    configure_backends(device)

    def tensors(a: SSLArrays) -> dict[str, torch.Tensor]:
        t = {"image": torch.from_numpy(a.images).to(device)}
        if a.hearts is not None:
            t["heart"] = torch.from_numpy(a.hearts).to(device)
        if with_index:
            t["index"] = torch.arange(len(a), device=device)
        return t

    return (DeviceBatches(tensors(train), batch, shuffle=True, drop_last=True, generator=shuffle),
            DeviceBatches(tensors(val), val_batch, shuffle=False, drop_last=True))


def pretrain(cfg: PretrainConfig) -> dict[str, Any]:
    """Run (or resume, or skip) one pretraining; returns the metrics dict (empty on ranks > 0)."""
    _validate(cfg)
    if cfg.init == "segmentation" and not cfg.segmentation_model:
        cfg = replace(cfg, segmentation_model=str(default_segmentation_model(cfg.work)))
    out = Path(cfg.out) if cfg.out else default_out(cfg.work, cfg.encoder, cfg.input_mode,
                                                    cfg.positives)
    if cfg.init == "segmentation" and not cfg.out:
        out = out.with_name(out.name + "-from-segmentation")
    seg_state: dict[str, torch.Tensor] | None = None
    if cfg.init == "segmentation":
        assert cfg.segmentation_model is not None  # resolved above
        seg_state, _ = load_segmentation_encoder(cfg.segmentation_model)  # fails before any data loads
    done = finished_metrics(out, cfg)
    if done is not None:
        log.info("%s: finished run with the same configuration; skipping", out)
        if is_rank_zero() and not (out / DEEP_FEATURES_FILE).is_file():
            # A run finished before the features existed (or whose masks were missing then).
            _write_features(out, cfg)
        return {**done, "skipped": True}
    _check_compatible(out, cfg)
    rank_zero = is_rank_zero()
    sources, train_refs, val_refs = build_sample_lists(cfg, out, rank_zero)
    common: dict[str, Any] = {"mode": cfg.input_mode, "image_size": cfg.image_size, "use_cine": cfg.use_cine,
              "mask_margin_mm": cfg.mask_margin_mm, "roi_margin_mm": cfg.roi_margin_mm}
    train = load_arrays(sources, train_refs, **common)
    val = load_arrays(sources, val_refs, **common)
    if rank_zero:
        save_run_info(out, cfg)

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    timer = _Throughput()
    settings = TrainerSettings(max_epochs=cfg.max_epochs, patience=cfg.patience,
                               accelerator=cfg.accelerator, devices=cfg.devices,
                               num_nodes=cfg.num_nodes, precision=cfg.precision,
                               progress_bar=cfg.progress_bar,
                               limit_train_batches=cfg.limit_train_batches)
    shuffle = torch.Generator().manual_seed(cfg.seed)

    def generators(_: L.Trainer, module: L.LightningModule) -> dict[str, torch.Generator]:
        # What a resumed run must continue: the shuffling (one process; DDP's sampler is
        # seeded per epoch) and the module's view sampling (created in its on_fit_start).
        named = {"shuffle": shuffle}
        views = getattr(module, "_train_gen", None)
        if isinstance(views, torch.Generator):
            named["views"] = views
        return named

    trainer = make_trainer(out, settings, monitor=MONITOR, mode="min", extra_callbacks=[timer],
                           generators=generators)
    world = int(trainer.world_size)
    global_batch = _fit_batch(cfg.batch_size, world, len(train))
    per_device = global_batch // world
    val_batch = min(per_device, len(val) // world)
    if val_batch < 2:
        raise CardioclrError(f"only {len(val)} held-out slices for {world} process(es); need at "
                             "least 2 per process: use more training patients or a larger "
                             "val_fraction")
    module = SimCLRModule(encoder=cfg.encoder, input_mode=cfg.input_mode, image_size=cfg.image_size,
                          lr=cfg.lr, temperature=cfg.temperature, cosine=cfg.cosine,
                          augment=cfg.augment.to_dict(), imagenet_weights=cfg.imagenet_weights,
                          seed=cfg.seed, positives=cfg.positives,
                          neighbour_bound=cfg.neighbour_bound)
    if seg_state is not None:
        # Before fit: a resumed run then overwrites it with its checkpoint, as it should.
        load_widened(module.encoder, seg_state)
    spec = module.positive_spec
    if spec.anatomical:
        train_pairs = PositivePairs(train.images, train.hearts, train.meta, spec)
        val_pairs = PositivePairs(val.images, val.hearts, val.meta, spec)
        module.attach_pairs(train_pairs, val_pairs)
        log.info("%s positives: %.1f per train slice on average (itself included)", spec.name,
                 float(train_pairs.table.counts().double().mean()))
    if world > 1 and _uses_gpu(cfg.accelerator):
        # Global batch norm (SimCLR): per-GPU statistics would let positives be identified by
        # their shared local statistics. SyncBatchNorm has no CPU/gloo implementation.
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)  # type: ignore[no-untyped-call]
    train_loader: Any
    val_loader: Any
    if world == 1 and cfg.workers == 0 and _uses_gpu(cfg.accelerator):
        # The whole dataset on the GPU, batches drawn there (cardioclr.accel.DeviceBatches).
        train_loader, val_loader = _device_loaders(train, val, per_device, val_batch, shuffle,
                                                   spec.anatomical)
    else:
        train_loader, val_loader = _loaders(train, val, per_device, val_batch, cfg.workers,
                                            _uses_gpu(cfg.accelerator), shuffle, spec.anatomical)
    log.info("pretraining %s on %s images: %d train slices (%d patients), %d held-out slices "
             "(%d patients); global batch %d = %d x %d processes -> %s", cfg.encoder,
             cfg.input_mode, len(train), len(train_refs), len(val), len(val_refs), global_batch,
             per_device, world, out)
    resume = resume_checkpoint(out)
    if resume and rank_zero:
        _keep_csv_log(out)
    fit_start = time.perf_counter()
    trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader, ckpt_path=resume)
    fit_seconds = time.perf_counter() - fit_start
    if trainer.interrupted:
        raise KeyboardInterrupt
    if not trainer.is_global_zero:
        return {}
    # make_trainer always adds a ModelCheckpoint (the best held-out loss).
    ckpt_cb = cast(ModelCheckpoint, trainer.checkpoint_callback)
    best_path = Path(ckpt_cb.best_model_path) if ckpt_cb and ckpt_cb.best_model_path else None
    if best_path is None or not best_path.is_file():
        best_path = out / "checkpoints" / "best.ckpt"
    if not best_path.is_file():
        raise CardioclrError(f"{out}: training ended without a checkpoint (no validation epoch?)")
    ckpt = torch.load(best_path, map_location="cpu", weights_only=True)
    state = {k[len("encoder."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("encoder.")}
    session_images = (trainer.global_step - timer.start_step) * global_batch
    metrics: PretrainMetrics = {
        "best_val_loss": float(ckpt_cb.best_model_score) if ckpt_cb.best_model_score is not None
        else None,
        "best_epoch": int(ckpt["epoch"]) + 1,  # 1-based: the number of epochs trained for it
        "epochs": int(trainer.current_epoch),
        "stopped_early": bool(trainer.current_epoch < cfg.max_epochs),
        "optimizer_steps": int(trainer.global_step),
        "images_seen": int(trainer.global_step * global_batch),
        "views_seen": int(2 * trainer.global_step * global_batch),
        "images_per_second": round(session_images / timer.train_seconds, 2) if timer.train_seconds
        else None,
        "train_seconds": round(timer.train_seconds, 2),
        "fit_seconds": round(fit_seconds, 2),
        "n_train_images": len(train),
        "n_val_images": len(val),
        "n_train_patients": len(train_refs),
        "n_val_patients": len(val_refs),
        "images_per_source": train.per_source,
        "global_batch": global_batch,
        "per_device_batch": per_device,
        "world_size": world,
        "precision": str(trainer.precision),
        "accelerator": type(trainer.accelerator).__name__,
        "feature_dim": module.feature_dim,
        "config": run_key(cfg),
    }
    save_encoder(out / "encoder.pt", state, cfg.encoder, module.feature_dim, cfg.input_mode,
                 cfg.image_size, mask_source=None if cfg.input_mode == "full" else cfg.masks,
                 mask_margin_mm=cfg.mask_margin_mm, roi_margin_mm=cfg.roi_margin_mm,
                 best_epoch=metrics["best_epoch"], best_val_loss=metrics["best_val_loss"],
                 **({"init": cfg.init, "segmentation_model": cfg.segmentation_model}
                    if cfg.init != "none" else {}))
    metrics["deep_features"] = _write_features(out, cfg)
    write_json(out / "metrics.json", metrics)  # last: marks the run finished
    log.info("best held-out loss %.4f at epoch %d; encoder -> %s", metrics["best_val_loss"] or math.nan,
             metrics["best_epoch"], out / "encoder.pt")
    return cast(dict[str, Any], metrics)


def _write_features(out: Path, cfg: PretrainConfig) -> dict[str, Any] | None:
    """``OUT/deep_features.csv`` from ``OUT/encoder.pt`` (rank zero only); its summary, or None.

    Not fatal: the encoder is the product of the run, the features a convenience for the hybrid
    baseline. ``full`` pretraining reads no mask, but the features use the heart slices (as the
    classifier does), so without masks they cannot be computed yet; re-running the same
    ``cardioclr pretrain`` command after ``cardioclr segment predict`` writes them.
    """
    try:
        return write_simclr_features(out / "encoder.pt", cfg.work, out / DEEP_FEATURES_FILE,
                                     mask_source=cfg.masks, device=inference_device(cfg.accelerator))
    except CardioclrError as err:
        log.warning("%s: no %s written (%s); re-run this command once the masks exist", out,
                    DEEP_FEATURES_FILE, err)
        return None


def _keep_csv_log(out: Path) -> None:
    """Move the CSV log of the interrupted session aside before resuming.

    Lightning's CSVLogger deletes an existing ``metrics.csv`` in its (fixed) log folder; the
    previous sessions' rows are kept as ``metrics.before-<n>.csv``.
    """
    csv = out / "logs" / "csv" / "metrics.csv"
    if csv.is_file():
        n = 1
        while (kept := csv.with_name(f"metrics.before-{n}.csv")).exists():
            n += 1
        os.replace(csv, kept)


def _fit_batch(batch: int, world: int, n_train: int) -> int:
    """The global batch actually used: ``batch`` if it fits the data, else the largest that does.

    Must be a multiple of the number of processes ``world``.
    """
    if batch % world:
        raise CardioclrError(f"--batch-size {batch} is the global batch; it must be divisible by "
                             f"the {world} processes (devices x nodes)")
    fitted = min(batch, (n_train // world) * world)
    if fitted < 2 * world:
        raise CardioclrError(f"only {n_train} training slices: too few for contrastive pretraining "
                             f"with {world} process(es)")
    if fitted < batch:
        log.warning("only %d training slices: global batch reduced from %d to %d", n_train, batch,
                    fitted)
    return fitted


__all__ = ["PretrainConfig", "build_sample_lists", "default_out", "finished_metrics", "pretrain",
           "run_key"]
