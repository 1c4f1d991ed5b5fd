"""GPU speed helpers shared by the training stages; each one is a no-op (or the plain path) on CPU.

* :func:`configure_backends`: cuDNN autotuning (fixed input shapes: the fastest convolution
  algorithm is chosen once) and TF32 for the float32 matrix products that bf16 autocast leaves.
* :func:`channels_last`: NHWC memory layout for a convolutional module and its inputs on CUDA
  (tensor-core convolutions need no layout transposes then).
* :func:`compile_in_place`: ``torch.compile`` of a module's forward (TorchInductor), keeping its
  parameter names, with the eager path as the fallback when no C++ compiler is present.
* :class:`DeviceBatches`: batches drawn from tensors that already live on the training device,
  the whole dataset resident there (ACDC at 224 px: ~1.3 k float16 slices = 130 MB); each step
  is one ``index_select`` per tensor on the device: no DataLoader workers, no host copy, no
  host synchronisation on the hot path.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)


def configure_backends(device: torch.device | str) -> None:
    """cuDNN benchmark mode and TF32 matrix products on CUDA; nothing on other devices."""
    if torch.device(device).type != "cuda":
        return
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def channels_last(module: nn.Module, device: torch.device | str) -> nn.Module:
    """``module`` converted to channels_last on CUDA (in place; returned for chaining)."""
    if torch.device(device).type == "cuda":
        module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stubs omit it
    return module


def as_channels_last(x: Tensor) -> Tensor:
    """A 4-D CUDA tensor in channels_last layout (others unchanged)."""
    if x.is_cuda and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def compile_in_place(module: nn.Module, device: torch.device | str) -> bool:
    """Compile ``module``'s forward with TorchInductor, in place; True when it was compiled.

    ``nn.Module.compile`` (not ``torch.compile(module)``): the parameter names, hence checkpoints
    and exported weights, stay those of the eager module. On CPU, Inductor generates C++ and
    needs a compiler: without one (``c++``, ``g++`` or ``clang++`` on the PATH) the module stays
    eager. Any later compilation failure also falls back to eager (``suppress_errors``, a
    process-wide Dynamo setting), so a run never fails because of this speed-up. Compiling costs
    ~1 min per input shape and train/eval mode (cached under ``/tmp/torchinductor_$USER`` for
    later runs).
    """
    if torch.device(device).type == "cpu" and not any(
            shutil.which(c) for c in ("c++", "g++", "clang++")):
        log.info("no C++ compiler found: the network runs eagerly (uncompiled)")
        return False
    import torch._dynamo as dynamo

    dynamo.config.suppress_errors = True  # a failed graph runs eagerly instead of raising
    module.compile()
    return True


Batch = Any  # a dict or tuple of tensors, like the tensors given


class DeviceBatches:
    """An iterable of batches over tensors already on the training device.

    Args:
        tensors: a mapping name -> tensor or a sequence of tensors, all with the same first
            dimension N, all on one device (the batches keep that structure).
        batch_size: items per batch.
        shuffle: a new random order each epoch, drawn from ``generator`` (a CPU generator:
            its state is what a resumed run restores; the order is then moved to the device).
        drop_last: drop the last incomplete batch (equal batches, e.g. for NT-Xent).

    ``len()`` is the number of batches per epoch, as a DataLoader's.
    """

    def __init__(self, tensors: Mapping[str, Tensor] | Sequence[Tensor], batch_size: int,
                 shuffle: bool = False, drop_last: bool = False,
                 generator: torch.Generator | None = None) -> None:
        values = list(tensors.values()) if isinstance(tensors, Mapping) else list(tensors)
        if not values:
            raise ValueError("DeviceBatches needs at least one tensor")
        self.n = int(values[0].shape[0])
        if any(int(v.shape[0]) != self.n for v in values):
            raise ValueError("DeviceBatches: tensors differ in their first dimension")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.tensors = tensors
        self.device = values[0].device
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.generator = generator

    def __len__(self) -> int:
        if self.drop_last:
            return self.n // self.batch_size
        return math.ceil(self.n / self.batch_size)

    def _take(self, idx: Tensor) -> Batch:
        if isinstance(self.tensors, Mapping):
            return {k: v.index_select(0, idx) for k, v in self.tensors.items()}
        return tuple(v.index_select(0, idx) for v in self.tensors)

    def __iter__(self) -> Iterator[Batch]:
        order = (torch.randperm(self.n, generator=self.generator) if self.shuffle
                 else torch.arange(self.n)).to(self.device)
        for i in range(len(self)):
            yield self._take(order[i * self.batch_size:(i + 1) * self.batch_size])


__all__ = ["DeviceBatches", "as_channels_last", "channels_last", "compile_in_place", "configure_backends"]
