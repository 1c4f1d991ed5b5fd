"""``cardioclr synth OUT``: write the built-in synthetic ACDC-layout cohort."""

from __future__ import annotations

import argparse
import time
from collections import Counter

from cardioclr.data.synthetic import assign_cohort, write_synthetic_cohort


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``synth`` subcommand."""
    p = sub.add_parser(
        "synth", help="write a synthetic ACDC-layout cine-MRI cohort (phantoms, 5 groups)",
        description="Write OUT/training/patientNNN and OUT/testing/patientNNN exactly like the "
        "ACDC challenge data (Info.cfg, ED/ES images and _gt masks), from anatomical phantoms "
        "whose diagnosis (NOR, DCM, HCM, MINF, RV) follows the ACDC criteria, checked on the "
        "masks. Same arguments, same bytes. Not patient data.")
    p.add_argument("out", help="output folder (replaced only if empty or an earlier cohort)")
    p.add_argument("--patients", type=_positive_int, default=150,
                   help="number of patients, groups balanced (150)")
    p.add_argument("--seed", type=int, default=0, help="random seed (0)")
    p.add_argument("--test-fraction", type=_fraction, default=0.2,
                   help="share of patients under testing/ (0.2)")
    p.add_argument("--size", type=_matrix, default=None, metavar="N",
                   help="fixed N x N in-plane matrix (64-512) instead of ACDC-like varying "
                   "ones; the pixel spacing follows from a 300-400 mm field of view")
    p.add_argument("--cine", action="store_true",
                   help="also write patientNNN_4d.nii.gz with all NbFrame frames (slower)")
    p.set_defaults(func=_run)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError("must be in [0, 1)")
    return value


def _matrix(text: str) -> int:
    value = int(text)
    if not 64 <= value <= 512:
        raise argparse.ArgumentTypeError("must be between 64 and 512")
    return value


def _run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    ids = write_synthetic_cohort(args.out, args.patients, seed=args.seed,
                                 test_fraction=args.test_fraction, cine=args.cine,
                                 matrix=args.size)
    plan = assign_cohort(args.patients, args.seed, args.test_fraction)
    subsets = Counter(subset for _, subset, _ in plan)
    groups = Counter(group for _, _, group in plan)
    print(f"wrote {len(ids)} synthetic patients to {args.out} "
          f"({subsets['training']} training, {subsets['testing']} testing; "
          + ", ".join(f"{g} {groups[g]}" for g in sorted(groups))
          + f") in {time.perf_counter() - start:.1f} s")
    return 0
