"""``cardioclr segment train|predict|evaluate WORK``."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from cardioclr.choices import INFERENCE_PRECISIONS, PRECISIONS
from cardioclr.data.store import SliceStore
from cardioclr.errors import CardioclrError
from cardioclr.segment.evaluate import evaluate, format_summary
from cardioclr.segment.grid import CPU_GRID

# The names of :data:`cardioclr.segment.train.PRESETS`, spelled out so that building the
# command-line parser does not import torch and Lightning (seconds for every command, even synth).
PRESET_NAMES = ("cpu", "gpu")
#: ``--accelerator`` values, as for ``pretrain`` and ``finetune``.
ACCELERATORS = ("auto", "cpu", "gpu")
#: The inference device ``segment predict`` uses for each ``--accelerator``.
_ACCELERATOR_DEVICE = {"auto": "auto", "cpu": "cpu", "gpu": "cuda"}


def predict_device(accelerator: str | None, device: str = "auto") -> str:
    """The ``--device`` of ``segment predict`` given ``--accelerator`` and ``--device``.

    ``--accelerator cpu`` forces the CPU on a GPU machine; ``gpu`` means ``cuda``. A ``--device``
    other than ``auto`` names a device itself (``cuda:1``) and wins when it agrees with the
    accelerator; raises ``ValueError`` when the two contradict each other (``--accelerator cpu
    --device cuda``), rather than silently picking one.
    """
    if accelerator is None or accelerator == "auto":
        return device
    wanted = _ACCELERATOR_DEVICE[accelerator]
    if device == "auto":
        return wanted
    if device.split(":")[0] != wanted:
        raise ValueError(f"--accelerator {accelerator} contradicts --device {device}")
    return device


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``segment`` command with its ``train``, ``predict`` and ``evaluate`` subcommands."""
    p = sub.add_parser("segment", help="heart segmentation (the anatomic prior): train, predict, "
                       "evaluate", description="2D U-Net segmentation of RV cavity, LV myocardium "
                       "and LV cavity, trained on the expert masks of the train split.")
    ss = p.add_subparsers(dest="segment_command", metavar="STEP")
    p.set_defaults(func=lambda args: _help(p))

    t = ss.add_parser("train", help="train the segmentation model (resumes; skips when finished)",
                      description="Writes WORK/segmentation/model/. Re-running resumes from "
                      "checkpoints/last.ckpt; a finished training (done.json) is skipped.")
    t.add_argument("work", help="prepared work directory")
    t.add_argument("--preset", choices=PRESET_NAMES, default="cpu",
                   help="cpu: residual U-Net with instance norm, 28-minute budget on 2 cores (default; "
                   f"chosen on a store prepared with --spacing {CPU_GRID.spacing_mm:g} --size "
                   f"{CPU_GRID.image_size}); "
                   "gpu: nnU-Net-like DynUNet with deep supervision, 9-minute budget on one GPU")
    t.add_argument("--folds", type=int, default=None, metavar="K",
                   help="cross-fitting: train K models, each without one fold of the train split, "
                   "so that `segment predict` gives every training patient a mask from a model "
                   "that never saw it (WORK/segmentation/folds/); default 1 (one model)")
    t.add_argument("--minutes", type=float, default=None, metavar="M",
                   help="wall-clock training budget per model in minutes (the learning-rate "
                   "schedule ends at it; default: the preset's, 28 for cpu and 9 for gpu); with "
                   "--folds K, K models take about K x M minutes")
    t.add_argument("--context-slices", type=int, default=None, metavar="K",
                   help="give the network each slice with its K neighbours on each side as input "
                   "channels (2.5D; 0: the slice alone; default: the preset's)")
    t.add_argument("--phase-channel", choices=("on", "off"), default=None,
                   help="give the network the cardiac phase (ED 0 / ES 1) as an input channel, so "
                   "it can learn how end-systolic slices are drawn (default: the preset's)")
    t.add_argument("--val-fraction", type=float, default=None, metavar="F",
                   help="share of the training patients held out to validate each epoch (the best "
                   "epoch is kept; early stopping); 0: none, every patient trains and the last epoch "
                   "is the model (default: the preset's)")
    t.add_argument("--max-epochs", type=int, default=None)
    t.add_argument("--accelerator", choices=ACCELERATORS, default=None,
                   help="auto: the GPU when there is one (default); cpu: force the CPU, e.g. on a "
                   "shared GPU machine; gpu: require a GPU")
    t.add_argument("--devices", type=int, default=None, help="GPUs (or CPU processes) to use")
    t.add_argument("--batch-size", type=int, default=None)
    t.add_argument("--patience", type=int, default=None, help="early-stopping patience (epochs)")
    t.add_argument("--seed", type=int, default=None)
    t.add_argument("--no-progress", action="store_true", help="no progress bar (log files)")
    t.add_argument("--no-compile", action="store_true",
                   help="run the network eagerly (the cpu preset compiles it with TorchInductor: "
                   "~25%% shorter training steps for ~1 min of compilation; it falls back to eager "
                   "by itself without a C++ compiler)")
    t.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="auto (default): bf16-mixed on a GPU, and with the cpu preset on a CPU with "
                   "bf16 instructions (AVX512-BF16/AMX), else 32-true; or force one")
    t.add_argument("--overwrite", action="store_true", help="discard the existing model and retrain")
    t.set_defaults(func=_train)

    pr = ss.add_parser("predict", help="segment every patient, write masks, NIfTI, QC; then evaluate",
                       description="Writes WORK/segmentation/masks, nifti, qc, qc_flags.csv, "
                       "quality.csv, mask_sources.csv and, when the test split has expert masks, "
                       "metrics.json and indices.csv. Uses the cross-fitted fold models when "
                       "`segment train --folds K` finished (out-of-fold masks for training "
                       "patients, the K-model average for the others), else the single model.")
    pr.add_argument("work", help="prepared work directory")
    pr.add_argument("--model", default=None, help="model directory or model.pt (default: "
                    "WORK/segmentation/model)")
    pr.add_argument("--margin-mm", type=float, default=None,
                    help="also store heart masks (union of the structures) dilated by this margin")
    pr.add_argument("--no-tta", action="store_true",
                    help="no test-time views (mirrorings, or rotations for a model trained without "
                    "mirroring); also turns off the orientation search")
    pr.add_argument("--no-orientation-search", action="store_true",
                    help="segment every patient as stored, even with a model trained without "
                    "mirroring (default: in the orientation its test-time views agree on best)")
    pr.add_argument("--no-png", action="store_true", help="no QC pictures")
    pr.add_argument("--keep-basal-es-rv", action="store_true",
                    help="keep the RV on every basal end-systolic slice (default: drop it where the "
                    "ventricle has left the slice, as ACDC's experts do; see segment/postprocess.py)")
    pr.add_argument("--precision", choices=INFERENCE_PRECISIONS, default="auto",
                    help="auto (default): bf16 autocast on a GPU and on a CPU with bf16 instructions "
                    "(AVX512-BF16/AMX), else float32; 32-true: always float32")
    pr.add_argument("--no-evaluate", action="store_true", help="do not evaluate on the test split")
    pr.add_argument("--accelerator", choices=ACCELERATORS, default=None,
                    help="auto: the GPU when there is one (default); cpu: force the CPU; gpu: "
                    "require a GPU (as for train, pretrain and finetune)")
    pr.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ... (a specific "
                    "device; must agree with --accelerator when both are given)")
    pr.add_argument("--dicom-seg", action="store_true",
                    help="also write each ED/ES mask as a DICOM SEG over its source DICOM images "
                    "(WORK/segmentation/dicom_seg/; patients with plain NIfTI input are listed as "
                    "skipped in dicom_seg.csv)")
    pr.set_defaults(func=_predict, parser=pr)

    e = ss.add_parser("evaluate", help="Dice, HD95 and clinical-index agreement on the test split",
                      description="Writes WORK/segmentation/metrics.json, metrics_per_patient.csv and "
                      "indices.csv from the predicted masks.")
    e.add_argument("work", help="prepared work directory")
    e.set_defaults(func=_evaluate)


