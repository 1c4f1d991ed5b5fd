"""Stage functions of a study: one per cell kind, each calling the stage's Python API.

Every function takes the :class:`~cardioclr.study.context.StudyContext` and the
:class:`~cardioclr.study.grid.Cell` and runs the stage into the cell's directory; the stage
itself saves config, versions, logs, checkpoints and ``metrics.json`` there, resumes from its
checkpoint and skips work it already finished. Stage options of the study config
(``segment.options``, ``pretrain.options``, ...) are applied to the stage's own config
dataclass by :func:`apply_options`, nested dataclasses included (``optim: {lr: 1e-3}``).
The registry :data:`cardioclr.study.kinds.CELL_KINDS` names the function of each kind.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from cardioclr.atomic import read_json, write_json
from cardioclr.errors import CardioclrError
from cardioclr.layout import WorkLayout
from cardioclr.provenance import environment_info
from cardioclr.study.config import StudyConfig
from cardioclr.study.context import StudyContext
from cardioclr.study.grid import Cell


def apply_options(obj: Any, options: dict[str, Any], where: str) -> Any:
    """``dataclasses.replace`` with ``options``, recursing into nested dataclass fields.

    Lists become tuples (the stage configs are frozen). Unknown keys raise
    :class:`CardioclrError` naming ``where`` and the known fields.
    """
    if not options:
        return obj
    fields = {f.name for f in dataclasses.fields(obj)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise CardioclrError(f"study.{where}: unknown option(s) {unknown} for "
                             f"{type(obj).__name__}; known: {', '.join(sorted(fields))}")
    changes: dict[str, Any] = {}
    for key, value in options.items():
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            changes[key] = apply_options(current, value, f"{where}.{key}")
        elif isinstance(value, list):
            changes[key] = tuple(value)
        else:
            changes[key] = value
    return dataclasses.replace(obj, **changes)


def _device(cfg: StudyConfig) -> str:
    return "cpu" if cfg.accelerator == "cpu" else "auto"


# ------------------------------------------------------------------------------ config builders
# Each builder returns the stage config of a cell; check_options calls them on a dummy cell so
# that a wrong option fails before the first cell runs.


def synthetic_kwargs(cfg: StudyConfig) -> dict[str, Any]:
    """Keyword arguments of :func:`cardioclr.data.synthetic.write_synthetic_cohort`."""
    import inspect

    from cardioclr.data.synthetic import write_synthetic_cohort

    params = set(inspect.signature(write_synthetic_cohort).parameters) - {"out_dir", "progress"}
    unknown = sorted(set(cfg.synthetic.options) - params)
    if unknown:
        raise CardioclrError(f"study.synthetic.options: unknown option(s) {unknown}; known: "
                             f"{', '.join(sorted(params))}")
    return {"n_patients": cfg.synthetic.patients, "seed": cfg.synthetic.seed,
            **{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.synthetic.options.items()}}


def prepare_config(cfg: StudyConfig, data: Path, work: Path) -> Any:
    """:class:`cardioclr.data.prepare.PrepareConfig` of the study."""
    from cardioclr.data.prepare import PrepareConfig

    p = cfg.prepare
    return PrepareConfig(data=str(data), out=str(work), spacing_mm=p.spacing_mm,
                         image_size=p.image_size, split=p.split, test_fraction=p.test_fraction,
                         n_folds=p.n_folds, seed=p.seed, workers=p.workers,
                         unpack=p.unpack)


def segment_train_config(cfg: StudyConfig, work: Path) -> Any:
    """:class:`cardioclr.segment.train.SegTrainConfig`: the preset, study options, hardware."""
    from cardioclr.segment.train import preset_config

    seg = preset_config(work, cfg.segment.preset)
    seg = apply_options(seg, cfg.segment.options, "segment.options")
    trainer = dataclasses.replace(seg.trainer, devices=cfg.devices, accelerator=cfg.accelerator,
                                  progress_bar=False)
    return dataclasses.replace(seg, trainer=trainer)


def segment_predict_config(cfg: StudyConfig, work: Path) -> Any:
    """:class:`cardioclr.segment.predict.PredictConfig` (``segment.predict_options``)."""
    from cardioclr.segment.predict import PredictConfig

    return apply_options(PredictConfig(work=str(work), device=_device(cfg)),
                         cfg.segment.predict_options, "segment.predict_options")


def pretrain_config(cfg: StudyConfig, work: Path, out: Path, encoder: str, input_mode: str,
                    options: dict[str, Any] | None = None) -> Any:
    """:class:`cardioclr.ssl.pretrain.PretrainConfig` of one (encoder, input) cell.

    The network input size defaults to the store grid (no resampling) unless
    ``pretrain.options.image_size`` says otherwise. ``options``: a beyond-the-paper cell's
    ``pretrain_options``, applied over ``pretrain.options``.
    """
    from cardioclr.ssl.pretrain import PretrainConfig

    base = PretrainConfig(work=str(work), encoder=encoder, input_mode=input_mode,
                          masks=cfg.mask_source, out=str(out), image_size=cfg.prepare.image_size,
                          seed=cfg.seed)
    pc = apply_options(base, cfg.pretrain.options, "pretrain.options")
    pc = apply_options(pc, options or {}, "beyond_paper.pretrain_options")
    return dataclasses.replace(pc, devices=cfg.devices, accelerator=cfg.accelerator,
                               progress_bar=False, work=str(work), out=str(out), encoder=encoder,
                               input_mode=input_mode)


def finetune_config(cfg: StudyConfig, work: Path, out: Path, params: dict[str, Any],
                    weights: str | None) -> Any:
    """:class:`cardioclr.classify.finetune.FinetuneConfig` of one grid cell."""
    from cardioclr.classify.finetune import FinetuneConfig

    base = FinetuneConfig(work=str(work), encoder=params["encoder"], init=params["init"],
                          weights=weights, input_mode=params["input"], mask_source=cfg.mask_source,
                          out=str(out), image_size=cfg.prepare.image_size)
    fc = apply_options(base, cfg.finetune.options, "finetune.options")
    # A beyond-the-paper cell's own finetune options, over the study's.
    fc = apply_options(fc, params.get("options") or {}, "beyond_paper.finetune_options")
    return dataclasses.replace(fc, devices=cfg.devices, accelerator=cfg.accelerator,
                               progress_bar=False, work=str(work), out=str(out),
                               encoder=params["encoder"], init=params["init"], weights=weights,
                               input_mode=params["input"])


def baseline_config(cfg: StudyConfig, work: Path, out: Path, deep_features: Path | None) -> Any:
    """:class:`cardioclr.evaluate.baseline.BaselineConfig` (clinical, or hybrid with features)."""
    from cardioclr.evaluate.baseline import BaselineConfig

    base = BaselineConfig(work=str(work), out=str(out), masks=cfg.mask_source, seed=cfg.seed,
                          n_boot=cfg.report.n_boot)
    bc = apply_options(base, cfg.baseline.options, "baseline.options")
    return dataclasses.replace(bc, work=str(work), out=str(out),
                               deep_features=str(deep_features) if deep_features else None)


# Option checks (CellKind.check_options): build the stage config with dummy paths.
_WORK, _OUT = Path("WORK"), Path("OUT")


def check_synthetic(cfg: StudyConfig) -> None:
    """Unknown ``synthetic.options`` fail (only a study without ``--data`` uses them)."""
    if cfg.data is None:
        synthetic_kwargs(cfg)


def check_segment_train(cfg: StudyConfig) -> None:
    """Unknown ``segment.options`` fail."""
    segment_train_config(cfg, _WORK)


def segment_train_budget(cfg: StudyConfig) -> float | None:
    """Seconds the segmentation training will take when its preset gives it a wall-clock budget
    (the ``cpu`` preset: 28 minutes per model, ``folds`` models), else None (an epoch cap: its
    time depends on the machine). For the study's ETA."""
    seg = segment_train_config(cfg, _WORK)
    budget = seg.optim.time_budget_s
    return None if budget is None else float(budget) * max(1, int(seg.folds))


