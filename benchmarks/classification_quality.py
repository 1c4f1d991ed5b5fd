"""Images-only diagnosis on ACDC (70/30 patient split): named configurations, >= 3 seeds each.

Measures issue 11: the paper's cells (no pretraining, SimCLR on full images, SimCLR on
segmented images; fine-tuned on segmented images, plus no pretraining on full images for the
heart-masking question) and every configuration "beyond the paper", each trained with the same
fixed hyperparameters and evaluated once on the 30 test patients, plus the clinical-index
baseline (not images-only) for reference.

Protocol (no test number chooses anything):

* masks: predicted. With ``--work`` (a prepared work folder with predicted masks, e.g. the
  shared ``/work/scratch/acdc_pred``; read only: its ``store/`` and ``segmentation/`` are
  symlinked into ``--out``) they come from that folder's segmentation model, which was trained
  on the 70 train patients' expert contours (not their diagnoses): test masks are honest,
  train masks are better than a fresh patient's would be. Without ``--work`` the benchmark
  prepares ``--data`` and trains the CPU-preset segmentation itself (``--seg-minutes``).
* every configuration: fixed hyperparameters, no grid (lr ``--lr``, batch ``--batch``); the
  number of epochs is chosen by cross-validation on the train patients (the first ``--folds``
  folds of ``splits.json``, early stopping with ``--patience``); then one model per seed on
  all train patients; the test patients are predicted once.
* numbers per configuration: ``auc`` / ``accuracy`` / ``balanced_accuracy`` are the MEAN OVER
  SEEDS of the single-seed test values, ``auc_sd`` / ``accuracy_sd`` their SD over seeds, and
  ``auc_ci_low`` / ``auc_ci_high`` the 95% stratified patient-bootstrap CI of that seed mean
  (the same patient resamples for every seed); ``ensemble`` holds the seed ensemble's numbers
  (mean of the seeds' patient probabilities). ``cv_auc``: the cross-validated macro AUC on
  train, which alone picks ``best_by_cv`` (the best images-only configuration) and the paper's
  best cell that every other configuration is compared with (``comparisons``: paired bootstrap
  of the macro-AUC difference and exact McNemar test of accuracy on the same test patients,
  seed-ensemble predictions). ``answers`` says whether SimCLR and heart masking help.
* resumable: pretrainings and fine-tunings skip what they finished (their own checkpoints and
  ``metrics.json``); every finished configuration leaves ``OUT/results/<name>/seed<k>.json``
  and ``OUT/results/<name>.json`` (written atomically), and a rerun only aggregates them.
  SimCLR pretrainings are shared by every configuration that needs the same one.

Configurations are :class:`cardioclr.study.config.BeyondCell` entries (the form of a study's
``beyond_paper:`` list), so a configuration measured here can be pasted into a study YAML.
Those whose options the installed code does not know are reported with an ``error`` (the rest
still run). ``--configurations a,b`` runs a subset; ``--list`` prints them (the beyond-the-paper
ones as a ``beyond_paper:`` YAML list for a study's ``--config``).

Usage::

    flock /tmp/cardioclr-heavy.lock nice -n 5 env OMP_NUM_THREADS=2 \\
        .venv/bin/python benchmarks/classification_quality.py --work /work/scratch/acdc_pred \\
        --out runs/bench_cls [--configurations none,simclr-segmented] [--seeds 0 1 2]

The LAST output line is one JSON object ``{"configurations": {name: {"auc", "auc_ci_low",
"auc_ci_high", "accuracy", "balanced_accuracy", "images_only", "seeds", "auc_sd",
"accuracy_sd", "seconds", ...}}, "best_by_cv", "reference", "comparisons", "answers",
"targets", "settings", "seconds", "load_before", "load_after", ...}``. Without the data it
prints ``{"skipped": "<why>"}`` and exits 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / ".." / "shared" / "data" / "acdc"
PAPER_BEST_AUC = 0.901  # Nakashima et al., ACDC, best configuration
TARGETS = {"auc": 0.95, "accuracy": 0.80, "minutes_per_configuration": 45}

log = logging.getLogger("classification_quality")

#: The paper's cells (Tables 1-2 of Nakashima et al.) measured here.
PAPER = ("none", "simclr-full", "simclr-segmented", "none-full")

#: name -> BeyondCell fields (input, init, pretrain_input, pretrain_options, finetune_options,
#: encoder). Option names are those of ``cardioclr finetune`` / ``cardioclr pretrain``
#: (FinetuneConfig / PretrainConfig fields), announced by their authors on the issue-11 board.
CONFIGURATIONS: dict[str, dict[str, Any]] = {
    # -- the paper's cells
    "none": {"input": "segmented", "init": "none"},
    "simclr-full": {"input": "segmented", "init": "simclr", "pretrain_input": "full"},
    "simclr-segmented": {"input": "segmented", "init": "simclr", "pretrain_input": "segmented"},
    "none-full": {"input": "full", "init": "none"},
    # -- beyond the paper (issue 11)
    "roi": {"input": "roi", "init": "none"},
    "anatomy": {"input": "anatomy", "init": "none"},                                   # item 1
    "patient": {"input": "segmented", "init": "none",                                 # item 2
                "finetune_options": {"model": "patient", "pooling": "gated", "grid_batch": [8]}},
    "simclr-anatomy": {"input": "segmented", "init": "simclr", "pretrain_input": "segmented",
                       "pretrain_options": {"positives": "anatomy"}},                  # item 3
    "seg-init": {"input": "segmented", "init": "segmentation", "encoder": "segunet"},  # item 4
    "seg-init-simclr": {"input": "segmented", "init": "simclr", "pretrain_input": "segmented",
                        "encoder": "segunet", "pretrain_options": {"init": "segmentation"}},
    "multitask": {"input": "segmented", "init": "none",                               # item 5
                  "finetune_options": {"aux_seg_weight": 0.5}},
    "recipe": {"input": "segmented", "init": "none",                                  # item 6
               "finetune_options": {"recipe": "small-data"}},
    # -- combinations with the anatomy input (the best single item so far)
    "anatomy-recipe": {"input": "anatomy", "init": "none", "finetune_options": {"recipe": "small-data"}},
    # The patient model sees ~7 optimiser steps per epoch at 8 patients per step (56 CV-train
    # patients): it underfitted at 15 epochs. 4 patients per step, 40 epochs, and a per-slice
    # auxiliary loss give it ~20x the updates the 15-epoch run had.
    "anatomy-patient": {"input": "anatomy", "init": "none",
                        "finetune_options": {"model": "patient", "pooling": "gated", "grid_batch": [4],
                                             "max_epochs": 40, "patience": 8,
                                             "instance_loss_weight": 0.5}},
}


def _load_avg() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


# ------------------------------------------------------------------------------ the work folder


def link_work(src: Path, work: Path) -> None:
    """A work folder in ``work`` that reads ``src``'s store and masks (never writes into src)."""
    work.mkdir(parents=True, exist_ok=True)
    for name in ("store", "segmentation"):
        link = work / name
        if not link.exists():
            link.symlink_to((src / name).resolve(), target_is_directory=True)
    for name in ("manifest.csv", "splits.json", "skipped.csv", "dataset.json"):  # dataset.json last
        if (src / name).is_file() and not (work / name).is_file():
            shutil.copyfile(src / name, work / f".{name}.tmp")
            os.replace(work / f".{name}.tmp", work / name)


