"""``cardioclr import`` on a generated PACS export of phantom patients with known ED/ES.

Usage::

    python benchmarks/dicom_import.py [--patients 20] [--seed 0] [--matrix 64] [--phase-step 1]
                                      [--segmentation WORK] [--keep DIR]

Writes one export tree (tests/dicom_export.py) of ``--patients`` synthetic phantoms (the five
ACDC groups in turn) with the vendor variations cycled over the patients: one series with every
slice and phase / one series per slice / enhanced multi-frame MR / one series per phase;
TriggerTime missing for every 3rd patient (InstanceNumber, TemporalPositionIndex or SeriesNumber
fallback; every layout gets some); BurnedInAnnotation flagged for every 7th; a localiser, a
4-chamber cine, an LGE stack and a T1 map in every study; shuffled file names without
extensions; a DICOMDIR pointing outside the root; identifying values in every header. Then runs
``cardioclr import`` (with ``--segmentation WORK`` if given) and scores it against the truth:
the phantom's LV volume is largest at frame 0 and smallest at its ES frame (it falls
monotonically in systole and rises in filling), so ED/ES errors are in frames (circular).

``seg_roundtrip_ok``: for up to 6 imported classic (single-frame) MR patients, the phantom's
ED labels are written as NIfTI on the imported ED grid, as a DICOM SEG from the import's
``.dicom.json`` references (:func:`cardioclr.io.dicom_seg.write_seg`), and read back with
highdicom (:func:`cardioclr.io.dicom_seg.seg_roundtrip_ok`); null with a reason when that
writer is unavailable.

The LAST output line is one JSON object: ``patients``, ``sax_found_rate``,
``wrong_series_picked``, ``ed_error_frames_max``, ``es_error_frames_max``,
``es_error_frames_mean``, ``ed_es_method``, ``phi_hits`` (identifying strings found in output
files -- gzip decompressed -- SEG files and the log), ``seg_roundtrip_ok``, ``seg_checked``,
``seconds`` (the import), ``generate_seconds``, ``files``, ``layouts``, ``load_avg_1min``.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from cardioclr.dicomimport.importer import ImportConfig, import_dicom  # noqa: E402
from dicom_export import LAYOUTS, phantom_patient, write_export  # noqa: E402

GROUPS = ("NOR", "DCM", "HCM", "MINF", "RV")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--patients", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--matrix", type=int, default=64, help="phantom in-plane matrix (64)")
    ap.add_argument("--phase-step", type=int, default=1, help="keep every n-th cine phase (1)")
    ap.add_argument("--segmentation", help="WORK with a trained segmentation model")
    ap.add_argument("--keep", help="keep the export and dataset in this folder")
    args = ap.parse_args()
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="dicom_import_"))
    base.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    patients = [phantom_patient(args.seed, i + 1, GROUPS[i % 5], matrix=args.matrix,
                                phase_step=args.phase_step, layout=LAYOUTS[i % len(LAYOUTS)],
                                trigger_time=i % 3 != 2, burned_in=i % 7 == 6)
                for i in range(args.patients)]
    truth = write_export(base / "export", patients, seed=args.seed)
    generate_seconds = time.perf_counter() - t0
    print(f"export: {truth.files} files of {args.patients} patients in {generate_seconds:.0f} s",
          flush=True)

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root_log = logging.getLogger()
    root_log.addHandler(handler)
    root_log.setLevel(logging.DEBUG)
    mapping_file = base / "mapping.csv"
    t1 = time.perf_counter()
    summary = import_dicom(ImportConfig(str(base / "export"), str(base / "data"),
                                        segmentation=args.segmentation,
                                        keep_mapping=str(mapping_file), overwrite=True))
    seconds = time.perf_counter() - t1
    root_log.removeHandler(handler)
    mapping = _read_mapping(mapping_file)

    report = _read_csv(base / "data" / "import_report.csv")
    found = wrong = 0
    ed_err: list[int] = []
    es_err: list[int] = []
    methods: set[str] = set()
    for pid, t in truth.patients.items():
        folder = base / "data" / "training" / mapping[pid]
        info_path = folder / "Info.cfg"
        if not info_path.is_file():
            continue
        info = dict(line.split(": ", 1) for line in info_path.read_text().splitlines())
        methods.add(info["EDESMethod"])
        ed, es = int(info["ED"]) - 1, int(info["ES"]) - 1
        # The series the ED and ES frames came from (one per phase in a per-phase export) must
        # be short-axis cine series, and the report must list exactly the truth's count as used.
        used = set()
        for frame in {ed, es}:
            refs = json.loads((folder / f"{mapping[pid]}_frame{frame + 1:02d}.dicom.json")
                              .read_text())
            used |= {i["series_instance_uid"] for i in refs["instances"]}
        n_used = sum(1 for r in report if r["patient"] == mapping[pid] and r["used"] == "yes")
        if used <= set(t.sax_series_uids) and n_used == len(t.sax_series_uids):
            found += 1
        else:
            wrong += 1
        nt = t.cine_xyzt.shape[-1]
        ed_err.append(_circular(ed - t.ed_index, nt))
        es_err.append(_circular(es - t.es_index, nt))

    seg_ok, seg_checked, seg_note = _seg_roundtrip(base, patients, mapping)
    phi_hits = _phi_hits([base / "data", base / "seg"], truth.phi, stream.getvalue())
    result = {
        "patients": args.patients,
        "sax_found_rate": round(found / args.patients, 4),
        "wrong_series_picked": wrong,
        "ed_error_frames_max": max(ed_err) if ed_err else None,
        "es_error_frames_max": max(es_err) if es_err else None,
        "es_error_frames_mean": round(float(np.mean(es_err)), 3) if es_err else None,
        "es_errors": es_err,
        "ed_es_method": sorted(methods),
        "phi_hits": phi_hits,
        "seg_roundtrip_ok": seg_ok,
        "seg_checked": seg_checked,
        "seg_note": seg_note,
        "skipped": summary["patients_skipped"],
        "seconds": round(seconds, 1),
        "generate_seconds": round(generate_seconds, 1),
        "files": truth.files,
        "layouts": list(LAYOUTS),
        "matrix": args.matrix,
        "phase_step": args.phase_step,
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "out": str(base),
    }
    print(json.dumps(result))


def _circular(d: int, n: int) -> int:
    d = abs(d) % n
    return min(d, n - d)


def _read_csv(path: Path) -> list[dict[str, str]]:
    import csv

    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def _read_mapping(path: Path) -> dict[str, str]:
    return {r["original_patient_id"]: r["pseudonym"] for r in _read_csv(path)}


def _seg_roundtrip(base: Path, patients: list, mapping: dict[str, str]
                   ) -> tuple[bool | None, int, str]:
    try:
        from cardioclr.io.dicom_seg import headers_from_references, seg_roundtrip_ok, write_seg
    except ImportError as err:
        return None, 0, f"DICOM SEG writer unavailable ({err})"
    import nibabel as nib

    checked, ok = 0, True
    for p in patients:
        if p.layout == "enhanced" or p.ed_labels is None or checked == 6:
            continue  # the SEG writer references classic single-frame MR images only
        pid = mapping[p.patient_id]
        folder = base / "data" / "training" / pid
        ed_img = folder / f"{pid}_frame01.nii.gz"
        if not ed_img.is_file():
            continue
        affine = nib.load(ed_img).affine
        mask_path = base / "seg" / f"{pid}_frame01_gt.nii.gz"
        mask_path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(p.ed_labels, affine), mask_path)
        headers = headers_from_references(folder / f"{pid}_frame01.dicom.json", pid)
        seg = write_seg(p.ed_labels.transpose(2, 1, 0), affine, headers,
                        base / "seg" / f"{pid}_ED_seg.dcm", "cardioclr ED segmentation")
        ok &= bool(seg_roundtrip_ok(seg, mask_path))
        checked += 1
    if not checked:
        return None, 0, "no classic (single-frame) MR patient imported"
    return ok, checked, ("classic MR layouts (single-series, per-slice, per-phase): phantom ED "
                         "labels -> SEG from the import's references -> read back with highdicom")


def _phi_hits(folders: list[Path], phi: list[str], log_text: str) -> int:
    needles = [s.lower().encode() for s in phi if len(s) >= 4]
    hits = 0
    for folder in folders:
        for p in folder.rglob("*") if folder.is_dir() else []:
            if not p.is_file():
                continue
            data = p.read_bytes()
            if p.name.endswith(".gz"):
                data = gzip.decompress(data)
            data = data.lower()
            hits += sum(n in data for n in needles)
    hits += sum(n.decode() in log_text.lower() for n in needles)
    return hits


if __name__ == "__main__":
    main()
