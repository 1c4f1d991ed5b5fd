"""The registry of study cell kinds: one entry per kind says everything the runner needs.

In the style of solo-learn's ``METHODS`` dict: :data:`CELL_KINDS` maps a kind name (the
``kind`` of a :class:`~cardioclr.study.grid.Cell`) to a :class:`CellKind`: the stage function
that runs it, its prior cost (ETA before anything was timed), the files it must leave besides
the completion marker, whether it trains with Lightning (and so runs in its own process with
several devices), and the option check run before the study starts.

Tests pass their own registry to :func:`cardioclr.study.runner.run_study` (fake stage
functions, no option check, never a separate process); production code never asks whether
it runs under a test.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cardioclr.errors import CardioclrError
from cardioclr.study import stages
from cardioclr.study.config import StudyConfig
from cardioclr.study.context import StageFunction


@dataclass(frozen=True)
class CellKind:
    """One kind of study cell.

    ``weight``: relative expected cost before any cell was timed (only ratios matter; measured
    on the demo preset, 2 CPU cores). ``outputs``: files the cell's directory must hold besides
    the marker to count as finished. ``multi_device``: a Lightning training; with
    ``devices > 1`` the runner starts it as ``python -m cardioclr.study.cell`` (which runs
    :data:`CELL_KINDS`' function). ``check_options``: builds the stage's config from the study
    config so a wrong option fails before the first cell runs. ``budget_seconds``: the cell's
    duration when its configuration fixes it (a wall-clock training budget), else None; the ETA
    uses it instead of the weight, and does not take the machine's speed from such a cell.
    """

    run: StageFunction
    weight: float = 1.0
    outputs: tuple[str, ...] = ()
    multi_device: bool = False
    check_options: Callable[[StudyConfig], object] | None = None
    budget_seconds: Callable[[StudyConfig], float | None] | None = None


CELL_KINDS: dict[str, CellKind] = {
    "synthetic": CellKind(stages.run_synthetic, 0.2, check_options=stages.check_synthetic),
    "prepare": CellKind(stages.run_prepare, 0.3, ("dataset.json",)),
    "segment-train": CellKind(stages.run_segment_train, 3.0, multi_device=True,
                              check_options=stages.check_segment_train,
                              budget_seconds=stages.segment_train_budget),
    "segment-predict": CellKind(stages.run_segment_predict, 0.4,
                                check_options=stages.check_segment_predict),
    "segment-evaluate": CellKind(stages.run_segment_evaluate, 0.3, ("metrics.json",)),
    "pretrain": CellKind(stages.run_pretrain, 3.0, ("metrics.json",), multi_device=True,
                         check_options=stages.check_pretrain),
    "finetune": CellKind(stages.run_finetune, 2.0, ("metrics.json",), multi_device=True,
                         check_options=stages.check_finetune),
    # A fine-tuning cell beyond the paper's grid (``beyond_paper:``): the same stage, its own
    # options; a kind of its own so that Tables 1-3 never pick it up.
    "beyond": CellKind(stages.run_finetune, 2.0, ("metrics.json",), multi_device=True,
                       check_options=stages.check_beyond),
    "baseline": CellKind(stages.run_baseline, 0.3, ("metrics.json",),
                         check_options=stages.check_baseline),
    "hybrid": CellKind(stages.run_baseline, 0.3, ("metrics.json",)),
}


#: Kinds of cells that may run side by side, each in its own process, from the fine-tuning stage
#: on (``finetune.concurrent > 1``; :func:`cardioclr.study.runner.concurrent_group`): each reads
#: only finished upstream outputs and writes only its own cell directory. The clinical and hybrid
#: baselines are here because they are one-thread scikit-learn work that would otherwise leave the
#: second core idle for minutes (real-cpu preset: 142 + 164 s one after the other,
#: benchmarks/README.md).
CONCURRENT_KINDS: tuple[str, ...] = ("finetune", "beyond", "baseline", "hybrid")


def cell_kind(kinds: Mapping[str, CellKind], name: str) -> CellKind:
    """``kinds[name]``, or an error listing the known kinds."""
    if name not in kinds:
        raise CardioclrError(f"no stage function for cell kind {name!r}; known: {', '.join(kinds)}")
    return kinds[name]


def check_options(cfg: StudyConfig, kinds: Mapping[str, CellKind] = CELL_KINDS) -> None:
    """Run every kind's option check: unknown options fail now, not mid-study."""
    for kind in kinds.values():
        if kind.check_options is not None:
            kind.check_options(cfg)


#: Prior weights of presets whose kinds cost other ratios than the demo's (``CellKind.weight``),
#: in the same units (a fine-tuning cell weighs 2.0). ``real-cpu``: each kind's mean seconds per
#: cell in the study of the 100 ACDC patients on 2 cores (2026-12-03, commit 413828a;
#: benchmarks/results/study_speed_real_cpu_grid150.json) / 73 s: SimCLR 77 s, fine-tuning 146 s (two
#: at a time), roi 141 s, clinical 135 s, hybrid 171 s, segment-predict 82 s. With the demo's
#: weights the ETA after both SimCLR pretrainings said 4.4 minutes for 11.8 (SimCLR weighs 3 and
#: a baseline 0.3 there: on the demo's 64 px synthetic cohort a baseline takes seconds).
PRESET_WEIGHTS: dict[str, dict[str, float]] = {
    "real-cpu": {"prepare": 0.08, "segment-predict": 1.1, "segment-evaluate": 0.13, "pretrain": 1.05,
                 "finetune": 2.0, "beyond": 1.9, "baseline": 1.85, "hybrid": 2.3},
}


def kind_weights(kinds: Mapping[str, CellKind] = CELL_KINDS, preset: str | None = None) -> dict[str, float]:
    """Kind name -> prior cost weight (for the ETA): the registry's, or the ``preset``'s measured
    one (:data:`PRESET_WEIGHTS`) where it has one."""
    measured = PRESET_WEIGHTS.get(preset or "", {})
    return {name: measured.get(name, k.weight) for name, k in kinds.items()}