def check_segment_predict(cfg: StudyConfig) -> None:
    """Unknown ``segment.predict_options`` fail."""
    segment_predict_config(cfg, _WORK)


def check_pretrain(cfg: StudyConfig) -> None:
    """Unknown ``pretrain.options`` fail."""
    pretrain_config(cfg, _WORK, _OUT, cfg.encoders[0], "full")


def check_finetune(cfg: StudyConfig) -> None:
    """Unknown ``finetune.options`` fail."""
    finetune_config(cfg, _WORK, _OUT, {"encoder": cfg.encoders[0], "init": "none", "input": "full"}, None)


def check_beyond(cfg: StudyConfig) -> None:
    """Unknown ``beyond_paper`` finetune / pretrain options fail."""
    for b in cfg.beyond_paper:
        enc = b.encoder or cfg.encoders[0]
        finetune_config(cfg, _WORK, _OUT, {"encoder": enc, "init": b.init, "input": b.input,
                                           "options": b.finetune_options}, None)
        if b.pretrain_input is not None:
            pretrain_config(cfg, _WORK, _OUT, enc, b.pretrain_input, b.pretrain_options)


def check_baseline(cfg: StudyConfig) -> None:
    """Unknown ``baseline.options`` fail."""
    baseline_config(cfg, _WORK, _OUT, None)


