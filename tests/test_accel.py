"""GPU speed helpers (cardioclr.accel): their CPU behaviour, which the tests can check."""

from __future__ import annotations

import torch
from torch import nn

from cardioclr.accel import DeviceBatches, as_channels_last, channels_last, configure_backends


def test_device_batches_cover_every_item_once_per_epoch_in_a_new_order():
    x = torch.arange(10).float()
    gen = torch.Generator().manual_seed(0)
    batches = DeviceBatches({"image": x, "heart": x * 2}, batch_size=4, shuffle=True, generator=gen)
    assert len(batches) == 3
    epoch1 = [b["image"] for b in batches]
    assert [len(b) for b in epoch1] == [4, 4, 2]
    first = torch.cat(epoch1)
    assert sorted(first.tolist()) == x.tolist() and first.tolist() != x.tolist()
    second = torch.cat([b["image"] for b in batches])
    assert sorted(second.tolist()) == x.tolist() and second.tolist() != first.tolist()
    b = next(iter(batches))
    assert torch.equal(b["heart"], b["image"] * 2)  # rows stay aligned across tensors


def test_device_batches_drop_last_and_tuples():
    t = (torch.zeros(10, 2), torch.arange(10))
    batches = DeviceBatches(t, batch_size=4, drop_last=True)
    assert len(batches) == 2
    out = list(batches)
    assert all(isinstance(b, tuple) and b[0].shape == (4, 2) for b in out)
    assert torch.equal(torch.cat([b[1] for b in out]), torch.arange(8))


def test_cpu_paths_leave_layout_alone():
    configure_backends("cpu")
    conv = channels_last(nn.Conv2d(1, 2, 3), "cpu")
    assert conv.weight.is_contiguous()
    x = torch.zeros(2, 1, 8, 8)
    assert as_channels_last(x) is x