def prepare_and_segment(data: Path, work: Path, minutes: float) -> str:
    """Prepare ``data`` into ``work`` and train + run the CPU-preset segmentation there."""
    from cardioclr.data.prepare import PrepareConfig, prepare
    from cardioclr.data.store import SliceStore
    from cardioclr.layout import WorkLayout
    from cardioclr.segment.predict import PredictConfig, predict
    from cardioclr.segment.train import PRESETS, preset_config, train

    if not WorkLayout(work).dataset_json.is_file():
        prepare(PrepareConfig(data=str(data), out=str(work), workers=min(2, os.cpu_count() or 1)))
    optim = dataclasses.replace(PRESETS["cpu"]["optim"], time_budget_s=minutes * 60)
    info = train(preset_config(work, "cpu", optim=optim, progress_bar=False))
    masks = WorkLayout(work).segmentation_masks
    if any(not (masks / f"{p}.npz").is_file() for p in SliceStore(work).patient_ids):
        predict(PredictConfig(work=str(work), qc_png=False))
    return (f"CPU-preset segmentation trained here on the train patients (best val Dice "
            f"{info.get('best_val_dice')})")


# ------------------------------------------------------------------------------ statistics


def seed_mean_metrics(per_seed: pd.DataFrame, classes: list[str], n_boot: int) -> dict[str, Any]:
    """Mean over seeds of the single-seed test metrics, with a patient-bootstrap CI of the mean.

    ``per_seed``: ``predictions_per_seed.csv`` (patient_id, seed, label_index, prob_<class>).
    Each bootstrap resample (stratified by class) is applied to every seed, and the seeds' AUCs
    (accuracies) are averaged within the resample.
    """
    from cardioclr.evaluate.metrics import (
        macro_of,
        ovr_auc_boot,
        prob_columns,
        stratified_bootstrap_counts,
    )

    cols = prob_columns(classes)
    seeds = sorted(per_seed["seed"].unique())
    first = per_seed[per_seed["seed"] == seeds[0]].sort_values("patient_id")
    y = first["label_index"].to_numpy(np.int64)
    w = stratified_bootstrap_counts(y, n_boot, seed=0)
    k = len(classes)
    auc, acc, bacc, auc_b, acc_b = [], [], [], [], []
    for s in seeds:
        d = per_seed[per_seed["seed"] == s].sort_values("patient_id")
        p = d[cols].to_numpy(np.float64)
        p = p / p.sum(axis=1, keepdims=True)
        correct = (p.argmax(axis=1) == y).astype(np.float64)
        auc.append(float(macro_of(ovr_auc_boot(y, p, None), k)))
        auc_b.append(macro_of(ovr_auc_boot(y, p, w), k))
        acc.append(float(correct.mean()))
        acc_b.append(w @ correct / len(y))
        bacc.append(float(np.mean([correct[y == c].mean() for c in np.unique(y)])))
    mean_auc_b, mean_acc_b = np.mean(auc_b, axis=0), np.mean(acc_b, axis=0)

    def sd(v: list[float]) -> float | None:
        return float(np.std(v, ddof=1)) if len(v) > 1 else None

    return {"auc": float(np.mean(auc)), "auc_ci_low": float(np.percentile(mean_auc_b, 2.5)),
            "auc_ci_high": float(np.percentile(mean_auc_b, 97.5)), "auc_sd": sd(auc),
            "accuracy": float(np.mean(acc)), "accuracy_ci_low": float(np.percentile(mean_acc_b, 2.5)),
            "accuracy_ci_high": float(np.percentile(mean_acc_b, 97.5)), "accuracy_sd": sd(acc),
            "balanced_accuracy": float(np.mean(bacc)), "balanced_accuracy_sd": sd(bacc),
            "per_seed": [{"seed": int(s), "auc": a, "accuracy": c, "balanced_accuracy": b}
                         for s, a, c, b in zip(seeds, auc, acc, bacc, strict=True)],
            "n_test": int(len(y))}


