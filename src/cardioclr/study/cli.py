"""``cardioclr study``, ``cardioclr report`` and ``cardioclr predict``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from cardioclr.errors import CardioclrError
from cardioclr.study.config import PRESETS


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``study``, ``report`` and ``predict`` subcommands."""
    s = sub.add_parser(
        "study", help="run the whole paper: data -> segmentation -> SimCLR -> fine-tuning grid -> "
        "baselines -> report (resumable)",
        description="Runs every stage in order into OUT, one directory per cell, and writes "
        "OUT/report.html, OUT/report.md and OUT/results.csv. Re-run the same command to resume "
        "after an interruption: finished cells are skipped. Without --data the built-in "
        "synthetic cohort is generated into OUT/data and the demo preset runs (minutes on a CPU).")
    s.add_argument("--data", default=None, help="dataset: ACDC-layout folder or CSV manifest "
                   "(default: the built-in synthetic cohort)")
    s.add_argument("--out", required=True, help="study directory (created; resumed if it exists)")
    s.add_argument("--preset", choices=tuple(PRESETS), default=None,
                   help="demo: synthetic cohort, smallcnn, 64 px, minutes on a CPU; real-cpu: real "
                   "data on a CPU (full-quality segmentation, ~30 min, then smallcnn at 64 px); "
                   "paper: VGG16 + DenseNet121 at the paper's settings (GPU); paper-fast: the "
                   "paper's grid in one short GPU slot (fewer epochs/folds/seeds, see "
                   "docs/gpu_slot.md). Default: the saved study.yaml of OUT, else demo without "
                   "--data, and with --data paper on a GPU machine or real-cpu without one")
    s.add_argument("--config", default=None, help="study YAML overriding the preset (full form: "
                   "configs/study_demo.yaml)")
    s.add_argument("--split", choices=("random", "official"), default=None,
                   help="random: stratified 70/30 by patient (the paper); official: the dataset's "
                   "training/ vs testing/")
    s.add_argument("--encoders", nargs="+", default=None, metavar="NAME",
                   help="encoders of the grid (default: the preset's)")
    s.add_argument("--imagenet-weights", action="append", default=None, metavar="[ENCODER=]FILE",
                   help="local torchvision ImageNet state dict (repeat per encoder); without it the "
                   "ImageNet cells are listed as not run")
    s.add_argument("--devices", type=int, default=None, help="GPUs (or CPU processes) per stage")
    s.add_argument("--accelerator", default=None, help="auto, cpu, gpu (default: the preset's)")
    s.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: the preset's; demo: 1, which is fastest on "
                   "a shared or busy CPU)")
    s.set_defaults(func=_run_study)

    r = sub.add_parser("report", help="rebuild OUT/report.html, report.md and results.csv from a "
                       "study's metrics.json files",
                       description="Reads only the files the cells wrote (metrics.json, "
                       "predictions.csv, curves.csv, saliency/); trains nothing.")
    r.add_argument("out", help="study directory")
    r.set_defaults(func=_run_report)

    p = sub.add_parser("predict", help="classify new patients with a fine-tuned study cell",
                       description="Prepares the patients like the training data, segments them "
                       "with the study's segmentation model and classifies them with MODEL_DIR "
                       "(a fine-tuning cell directory, e.g. OUT/finetune/smallcnn__simclr-"
                       "segmented__segmented). Writes DIR/predictions.csv and DIR/saliency/PID.png.")
    p.add_argument("model_dir", help="fine-tuning cell directory (holds model.pt and config.yaml)")
    p.add_argument("patients", nargs="*", help="ACDC-layout patient folders (Info.cfg + frames)")
    p.add_argument("--ed", action="append", default=[], metavar="PATH",
                   help="ED frame (NIfTI file or DICOM folder) of one patient; pair with --es")
    p.add_argument("--es", action="append", default=[], metavar="PATH",
                   help="ES frame of the same patient (same order as --ed)")
    p.add_argument("--id", action="append", default=[], dest="ids", metavar="PID",
                   help="patient id of each --ed/--es pair (default: the ED file name)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument("--no-saliency", action="store_true", help="skip the saliency overlays")
    p.add_argument("--dicom-seg", action="store_true",
                   help="also write the masks of DICOM inputs as DICOM SEG objects over their "
                   "source images (DIR/work/segmentation/dicom_seg/)")
    p.set_defaults(func=_run_predict)


def launched_as_several_processes(env: Mapping[str, str]) -> str | None:
    """Why ``env`` shows a multi-process launch (torchrun and the like), or None.

    A study must run as one process: it starts each training cell's DDP job itself
    (``--devices N``). Launched N times, every process would run the whole study into the
    same folder.
    """
    world = env.get("WORLD_SIZE", "")
    if world.isdigit() and int(world) > 1:
        return f"WORLD_SIZE={world} (torchrun or another launcher)"
    # SLURM's variables are not checked: a batch script's own step has SLURM_NTASKS > 1 as
    # well, and running the study there (once) is right.
    return None


def _has_gpu() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _run_study(args: argparse.Namespace) -> int:
    from cardioclr.study.config import (
        default_preset,
        load_config,
        read_saved_config,
        resolve_imagenet_weights,
    )
    from cardioclr.study.runner import CONFIG_FILE, run_study

    launch = launched_as_several_processes(os.environ)
    if launch is not None:
        raise CardioclrError(
            f"cardioclr study was started as several processes ({launch}). Start it once, "
            "with --devices N: it launches every training cell on N devices itself. (The "
            "stage commands pretrain, finetune and segment train can be run under torchrun "
            "or srun.)")
    out = Path(args.out)
    saved = out / CONFIG_FILE
    if saved.is_file() and args.preset is None and args.config is None:
        config_file, preset = saved, read_saved_config(saved).preset
    else:
        config_file, preset = args.config, args.preset
    overrides: dict = {}
    if args.data is not None:
        if not Path(args.data).exists():
            raise CardioclrError(f"{args.data}: dataset not found")
        overrides["data"] = str(Path(args.data).resolve())
    if args.split:
        overrides["prepare"] = {"split": args.split}
    if args.encoders:
        overrides["encoders"] = list(args.encoders)
    if args.devices is not None:
        overrides["devices"] = args.devices
    if args.accelerator is not None:
        overrides["accelerator"] = args.accelerator
    if args.threads is not None:
        overrides["threads"] = args.threads
    cfg = load_config(preset, config_file, overrides,
                      default=default_preset(has_data=args.data is not None, has_gpu=_has_gpu()))
    if args.imagenet_weights:
        from cardioclr.study.config import validate

        weights = resolve_imagenet_weights(args.imagenet_weights, cfg.encoders)
        import dataclasses

        cfg = dataclasses.replace(cfg, imagenet_weights={**cfg.imagenet_weights, **weights})
        validate(cfg)
    result = run_study(cfg, out)
    from cardioclr.study.report import summary_lines

    print(f"study {out}: {len(result.done)} cells done ({len(result.ran)} run now), "
          f"{len(result.not_run)} not run, {len(result.failed)} failed, "
          f"{result.seconds:.0f} s")
    for line in summary_lines(out):
        print(line)
    if result.report:
        print(f"report: {result.report.get('html')}")
    if result.failed or result.report_error:
        for cid, err in result.failed.items():
            print(f"FAILED {cid}: {err} (log: {out / 'logs'})", file=sys.stderr)
        if result.report_error:
            print(f"FAILED report: {result.report_error}", file=sys.stderr)
        print("re-run the same command to retry the failed cells", file=sys.stderr)
        return 1
    return 0


def _run_report(args: argparse.Namespace) -> int:
    from cardioclr.study.report import build_report, summary_lines

    paths = build_report(args.out)
    for line in summary_lines(args.out):
        print(line)
    print(f"wrote {paths['results']}, {paths['markdown']}, {paths['html']}")
    return 0


def _run_predict(args: argparse.Namespace) -> int:
    from cardioclr.study.predict import PatientInput, predict_patients

    if len(args.ed) != len(args.es):
        raise CardioclrError(f"--ed given {len(args.ed)} times but --es {len(args.es)} times; "
                             "pass one --ed and one --es per patient")
    if args.ids and len(args.ids) != len(args.ed):
        raise CardioclrError("--id must be given once per --ed/--es pair")
    inputs = [PatientInput.from_folder(p) for p in args.patients]
    for i, (ed, es) in enumerate(zip(args.ed, args.es, strict=True)):
        inputs.append(PatientInput.from_frames(ed, es, args.ids[i] if args.ids else None))
    if not inputs:
        raise CardioclrError("no patient given: pass patient folders or --ed/--es pairs")
    result = predict_patients(args.model_dir, inputs, args.out, device=args.device,
                              saliency=not args.no_saliency, dicom_seg=args.dicom_seg)
    for row in result.predictions.itertuples(index=False):
        print(f"  {row.patient_id}: {row.predicted}")
    for pid, reason in result.failed.items():
        print(f"  {pid}: FAILED - {reason}", file=sys.stderr)
    if args.dicom_seg:
        from cardioclr.segment.cli import seg_table_summary
        from cardioclr.segment.dicom_out import SEG_DIR, SEG_TABLE

        table_path = Path(args.out) / "work" / "segmentation" / SEG_DIR / SEG_TABLE
        if table_path.is_file():
            import pandas as pd

            print(seg_table_summary(pd.read_csv(table_path, keep_default_na=False), str(table_path)))
    print(f"wrote {Path(args.out) / 'predictions.csv'} ({len(result.predictions)} patients, "
          f"{len(result.failed)} failed)")
    return 0 if not result.failed else 1
