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


def test_pretraining_and_fine_tuning_train_from_device_batches(tiny_work, tmp_path, monkeypatch):
    """The GPU data path (DeviceBatches inside Lightning's fit), exercised on the CPU."""
    import cardioclr.classify.train as ft_train
    import cardioclr.ssl.pretrain as pre
    from cardioclr.accel import DeviceBatches as Batches
    from cardioclr.classify.finetune import FinetuneConfig, finetune

    used: list[str] = []
    real_init = Batches.__init__

    def spy(self, tensors, *args, **kwargs):
        used.append(type(tensors).__name__)
        real_init(self, tensors, *args, **kwargs)

    monkeypatch.setattr(Batches, "__init__", spy)
    monkeypatch.setattr(pre, "_uses_gpu", lambda accelerator: True)  # trainer stays on the CPU
    monkeypatch.setattr(ft_train, "resident_device", lambda settings: torch.device("cpu"))
    torch.set_num_threads(1)
    cfg = pre.PretrainConfig(work=str(tiny_work), out=str(tmp_path / "pre"), encoder="smallcnn",
                             input_mode="segmented", masks="expert", image_size=32, batch_size=16,
                             max_epochs=2, patience=5, accelerator="cpu", limit_train_batches=2,
                             progress_bar=False)
    m = pre.pretrain(cfg)
    assert used[:2] == ["dict", "dict"]  # train and validation batches
    assert m["optimizer_steps"] == 4 and m["best_val_loss"] is not None
    fc = FinetuneConfig(work=str(tiny_work), encoder="smallcnn", init="none", input_mode="segmented",
                        mask_source="expert", out=str(tmp_path / "ft"), image_size=32,
                        grid_lr=(1e-3,), grid_batch=(16,), max_epochs=2, patience=2, max_folds=1,
                        saliency=False, n_boot=50, accelerator="cpu")
    fm = finetune(fc)
    assert "tuple" in used[2:]
    assert fm["test"]["macro_auc"]["value"] is not None


def test_compile_in_place_keeps_eager_without_a_cpp_compiler(monkeypatch):
    """No C++ compiler: Inductor could not build CPU kernels, so the module must stay eager."""
    import cardioclr.accel as accel

    monkeypatch.setattr(accel.shutil, "which", lambda name: None)
    conv = nn.Conv2d(1, 2, 3)
    assert accel.compile_in_place(conv, "cpu") is False
    assert conv._compiled_call_impl is None  # nn.Module.compile sets it
    assert conv(torch.zeros(1, 1, 5, 5)).shape == (1, 2, 3, 3)