def paired(a: Path, b: Path, classes: list[str], n_boot: int) -> dict[str, Any]:
    """Configuration A vs B on the same test patients (their seed-ensemble predictions.csv)."""
    from cardioclr.evaluate.compare import compare_accuracy, compare_predictions

    pa = pd.read_csv(a, dtype={"patient_id": str})
    pb = pd.read_csv(b, dtype={"patient_id": str})
    auc = compare_predictions(pa, pb, classes, n_boot=n_boot, seed=0)
    acc = compare_accuracy(pa, pb, classes, n_boot=n_boot, seed=0)
    return {"auc_diff": auc["macro_auc_diff"], "auc_p": auc["p_value"], "auc_test": auc["test"],
            "accuracy_diff": acc["accuracy_diff"], "accuracy_p_mcnemar": acc["mcnemar_p_value"],
            "discordant": acc["discordant"]}


def verdict(cmp: dict[str, Any]) -> str:
    """helps / hurts when the 95% CI of the macro-AUC difference excludes 0."""
    d = cmp["auc_diff"]
    return "helps" if d["ci_low"] > 0 else "hurts" if d["ci_high"] < 0 else "no significant difference"


# ------------------------------------------------------------------------------ running


class Bench:
    """Runs and aggregates the configurations in ``out`` on the prepared ``work`` folder."""

    def __init__(self, args: argparse.Namespace, work: Path, out: Path) -> None:
        self.args, self.work, self.out = args, work, out
        self.results = out / "results"

    def finetune_config(self, name: str, spec: Any, weights: str | None) -> Any:
        from cardioclr.classify.finetune import FinetuneConfig
        from cardioclr.study.stages import apply_options

        a = self.args
        base = FinetuneConfig(
            work=str(self.work), encoder=spec.encoder or a.encoder, init=spec.init, weights=weights,
            input_mode=spec.input, mask_source="predicted", out=str(self.out / "finetune" / name),
            image_size=a.image_size, seeds=tuple(a.seeds), grid_lr=(a.lr,), grid_batch=(a.batch,),
            max_epochs=a.epochs, patience=a.patience, max_folds=a.folds, saliency=False,
            n_boot=a.n_boot, accelerator="cpu", progress_bar=False)
        return apply_options(base, spec.finetune_options, f"configuration {name}: finetune_options")

    def pretrain_config(self, name: str, spec: Any) -> Any:
        from cardioclr.ssl.pretrain import PretrainConfig
        from cardioclr.study.grid import beyond_pretrain_name, pretrain_cell_name
        from cardioclr.study.stages import apply_options

        a = self.args
        enc = spec.encoder or a.encoder
        folder = (beyond_pretrain_name(enc, spec.pretrain_input, spec.pretrain_options)
                  if spec.pretrain_options else pretrain_cell_name(enc, spec.pretrain_input))
        base = PretrainConfig(work=str(self.work), encoder=enc, input_mode=spec.pretrain_input,
                              masks="predicted", out=str(self.out / "pretrain" / folder),
                              batch_size=64, lr=a.ssl_lr, max_epochs=a.ssl_epochs, patience=5,
                              image_size=a.image_size, use_cine=False, accelerator="cpu",
                              progress_bar=False)
        return apply_options(base, spec.pretrain_options, f"configuration {name}: pretrain_options")

    def run(self, name: str, spec: Any) -> dict[str, Any]:
        """Pretrain (shared), fine-tune all seeds, write the result files; returns the summary."""
        from cardioclr.atomic import read_json, write_json
        from cardioclr.classify.finetune import finetune
        from cardioclr.ssl.pretrain import pretrain

        done = self.results / f"{name}.json"
        if done.is_file():
            log.info("%s: done earlier", name)
            summary: dict[str, Any] = read_json(done)
            return summary
        start = time.perf_counter()
        weights, pre_seconds, pre_info = None, 0.0, None
        if spec.init == "simclr":
            pc = self.pretrain_config(name, spec)
            self.finetune_config(name, spec, None)  # unknown finetune options fail before SimCLR
            m = pretrain(pc)
            weights = str(Path(pc.out) / "encoder.pt")
            pre_seconds = float(m.get("train_seconds") or 0.0)
            pre_info = {"folder": Path(pc.out).name, "best_val_loss": m.get("best_val_loss"),
                        "epochs": m.get("epochs"), "train_seconds": round(pre_seconds, 1)}
        fc = self.finetune_config(name, spec, weights)
        m = finetune(fc)
        ft_dir = Path(fc.out)
        classes = list(m["classes"])
        stats = seed_mean_metrics(pd.read_csv(ft_dir / "predictions_per_seed.csv",
                                              dtype={"patient_id": str}), classes, self.args.n_boot)
        test = m["test"]
        summary = {**{k: v for k, v in stats.items() if k != "per_seed"},
                   "images_only": True, "seeds": list(self.args.seeds),
                   "seconds": round(float(m.get("seconds") or 0.0) + pre_seconds, 1),
                   "finetune_seconds": round(float(m.get("seconds") or 0.0), 1),
                   "wall_seconds_this_run": round(time.perf_counter() - start, 1),
                   "cv_auc": m["selected"].get("cv_val_auc_mean"), "selected": m["selected"],
                   "ensemble": {"auc": test["macro_auc"]["value"],
                                "auc_ci_low": test["macro_auc"]["ci_low"],
                                "auc_ci_high": test["macro_auc"]["ci_high"],
                                "accuracy": test["accuracy"]["value"],
                                "balanced_accuracy": test["balanced_accuracy"]["value"]},
                   "pretraining": pre_info, "spec": dataclasses.asdict(spec),
                   "predictions": str(ft_dir / "predictions.csv"), "classes": classes}
        for row in stats["per_seed"]:
            write_json(self.results / name / f"seed{row['seed']}.json",
                       {"configuration": name, **row, "model": str(ft_dir / "final" / f"seed{row['seed']}")})
        write_json(done, summary)
        return summary

    def clinical(self) -> dict[str, Any]:
        """The clinical-index baseline (indices from the predicted masks; not images-only)."""
        from cardioclr.atomic import read_json, write_json
        from cardioclr.evaluate.baseline import BaselineConfig, run_baseline

        done = self.results / "clinical.json"
        if done.is_file():
            summary: dict[str, Any] = read_json(done)
            return summary
        out = self.out / "baseline" / "clinical"
        b = run_baseline(BaselineConfig(work=str(self.work), out=str(out), masks="predicted",
                                        candidates=("logistic", "svm"), cv_repeats=2,
                                        n_boot=self.args.n_boot))
        summary = {"auc": b["macro_auc"]["value"], "auc_ci_low": b["macro_auc"]["ci_low"],
                   "auc_ci_high": b["macro_auc"]["ci_high"], "accuracy": b["accuracy"]["value"],
                   "balanced_accuracy": b["balanced_accuracy"]["value"], "images_only": False,
                   "seeds": [0], "auc_sd": None, "accuracy_sd": None,
                   "seconds": round(float(b.get("seconds") or 0.0), 1), "model": b.get("model"),
                   "predictions": str(out / "predictions.csv")}
        write_json(done, summary)
        return summary