# ------------------------------------------------------------------------------ stage functions


def run_synthetic(ctx: StudyContext, cell: Cell) -> dict[str, Any]:
    """Write the built-in synthetic cohort into ``OUT/data`` (ACDC layout)."""
    from cardioclr.data.synthetic import write_synthetic_cohort

    kwargs = synthetic_kwargs(ctx.cfg)
    ids = write_synthetic_cohort(ctx.data, **kwargs)
    write_json(ctx.data.parent / "data_info.json", {"synthetic": kwargs, "patients": len(ids),
                                                   "environment": environment_info()})
    return {"patients": len(ids)}


def run_prepare(ctx: StudyContext, cell: Cell) -> dict[str, Any]:
    """Prepare the store ``OUT/work`` (a store finished by an earlier run is kept)."""
    from cardioclr.data.prepare import prepare

    dataset_json = WorkLayout(ctx.work).dataset_json
    if dataset_json.is_file():
        summary: dict[str, Any] = read_json(dataset_json)
        return summary
    return prepare(prepare_config(ctx.cfg, ctx.data, ctx.work))


def run_segment_train(ctx: StudyContext, cell: Cell) -> dict[str, Any]:
    """Train the segmentation model on the train split (resumes, skips when finished)."""
    from cardioclr.segment.train import train

    info = train(segment_train_config(ctx.cfg, ctx.work))
    return {k: info.get(k) for k in ("train_seconds", "best_val_dice", "epochs") if k in info}


def run_segment_predict(ctx: StudyContext, cell: Cell) -> dict[str, Any]:
    """Segment every patient of the store (masks, NIfTI, QC)."""
    from cardioclr.segment.predict import predict

    pc = segment_predict_config(ctx.cfg, ctx.work)
    summary = predict(pc)
    if summary.get("segmented", 0) == 0:
        raise CardioclrError(f"segmentation failed for every patient: {summary.get('failed')}")
    if not pc.qc_png:
        qc_examples(ctx.work, QC_EXAMPLES)
    return {k: summary.get(k) for k in ("patients", "segmented", "flagged_patients", "seconds")}


#: QC pictures drawn when the segment stage was told to draw none (the demo: one matplotlib
#: figure per patient costs more than segmenting it): half flagged patients, half test ones.
QC_EXAMPLES = 4


