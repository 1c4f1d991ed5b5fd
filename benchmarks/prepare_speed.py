"""Time ``cardioclr prepare`` on a whole dataset (default: the ACDC training set, 100 patients).

Usage::

    python benchmarks/prepare_speed.py [--data DIR_OR_CSV] [--workers N] [--out WORK]
                                       [--size 192] [--spacing 1.5]

The LAST output line is one JSON object: ``patients``, ``skipped``, ``seconds`` (wall clock of the
prepare call, provenance included), ``workers``, ``patients_per_second``, ``target_seconds``
(30 s for 100 ACDC patients on 2 cores), ``meets_target``, ``cpu_count``, ``load_avg_1min``
(the machine's load when the run started: other jobs slow it down), ``image_size``,
``spacing_mm``. When the data is absent it prints ``{"skipped": "<why>"}`` and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / ".." / "shared" / "data" / "acdc"
TARGET_SECONDS_PER_100 = 30.0


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit code (0 also when the data is absent)."""
    from cardioclr.data.prepare import PrepareConfig, default_workers, prepare

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="ACDC folder or CSV manifest")
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--out", default=None, help="work directory (default: a temporary one, "
                        "deleted afterwards)")
    parser.add_argument("--size", type=int, default=192, help="store grid in pixels")
    parser.add_argument("--spacing", type=float, default=1.5, help="in-plane spacing in mm")
    args = parser.parse_args(argv)

    data = Path(args.data).resolve()
    if not data.exists():
        print(json.dumps({"skipped": f"data not found at {data}"}))
        return 0
    tmp = None if args.out else tempfile.mkdtemp(prefix="prepare_speed_")
    out = Path(args.out) if args.out else Path(tmp) / "work"  # type: ignore[arg-type]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    try:
        start = time.perf_counter()
        summary = prepare(PrepareConfig(data=str(data), out=str(out), image_size=args.size,
                                        spacing_mm=args.spacing, workers=args.workers,
                                        overwrite=True))
        seconds = time.perf_counter() - start
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    patients = int(summary["patients"])
    target = TARGET_SECONDS_PER_100 * max(patients, 1) / 100.0
    result = {
        "patients": patients,
        "skipped": int(summary["skipped"]),
        "seconds": round(seconds, 2),
        "workers": args.workers,
        "patients_per_second": round(patients / seconds, 2),
        "target_seconds": round(target, 1),
        "meets_target": seconds < target,
        "cpu_count": os.cpu_count(),
        "load_avg_1min": None if load is None else round(load, 2),
        "image_size": args.size,
        "spacing_mm": args.spacing,
    }
    print(f"prepared {patients} patients in {seconds:.1f} s with {args.workers} workers",
          file=sys.stderr)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
