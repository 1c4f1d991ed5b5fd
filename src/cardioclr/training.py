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
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class TrainerSettings:
    """Hardware and loop settings shared by every training stage.

    ``devices``: number of devices (GPUs; CPU processes when ``accelerator='cpu'``);
    ``precision``: ``'auto'`` picks bf16-mixed on a GPU that supports it, 32 on CPU (bf16-mixed
    there too with ``cpu_bf16`` on a CPU with bf16 instructions; :func:`resolve_precision`).
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
    cpu_bf16: bool = False


def is_rank_zero() -> bool:
    """True unless a launcher (torchrun, SLURM, Lightning's DDP children) made us another rank.

    Read from the environment, so it holds before any trainer or process group exists.
    """
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK"):
        if os.environ.get(var) not in (None, "", "0"):
            return False
    return True


def inference_device(accelerator: str) -> torch.device:
    """Where a stage's inference (prediction, features, Grad-CAM) runs for a trainer
    ``accelerator``: the GPU when training could use one and one exists, else the CPU."""
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def cpu_has_native_bf16() -> bool:
    """True when the CPU has bfloat16 instructions (AVX512-BF16 or AMX-BF16; x86 only).

    Only then is bf16 autocast worth it on a CPU: oneDNN runs bf16 convolutions natively.
    Measured on the 2-core AMD EPYC (Zen 4, AVX512-BF16) development VM with the cpu
    segmentation preset's U-Net: a training step (batch 16, 128 px) 283 -> 201 ms eager and
    271 -> 178 ms compiled; a 4-mirroring inference of 20 slices at 144 px 0.48-0.56 ->
    0.23-0.32 s. Without those instructions bf16 is emulated and slower than float32, so the
    answer is False there (and on other architectures, whose capabilities name no such flag).
    """
    try:
        caps = torch.cpu.get_capabilities()
    except (AttributeError, RuntimeError):  # a torch without the query: assume emulation
        return False
    return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))


def resolve_precision(settings: TrainerSettings) -> str:
    """``auto`` -> ``bf16-mixed`` on a bf16-capable GPU, else ``16-mixed`` on GPU; on a CPU
    ``bf16-mixed`` when ``settings.cpu_bf16`` and the CPU has bf16 instructions
    (:func:`cpu_has_native_bf16`), else ``32-true``.

    ``cpu_bf16`` is opt-in per stage: it is set where bf16 was measured to keep the quality
    (the cpu segmentation preset); other stages keep float32 on CPUs.
    """
    if settings.precision != "auto":
        return settings.precision
    if inference_device(settings.accelerator).type != "cuda":
        return "bf16-mixed" if settings.cpu_bf16 and cpu_has_native_bf16() else "32-true"
    return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"


#: ``generators(trainer, module)`` -> the named ``torch.Generator`` objects a run draws from
#: besides the global random state (e.g. the DataLoader's shuffling generator).
GeneratorsFn = Callable[[L.Trainer, L.LightningModule], "dict[str, torch.Generator]"]


class RandomState(L.Callback):
    """Keeps the random-number state in every checkpoint and restores it on resume.

    Without it a resumed run re-seeds (or keeps the fresh process's) random state, so the
    epochs after an interruption draw other shuffles and augmentations than an uninterrupted
    run: a killed study would not finish with the same results. Saved: Python's, NumPy's and
    torch's global states (CUDA's too when present) and the run's own generators. Restored at
    ``on_fit_start`` (before any DataLoader iterator draws from them); a generator that a
    module creates in its own ``on_fit_start`` is restored at ``on_train_start``.
    """

    def __init__(self, generators: GeneratorsFn | None = None) -> None:
        self.generators = generators
        self._trainer: L.Trainer | None = None
        self._module: L.LightningModule | None = None
        self._pending: dict[str, Any] | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:  # noqa: D102
        self._trainer, self._module = trainer, pl_module

    def _named(self) -> dict[str, torch.Generator]:
        if self.generators is None or self._trainer is None or self._module is None:
            return {}
        return self.generators(self._trainer, self._module)

    def state_dict(self) -> dict[str, Any]:
        """The current random state (called by Lightning when a checkpoint is saved)."""
        state: dict[str, Any] = {
            "python": random.getstate(),
            "numpy": _numpy_state(),
            "torch": torch.get_rng_state(),
            "generators": {k: g.get_state() for k, g in self._named().items()},
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep the saved state; it is applied when training starts."""
        self._pending = state_dict

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:  # noqa: D102
        # Before the first DataLoader iterator exists: creating one draws its base seed (and,
        # without a generator, the shuffling seed) from the state restored here.
        state = self._pending
        if not state:
            return
        random.setstate(state["python"])
        _set_numpy_state(state["numpy"])
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        self._restore_generators(state)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:  # noqa: D102
        # Generators that modules create in their own on_fit_start (after the callbacks').
        if self._pending:
            self._restore_generators(self._pending)
        self._pending = None

    def _restore_generators(self, state: dict[str, Any]) -> None:
        """Set every saved generator that exists now, once; the rest stay pending."""
        named = self._named()
        left = dict(state.get("generators", {}))
        for name in list(left):
            if name in named:
                named[name].set_state(left.pop(name))
        state["generators"] = left


def _numpy_state() -> dict[str, Any]:
    """NumPy's global state as tensors and numbers (loadable with ``weights_only=True``)."""
    # The legacy (tuple) form, the default; numpy's stub also allows the dict form.
    state = cast("tuple[str, np.ndarray, int, int, float]", np.random.get_state())
    name, keys, pos, has_gauss, cached = state
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def _set_numpy_state(s: dict[str, Any]) -> None:
    np.random.set_state((s["name"], s["keys"].numpy().astype(np.uint32), s["pos"], s["has_gauss"],
                         s["cached"]))


def make_trainer(
    out_dir: str | os.PathLike[str],
    settings: TrainerSettings,
    monitor: str | None,
    mode: str = "min",
    extra_callbacks: list[L.Callback] | None = None,
    generators: GeneratorsFn | None = None,
) -> L.Trainer:
    """A trainer that early-stops on ``monitor``, keeps ``last.ckpt`` and ``best.ckpt``, and logs.

    ``monitor`` must be logged by the module once per validation epoch. None: no validation at
    all (no early stopping; only ``last.ckpt``, the model of the last epoch). Checkpoints carry the
    random state (:class:`RandomState`, with the run's own ``generators``), so a resumed run
    continues as the uninterrupted one would have.
    """
    out = Path(out_dir)
    ckpt_dir = out / "checkpoints"
    callbacks: list[L.Callback] = [RandomState(generators)]
    if monitor is None:
        callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=0,
                                         enable_version_counter=False))
    else:
        callbacks += [ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=monitor, mode=mode,
                                      save_last=True, save_top_k=1, enable_version_counter=False),
                      EarlyStopping(monitor=monitor, mode=mode, patience=settings.patience)]
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
        precision=cast("Any", resolve_precision(settings)),  # a Lightning name, checked by Lightning
        callbacks=callbacks,
        logger=[CSVLogger(out / "logs", name="csv", version=""),
                TensorBoardLogger(out / "logs", name="tensorboard", version="")],
        enable_progress_bar=settings.progress_bar,
        enable_model_summary=False,
        limit_train_batches=settings.limit_train_batches,
        limit_val_batches=0 if monitor is None else None,
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
