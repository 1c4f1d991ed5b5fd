"""``cardioclr import DICOM_ROOT --out DATA``."""

from __future__ import annotations

import argparse

from cardioclr.dicomimport.importer import ImportConfig, import_dicom


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``import`` subcommand."""
    p = sub.add_parser(
        "import", help="import a PACS/scanner DICOM export (short-axis cine, ED/ES, pseudonyms)",
        description="Walk a DICOM export (any folder tree, any file names), find each patient's "
        "short-axis cine, and write an ACDC-layout dataset with pseudonymous IDs: "
        "DATA/training/patientNNN/ (4D cine, ED and ES frames, Info.cfg), "
        "DATA/import_report.csv (every series: used or why not), DATA/import_patients.csv.")
    p.add_argument("root", help="folder of the DICOM export (read only)")
    p.add_argument("--out", required=True, help="dataset folder to write (outside the export)")
    p.add_argument("--labels", help="CSV: patient_id (DICOM PatientID), label, and optional "
                   "ed_frame / es_frame (1-based overrides), height_cm, weight_kg, subset")
    p.add_argument("--segmentation", metavar="WORK", help="a work dir with a trained "
                   "segmentation model (`cardioclr segment train WORK`): ED/ES = largest/smallest "
                   "LV cavity volume; without it ED = first phase and ES is estimated from the "
                   "images (marked provisional)")
    p.add_argument("--keep-mapping", metavar="FILE", help="write the original ID -> pseudonym "
                   "table here (owner-readable only) and re-use it on later imports; without it "
                   "the mapping is not kept anywhere")
    p.add_argument("--no-dicom-refs", action="store_true", help="do not write the .dicom.json "
                   "source references (UIDs) next to the ED/ES frames (needed for DICOM SEG "
                   "output over the original images)")
    p.add_argument("--device", default="cpu", help="torch device for --segmentation (cpu)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing DATA folder")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    cfg = ImportConfig(root=args.root, out=args.out, labels=args.labels,
                       segmentation=args.segmentation, keep_mapping=args.keep_mapping,
                       overwrite=args.overwrite, dicom_refs=not args.no_dicom_refs,
                       device=args.device)
    s = import_dicom(cfg)
    print(f"imported {s['patients_imported']} of {s['patients_found']} patients "
          f"({s['patients_skipped']} skipped, {s['ed_es_provisional']} with provisional ED/ES, "
          f"{s['unreadable_files']} unreadable files, {s['burned_in_series']} series flagged "
          f"with burned-in annotation) in {s['seconds']} s -> {args.out}; see "
          f"{args.out}/import_report.csv")
    labelled = s["patients_imported"] and not s["labels_unmatched_rows"]
    print(f"next: cardioclr prepare {args.out} --out WORK" + ("" if labelled and args.labels
                                                              else " --unlabelled"))
    return 0
