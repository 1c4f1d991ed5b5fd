"""One place that builds Lightning trainers, so every stage logs, checkpoints and resumes alike.

Every training stage (segmentation, SimCLR pretraining, fine-tuning) writes into its own
directory::

    OUT/checkpoints/last.ckpt   resumable state (weights, optimiser, epoch, callbacks)
    OUT/checkpoints/best.ckpt   best weights on the monitored metric
    OUT/logs/csv/metrics.csv    per-epoch metrics (CSVLogger)
    OUT/logs/tensorboard/       TensorBoard events
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class TrainerSettings:
    """Hardware and loop settings shared by every training stage.

    ``devices``: number of devices (GPUs; CPU processes when ``accelerator='cpu'``);
    ``precision``: ``'auto'`` picks bf16-mixed on a GPU that supports it, 32 on CPU.
    """

    max_epochs: int = 20
    patience: int = 5
    accelerator: str = "auto"
    devices: int | str = 1
    precision: str = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    progress_bar: bool = True
    limit_train_batches: int | float = 1.0
    deterministic: bool = False


def resolve_precision(settings: TrainerSettings) -> str:
    """``auto`` -> ``bf16-mixed`` on a bf16-capable GPU, else ``16-mixed`` on GPU, else ``32``."""
    if settings.precision != "auto":
        return settings.precision
    use_gpu = settings.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    if not use_gpu:
        return "32-true"
    return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"


def make_trainer(
    out_dir: str | os.PathLike[str],
    settings: TrainerSettings,
    monitor: str,
    mode: str = "min",
    extra_callbacks: list[L.Callback] | None = None,
) -> L.Trainer:
    """A trainer that early-stops on ``monitor``, keeps ``last.ckpt`` and ``best.ckpt``, and logs.

    ``monitor`` must be logged by the module once per validation epoch.
    """
    out = Path(out_dir)
    ckpt_dir = out / "checkpoints"
    callbacks: list[L.Callback] = [
        ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=monitor, mode=mode,
                        save_last=True, save_top_k=1, enable_version_counter=False),
        EarlyStopping(monitor=monitor, mode=mode, patience=settings.patience),
    ]
    if settings.progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=max(1, _refresh_rate())))
    callbacks.extend(extra_callbacks or [])
    strategy = settings.strategy
    devices = settings.devices
    if strategy == "auto" and _more_than_one(devices):
        strategy = "ddp"
    return L.Trainer(
        default_root_dir=out,
        max_epochs=settings.max_epochs,
        accelerator=settings.accelerator,
        devices=devices,
        num_nodes=settings.num_nodes,
        strategy=strategy,
        precision=resolve_precision(settings),
        callbacks=callbacks,
        logger=[CSVLogger(out / "logs", name="csv", version=""),
                TensorBoardLogger(out / "logs", name="tensorboard", version="")],
        enable_progress_bar=settings.progress_bar,
        enable_model_summary=False,
        limit_train_batches=settings.limit_train_batches,
        deterministic=settings.deterministic,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
    )


def resume_checkpoint(out_dir: str | os.PathLike[str]) -> str | None:
    """Path of ``last.ckpt`` to resume from, or None when starting fresh."""
    last = Path(out_dir) / "checkpoints" / "last.ckpt"
    if last.is_file():
        log.info("resuming from %s", last)
        return str(last)
    return None


def _more_than_one(devices: int | str) -> bool:
    if isinstance(devices, int):
        return devices > 1 or devices == -1
    return devices not in ("1", "auto")


def _refresh_rate() -> int:
    # Refresh the bar rarely when output is not a terminal (CI logs, nohup) to keep logs short.
    return 1 if os.isatty(2) else 50
