"""``cardioclr verify DATA``: list every problem of a dataset, write nothing, exit 0 or 1."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``verify`` subcommand."""
    p = sub.add_parser("verify", help="check a dataset and list every problem of every patient "
                       "(writes nothing)",
                       description="Reads every patient of an ACDC-layout folder or CSV manifest "
                       "with the checks of `cardioclr prepare` and prints every problem found, "
                       "one line each (PATIENT: FILE: PROBLEM). Exit code 0 when the dataset is "
                       "clean, 1 otherwise. Nothing is written.")
    p.add_argument("data", help="ACDC-layout folder (training/, testing/) or CSV manifest")
    p.add_argument("--classes", nargs="+", default=None, metavar="NAME",
                   help="the diagnoses a label may name (default: the ACDC groups for an ACDC "
                   "folder, any label for a CSV)")
    p.add_argument("--unlabelled", action="store_true", help="labels not required")
    p.add_argument("--test-fraction", type=float, default=0.3,
                   help="check the cohort can be split with this test fraction (0.3)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from cardioclr.data.verify import verify_dataset

    report = verify_dataset(args.data, require_label=not args.unlabelled,
                            classes=tuple(args.classes) if args.classes else None,
                            test_fraction=args.test_fraction)
    for problem in report.problems:
        print(problem.line())
    n_bad = len(report.bad_patients)
    n_ok = len([p for p in report.checked if p not in set(report.bad_patients)])
    print(f"verify {args.data}: {len(report.checked)} patients read, {n_ok} without problems; "
          f"{len(report.problems)} problem(s) in {n_bad} patient(s) or folder(s)"
          + ("" if report.ok else "; fix them, or let prepare skip them"))
    return 0 if report.ok else 1
