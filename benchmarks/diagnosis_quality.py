"""Diagnosis from clinical + regional indices on ACDC: expert masks and cross-fitted predicted masks.

Protocol for each mask source (``expert``: the store's annotation; ``predicted``: the masks of a
cross-fitted segmentation, ``--seg-work``):

1. features of every labelled patient (indices + regional features, :mod:`cardioclr.clinical`);
2. the model of ``cardioclr baseline`` (``--model``; default its default, the fixed ``vote`` of
   classifiers and feature sets, whose repeated stratified CV on the 70 ``train`` patients is
   reported; ``auto``: classifier x feature set chosen by that CV,
   :func:`cardioclr.evaluate.baseline.choose_and_fit`), never looking at test;
3. 5x5 repeated stratified CV of that model over all labelled patients (train + test):
   accuracy and macro one-vs-rest AUC per repeat (mean, SD), confusions summed over repeats;
4. the fixed 70/30 split: the chosen model fitted on train, evaluated once on the 30 test;
5. predicted masks: step 3's accuracy for patients whose masks carry a segmentation QC flag
   (``qc_flags.csv``) and for the others (``predicted_cv_accuracy_by_segmentation_flag``): is a
   diagnosis on a flagged segmentation worth a second look?
6. the persistent CV errors: patients misclassified by step 3's repeat-averaged out-of-fold
   probabilities, with the indices of the ACDC criteria (``cv_persistent_errors``).

Every fit of steps 2-4 (as in ``cardioclr baseline``, whose default it is) also takes its own
training patients' features from the other masks as second rows (``--both-masks``: expert rows
when scoring predicted masks; predicted rows, from ``--work``'s predicted masks when it has them,
when scoring expert masks; ``--no-both-masks``: one source only); every patient is scored from
the masks of its source. A CV fold never trains on any measurement of a patient it holds out.

With ``--model auto`` the choice in step 2 saw the 70 train patients, who are also in step 3's
CV: step 3 is then slightly optimistic for them; step 4 is the untouched estimate. The fixed
vote was itself chosen on the train patients of the ACDC split (by the nested CV below, in
development), so its step 3 carries that mild optimism too. ``--nested-repeats R`` measures what
the choice is worth, on the train patients only (:func:`nested_choice_on_train`): each outer
fold re-runs step 2 on its training rows and scores the chosen model on its held-out rows, beside
every fixed (classifier, feature set) pair and the vote on the same folds.

Predicted masks must be cross-fitted: every patient's mask from segmentation models that never
saw that patient. ``--seg-work WORK`` is a work directory where ``cardioclr segment train WORK
--folds K`` and ``cardioclr segment predict WORK`` ran (issue 9): masks in
``WORK/segmentation/masks/PID.npz``, provenance in ``WORK/segmentation/mask_sources.csv``
(``patient_id, source, models``; ``out_of_fold`` for train patients, ``ensemble`` of the fold
models - all trained on train only - for test patients). Any patient whose mask is not one of
those (e.g. ``single_model``: that model saw the train patients) makes the predicted part null
with the reason, unless ``--accept-single-model`` is given: then they are measured and
``predicted_masks`` says plainly that they are not cross-fitted (test masks honest; train masks
in-sample for segmentation, so the CV over all patients is optimistic). Without ``--seg-work``
the predicted keys are null with the reason. ``WORK_cvK/out_of_fold`` of a complete
``benchmarks/segmentation_quality.py --cv K`` is such a directory too: every patient's mask comes
from the full preset's model of the CV fold that held it out (``out_of_fold`` for all).

Usage::

    python benchmarks/diagnosis_quality.py [--data DIR] [--work DIR] [--seg-work DIR]
        [--accept-single-model] [--candidates rf,logistic,...]
        [--repeats 5] [--splits 5] [--seed 0] [--nested-repeats R] [--no-both-masks]

Last line: one JSON object (keys in benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / ".." / "shared" / "data" / "acdc"
#: Mask provenance that proves the model never saw the patient (see module docstring).
HONEST_SOURCES = {"train": {"out_of_fold"}, "test": {"out_of_fold", "ensemble"}}

log = logging.getLogger("diagnosis_quality")


def crossfit_problem(work: Path, train: list[str], test: list[str]) -> str | None:
    """Why ``work``'s predicted masks are not cross-fitted for every patient (None when they are)."""
    p = work / "segmentation" / "mask_sources.csv"
    if not p.is_file():
        return (f"{p} missing: the masks are not from `cardioclr segment train --folds K` + `segment "
                "predict` (cross-fitted masks are required so that no patient's mask comes from a "
                "model that saw it)")
    with p.open(newline="", encoding="utf-8") as f:
        sources = {r["patient_id"]: r["source"] for r in csv.DictReader(f)}
    for subset, ids in (("train", train), ("test", test)):
        bad = [(pid, sources.get(pid, "missing")) for pid in ids
               if sources.get(pid) not in HONEST_SOURCES[subset]]
        if bad:
            return (f"{len(bad)} {subset} patient(s) without a cross-fitted mask, e.g. {bad[:3]} "
                    f"(expected {sorted(HONEST_SOURCES[subset])})")
    return None


