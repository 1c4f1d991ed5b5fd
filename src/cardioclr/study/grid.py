"""Grid expansion: a :class:`StudyConfig` -> the ordered list of cells a study runs.

Every cell is one directory under ``OUT`` (its stage writes config, versions, logs,
checkpoint and ``metrics.json`` there). Layout::

    OUT/data/                                   synthetic cohort (only without --data)
    OUT/work/                                   prepared store (dataset.json, store/, splits.json)
    OUT/work/segmentation/{model,masks,...}     segmentation train / predict / evaluate
    OUT/work/pretrain/<encoder>-<input>/        SimCLR encoder pretrained on full|segmented
    OUT/finetune/<encoder>__<pretraining>__<input>/   one fine-tuning cell of Tables 1-3
    OUT/baseline/clinical/, OUT/baseline/hybrid/      clinical-feature RF and the hybrid
                                                (indices + the deep_features.csv of one
                                                SimCLR pretraining cell above)
    OUT/work/pretrain/<encoder>-<input>-<digest>/  SimCLR with a beyond cell's own options
    OUT/beyond/<name>/                          a fine-tuning cell beyond the paper
                                                (``beyond_paper:``; report's Table 4)

Cells that cannot run (ImageNet without a weight file, an encoder with no ImageNet weights)
are still listed, with ``not_run_reason``, so the report can say why a table cell is empty.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cardioclr.layout import StudyLayout, rel
from cardioclr.run_identity import digest
from cardioclr.study.config import StudyConfig

#: The study folder's layout, relative to OUT (cell paths are stored relative).
LAYOUT = StudyLayout()


@dataclass(frozen=True)
class Cell:
    """One unit of the study: a stage run into its own directory ``path`` (relative to OUT).

    ``params`` are the stage arguments (encoder, init, pretraining, input, ...); ``deps`` are
    the ids of cells that must be done first; ``not_run_reason`` is set when the cell is listed
    but cannot run with this configuration.
    """

    id: str
    kind: str
    path: str
    params: dict[str, Any] = field(default_factory=dict)
    deps: tuple[str, ...] = ()
    not_run_reason: str | None = None


def finetune_cell_name(encoder: str, pretraining: str, downstream_input: str) -> str:
    """Directory name of a fine-tuning cell, e.g. ``smallcnn__simclr-full__segmented``."""
    return LAYOUT.finetune_cell(encoder, pretraining, downstream_input).name


def pretrain_cell_name(encoder: str, pretrain_input: str) -> str:
    """Directory name of a pretraining cell, e.g. ``smallcnn-full`` (the ssl stage's layout)."""
    return LAYOUT.pretrain_cell(encoder, pretrain_input).name


def imagenet_unavailable(cfg: StudyConfig, encoder: str) -> str | None:
    """Why the ImageNet cell of ``encoder`` cannot run, or None when it can."""
    from cardioclr.models.encoders import ENCODERS

    spec = ENCODERS.get(encoder)
    if spec is not None and spec.imagenet_key_map is None:
        return f"{encoder} is not an ImageNet architecture (no ImageNet weights exist)"
    if encoder not in cfg.imagenet_weights:
        return ("no ImageNet weight file given (pass --imagenet-weights FILE, a torchvision "
                f"{encoder} state dict; nothing is downloaded)")
    return None


def expand_grid(cfg: StudyConfig) -> list[Cell]:
    """All cells of the study in run order (dependencies always come earlier)."""
    cells: list[Cell] = []
    work = rel(LAYOUT.work)
    if cfg.data is None:
        cells.append(Cell("synthetic", "synthetic", rel(LAYOUT.data),
                          {"patients": cfg.synthetic.patients, "seed": cfg.synthetic.seed}))
    cells.append(Cell("prepare", "prepare", work, {}, ("synthetic",) if cfg.data is None else ()))
    seg = LAYOUT.work_layout
    cells.append(Cell("segment-train", "segment-train", rel(seg.segmentation_model), {}, ("prepare",)))
    cells.append(Cell("segment-predict", "segment-predict", rel(seg.segmentation_masks), {},
                      ("segment-train",)))
    cells.append(Cell("segment-evaluate", "segment-evaluate", rel(seg.segmentation), {},
                      ("segment-predict",)))
    masks_dep = ("segment-predict",) if cfg.mask_source == "predicted" else ("prepare",)

    simclr_inputs = cfg.pretrain.inputs if "simclr" in cfg.finetune.inits else ()
    for enc in cfg.encoders:
        for inp in simclr_inputs:
            deps = ("prepare", *(masks_dep if inp != "full" else ()))
            cells.append(Cell(f"pretrain/{pretrain_cell_name(enc, inp)}", "pretrain",
                              rel(LAYOUT.pretrain_cell(enc, inp)),
                              {"encoder": enc, "input": inp}, deps))

    for enc in cfg.encoders:
        for init in cfg.finetune.inits:
            pretrainings = [f"simclr-{i}" for i in simclr_inputs] if init == "simclr" else [init]
            for pretraining in pretrainings:
                for inp in cfg.finetune.inputs:
                    name = finetune_cell_name(enc, pretraining, inp)
                    # Saliency's in-heart share needs masks even for full-image cells.
                    deps = ("prepare", *masks_dep)
                    params: dict[str, Any] = {"encoder": enc, "init": init,
                                              "pretraining": pretraining, "input": inp}
                    reason = None
                    if init == "simclr":
                        pre = pretrain_cell_name(enc, pretraining.removeprefix("simclr-"))
                        deps = (*deps, f"pretrain/{pre}")
                        params["weights"] = f"{rel(LAYOUT.pretrain)}/{pre}/encoder.pt"
                    elif init == "imagenet":
                        reason = imagenet_unavailable(cfg, enc)
                        params["weights"] = cfg.imagenet_weights.get(enc)
                    cells.append(Cell(f"finetune/{name}", "finetune",
                                      rel(LAYOUT.finetune_cell(enc, pretraining, inp)), params,
                                      deps, reason))

    if cfg.baseline.enabled:
        cells.append(Cell("baseline/clinical", "baseline", rel(LAYOUT.baseline("clinical")), {},
                          masks_dep))
        if cfg.baseline.hybrid:
            # Deep features of the first encoder's SimCLR pretraining: self-supervised, so the
            # train patients' features are not fitted to their labels (a fine-tuned model's are).
            enc, inp = cfg.encoders[0], cfg.baseline.hybrid_from
            src = f"pretrain/{pretrain_cell_name(enc, inp)}"
            known = {c.id: c for c in cells}
            reason = None
            if src not in known:
                reason = (f"hybrid_from {inp}: this grid has no SimCLR pretraining of {enc} on "
                          f"{inp} images (pretrain.inputs {list(cfg.pretrain.inputs)}; "
                          "finetune.inits must include simclr)")
            # The folder holding the pretraining's deep_features.csv (and encoder.pt).
            cells.append(Cell("baseline/hybrid", "hybrid", rel(LAYOUT.baseline("hybrid")),
                              {"deep_features": known[src].path if src in known else None,
                               "source_cell": src, "encoder": enc, "input": inp},
                              (*masks_dep, src), reason))
    cells += beyond_cells(cfg, cells, masks_dep)
    return cells


def beyond_pretrain_name(encoder: str, pretrain_input: str, options: dict[str, Any]) -> str:
    """``<encoder>-<input>-<digest of the options>``: one pretraining per distinct option set,
    shared by every beyond cell that asks for it."""
    return f"{pretrain_cell_name(encoder, pretrain_input)}-{digest(dict(options))[:8]}"


def beyond_cells(cfg: StudyConfig, grid: list[Cell], masks_dep: tuple[str, ...]) -> list[Cell]:
    """The cells of ``cfg.beyond_paper``: their own SimCLR pretrainings first (deduplicated;
    a cell without ``pretrain_options`` reuses the paper grid's pretraining of its input when
    there is one), then one ``beyond`` fine-tuning cell each, in the order listed."""
    known = {c.id for c in grid}
    pretrain: list[Cell] = []
    finetune: list[Cell] = []
    for b in cfg.beyond_paper:
        enc = b.encoder or cfg.encoders[0]
        deps: tuple[str, ...] = ("prepare", *masks_dep)
        params: dict[str, Any] = {"encoder": enc, "init": b.init, "input": b.input,
                                  "pretraining": b.init, "options": dict(b.finetune_options),
                                  "name": b.name}
        if b.init == "simclr" and b.pretrain_input is not None:
            inp = b.pretrain_input
            paper = f"pretrain/{pretrain_cell_name(enc, inp)}"
            if not b.pretrain_options and paper in known:
                pre_id, folder = paper, rel(LAYOUT.pretrain_cell(enc, inp))
            else:
                name = (pretrain_cell_name(enc, inp) if not b.pretrain_options
                        else beyond_pretrain_name(enc, inp, b.pretrain_options))
                pre_id, folder = f"pretrain/{name}", f"{rel(LAYOUT.pretrain)}/{name}"
                if pre_id not in known:
                    known.add(pre_id)
                    pretrain.append(Cell(pre_id, "pretrain", folder,
                                         {"encoder": enc, "input": inp,
                                          "options": dict(b.pretrain_options)},
                                         ("prepare", *(masks_dep if inp != "full" else ()))))
            deps = (*deps, pre_id)
            params["weights"] = f"{folder}/encoder.pt"
            params["pretraining"] = f"simclr-{inp}"
        finetune.append(Cell(f"beyond/{b.name}", "beyond", rel(LAYOUT.beyond_cell(b.name)),
                             params, deps))
    return pretrain + finetune


def runnable(cells: list[Cell]) -> list[Cell]:
    """Cells that can run with this configuration (no ``not_run_reason``)."""
    return [c for c in cells if c.not_run_reason is None]