def _train(args: argparse.Namespace) -> int:
    # Lazy: building the parser (`cardioclr --help`) must not load torch, Lightning or MONAI.
    from cardioclr.segment.train import preset_config, train

    if args.minutes is not None and args.minutes <= 0:
        raise CardioclrError(f"--minutes must be positive, got {args.minutes}")
    cfg = preset_config(args.work, args.preset, max_epochs=args.max_epochs, devices=args.devices,
                        accelerator=args.accelerator, batch_size=args.batch_size,
                        patience=args.patience, seed=args.seed, folds=args.folds,
                        val_fraction=args.val_fraction,
                        progress_bar=False if args.no_progress else None,
                        compile_network=False if args.no_compile else None,
                        precision=args.precision)
    if args.context_slices is not None:
        if args.context_slices < 0:
            raise CardioclrError(f"--context-slices must be 0 or more, got {args.context_slices}")
        cfg = dataclasses.replace(cfg, network=dataclasses.replace(cfg.network,
                                                                   context_slices=args.context_slices))
    if args.phase_channel is not None:
        cfg = dataclasses.replace(cfg, network=dataclasses.replace(
            cfg.network, phase_channel=args.phase_channel == "on"))
    if args.minutes is not None:
        cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, time_budget_s=args.minutes * 60))
    info = train(cfg, overwrite=args.overwrite)
    if info:
        score = info["best_val_dice"]
        quality = "no validation" if score is None else f"best validation Dice {score:.3f}"
        print(f"segmentation model: {quality} after "
              f"{info['epochs']} epochs, {info['train_seconds']:.0f} s ({info['stopped_by']}); "
              f"{len(info['train_patients'])} training / {len(info['val_patients'])} validation "
              f"patients, {len(info['excluded_patients'])} excluded"
              + (f"; {info['folds']} cross-fitted fold models" if info.get("folds") else ""))
    return 0