def accuracy_by_flag(oof_proba: Any, y: Any, flags: list[str]) -> dict[str, Any]:
    """Accuracy of the repeat-averaged out-of-fold probabilities (n, k) for patients whose masks
    carry a segmentation QC flag and for the others: ``low_confidence`` (the calibrated
    per-patient quality estimate) and any flag. ``flags``: per patient, its ``;``-separated flags
    (:func:`cardioclr.data.masks.mask_flags`)."""
    import numpy as np

    correct = np.asarray(oof_proba).argmax(1) == np.asarray(y)
    kinds = {"low_confidence": np.array(["low_confidence" in f.split(";") for f in flags], bool),
             "any_flag": np.array([f != "" for f in flags], bool)}
    return {name: {group: {"n": int(sel.sum()), "accuracy": float(correct[sel].mean()) if sel.any() else None}
                   for group, sel in (("flagged", flagged), ("unflagged", ~flagged))}
            for name, flagged in kinds.items()}


#: The indices the ACDC diagnostic criteria use (Bernard et al. 2018), shown for each
#: persistent CV error so a reader sees whether the patient meets its own label's criteria.
CRITERIA_INDICES = ("lv_edv_ml_per_m2", "lv_ef_pct", "rv_edv_ml_per_m2", "rv_ef_pct", "wt_ed_max_mm",
                    "myo_mass_ed_g_per_m2")


def persistent_errors(oof_proba: Any, y: Any, ids: list[str], classes: list[str],
                      features: Any) -> list[dict[str, Any]]:
    """Patients misclassified by the repeat-averaged out-of-fold probabilities (n, k): each with
    its label, the prediction, the probability of its label and its criteria indices
    (:data:`CRITERIA_INDICES`, rounded; None when missing) from ``features`` (DataFrame indexed
    by patient). Errors that survive averaging over repeats are the patients no CV split gets
    right, as opposed to those one unlucky split gets wrong."""
    import numpy as np

    proba, y = np.asarray(oof_proba), np.asarray(y)
    out = []
    for i in np.nonzero(proba.argmax(1) != y)[0]:
        row = features.loc[ids[i]]
        predicted = classes[int(proba[i].argmax())]
        out.append({"patient_id": ids[i], "label": classes[y[i]], "predicted": predicted,
                    "p_label": round(float(proba[i, y[i]]), 3),
                    "indices": {c: (None if c not in row or row[c] != row[c] else round(float(row[c]), 1))
                                for c in CRITERIA_INDICES}})
    return out