def qc_examples(work: Path, n: int) -> list[str]:
    """Draw ``WORK/segmentation/qc/PID.png`` for ``n`` patients; returns their ids."""
    import pandas as pd

    from cardioclr.data.masks import load_labels, predicted_mask_path
    from cardioclr.data.store import SliceStore
    from cardioclr.segment.qc import qc_figure

    store = SliceStore(work)
    layout = WorkLayout(work)
    flags = pd.read_csv(layout.qc_flags, dtype={"patient_id": str}) if (
        layout.qc_flags.is_file()) else pd.DataFrame(columns=["patient_id"])
    # Half flagged, half not (the report shows both kinds side by side); test patients first.
    flagged = [p for p in dict.fromkeys(flags["patient_id"]) if predicted_mask_path(work, p).is_file()]
    others = [p for p in dict.fromkeys([*store.splits.test, *store.patient_ids])
              if p not in set(flagged) and predicted_mask_path(work, p).is_file()]
    k = min(len(flagged), max(n - len(others), (n + 1) // 2))
    chosen = (flagged[:k] + others)[:n]
    for pid in chosen:
        ps = store.load(pid)
        ed, es = load_labels(work, pid, "predicted")
        expert = ({"ED": ps.ed_mask, "ES": ps.es_mask}
                  if ps.ed_mask is not None and ps.es_mask is not None else None)
        rows = flags[flags["patient_id"] == pid].drop(columns="patient_id").to_dict("records")
        qc_figure(layout.qc_images / f"{pid}.png", pid, {"ED": ps.ed_image, "ES": ps.es_image},
                  {"ED": ed, "ES": es}, expert, rows)
    return chosen


def run_segment_evaluate(ctx: StudyContext, cell: Cell) -> dict[str, Any]:
    """Dice, HD95 and clinical-index agreement on the test split."""
    from cardioclr.segment.evaluate import evaluate

    m = evaluate(ctx.work)
    return {"mean_dice": m.get("mean_dice"), "mean_hd95": m.get("mean_hd95")}


def run_pretrain(ctx: StudyContext, cell: Cell) -> dict[str, Any]:
    """SimCLR pretraining of one encoder on full or segmented images."""
    from cardioclr.ssl.pretrain import pretrain

    p = cell.params
    m = pretrain(pretrain_config(ctx.cfg, ctx.work, ctx.cell_dir(cell), p["encoder"], p["input"],
                                 p.get("options")))
    return {k: m.get(k) for k in ("best_val_loss", "best_epoch", "epochs", "train_seconds")}


def run_finetune(ctx: StudyContext, cell: Cell) -> dict[str, Any]:
    """One fine-tuning cell (of the paper's grid, or beyond it): CV, final model(s), test
    evaluation, saliency."""
    from cardioclr.classify.finetune import finetune

    p = cell.params
    weights = p.get("weights")
    if weights and p["init"] == "simclr":
        weights = str(ctx.out / weights)
    m = finetune(finetune_config(ctx.cfg, ctx.work, ctx.cell_dir(cell), p, weights))
    auc = ((m.get("test") or {}).get("macro_auc") or {}).get("value")
    return {"auc": auc, "train_seconds": m.get("train_seconds")}


def run_baseline(ctx: StudyContext, cell: Cell) -> dict[str, Any]:
    """Clinical-feature baseline (``baseline``: its default classifier) or the hybrid: indices + the SimCLR
    pretraining cell's ``deep_features.csv`` (self-supervised: never saw a label)."""
    from cardioclr.evaluate.baseline import run_baseline as _run

    deep = None
    if cell.kind == "hybrid":
        from cardioclr.ssl.features import DEEP_FEATURES_FILE, write_simclr_features
        from cardioclr.training import inference_device

        folder = ctx.out / cell.params["deep_features"]
        deep = folder / DEEP_FEATURES_FILE
        if not deep.is_file():
            # A pretraining cell finished before its stage wrote features, or without masks
            # (full input): compute them now from its encoder.pt (masks are a dependency here).
            write_simclr_features(folder / "encoder.pt", ctx.work, deep, mask_source=ctx.cfg.mask_source,
                                  device=inference_device(ctx.cfg.accelerator))
    m = _run(baseline_config(ctx.cfg, ctx.work, ctx.cell_dir(cell), deep))
    return {"auc": (m.get("macro_auc") or {}).get("value"), "model": m.get("model")}


def stage_seconds(state_cells: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Seconds per cell kind from ``study_state.json``'s cells (for the benchmark)."""
    out: dict[str, float] = {}
    for rec in state_cells.values():
        if rec.get("seconds"):
            out[rec["kind"]] = round(out.get(rec["kind"], 0.0) + float(rec["seconds"]), 2)
    return out