def _predict(args: argparse.Namespace) -> int:
    try:
        device = predict_device(args.accelerator, args.device)
    except ValueError as err:
        args.parser.error(str(err))  # exits 2 with the usage line, like other bad options
    # Lazy: building the parser (`cardioclr --help`) must not load torch, Lightning or MONAI.
    from cardioclr.segment.predict import PredictConfig, predict

    s = predict(PredictConfig(work=args.work, model=args.model, margin_mm=args.margin_mm,
                              tta=not args.no_tta, device=device, qc_png=not args.no_png,
                              precision=args.precision, basal_es_rv=not args.keep_basal_es_rv,
                              orientation_search=not args.no_orientation_search))
    print(f"segmented {s['segmented']}/{s['patients']} patients in {s['seconds']} s; "
          f"{s['flags']} QC flags on {s['flagged_patients']} patients (qc_flags.csv)")
    if s.get("low_confidence_patients"):
        print(f"{s['low_confidence_patients']} patients flagged low_confidence (their test-time views "
              f"disagree more than {s['low_confidence_threshold']:g}; check their masks first)")
    if s.get("reoriented_patients"):
        print(f"{s['reoriented_patients']} patients were segmented turned or mirrored from their stored "
              "orientation (the model saw one orientation; quality.csv, column orientation)")
    if s["failed"]:
        print("failed: " + ", ".join(s["failed"]))
    if args.dicom_seg:
        from cardioclr.segment.dicom_out import SEG_DIR, SEG_TABLE, write_segs

        table = write_segs(args.work)
        print(seg_table_summary(table, f"{args.work}/segmentation/{SEG_DIR}/{SEG_TABLE}"))
    if not args.no_evaluate:
        _evaluate_if_possible(args.work)
    return 1 if s["segmented"] == 0 else 0


def seg_table_summary(table: Any, path: str) -> str:
    """One line on the DICOM SEGs and reports written (``table``:
    :func:`cardioclr.segment.dicom_out.write_segs`, rows ``phase`` ED/ES/report)."""
    reports = table[table["phase"] == "report"]
    segs = table[table["phase"] != "report"]
    counts = segs["status"].value_counts()
    line = (f"DICOM SEG: {counts.get('written', 0)} written, {counts.get('skipped', 0)} skipped, "
            f"{counts.get('failed', 0)} failed; {int((reports['status'] == 'written').sum())} "
            f"measurement reports ({path})")
    # From a DataFrame or re-read from the CSV: compare as text.
    bad = segs[(segs["status"] == "written") & (segs["roundtrip_ok"].astype(str) != "True")]
    if len(bad):
        line += f"; {len(bad)} do NOT read back equal to their NIfTI mask"
    return line


def _evaluate_if_possible(work: str) -> None:
    store = SliceStore(work)
    if not any(bool(store.manifest.at[p, "has_expert_mask"]) for p in store.splits.test
               if p in store.manifest.index):
        print("no expert masks in the test split: skipping evaluation")
        return
    print(format_summary(evaluate(work)))


def _evaluate(args: argparse.Namespace) -> int:
    print(format_summary(evaluate(args.work)))
    return 0


def _help(parser: argparse.ArgumentParser) -> int:
    """``cardioclr segment`` without a step: print the steps, exit code 2."""
    parser.print_help()
    return 2