def nested_choice_on_train(x_by_set: dict[str, Any], y_train: Any, k: int, cfg: Any, outer_repeats: int,
                           outer_splits: int = 5, extra_by_set: dict[str, Any] | None = None
                           ) -> dict[str, Any]:
    """What the model choice is worth against fixed models: a nested CV on the **train** patients
    only. ``outer_repeats`` x ``outer_splits`` repeated stratified CV whose every outer fold runs
    the whole choice (``model="auto"``: :func:`~cardioclr.evaluate.baseline.choose_and_fit` among
    ``cfg``'s candidates x every feature set, by ``cfg``'s repeated CV) on its training rows and
    scores the chosen model on its held-out rows; every fixed (candidate, feature set) pair, and
    with ``cfg.model == "vote"`` the vote (on the largest set, whose columns its members select),
    are fitted and scored on the same outer folds with the same seed. ``x_by_set``: feature set
    -> DataFrame of the train rows (n, features); ``y_train`` (n,) class indices.
    ``extra_by_set``: feature set -> second rows of some patients (their other masks' features,
    ``both_masks``), added to every fit of their own patients, inner and outer; then the vote is
    also scored without them (``vote/SET/one-source-only``), on the same folds.

    Returns ``{"protocol", "choice": {accuracy, macro_auc}, "fixed": {"CANDIDATE/SET": {...}},
    "chosen_per_fold": {"CANDIDATE/SET": count}, "best_fixed"}``, each accuracy / AUC
    ``{mean, sd, per_repeat}`` over the outer repeats (pooled held-out predictions per repeat).
    """
    import dataclasses

    import numpy as np
    from sklearn.model_selection import RepeatedStratifiedKFold

    from cardioclr.clinical.classifier import fit_rows, log_loss_of, macro_auc, predict_full, repeat_summary
    from cardioclr.evaluate.baseline import candidate_pipeline, choose_and_fit

    y = np.asarray(y_train, int)
    extras = extra_by_set or {}
    choosing = dataclasses.replace(cfg, model="auto")
    largest = max(x_by_set, key=lambda fs: x_by_set[fs].shape[1])
    vote = [f"vote/{largest}"] if cfg.model == "vote" else []
    without = [f"vote/{largest}/one-source-only"] if vote and extras else []
    pairs = [f"{c}/{fs}" for fs in x_by_set for c in cfg.candidates] + vote + without
    proba = {name: np.zeros((outer_repeats, len(y), k)) for name in ("choice", *pairs)}
    chosen: dict[str, int] = {}
    # Another seed than the inner CV's, so that outer and inner folds are not the same splits.
    outer = RepeatedStratifiedKFold(n_splits=outer_splits, n_repeats=outer_repeats, random_state=cfg.seed + 1)
    for i, (fit_part, held) in enumerate(outer.split(np.zeros(len(y)), y)):
        r = i // outer_splits
        fit_x = {fs: x.iloc[fit_part] for fs, x in x_by_set.items()}
        model, name, fs, _ = choose_and_fit(choosing, fit_x, y[fit_part], [], k, extras)
        chosen[f"{name}/{fs}"] = chosen.get(f"{name}/{fs}", 0) + 1
        proba["choice"][r, held] = predict_full(model, x_by_set[fs].iloc[held], k)
        for pair in pairs:
            c, s, *only = pair.split("/")
            m = candidate_pipeline(c, list(x_by_set[s].columns), [], 0, cfg.seed, cfg.n_jobs)
            m.fit(*fit_rows(x_by_set[s], y, fit_part, None if only else extras.get(s)))
            proba[pair][r, held] = predict_full(m, x_by_set[s].iloc[held], k)
        log.info("nested CV on train: outer fold %d/%d chose %s/%s", i + 1, outer_splits * outer_repeats,
                 name, fs)

    def scores(p: Any) -> dict[str, Any]:
        repeats = range(outer_repeats)
        return {"accuracy": repeat_summary([float((p[r].argmax(1) == y).mean()) for r in repeats]),
                "macro_auc": repeat_summary([macro_auc(y, p[r]) for r in repeats]),
                "log_loss": repeat_summary([log_loss_of(y, p[r]) for r in repeats])}

    fixed = {pair: scores(proba[pair]) for pair in pairs}
    rows = (f"; fits also on {len(next(iter(extras.values())))} patients' second rows (their other masks)"
            if extras else "")
    return {"protocol": f"{outer_repeats}x{outer_splits} outer CV on the {len(y)} train patients; in each "
                        f"outer fold the choice by {cfg.cv_repeats}x{cfg.cv_splits} CV of its training rows"
                        + rows,
            "choice": scores(proba["choice"]), "fixed": fixed, "chosen_per_fold": chosen,
            "best_fixed": max(pairs, key=lambda pr: fixed[pr]["accuracy"]["mean"])}


