"""Trainer settings shared by every stage: which precision ``auto`` resolves to."""

from __future__ import annotations

import pytest

from cardioclr import training
from cardioclr.segment.train import preset_config
from cardioclr.training import TrainerSettings, resolve_precision


@pytest.mark.parametrize(("cpu_bf16", "native", "expected"), [
    (True, True, "bf16-mixed"),  # opted in, bf16 instructions: bf16 autocast on the CPU
    (True, False, "32-true"),  # emulated bf16 would be slower than float32
    (False, True, "32-true"),  # stages that did not opt in keep float32 on CPUs
])
def test_auto_precision_on_a_cpu(monkeypatch: pytest.MonkeyPatch, cpu_bf16: bool, native: bool,
                                 expected: str):
    monkeypatch.setattr(training, "cpu_has_native_bf16", lambda: native)
    s = TrainerSettings(accelerator="cpu", cpu_bf16=cpu_bf16)
    assert resolve_precision(s) == expected
    assert resolve_precision(TrainerSettings(accelerator="cpu", cpu_bf16=cpu_bf16,
                                             precision="32-true")) == "32-true"  # forced wins


def test_only_the_cpu_segmentation_preset_opts_in_and_the_option_overrides_it():
    assert preset_config("w", "cpu").trainer.cpu_bf16
    assert not TrainerSettings().cpu_bf16
    assert preset_config("w", "cpu", precision="32-true").trainer.precision == "32-true"


def test_the_capability_query_answers_a_bool():
    assert isinstance(training.cpu_has_native_bf16(), bool)
