"""``segment predict --dicom-seg``: the predicted masks as DICOM SEG objects over the source images.

For each segmented patient and phase (ED, ES) whose source image is DICOM, the source-grid mask
``WORK/segmentation/nifti/PID/PID_<frame>_pred.nii.gz`` (what ``segment predict`` writes) becomes
``WORK/segmentation/dicom_seg/PID/PID_<ED|ES>_seg.dcm`` (:func:`cardioclr.io.dicom_seg.write_seg`):

* a DICOM series folder as ED/ES image (manifest or ``cardioclr predict --ed DIR``): the SEG
  references that series' instances;
* a NIfTI frame with a ``<frame>.dicom.json`` sidecar of DICOM references (``cardioclr import``):
  the SEG references the original PACS instances it lists;
* a plain NIfTI frame: no SEG (there is no source DICOM to reference; making up UIDs would give a
  SEG that opens over no image), listed as ``skipped`` with that reason.

Every SEG written is read back with highdicom and compared voxel for voxel with its NIfTI mask
(:func:`cardioclr.io.dicom_seg.seg_roundtrip_ok`). When both SEGs of a patient are written, a
TID 1500 measurement report ``PID_measurements_sr.dcm`` (LV EDV/ESV/EF, RV volumes/EF,
myocardial mass, each referencing its SEG segment; :mod:`cardioclr.io.dicom_sr`) goes beside
them. ``WORK/segmentation/dicom_seg/dicom_seg.csv`` lists each patient and phase (``ED``, ``ES``,
``report``): ``patient_id, phase, status (written|skipped|failed), file, roundtrip_ok, reason``.
A patient that fails is listed and the others continue.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from cardioclr import __version__
from cardioclr.atomic import atomic_dir, write_text
from cardioclr.data.cases import Case
from cardioclr.data.store import SliceStore
from cardioclr.errors import CardioclrError, DataError

log = logging.getLogger(__name__)

SEG_DIR = "dicom_seg"
SEG_TABLE = "dicom_seg.csv"
SEG_COLUMNS = ("patient_id", "phase", "status", "file", "roundtrip_ok", "reason")
_PHASES = ("ED", "ES")
#: ``phase`` of the table row of the patient's TID 1500 measurement report.
REPORT = "report"


def source_headers(image: Path, patient_id: str) -> list[Any]:
    """Minimal headers of the DICOM images an ED/ES ``image`` (folder or NIfTI) came from.

    Raises :class:`DataError` with the reason when there is nothing honest to reference.
    """
    from cardioclr.io.dicom_seg import headers_from_references, read_source_headers, references_path

    if image.is_dir():
        return read_source_headers(image, patient_id)
    refs = references_path(image)
    if refs.is_file():
        return headers_from_references(refs, patient_id)
    raise DataError(image, "NIfTI input without DICOM references (no "
                    f"{refs.name}): no source images for a SEG to lie on")


def cases_of_store(store: SliceStore) -> dict[str, Case]:
    """The source cases of a prepared store, re-discovered from ``dataset.json``'s ``source``.

    Empty (logged) when the source dataset is not there any more.
    """
    from cardioclr.data.discover import discover_cases

    source = str(store.info.get("source", ""))
    try:
        cases, _ = discover_cases(source, require_label=False)
    except (DataError, CardioclrError, OSError) as err:
        log.warning("DICOM SEG: the source dataset %s of %s cannot be read (%s)", source, store.work, err)
        return {}
    return {c.patient_id: c for c in cases}


def _write_report(tmp: Path, final: Path, pid: str, masks: dict[str, Any]) -> dict[str, Any]:
    """The TID 1500 report row of a patient: written when both SEGs are (:mod:`cardioclr.io.dicom_sr`).

    Its failure is reported in the row and does not cost the patient its SEGs.
    """
    from cardioclr.clinical.indices import compute_indices
    from cardioclr.io.dicom_sr import write_measurement_report

    row: dict[str, Any] = {"patient_id": pid, "phase": REPORT, "status": "skipped", "file": "",
                           "roundtrip_ok": "", "reason": ""}
    if set(masks) != set(_PHASES):
        row["reason"] = "needs both the ED and the ES SEG"
        return row
    name = f"{pid}_measurements_sr.dcm"
    try:
        indices = compute_indices(masks["ED"].array, masks["ES"].array, masks["ED"].spacing)
        write_measurement_report({ph: tmp / f"{pid}_{ph}_seg.dcm" for ph in _PHASES}, indices,
                                 tmp / name, software_version=__version__)
    except Exception as err:  # noqa: BLE001 - the SEGs stand without the report
        log.error("DICOM measurement report of %s failed: %s: %s", pid, type(err).__name__, err)
        row.update(status="failed", reason=f"{type(err).__name__}: {err}")
        return row
    row.update(status="written", file=str(final / name))
    return row


def write_segs(work: str | os.PathLike[str], cases: Mapping[str, Case] | None = None,
               patient_ids: Sequence[str] | None = None) -> pd.DataFrame:
    """Write the DICOM SEGs of ``patient_ids`` (default: every patient with a mask); returns the
    table written to ``WORK/segmentation/dicom_seg/dicom_seg.csv``.

    ``cases``: the source case of each patient (default: re-discovered from the store's source
    dataset). Each patient's folder is replaced whole (atomically), so it never mixes SEGs of
    two runs.
    """
    from cardioclr.io.dicom_seg import seg_roundtrip_ok, write_seg
    from cardioclr.io.volume import read_label_volume
    from cardioclr.segment.predict import frame_tag

    store = SliceStore(work)
    seg = Path(work) / "segmentation"
    out_root = seg / SEG_DIR
    pids = list(patient_ids) if patient_ids is not None else store.patient_ids
    if cases is None:
        cases = cases_of_store(store)
    rows: list[dict[str, Any]] = []
    for pid in pids:
        case = cases.get(pid)
        patient_rows: list[dict[str, Any]] = []
        try:
            with atomic_dir(out_root / pid) as tmp:
                masks: dict[str, Any] = {}
                for phase in _PHASES:
                    row: dict[str, Any] = {"patient_id": pid, "phase": phase, "status": "skipped",
                                           "file": "", "roundtrip_ok": "", "reason": ""}
                    patient_rows.append(row)
                    mask_path = seg / "nifti" / pid / f"{pid}_{frame_tag(store, pid, phase)}_pred.nii.gz"
                    if not mask_path.is_file():
                        row["reason"] = f"no predicted mask {mask_path.name} (segmentation failed?)"
                        continue
                    if case is None:
                        row["reason"] = "source images unknown (source dataset moved or not given)"
                        continue
                    image = case.ed_image if phase == "ED" else case.es_image
                    try:
                        sources = source_headers(Path(image), pid)
                    except DataError as err:
                        row["reason"] = err.problem
                        continue
                    mask = read_label_volume(mask_path)
                    name = f"{pid}_{phase}_seg.dcm"
                    write_seg(mask.array, mask.affine, sources, tmp / name,
                              f"cardioclr {phase} segmentation", software_version=__version__,
                              series_number=9001 if phase == "ED" else 9002)
                    ok = seg_roundtrip_ok(tmp / name, mask_path)
                    row.update(status="written", file=str(out_root / pid / name), roundtrip_ok=ok)
                    masks[phase] = mask
                    if not ok:
                        row["reason"] = "SEG read back differs from the NIfTI mask"
                patient_rows.append(_write_report(tmp, out_root / pid, pid, masks))
            if not any(r["status"] == "written" for r in patient_rows):
                shutil.rmtree(out_root / pid, ignore_errors=True)  # no empty folders
        except Exception as err:  # noqa: BLE001 - one patient must not stop the others
            detail = err.problem if isinstance(err, DataError) else f"{type(err).__name__}: {err}"
            log.error("DICOM SEG of %s failed: %s", pid, detail)
            shutil.rmtree(out_root / pid, ignore_errors=True)
            patient_rows = [{"patient_id": pid, "phase": ph, "status": "failed", "file": "",
                             "roundtrip_ok": "", "reason": detail} for ph in (*_PHASES, REPORT)]
        rows.extend(patient_rows)
    table = pd.DataFrame(rows, columns=list(SEG_COLUMNS))
    write_text(out_root / SEG_TABLE, table.to_csv(index=False))
    written = int((table["status"] == "written").sum())
    log.info("DICOM SEG: %d written, %d skipped, %d failed (%s)", written,
             int((table["status"] == "skipped").sum()), int((table["status"] == "failed").sum()),
             out_root / SEG_TABLE)
    return table
