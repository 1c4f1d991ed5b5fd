"""``cardioclr predict MODEL_DIR PATIENT... --out DIR``: classify new patients with a study cell.

For patients the study never saw: each is prepared exactly like the training data (same
in-plane spacing and grid size, read from the training work directory), segmented with the
study's segmentation model, and classified with the fine-tuned ensemble in ``MODEL_DIR``.

``MODEL_DIR`` is a fine-tuning cell directory (``OUT/finetune/<encoder>__<pretraining>__<input>``):
its ``model.pt`` is the classifier, and its ``config.yaml`` names the work directory, whose
``dataset.json`` gives the grid and whose ``segmentation/model`` is the segmentation model.

Outputs in ``DIR``: ``predictions.csv`` (``patient_id, predicted, prob_<class>...``, plus
``label`` when the patient folder's Info.cfg has a Group), ``failed.csv`` (patient, reason),
``clinical_features.csv`` (indices and regional features of the predicted masks),
``bullseye/PID.png`` (AHA bull's-eye maps of the segmental thickness, thickening and EF),
``diagnosis.csv`` (the study's clinical baseline, refitted: :mod:`cardioclr.study.predict_diagnosis`),
``indices.csv`` (clinical indices of each segmented patient from its predicted masks: volumes
in mL, EF in %, mass in g, thickness in mm, ``*_per_m2`` when height and weight are known),
``saliency/PID.png`` overlays, ``work/segmentation/qc/PID.png`` QC images,
``work/segmentation/nifti/PID/`` masks on the patient's own grid and, with ``--dicom-seg``,
``work/segmentation/dicom_seg/PID/PID_{ED,ES}_seg.dcm`` DICOM SEG objects over the patient's DICOM
images (``work/segmentation/dicom_seg/dicom_seg.csv`` says which were written or why not).
A patient that cannot be read, segmented or classified is listed with its reason; the others
continue.

Every run replaces the outputs of an earlier run into the same ``DIR`` (the work store is
rebuilt, the files are rewritten, ``saliency/`` is swapped in whole), so they always describe
the same patients.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from cardioclr.atomic import atomic_dir, read_json, write_json, write_text
from cardioclr.data.cases import Case
from cardioclr.errors import CardioclrError, DataError
from cardioclr.layout import WorkLayout

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PatientInput:
    """One new patient: an ACDC-layout folder, or an ED and an ES frame (NIfTI or DICOM)."""

    patient_id: str
    folder: Path | None = None
    ed: Path | None = None
    es: Path | None = None

    @classmethod
    def from_folder(cls, path: str | os.PathLike[str]) -> PatientInput:
        """An ACDC patient folder (Info.cfg with ED/ES frame numbers, the frames)."""
        p = Path(path)
        return cls(p.name, folder=p)

    @classmethod
    def from_frames(cls, ed: str | os.PathLike[str], es: str | os.PathLike[str],
                    patient_id: str | None = None) -> PatientInput:
        """An ED and an ES frame; the id defaults to the ED file name without its suffixes."""
        e = Path(ed)
        pid = patient_id or e.name.split(".")[0]
        return cls(pid, ed=e, es=Path(es))

    def to_case(self) -> Case:
        """The :class:`Case` to prepare; raises :class:`DataError` naming the bad file."""
        if self.folder is not None:
            from cardioclr.data.acdc import read_acdc_case

            if not self.folder.is_dir():
                raise DataError(self.folder, "patient folder does not exist")
            return read_acdc_case(self.folder, require_label=False)
        assert self.ed is not None and self.es is not None
        for p in (self.ed, self.es):
            if not p.exists():
                raise DataError(p, "frame does not exist")
        return Case(patient_id=self.patient_id, label=None, ed_image=self.ed, es_image=self.es,
                    source=str(self.ed.parent))


@dataclass
class PredictResult:
    """Predictions of the patients that worked, and the reason for each that did not."""

    predictions: pd.DataFrame
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def find_work_dir(model_dir: str | os.PathLike[str]) -> Path:
    """The training work directory of a fine-tuning cell (from its ``config.yaml``)."""
    m = Path(model_dir)
    cfg_path = m / "config.yaml"
    if not cfg_path.is_file():
        raise CardioclrError(f"{m}: not a fine-tuning cell directory (no config.yaml); pass e.g. "
                             "OUT/finetune/smallcnn__simclr-segmented__segmented")
    try:
        cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise CardioclrError(f"{cfg_path}: unreadable ({err})") from err
    work = cfg.get("work")
    if not work:
        raise CardioclrError(f"{cfg_path}: names no work directory")
    w = Path(work)
    if not w.is_absolute():
        w = (m / w).resolve()
    if not (w / "dataset.json").is_file():
        raise CardioclrError(f"{w}: the training work directory named in {cfg_path} is missing "
                             "(moved?); predict needs its dataset.json and segmentation model")
    return w


def _prepare_store(cases: list[Case], tmp_work: Path, info: dict[str, Any], classes: list[str],
                   failed: dict[str, str]) -> list[str]:
    """Prepare ``cases`` into a minimal store at ``tmp_work`` on the training grid; returns ids."""
    from cardioclr.data.prepare import prepare_case
    from cardioclr.data.store import STORE_VERSION

    rows = []
    (tmp_work / "store").mkdir(parents=True, exist_ok=True)
    for case in cases:
        try:
            rows.append(prepare_case(case, tmp_work / "store", float(info["spacing_mm"]),
                                     int(info["image_size"])))
        except DataError as err:
            failed[case.patient_id] = f"{err.path}: {err.problem}"
            log.error("patient %s: %s", case.patient_id, failed[case.patient_id])
    if not rows:
        return []
    man = pd.DataFrame(rows)
    index = {c: i for i, c in enumerate(classes)}
    man.insert(2, "label_index", [index.get(str(lab), -1) for lab in man["label"]])
    write_text(tmp_work / "manifest.csv", man.to_csv(index=False))
    ids = list(man["patient_id"])
    write_json(tmp_work / "splits.json", {"method": "predict", "seed": 0, "train": [], "test": [],
                                          "folds": [], "unlabelled": ids})
    write_json(tmp_work / "dataset.json", {
        "store_version": STORE_VERSION, "classes": classes, "image_size": int(info["image_size"]),
        "spacing_mm": float(info["spacing_mm"]), "source": "cardioclr predict",
        "patients": len(ids), "skipped": len(failed), "train": 0, "test": 0})
    return ids


#: Written first into ``DIR/work`` so that a later predict (even after a crash) may replace it.
PREDICT_MARKER = "cardioclr_predict_work"


def _check_replaceable(tmp_work: Path, train_work: Path) -> None:
    """Refuse to delete ``tmp_work`` unless it is absent or an earlier predict's store.

    ``--out OUT`` of the study itself would otherwise wipe the study's ``OUT/work`` (the
    training store, segmentation model and SimCLR encoders).
    """
    if not tmp_work.exists():
        return
    if tmp_work.resolve() == train_work.resolve():
        raise CardioclrError(f"{tmp_work} is the study's own work directory; choose another --out")
    if any(tmp_work.iterdir()) and not (tmp_work / PREDICT_MARKER).is_file():
        raise CardioclrError(f"{tmp_work} exists and was not written by cardioclr predict; "
                             "refusing to replace it: choose another --out")


def predict_patients(model_dir: str | os.PathLike[str], inputs: list[PatientInput],
                     out: str | os.PathLike[str], device: str = "auto",
                     saliency: bool = True, dicom_seg: bool = False) -> PredictResult:
    """Prepare, segment and classify ``inputs``; write ``out/predictions.csv`` and overlays.

    ``dicom_seg``: also write the ED/ES masks of patients given as DICOM as DICOM SEG objects in
    ``out/work/segmentation/dicom_seg/`` (:mod:`cardioclr.segment.dicom_out`).
    """
    from cardioclr.classify.predict import load_classifier
    from cardioclr.data.pairs import load_patient_inputs
    from cardioclr.evaluate.metrics import prob_columns
    from cardioclr.segment.crossfit import crossfit_ready, folds_dir
    from cardioclr.segment.predict import PredictConfig
    from cardioclr.segment.predict import predict as segment

    start = time.perf_counter()
    out = Path(out)
    work = find_work_dir(model_dir)
    clf = load_classifier(model_dir)
    seg_model = WorkLayout(work).segmentation_model
    if crossfit_ready(work):  # a cross-fitted study: new patients get the fold models' average
        seg_model = folds_dir(work)
    elif not (seg_model / "model.pt").is_file():
        raise CardioclrError(f"{seg_model}: the study's segmentation model is missing")
    info = read_json(work / "dataset.json")
    ids = [i.patient_id for i in inputs]
    dup = sorted({p for p in ids if ids.count(p) > 1})
    if dup:
        raise CardioclrError(f"patient id(s) given twice: {dup}; use --id to name --ed/--es pairs")
    failed: dict[str, str] = {}
    cases: list[Case] = []
    for item in inputs:
        try:
            cases.append(item.to_case())
        except DataError as err:
            failed[item.patient_id] = f"{err.path}: {err.problem}"
            log.error("patient %s: %s", item.patient_id, failed[item.patient_id])

    tmp_work = out / "work"  # kept: masks, NIfTI and QC of the new patients live here
    _check_replaceable(tmp_work, work)
    shutil.rmtree(tmp_work, ignore_errors=True)
    tmp_work.mkdir(parents=True, exist_ok=True)
    (tmp_work / PREDICT_MARKER).write_text("store of new patients written by cardioclr predict\n")
    ready = _prepare_store(cases, tmp_work, info, clf.classes, failed)
    if ready:
        # New patients' masks are post-processed as the study's were (its classifier learnt from
        # them); a study predicted before the basal ES RV rule existed records no setting: off.
        study_run = WorkLayout(work).segmentation / "predict_summary.json"
        basal = bool(read_json(study_run).get("basal_es_rv", False)) if study_run.is_file() else True
        summary = segment(PredictConfig(work=str(tmp_work), model=str(seg_model), device=device,
                                        basal_es_rv=basal))
        for pid, reason in (summary.get("failed") or {}).items():
            failed[pid] = f"segmentation failed: {reason}"
        ready = [p for p in ready if p not in failed]
        if dicom_seg and ready:
            from cardioclr.segment.dicom_out import write_segs

            write_segs(tmp_work, cases={c.patient_id: c for c in cases}, patient_ids=ready)
    indices = _indices_table(tmp_work, ready)

    # New patients only have predicted masks; a model trained on expert masks uses them too.
    spec = dataclasses.replace(clf.spec, mask_source="predicted")
    from cardioclr.data.store import SliceStore

    store = SliceStore(tmp_work) if ready else None
    torch_device = _device(device)
    rows, loaded = [], []
    for pid in ready:
        try:
            assert store is not None
            inp = load_patient_inputs(store, pid, spec, saliency_margin_mm=5.0 if saliency else None)
            p = clf.predict_inputs(inp, torch_device)
        except Exception as err:  # noqa: BLE001 - one patient must not stop the others
            failed[pid] = f"classification failed: {type(err).__name__}: {err}"
            log.error("patient %s: %s", pid, failed[pid])
            continue
        k = int(np.argmax(p))
        label = store.manifest.at[pid, "label"] if store is not None else ""
        rows.append({"patient_id": pid, "predicted": clf.classes[k],
                     **dict(zip(prob_columns(clf.classes), map(float, p), strict=True)),
                     "label": "" if pd.isna(label) else str(label)})
        loaded.append((inp, k))
    cols = ["patient_id", "predicted", *prob_columns(clf.classes), "label"]
    df = pd.DataFrame(rows, columns=cols)
    if not (df["label"] != "").any():
        df = df.drop(columns="label")
    render: Callable[[Path], None] | None = None
    if saliency and loaded:
        from cardioclr.evaluate.saliency import run_saliency

        def render_overlays(folder: Path) -> None:
            run_saliency(clf.models[0], [i for i, _ in loaded], {i.patient_id: k for i, k in loaded},
                         clf.classes, spec.input_mode, folder, 5.0, spec.mask_source, torch_device)

        render = render_overlays

    write_text(out / "predictions.csv", df.to_csv(index=False, float_format="%.6f"))
    write_text(out / "failed.csv", pd.DataFrame(sorted(failed.items()), columns=["patient_id", "reason"])
               .to_csv(index=False))
    write_text(out / "indices.csv", indices.to_csv(index=False, float_format="%.4g"))
    saliency_status = write_saliency(out / "saliency", render)
    clinical: dict[str, Any] = {"clinical_features": 0, "diagnosis": None}
    if ready:
        from cardioclr.study.predict_diagnosis import baseline_dir_of, write_clinical_outputs

        try:
            clinical = write_clinical_outputs(tmp_work, ready, out, baseline_dir_of(model_dir))
        except Exception as err:  # noqa: BLE001 - the network's predictions are already written
            clinical["diagnosis"] = f"failed: {type(err).__name__}: {err}"
            log.error("clinical features/diagnosis failed: %s", err)
    write_json(out / "predict_info.json", {"model_dir": str(Path(model_dir).resolve()),
                                           "work": str(work), "encoder": clf.encoder,
                                           "pretraining": clf.pretraining,
                                           "input": dataclasses.asdict(spec),
                                           "patients": len(inputs), "predicted": len(df),
                                           "failed": failed, "saliency": saliency_status,
                                           "clinical": clinical,
                                           "seconds": round(time.perf_counter() - start, 2)})
    return PredictResult(df, failed, time.perf_counter() - start)


def _indices_table(work: Path, patient_ids: list[str]) -> pd.DataFrame:
    """Clinical indices (volumes, EF, mass, ...) of each segmented patient from its predicted
    masks: ``patient_id`` then :data:`cardioclr.clinical.indices.INDEX_NAMES` columns."""
    from cardioclr.clinical.indices import INDEX_NAMES
    from cardioclr.segment.evaluate import clinical_indices_table

    columns = ["patient_id", *INDEX_NAMES]
    if not patient_ids:
        return pd.DataFrame(columns=columns)
    table = clinical_indices_table(work, patient_ids)
    if table.empty:
        return pd.DataFrame(columns=columns)
    return table[table["source"] == "predicted"].reindex(columns=columns).reset_index(drop=True)


def write_saliency(folder: Path, render: Callable[[Path], None] | None) -> str:
    """Replace ``folder`` by the overlays ``render`` writes into a fresh folder; returns a status.

    The overlays are built under a temporary name and swapped in whole (:func:`atomic_dir`), so
    ``DIR/saliency`` holds exactly this run's patients: a second predict into the same ``DIR``
    with other patients must not leave the first run's PNGs beside the new ``predictions.csv``.
    With nothing to render (``--no-saliency``, no patient classified) or when rendering fails,
    the old folder is removed for the same reason: no overlays are better than stale ones.
    """
    if render is None:
        shutil.rmtree(folder, ignore_errors=True)
        return "none"
    try:
        with atomic_dir(folder) as tmp:
            render(tmp)
    except Exception as err:  # noqa: BLE001 - predictions are written; overlays are extra
        log.error("saliency overlays failed: %s", err)
        shutil.rmtree(folder, ignore_errors=True)
        return f"failed: {type(err).__name__}: {err}"
    return "written"


def _device(name: str) -> Any:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
