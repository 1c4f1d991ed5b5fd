"""``cardioclr prepare DATA --out WORK``."""

from __future__ import annotations

import argparse

from cardioclr.data.prepare import PrepareConfig, default_workers, prepare


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``prepare`` subcommand."""
    p = sub.add_parser("prepare", help="resample, crop and normalise a dataset into a slice "
                       "store with patient-level splits",
                       description="Read an ACDC-layout folder or a CSV manifest and write "
                       "WORK/store, WORK/manifest.csv, WORK/splits.json and WORK/skipped.csv.")
    p.add_argument("data", help="ACDC-layout folder (training/, testing/), CSV manifest, or a "
                   "pack (`cardioclr pack`; installed in place, its grid and splits kept)")
    p.add_argument("--out", required=True, help="work directory to write")
    p.add_argument("--spacing", type=float, default=None, help="in-plane spacing in mm (1.5; a "
                   "pack's own)")
    p.add_argument("--size", type=int, default=None, help="square grid size in pixels (192; a "
                   "pack's own)")
    p.add_argument("--split", choices=("random", "official"), default="random",
                   help="random: stratified 70/30 by patient (paper); official: training/ vs "
                   "testing/")
    p.add_argument("--test-fraction", type=float, default=0.3)
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds inside train")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strict", action="store_true", help="fail on the first bad patient instead "
                   "of skipping it (reasons go to WORK/skipped.csv)")
    p.add_argument("--unlabelled", action="store_true",
                   help="labels not required (extra data for self-supervised pretraining)")
    p.add_argument("--workers", type=int, default=default_workers())
    p.add_argument("--overwrite", action="store_true", help="rebuild an existing store")
    p.add_argument("--unpack", action="store_true",
                   help="with a pack as DATA: decode its patients into WORK/store once (~20x "
                   "the pack's size on disk), so that every later stage reads them ~2x faster "
                   "than from the pack")
    p.add_argument("--classes", nargs="+", default=None, metavar="NAME",
                   help="the diagnoses a label may name; other labels are refused per patient "
                   "(default: the five ACDC groups for an ACDC folder, any label for a CSV)")
    p.add_argument("--max-image-gb", type=float, default=None,
                   help="refuse an image needing more memory than this once read as float32 "
                   "(default 4; also $CARDIOCLR_MAX_IMAGE_BYTES)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if args.max_image_gb is not None:
        import os

        from cardioclr.io.validate import MAX_IMAGE_BYTES_ENV

        # Through the environment: the worker processes inherit it.
        os.environ[MAX_IMAGE_BYTES_ENV] = str(int(args.max_image_gb * 1024**3))
    from cardioclr.data.pack import install, is_pack

    if is_pack(args.data):
        s = install(args.data, args.out, args.size, args.spacing, unpack=args.unpack)
        print(f"installed pack {args.data} ({s['patients']} patients, {s['image_size']} px at "
              f"{s['spacing_mm']} mm): train {s['train']}, test {s['test']} -> {args.out}")
        return 0
    cfg = PrepareConfig(data=args.data, out=args.out,
                        spacing_mm=1.5 if args.spacing is None else args.spacing,
                        image_size=192 if args.size is None else args.size, split=args.split,
                        test_fraction=args.test_fraction,
                        n_folds=args.folds, seed=args.seed, strict=args.strict,
                        unlabelled=args.unlabelled, workers=args.workers,
                        overwrite=args.overwrite,
                        classes=tuple(args.classes) if args.classes else None)
    s = prepare(cfg)
    print(f"prepared {s['patients']} patients ({s['skipped']} skipped) in {s['seconds']} s: "
          f"train {s['train']}, test {s['test']}, classes {', '.join(s['classes'])} -> {args.out}")
    return 0