def calibrated_cv(name: str, x: Any, y: Any, k: int, splits: int, repeats: int, seed: int,
                  inner_repeats: int, raw: Any, extra: Any = None) -> dict[str, Any]:
    """The baseline's temperature scaling scored honestly on the plain CV's held-out
    probabilities ``raw`` (n_repeats, n, k: :func:`repeated_cv` with the same ``splits``,
    ``repeats`` and ``seed``, so the same folds): in every outer fold the temperature is fitted on
    an ``inner_repeats`` x ``splits`` CV of that fold's training patients only
    (``CVResult.temperature``), then applied to its held-out patients. Returns raw and scaled
    ``log_loss`` / ``macro_auc`` / ``accuracy`` per repeat and the fitted temperatures (min,
    median, max)."""
    import numpy as np
    from sklearn.model_selection import RepeatedStratifiedKFold

    from cardioclr.clinical.classifier import log_loss_of, macro_auc, repeat_summary, repeated_cv, tempered
    from cardioclr.evaluate.baseline import candidate_pipeline

    y = np.asarray(y, int)
    raw = np.asarray(raw)
    cal = np.zeros_like(raw)
    temps = []
    outer = RepeatedStratifiedKFold(n_splits=splits, n_repeats=repeats, random_state=seed)
    for i, (fit_part, held) in enumerate(outer.split(np.zeros(len(y)), y)):
        inner = repeated_cv(name, x.iloc[fit_part], y[fit_part], k, n_splits=splits, n_repeats=inner_repeats,
                            seed=seed + 1 + i, model=candidate_pipeline(name, list(x.columns), [], 0, seed),
                            extra=extra)
        t = inner.temperature(y[fit_part])
        temps.append(t)
        cal[i // splits, held] = tempered(raw[i // splits, held], t)
        log.info("calibrated CV: fold %d/%d, temperature %.3f", i + 1, splits * repeats, t)

    def scores(p: Any) -> dict[str, Any]:
        return {"log_loss": repeat_summary([log_loss_of(y, p[r]) for r in range(repeats)]),
                "macro_auc": repeat_summary([macro_auc(y, p[r]) for r in range(repeats)]),
                "accuracy": repeat_summary([float((p[r].argmax(1) == y).mean()) for r in range(repeats)])}

    return {"protocol": f"{repeats}x{splits} CV; temperature per outer fold from a {inner_repeats}x{splits} "
                        "CV of its training patients", "raw": scores(raw), "scaled": scores(cal),
            "temperature": {"min": float(min(temps)), "median": float(np.median(temps)),
                            "max": float(max(temps))}}


def evaluate_source(work: Path, source: str, model_name: str, candidates: tuple[str, ...], repeats: int,
                    splits: int, seed: int, nested_repeats: int = 0, both_masks: bool = True,
                    calibration_repeats: int = 0) -> dict[str, Any]:
    """Steps 1-6 of the module docstring for one mask source. With ``both_masks`` every fit also
    takes its own training patients' rows from the other masks, where ``work`` has them, as
    ``cardioclr baseline`` does (``BaselineConfig.both_masks``); patients are scored from
    ``source``."""
    import numpy as np

    from cardioclr.clinical.classifier import log_loss_of, macro_auc, predict_full, repeated_cv, tempered
    from cardioclr.data.masks import mask_flags
    from cardioclr.data.store import SliceStore
    from cardioclr.evaluate.baseline import (
        FEATURE_SETS,
        BaselineConfig,
        candidate_pipeline,
        choose_and_fit,
        feature_sets_of,
        second_mask_rows,
    )
    from cardioclr.evaluate.clinical_features import feature_table
    from cardioclr.layout import WorkLayout

    t0 = time.perf_counter()
    store = SliceStore(work)
    classes, k = store.classes, len(store.classes)
    train, test = list(store.splits.train), list(store.splits.test)
    ids = train + test
    notes: dict[str, list[str]] = {}
    full = feature_table(store, ids, source, regional=True, notes=notes)
    y = np.array([store.label_index(p) for p in ids])
    y_train, y_test = y[:len(train)], y[len(train):]
    log.info("%s: features of %d patients in %.1f s", source, len(ids), time.perf_counter() - t0)

    cfg = BaselineConfig(work=str(work), out="", masks=source, model=model_name, candidates=candidates,
                         cv_repeats=repeats, cv_splits=splits, seed=seed, both_masks=both_masks)
    # Every labelled patient's second row (or None): fit_rows adds only those of a fit's own
    # training patients, so the test patients' rows enter only the CV folds that train on them.
    second_all = second_mask_rows(store, ids, cfg, regional=True)
    x_by_set = {fs: full.loc[train, list(cols)] for fs, cols in FEATURE_SETS.items()}
    extra_train = ({fs: second_all.loc[second_all.index.isin(train), list(cols)]
                    for fs, cols in FEATURE_SETS.items()} if second_all is not None else {})
    model, name, fs, record = choose_and_fit(cfg, {fs: x_by_set[fs] for fs in feature_sets_of(cfg)},
                                             y_train, [], k, extra_train)
    cols = list(FEATURE_SETS[fs])
    log.info("%s: %s on %s features (CV on train)", source, name, fs)
    nested = (nested_choice_on_train(x_by_set, y_train, k, cfg, nested_repeats, extra_by_set=extra_train)
              if nested_repeats else None)

    cv = repeated_cv(name, full[cols], y, k, n_splits=splits, n_repeats=repeats, seed=seed,
                     model=candidate_pipeline(name, cols, [], 0, seed),
                     extra=None if second_all is None else second_all[cols])
    s = cv.summary()
    calibration = (calibrated_cv(name, full[cols], y, k, splits, repeats, seed, calibration_repeats,
                                 cv.repeat_proba, None if second_all is None else second_all[cols])
                   if calibration_repeats else None)
    temperature = float(record.get("temperature", 1.0))
    proba_raw = predict_full(model, full.loc[test, cols], k)
    proba = tempered(proba_raw, temperature)  # as `cardioclr baseline` writes them
    pred = proba.argmax(1)
    confusions = {f"{classes[t]}->{classes[p]}": int(cv.confusion[t, p])
                  for t in range(k) for p in range(k) if t != p and cv.confusion[t, p]}
    test_errors = [{"patient_id": test[i], "label": classes[y_test[i]], "predicted": classes[pred[i]]}
                   for i in np.nonzero(pred != y_test)[0]]
    n_notes = sum(len(v) for v in notes.values())
    by_flag = (accuracy_by_flag(cv.oof_proba, y, mask_flags(work, ids))
               if source == "predicted" and WorkLayout(work).qc_flags.is_file() else None)
    return {
        "chosen": {"classifier": name, "features": fs},
        "choice_cv_on_train": {n: {"accuracy": r["accuracy"]["mean"], "macro_auc": r["macro_auc"]["mean"],
                                   "log_loss": r["log_loss"]["mean"]} for n, r in record["results"].items()},
        "cv_accuracy": {"mean": s["accuracy"]["mean"], "sd": s["accuracy"]["sd"]},
        "cv_macro_auc": float(np.nanmean(cv.macro_auc)),
        "cv_log_loss": s["log_loss"],
        "cv_confusions": confusions,
        "cv_confusion_matrix": cv.confusion.tolist(),
        "test_accuracy": float((pred == y_test).mean()),
        "test_macro_auc": macro_auc(y_test, proba),
        "temperature": temperature,
        "test_log_loss": log_loss_of(y_test, proba),
        "test_log_loss_unscaled": log_loss_of(y_test, proba_raw),
        "test_macro_auc_unscaled": macro_auc(y_test, proba_raw),
        "cv_calibration": calibration,
        "test_errors": test_errors,
        "cv_persistent_errors": persistent_errors(cv.oof_proba, y, ids, list(classes), full),
        "cv_accuracy_by_segmentation_flag": by_flag,
        "nested_cv_on_train": nested,
        "n_patients": len(ids), "n_train": len(train), "n_test": len(test),
        "second_rows": 0 if second_all is None else len(second_all),
        "feature_notes": {"patients": len(notes), "notes": n_notes},
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit code (0 also when the data is absent)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA),
                    help="ACDC-layout folder (default ../shared/data/acdc)")
    ap.add_argument("--work", default=None, help="prepared work directory to use or create "
                    "(default: a fresh one under $TMPDIR)")
    ap.add_argument("--seg-work", default=None, help="work directory with cross-fitted predicted masks "
                    "(`segment train --folds K` + `segment predict`); without it the predicted part is null")
    ap.add_argument("--accept-single-model", action="store_true",
                    help="also measure --seg-work masks that are not cross-fitted (e.g. one model "
                         "trained on train: test masks honest, train masks in-sample); labelled so "
                         "in 'predicted_masks'")
    ap.add_argument("--model", default=None,
                    help="the model of `cardioclr baseline --model` (default: its default, the fixed "
                         "vote; auto: chosen among --candidates by CV on train)")
    ap.add_argument("--candidates", default=None,
                    help="comma-separated classifiers of --model auto and of the nested CV's fixed "
                         "pairs (default: those of `cardioclr baseline`)")
    ap.add_argument("--both-masks", action=argparse.BooleanOptionalAction, default=True,
                    help="every fit also on its training patients' features from the other masks "
                         "(expert for predicted, predicted for expert where --work has them), as "
                         "`cardioclr baseline` does by default (default: on)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--splits", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--nested-repeats", type=int, default=0,
                    help="also run a nested CV on the train patients with this many repeats of 5 outer "
                         "folds: the model choice against every fixed pair (each outer fold re-runs the "
                         "choice: ~1.5 min per fold and mask source on 2 cores; default 0 = skip)")
    ap.add_argument("--calibration-repeats", type=int, default=0,
                    help="also score the baseline's temperature scaling honestly over all patients: "
                         "per outer fold of the CV a temperature from this many repeats of an inner "
                         "CV of its training patients ('cv_calibration'; ~6 min per repeat and mask "
                         "source on one core; default 0 = skip)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    start = time.perf_counter()
    load_before = os.getloadavg()[0]
    from cardioclr.evaluate.baseline import BaselineConfig

    args.model = args.model or BaselineConfig.model
    candidates = (tuple(c.strip() for c in args.candidates.split(",") if c.strip()) if args.candidates
                  else BaselineConfig.candidates)

    work = Path(args.work) if args.work else None
    if work is None or not (work / "dataset.json").is_file():
        data = Path(args.data)
        if not (data.is_dir() and any(data.iterdir())):
            print(json.dumps({"skipped": f"no data at {data}"}))
            return 0
        import tempfile

        from cardioclr.data.prepare import PrepareConfig, prepare

        work = work or Path(tempfile.mkdtemp(prefix="diagnosis_quality_"))
        prepare(PrepareConfig(data=str(data), out=str(work), workers=2))
    expert = evaluate_source(work, "expert", args.model, candidates, args.repeats, args.splits, args.seed,
                             args.nested_repeats, args.both_masks, args.calibration_repeats)

    predicted: dict[str, Any] | None = None
    predicted_reason = None
    predicted_masks = None
    if args.seg_work:
        from cardioclr.data.store import SliceStore

        sw = Path(args.seg_work)
        st = SliceStore(sw)
        predicted_reason = crossfit_problem(sw, list(st.splits.train), list(st.splits.test))
        if predicted_reason is None:
            predicted = evaluate_source(sw, "predicted", args.model, candidates, args.repeats, args.splits,
                                        args.seed, args.nested_repeats, args.both_masks,
                                        args.calibration_repeats)
            predicted_masks = "cross-fitted: no patient's mask from a model that saw that patient"
        elif args.accept_single_model:
            predicted = evaluate_source(sw, "predicted", args.model, candidates, args.repeats, args.splits,
                                        args.seed, args.nested_repeats, args.both_masks,
                                        args.calibration_repeats)
            predicted_masks = (f"NOT cross-fitted ({predicted_reason}): one segmentation model trained "
                               "on the train patients; test masks honest, train masks in-sample for "
                               "segmentation (that model saw their expert masks, never their "
                               "diagnoses), so CV over all patients and the classifier's training "
                               "features are better than a deployed pipeline's")
            predicted_reason = None
    else:
        predicted_reason = ("no --seg-work: cross-fitted predicted masks (`cardioclr segment train WORK "
                            "--folds 5` then `segment predict WORK`, 5 segmentation trainings) were not "
                            "given")

    def pick(d: dict[str, Any] | None, key: str) -> Any:
        return None if d is None else d[key]

    def scaled_log_loss(d: dict[str, Any] | None) -> float | None:
        calibration = None if d is None else d["cv_calibration"]
        return None if calibration is None else calibration["scaled"]["log_loss"]["mean"]

    result = {
        "expert_cv_accuracy": expert["cv_accuracy"],
        "expert_cv_macro_auc": expert["cv_macro_auc"],
        "expert_cv_log_loss": expert["cv_log_loss"]["mean"],
        "expert_cv_log_loss_scaled": scaled_log_loss(expert),
        "predicted_cv_log_loss_scaled": scaled_log_loss(predicted),
        "expert_test_accuracy": expert["test_accuracy"],
        "expert_test_macro_auc": expert["test_macro_auc"],
        "predicted_cv_accuracy": pick(predicted, "cv_accuracy"),
        "predicted_cv_macro_auc": pick(predicted, "cv_macro_auc"),
        "predicted_cv_log_loss": None if predicted is None else predicted["cv_log_loss"]["mean"],
        "test_accuracy_predicted": pick(predicted, "test_accuracy"),
        "test_macro_auc_predicted": pick(predicted, "test_macro_auc"),
        "predicted_cv_accuracy_by_segmentation_flag": pick(predicted, "cv_accuracy_by_segmentation_flag"),
        "predicted_null_reason": predicted_reason,
        "predicted_masks": predicted_masks,
        "cv_persistent_errors": {"expert": expert["cv_persistent_errors"],
                                 "predicted": pick(predicted, "cv_persistent_errors")},
        "nested_cv_on_train": {"expert": expert["nested_cv_on_train"],
                               "predicted": pick(predicted, "nested_cv_on_train")},
        "confusions": {"expert_cv": expert["cv_confusions"],
                       "predicted_cv": pick(predicted, "cv_confusions")},
        "targets": {"expert_cv_accuracy": 0.98, "predicted_cv_accuracy": 0.96,
                    "predicted_cv_macro_auc": 0.995},
        "protocol": f"{args.repeats}x{args.splits} repeated stratified CV over all labelled patients "
                    f"of the model {args.model!r} (with 'auto': classifier and feature set chosen by "
                    "the same CV on train only) + the fixed 70/30 test",
        "details": {"expert": expert, "predicted": predicted},
        "work": str(work), "seg_work": args.seg_work, "model": args.model, "candidates": list(candidates),
        "both_masks": args.both_masks,
        "seconds": round(time.perf_counter() - start, 1),
        "cpu_count": os.cpu_count(), "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(result, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
