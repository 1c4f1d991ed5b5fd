"""Evaluation subcommands: ``baseline``, ``metrics`` and ``compare``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cardioclr.atomic import write_json
from cardioclr.choices import MASK_SOURCES
from cardioclr.errors import CardioclrError
from cardioclr.evaluate.compare import compare_predictions
from cardioclr.evaluate.metrics import metrics_from_predictions, read_predictions, to_jsonable


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``baseline``, ``metrics`` and ``compare`` parsers."""
    from cardioclr.choices import BASELINE_FEATURE_SETS, BASELINE_MODELS

    p = subparsers.add_parser(
        "baseline", help="clinical-index + regional-feature classifier (ACDC winners' method), "
        "optionally + deep features; chosen by CV on train, evaluated once on test",
        description="Clinical indices (volumes, EF, mass, wall thickness, ratios, BSA-indexed) and "
        "regional features (AHA segments, thickening, heterogeneity) from the masks -> classifier "
        "chosen by repeated stratified CV on train (--model auto: RF, gradient boosting, logistic, "
        "SVM, soft-voting ensembles with and without gradient boosting; or --model rf: the "
        "paper-style random forest grid-searched on the train folds) -> one evaluation on the test "
        "split with stratified-bootstrap 95%% CIs.")
    p.add_argument("work", help="prepared work directory")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--masks", choices=MASK_SOURCES, default="predicted",
                   help="mask source: 'predicted' (default; needs `cardioclr segment predict`) or "
                   "'expert' (annotation: an optimistic upper bound)")
    p.add_argument("--deep-features", default=None, metavar="PATH",
                   help="deep_features.csv (patient_id, f0..fN), or a folder holding it, e.g. "
                   "WORK/pretrain/ENCODER-INPUT (label-free SimCLR features written by `cardioclr "
                   "pretrain`) -> hybrid model")
    p.add_argument("--model", choices=BASELINE_MODELS, default="vote",
                   help="vote (default): soft vote of rf, gb, logistic and svm on each feature set; "
                   "auto: the best of --candidates by repeated CV on train; rf / logistic: "
                   "paper-style grid search on the train folds; or one fixed candidate")
    p.add_argument("--features", choices=("auto", *BASELINE_FEATURE_SETS), default="auto",
                   help="auto (default): every set for vote, the better set by the same CV on "
                   "train otherwise; regional: indices + regional summaries; indices: the 35 indices")
    p.add_argument("--both-masks", action=argparse.BooleanOptionalAction, default=True,
                   help="also train on the features of the train patients' other masks (expert with "
                   "--masks predicted, predicted with --masks expert), a second row per patient that "
                   "has both (default: on; every patient is predicted from its --masks)")
    p.add_argument("--candidates", default="rf,logistic,svm,gb,ensemble",
                   help="comma-separated candidates of --model auto")
    p.add_argument("--cv-repeats", type=int, default=5, help="repeats of the stratified CV on train")
    p.add_argument("--cv-splits", type=int, default=5, help="folds of the stratified CV on train")
    p.add_argument("--pca-components", type=int, default=16,
                   help="PCA components of the deep features (fit on train only)")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples for the CIs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=1, help="random-forest worker processes")
    p.set_defaults(func=_run_baseline)

    m = subparsers.add_parser("metrics", help="metrics with bootstrap CIs from a predictions.csv")
    m.add_argument("predictions", help="predictions.csv (patient_id, label_index, prob_<class>...)")
    m.add_argument("--out", default=None, help="write the metrics JSON here (default: print)")
    m.add_argument("--n-boot", type=int, default=2000)
    m.add_argument("--seed", type=int, default=0)
    m.set_defaults(func=_run_metrics)

    c = subparsers.add_parser("compare", help="paired comparison of two models on the same test "
                              "patients (DeLong for binary, paired bootstrap for macro AUC)")
    c.add_argument("predictions_a")
    c.add_argument("predictions_b")
    c.add_argument("--out", default=None, help="write the comparison JSON here (default: print)")
    c.add_argument("--n-boot", type=int, default=2000)
    c.add_argument("--seed", type=int, default=0)
    c.set_defaults(func=_run_compare)


def _run_baseline(args: argparse.Namespace) -> int:
    # Lazy: scikit-learn's estimators load only when a baseline runs, not to build the parser.
    from cardioclr.evaluate.baseline import BaselineConfig, run_baseline

    cfg = BaselineConfig(work=str(args.work), out=str(args.out), masks=args.masks,
                         deep_features=args.deep_features, model=args.model, seed=args.seed,
                         both_masks=args.both_masks,
                         features=args.features, cv_repeats=args.cv_repeats, cv_splits=args.cv_splits,
                         candidates=tuple(c.strip() for c in args.candidates.split(",") if c.strip()),
                         n_boot=args.n_boot, pca_components=args.pca_components, n_jobs=args.jobs)
    r = run_baseline(cfg)
    a, acc = r["macro_auc"], r["accuracy"]
    print(f"{r['model']} ({r['mask_source']} masks), {r['n']} test patients: macro AUC "
          f"{_fmt(a['value'])} (95% CI {_fmt(a['ci_low'])}-{_fmt(a['ci_high'])}), accuracy "
          f"{_fmt(acc['value'])} (95% CI {_fmt(acc['ci_low'])}-{_fmt(acc['ci_high'])}) -> {args.out}")
    return 0


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _emit(obj: dict[str, Any], out: str | None) -> None:
    obj = to_jsonable(obj)
    if out:
        write_json(Path(out), obj)
    else:
        json.dump(obj, sys.stdout, indent=2)
        print()


def _run_metrics(args: argparse.Namespace) -> int:
    df = read_predictions(args.predictions)
    _emit(metrics_from_predictions(df, n_boot=args.n_boot, seed=args.seed), args.out)
    return 0


def _run_compare(args: argparse.Namespace) -> int:
    a = read_predictions(args.predictions_a)
    b = read_predictions(args.predictions_b)
    ca = [c[5:] for c in a.columns if c.startswith("prob_")]
    cb = [c[5:] for c in b.columns if c.startswith("prob_")]
    if ca != cb:
        raise CardioclrError(f"the two predictions have different classes: {ca} vs {cb}")
    _emit(compare_predictions(a, b, ca, n_boot=args.n_boot, seed=args.seed), args.out)
    return 0