def compare_all(results: dict[str, dict[str, Any]], n_boot: int) -> dict[str, Any]:
    """Best images-only configuration by CV, the paper's best cell by CV, paired comparisons
    of every other configuration with it, and the answers to the paper's questions."""
    ok = {n: r for n, r in results.items() if "auc" in r and r.get("images_only")}
    out: dict[str, Any] = {}
    with_cv = {n: r for n, r in ok.items() if r.get("cv_auc") is not None}
    if with_cv:
        best = max(with_cv, key=lambda n: with_cv[n]["cv_auc"])
        r = with_cv[best]
        out["best_by_cv"] = {"name": best, "cv_auc": r["cv_auc"], "auc": r["auc"],
                             "accuracy": r["accuracy"],
                             "meets_target": (r["auc"] >= TARGETS["auc"]
                                              and r["accuracy"] >= TARGETS["accuracy"])}
    paper = {n: with_cv[n] for n in PAPER if n in with_cv}
    if not paper:
        return out
    ref = max(paper, key=lambda n: paper[n]["cv_auc"])
    out["reference"] = {"name": ref, "rule": "paper cell with the highest CV macro AUC on train"}
    classes = next(iter(ok.values()))["classes"]

    def cmp(a: str, b: str) -> dict[str, Any] | None:
        if a not in ok and a != "clinical" or b not in ok:
            return None
        try:
            return {"a": a, "b": b, **paired(Path(results[a]["predictions"]),
                                             Path(results[b]["predictions"]), classes, n_boot)}
        except Exception as err:  # noqa: BLE001 - one comparison must not sink the benchmark
            return {"a": a, "b": b, "error": f"{type(err).__name__}: {err}"}

    out["comparisons"] = {n: c for n in results if n != ref and (c := cmp(n, ref)) is not None}
    answers: dict[str, Any] = {}
    for question, pairs in (("simclr", [("simclr-full", "none"), ("simclr-segmented", "none")]),
                            ("heart_masking", [("none", "none-full")])):
        found = [c for a, b in pairs if (c := cmp(a, b)) is not None and "error" not in c]
        if found:
            answers[question] = {"comparisons": found, "verdicts": [verdict(c) for c in found]}
    out["answers"] = answers
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit code (0 also when the data is absent)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DEFAULT_DATA), help="ACDC folder (with training/)")
    p.add_argument("--work", default=None, help="a prepared work folder WITH predicted masks "
                   "(read only; e.g. /work/scratch/acdc_pred); default: prepare --data and "
                   "segment it inside --out")
    p.add_argument("--out", default=str(REPO / "runs" / "bench_classification"),
                   help="benchmark folder (kept for resuming)")
    p.add_argument("--configurations", default="all",
                   help="comma-separated names (see --list), or all")
    p.add_argument("--list", action="store_true", help="print the configurations (the beyond-the-"
                   "paper ones as a study's beyond_paper: YAML list) and exit")
    p.add_argument("--no-clinical", action="store_true", help="skip the clinical baseline")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--encoder", default="smallcnn")
    p.add_argument("--image-size", type=int, default=64, help="network input side (px)")
    p.add_argument("--lr", type=float, default=1e-3, help="fine-tuning learning rate (fixed)")
    p.add_argument("--batch", type=int, default=32, help="fine-tuning batch (fixed)")
    p.add_argument("--epochs", type=int, default=15, help="fine-tuning epoch cap")
    p.add_argument("--patience", type=int, default=4)
    p.add_argument("--folds", type=int, default=2, help="CV folds used (of splits.json's 5)")
    p.add_argument("--ssl-epochs", type=int, default=15, help="SimCLR epoch cap")
    p.add_argument("--ssl-lr", type=float, default=1e-3)
    p.add_argument("--seg-minutes", type=float, default=12.0,
                   help="segmentation budget when there is no --work")
    p.add_argument("--n-boot", type=int, default=2000)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    from cardioclr.study.config import BeyondCell

    specs = {n: BeyondCell(name=n, **c) for n, c in CONFIGURATIONS.items()}
    if args.list:
        # YAML: the beyond-the-paper entries can be pasted into a study's --config as they are.
        import yaml

        print("# the paper's cells: " + ", ".join(PAPER))
        print(yaml.safe_dump({"beyond_paper": [
            {k: v for k, v in dataclasses.asdict(s).items() if v not in (None, {})}
            for n, s in specs.items() if n not in PAPER]}, sort_keys=False), end="")
        return 0
    names = list(specs) if args.configurations == "all" else [
        n.strip() for n in args.configurations.split(",") if n.strip()]
    unknown = [n for n in names if n not in specs]
    if unknown:
        p.error(f"unknown configuration(s) {unknown}; known: {', '.join(specs)}")

    data = Path(args.data).resolve()
    src = Path(args.work).resolve() if args.work else None
    if src is not None and not (src / "dataset.json").is_file():
        print(json.dumps({"skipped": f"no prepared work folder at {src}"}))
        return 0
    if src is None and not (data / "training").is_dir():
        print(json.dumps({"skipped": f"ACDC data not found at {data}"}))
        return 0
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    load_before, start = _load_avg(), time.perf_counter()
    out = Path(args.out).resolve()
    work = out / "work"
    if src is not None:
        link_work(src, work)
        masks_note = (f"predicted masks of {src} (one CPU-preset model trained on the 70 train "
                      "patients' expert contours: test masks honest, train masks from a model that "
                      "saw those patients' segmentations, not their labels)")
    else:
        masks_note = prepare_and_segment(data, work, args.seg_minutes)

    bench = Bench(args, work, out)
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        log.info("configuration %s: %s", name, dataclasses.asdict(specs[name]))
        try:
            results[name] = bench.run(name, specs[name])
            log.info("%s: AUC %.3f (SD %s), accuracy %.3f, %s s", name, results[name]["auc"],
                     results[name]["auc_sd"], results[name]["accuracy"], results[name]["seconds"])
        except KeyboardInterrupt:
            raise
        except Exception as err:  # noqa: BLE001 - one configuration must not sink the others
            traceback.print_exc()
            results[name] = {"error": f"{type(err).__name__}: {err}", "images_only": True}
    if not args.no_clinical:
        try:
            results["clinical"] = bench.clinical()
        except Exception as err:  # noqa: BLE001
            traceback.print_exc()
            results["clinical"] = {"error": f"{type(err).__name__}: {err}", "images_only": False}
    summary = compare_all(results, args.n_boot)
    public = {n: {k: v for k, v in r.items() if k not in ("predictions", "classes", "spec")}
              for n, r in results.items()}
    print(json.dumps({
        "configurations": public, **summary, "targets": TARGETS, "paper_best_auc": PAPER_BEST_AUC,
        "masks": masks_note,
        "settings": {"encoder": args.encoder, "image_size": args.image_size, "lr": args.lr,
                     "batch": args.batch, "epochs_cap": args.epochs, "patience": args.patience,
                     "cv_folds_used": args.folds, "seeds": args.seeds, "ssl_epochs": args.ssl_epochs,
                     "ssl_lr": args.ssl_lr, "hyperparameters": "fixed (no grid); epochs by CV on train"},
        "seconds": round(time.perf_counter() - start, 1), "load_before": load_before,
        "load_after": _load_avg(), "cpu_count": os.cpu_count(), "out": str(out),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
