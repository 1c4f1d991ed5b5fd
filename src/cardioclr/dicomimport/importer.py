"""``cardioclr import``: a PACS/scanner DICOM export -> an ACDC-layout dataset cardioclr reads.

Output (``OUT``, built under a temporary name and renamed into place when complete)::

    OUT/<subset>/patientNNN/Info.cfg                 ED, ES (1-based), Group, Height, Weight,
                                                     NbFrame, EDESMethod, EDESProvisional
    OUT/<subset>/patientNNN/patientNNN_4d.nii.gz      short-axis cine (x, y, z, t), RAS affine
    OUT/<subset>/patientNNN/patientNNN_frameEE.nii.gz   ED and ES frames (x, y, z)
    OUT/<subset>/patientNNN/patientNNN_frameEE.dicom.json  source references of each slice
                                                     (UIDs only: for DICOM SEG output)
    OUT/import_report.csv      one row per series (kind, used or not, reason) and per bad file
    OUT/import_patients.csv    one row per patient: slices, phases, ED/ES and how they were found
    OUT/import_summary.json    counts and settings

Patients are named ``patientNNN`` pseudonyms, numbered in a random order (so the numbering does
not reveal the order of the hospital's IDs); the original -> pseudonym table is written only to
``--keep-mapping FILE`` (readable by the owner only), and re-used from it on a later import so
pseudonyms stay stable. No name, ID, birth date, institution or free-text header value is
written or logged (series descriptions are kept in the report with identifying values removed).
One bad patient is reported and skipped; it never stops the others.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from cardioclr.atomic import atomic_dir, atomic_path, write_json, write_text
from cardioclr.dicomimport.assemble import Cine, read_cine
from cardioclr.dicomimport.edes import image_es_estimate, lv_volume_curve
from cardioclr.dicomimport.labels import LabelRow, read_labels
from cardioclr.dicomimport.scan import Series, scan_export
from cardioclr.dicomimport.select import Decision, choose_cine
from cardioclr.errors import CardioclrError, DataError
from cardioclr.io.deid import scrub

log = logging.getLogger(__name__)

REPORT_COLUMNS = ("patient", "study", "series_number", "description", "images", "kind", "used",
                  "reason", "burned_in_annotation")
PATIENT_COLUMNS = ("patient", "subset", "label", "sax_series", "slices", "phases", "phase_order",
                   "ed_frame", "es_frame", "ed_es_method", "ed_es_provisional", "frame_ms",
                   "burned_in_annotation", "status", "reason")
REFS_FORMAT = "cardioclr-dicom-refs/1"
SUMMARY_FILE = "import_summary.json"


@dataclass(frozen=True)
class ImportConfig:
    """Settings of ``cardioclr import`` (paths as given by the user)."""

    root: str
    out: str
    labels: str | None = None
    segmentation: str | None = None  # a work dir with segmentation/model, or a model dir/file
    keep_mapping: str | None = None
    overwrite: bool = False
    dicom_refs: bool = True
    device: str = "cpu"


def import_dicom(cfg: ImportConfig) -> dict[str, Any]:
    """Run the import; returns the summary written to ``import_summary.json``."""
    start = time.perf_counter()
    root, out = Path(cfg.root), Path(cfg.out)
    if not root.is_dir():
        raise CardioclrError(f"{root}: DICOM export folder does not exist")
    if out.resolve().is_relative_to(root.resolve()) or root.resolve().is_relative_to(
            out.resolve()):
        raise CardioclrError(f"{out}: write the dataset outside the DICOM export {root} (and not "
                             "around it)")
    if out.exists() and not cfg.overwrite:
        raise CardioclrError(f"{out} exists; pass --overwrite to replace it")
    if out.exists() and any(out.iterdir()) and not (out / SUMMARY_FILE).is_file():
        # --overwrite replaces the whole folder: only ever one this command wrote.
        raise CardioclrError(f"{out} is not a dataset written by cardioclr import (no "
                             f"{SUMMARY_FILE}); refusing to replace it: choose another --out")
    if cfg.keep_mapping and any(Path(cfg.keep_mapping).resolve().is_relative_to(d.resolve())
                                for d in (out, root)):
        raise CardioclrError(f"{cfg.keep_mapping}: keep the mapping outside the dataset and the "
                             "export (it re-identifies every patient)")
    labels = read_labels(cfg.labels) if cfg.labels else {}
    model = _model_path(cfg.segmentation) if cfg.segmentation else None
    scan = scan_export(root)
    if not scan.patients:
        raise CardioclrError(f"{root}: no DICOM images found ({scan.files_seen} files, "
                             f"{len(scan.problems)} unreadable)")
    all_secrets = sorted({v for ss in scan.patients.values() for s in ss for v in s.secrets})
    mapping = _pseudonyms(sorted(scan.patients), cfg.keep_mapping)
    report: list[dict[str, Any]] = [
        {"patient": "", "study": "", "series_number": "", "description": "", "images": "",
         "kind": "unreadable", "used": "no", "reason": scrub(f"{path}: {why}", all_secrets),
         "burned_in_annotation": ""} for path, why in scan.problems]
    patients: list[dict[str, Any]] = []
    with atomic_dir(out) as tmp:
        for key in sorted(scan.patients, key=lambda k: mapping[k]):
            pid = mapping[key]
            row = labels.get(key)
            result = _import_patient(tmp, pid, scan.patients[key], row, model, cfg, report)
            patients.append(result)
            if result["status"] == "imported":
                log.info("%s: %s, %s slices x %s phases, ED %s ES %s (%s%s)", pid,
                         result["sax_series"], result["slices"], result["phases"],
                         result["ed_frame"], result["es_frame"], result["ed_es_method"],
                         ", provisional" if result["ed_es_provisional"] == "yes" else "")
            else:
                log.warning("%s skipped: %s", pid, result["reason"])
        unmatched = sorted(r.row for k, r in labels.items() if k not in scan.patients)
        if unmatched:
            log.warning("%d patient(s) of the labels CSV are not in the export (rows %s)",
                        len(unmatched), ", ".join(map(str, unmatched[:20])))
        write_text(tmp / "import_report.csv", _csv(report, REPORT_COLUMNS))
        write_text(tmp / "import_patients.csv", _csv(patients, PATIENT_COLUMNS))
        imported = [p for p in patients if p["status"] == "imported"]
        summary = {
            "patients_found": len(patients),
            "patients_imported": len(imported),
            "patients_skipped": len(patients) - len(imported),
            "ed_es_provisional": sum(p["ed_es_provisional"] == "yes" for p in imported),
            "series": sum(1 for r in report if r["kind"] != "unreadable"),
            "unreadable_files": len(scan.problems),
            "files_seen": scan.files_seen,
            "non_dicom_files": scan.not_dicom,
            "burned_in_series": sum(1 for r in report if r["burned_in_annotation"] == "yes"),
            "labels_unmatched_rows": unmatched,
            "segmentation_model": bool(model),
            "mapping_written": bool(cfg.keep_mapping),
            "seconds": round(time.perf_counter() - start, 2),
        }
        write_json(tmp / SUMMARY_FILE, summary)
        if cfg.keep_mapping:
            # Before the dataset is committed: a dataset whose pseudonyms cannot be traced back
            # (if the run died between the two) would be worse than a mapping with extra rows.
            _write_mapping(Path(cfg.keep_mapping), mapping)
    return summary


def _import_patient(out: Path, pid: str, series: list[Series], row: LabelRow | None,
                    model: Path | None, cfg: ImportConfig, report: list[dict[str, Any]]
                    ) -> dict[str, Any]:
    """Import one patient into ``out``; returns its row of import_patients.csv."""
    studies = {uid: i + 1 for i, uid in enumerate(sorted({s.study_uid for s in series}))}
    subset = (row.subset if row and row.subset else "training")
    result: dict[str, Any] = {c: "" for c in PATIENT_COLUMNS}
    result.update(patient=pid, subset=subset, label=(row.label if row and row.label else ""),
                  burned_in_annotation="yes" if any(s.burned_in for s in series) else "no")
    try:
        candidate, decisions = choose_cine(series)
    except Exception as err:  # error boundary: one patient never stops the others
        decisions, candidate = [], None
        result.update(status="skipped", reason=f"could not sort its series ({type(err).__name__})")
    for d in sorted(decisions, key=lambda d: (studies[d.series.study_uid],
                                              d.series.series_number)):
        report.append(_report_row(pid, studies, d))
    if candidate is None:
        if not result["status"]:
            kinds = sorted({d.kind for d in decisions})
            result.update(status="skipped", reason=(
                "no short-axis cine found among its "
                f"{len(series)} series ({', '.join(kinds) or 'none'}); see import_report.csv"))
        return result
    result["sax_series"] = candidate.label
    try:
        cine = read_cine(candidate, pid)
        ed, es, method, provisional = _ed_es(cine, row, model, cfg.device, pid)
        _write_patient(out / subset / pid, pid, cine, ed, es, method, provisional, row,
                       candidate.series, cfg.dicom_refs)
    except DataError as err:
        result.update(status="skipped", reason=f"{candidate.label}: {err.problem}")
        return result
    except Exception as err:  # error boundary; the message may quote header values
        secrets_ = [v for s in series for v in s.secrets]
        result.update(status="skipped", reason=scrub(
            f"{candidate.label}: unexpected {type(err).__name__}: {err}", secrets_)[:300])
        return result
    nt, nz = cine.array.shape[:2]
    result.update(status="imported", slices=nz, phases=nt, phase_order=cine.phase_order,
                  ed_frame=ed + 1, es_frame=es + 1, ed_es_method=method,
                  ed_es_provisional="yes" if provisional else "no",
                  frame_ms="" if cine.frame_ms is None else round(cine.frame_ms, 2))
    if result["burned_in_annotation"] == "yes":
        log.warning("%s: a series is flagged BurnedInAnnotation=YES (pixels may show identifying "
                    "text); review before sharing", pid)
    return result


def _report_row(pid: str, studies: dict[str, int], d: Decision) -> dict[str, Any]:
    s = d.series
    reason = d.reason + ("; BurnedInAnnotation=YES: pixels may show identifying text"
                         if s.burned_in else "")
    return {"patient": pid, "study": studies[s.study_uid], "series_number": s.series_number,
            "description": s.description, "images": len(s.frames), "kind": d.kind,
            "used": "yes" if d.used else "no", "reason": reason,
            "burned_in_annotation": "yes" if s.burned_in else "no"}


def _ed_es(cine: Cine, row: LabelRow | None, model: Path | None, device: str,
           pid: str) -> tuple[int, int, str, bool]:
    """(ED index, ES index, method, provisional), 0-based phases of ``cine``."""
    nt = cine.array.shape[0]
    if nt < 2:
        raise DataError(pid, "the cine has a single phase: ED and ES cannot both be found")
    if model is not None:
        volumes = lv_volume_curve(cine.array, cine.spacing_zyx, str(model), device)
        ed, es = int(np.argmax(volumes)), int(np.argmin(volumes))
        method, provisional = "segmentation", False
        if ed == es or volumes[ed] <= 0:
            log.warning("%s: the segmentation found no LV cavity change; ES from image content",
                        pid)
            ed, method, provisional = 0, "image-content", True
            es = image_es_estimate(cine.array)[0]
    else:
        ed, method, provisional = 0, "image-content", True
        es = image_es_estimate(cine.array)[0]
    if row is not None and (row.ed_frame or row.es_frame):
        for name, value in (("ed_frame", row.ed_frame), ("es_frame", row.es_frame)):
            if value is not None and value > nt:
                raise DataError(pid, f"labels CSV row {row.row}: {name} {value} is beyond the "
                                f"cine's {nt} phases")
        ed = row.ed_frame - 1 if row.ed_frame else ed
        es = row.es_frame - 1 if row.es_frame else es
        both = row.ed_frame is not None and row.es_frame is not None
        method = "labels-csv" if both else f"labels-csv+{method}"
        provisional = provisional and not both
    if ed == es:
        raise DataError(pid, f"ED and ES are the same phase ({ed + 1}); set ed_frame/es_frame in "
                        "the labels CSV")
    return ed, es, method, provisional


def _write_patient(folder: Path, pid: str, cine: Cine, ed: int, es: int, method: str,
                   provisional: bool, row: LabelRow | None, series: list[Series],
                   dicom_refs: bool) -> None:
    folder.mkdir(parents=True)
    array = cine.array
    integral = bool(np.all(np.rint(array) == array)) and array.min() >= -32768 \
        and array.max() <= 32767
    dtype = np.int16 if integral else np.float32
    zyx = cine.spacing_zyx
    pixdim = (zyx[2], zyx[1], zyx[0])
    # Frame interval in ms when trigger times give it; else 1 with no time unit (not "1 ms").
    _save(folder / f"{pid}_4d.nii.gz", array.transpose(3, 2, 1, 0).astype(dtype), cine.affine,
          (*pixdim, cine.frame_ms or 1.0), time_unit="msec" if cine.frame_ms else None)
    for t in sorted({ed, es}):
        stem = f"{pid}_frame{t + 1:02d}"
        _save(folder / f"{stem}.nii.gz", array[t].transpose(2, 1, 0).astype(dtype), cine.affine,
              pixdim)
        if dicom_refs:
            write_json(folder / f"{stem}.dicom.json", _refs(cine, t, series))
    height = row.height_cm if row and row.height_cm else _first(s.height_m for s in series)
    if height is not None and not (row and row.height_cm):
        height = height * 100.0  # DICOM PatientSize is in metres
    weight = row.weight_kg if row and row.weight_kg else _first(s.weight_kg for s in series)
    lines = [f"ED: {ed + 1}", f"ES: {es + 1}"]
    if row and row.label:
        lines.append(f"Group: {row.label}")
    if height:
        lines.append(f"Height: {height:.1f}")
    lines.append(f"NbFrame: {array.shape[0]}")
    if weight:
        lines.append(f"Weight: {weight:.1f}")
    lines += [f"EDESMethod: {method}", f"EDESProvisional: {'yes' if provisional else 'no'}"]
    write_text(folder / "Info.cfg", "\n".join(lines) + "\n")


def _save(path: Path, data: np.ndarray, affine: np.ndarray, zooms: tuple[float, ...],
          time_unit: str | None = None) -> None:
    img = nib.Nifti1Image(data, affine)
    img.header.set_data_dtype(data.dtype)
    img.header.set_zooms(zooms)
    img.header.set_xyzt_units("mm", time_unit)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))


def _refs(cine: Cine, t: int, series: list[Series]) -> dict[str, Any]:
    """Source references of phase ``t`` (format agreed with the DICOM SEG writer)."""
    first = cine.frames[t][0]
    s0 = series[0]
    return {
        "format": REFS_FORMAT,
        "study_instance_uid": s0.study_uid,
        "frame_of_reference_uid": s0.frame_of_reference,
        "modality": "MR",
        "rows": first.rows,
        "columns": first.columns,
        "pixel_spacing": list(first.pixel_spacing),
        "image_orientation_patient": list(first.orientation),
        "instances": [
            {"sop_class_uid": f.sop_class_uid, "sop_instance_uid": f.sop_instance_uid,
             "series_instance_uid": next(s.series_uid for s in series if f in s.frames),
             "image_position_patient": list(f.position), "frame_number": f.frame}
            for f in cine.frames[t]],
    }


def _first(values: Iterable[float | None]) -> float | None:
    for v in values:
        if v is not None and v > 0:
            return float(v)
    return None


def _model_path(segmentation: str) -> Path:
    """The model file of ``--segmentation``: a work dir, a model dir or a model.pt."""
    p = Path(segmentation)
    for candidate in (p / "segmentation" / "model" / "model.pt", p / "model.pt", p):
        if candidate.is_file():
            return candidate
    raise CardioclrError(f"{p}: no trained segmentation model (expected "
                         "WORK/segmentation/model/model.pt from `cardioclr segment train WORK`)")


def _pseudonyms(keys: list[str], mapping_file: str | None) -> dict[str, str]:
    """Original patient key -> ``patientNNN``: kept from ``mapping_file`` when it exists, new
    patients numbered after the highest existing number in a random order."""
    known: dict[str, str] = {}
    if mapping_file and Path(mapping_file).is_file():
        with open(mapping_file, encoding="utf-8", newline="") as fh:
            for r in csv.DictReader(fh):
                known[r["original_patient_id"]] = r["pseudonym"]
    used = [int(v.replace("patient", "")) for v in known.values() if v[7:].isdigit()]
    next_number = max(used, default=0) + 1
    new = [k for k in keys if k not in known]
    secrets.SystemRandom().shuffle(new)
    for k in new:
        known[k] = f"patient{next_number:03d}"
        next_number += 1
    return {k: known[k] for k in keys} | {k: v for k, v in known.items() if k not in keys}


def _write_mapping(path: Path, mapping: dict[str, str]) -> None:
    """The original -> pseudonym table (CSV), readable by its owner only."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["original_patient_id", "pseudonym"])
    for k, v in sorted(mapping.items(), key=lambda kv: kv[1]):
        w.writerow([k, v])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    # Created 0600 from the start (atomic_path would open it to the umask mode before renaming).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(buf.getvalue())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _csv(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()
