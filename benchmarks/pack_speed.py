"""The packed travelling store (``cardioclr pack``): size, packing time, reading speed vs the store.

Usage::

    python benchmarks/pack_speed.py [--work WORK] [--pack PACK] [--repeats 3]

``--work`` is a prepared work directory (default: ``<repo>/.data/acdc224_work``, the ACDC
training set prepared at the paper's grid, as ``scripts/device_run.sh --dry-run`` builds it);
``--pack`` the pack of it (default ``<repo>/.data/acdc224.pack``; written when missing). Every
patient is loaded ``--repeats`` times from the store and from the pack
(:meth:`cardioclr.data.store.SliceStore.load`, ED/ES images + masks, no cine); the largest
image difference and any mask difference are checked. The pack is also unpacked once
(``cardioclr prepare PACK --unpack``, timed) and read from there, the third reader.

The LAST output line is one JSON object: ``packed_bytes``, ``packed_mib``, ``patients``,
``pack_seconds`` (None when the pack existed), ``store_ms_per_patient``,
``pack_ms_per_patient``, ``read_ratio`` (pack / store time; the two are timed alternately,
patient by patient, so a changing machine load affects both alike), ``unpack_seconds``,
``unpacked_ms_per_patient``, ``unpacked_read_ratio`` (unpacked / store), ``max_image_error``,
``masks_identical``, ``load_avg_1min``; ``{"skipped": ...}`` without a work directory.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit code."""
    from cardioclr.data.pack import install
    from cardioclr.data.packing import pack
    from cardioclr.data.store import SliceStore

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=str(REPO / ".data" / "acdc224_work"))
    parser.add_argument("--pack", default=str(REPO / ".data" / "acdc224.pack"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    work, packed = Path(args.work), Path(args.pack)
    if not (work / "dataset.json").is_file():
        print(json.dumps({"skipped": f"no prepared work directory at {work}"}))
        return 0
    pack_seconds = None
    if not packed.is_file():
        t = time.perf_counter()
        pack(work, packed)
        pack_seconds = round(time.perf_counter() - t, 1)
    store = SliceStore(work)
    with tempfile.TemporaryDirectory() as tmp:
        install(packed, Path(tmp) / "work")
        from_pack = SliceStore(Path(tmp) / "work")
        t = time.perf_counter()
        install(packed, Path(tmp) / "unpacked", unpack=True)
        unpack_seconds = round(time.perf_counter() - t, 2)
        unpacked = SliceStore(Path(tmp) / "unpacked")
        ids = store.patient_ids
        # Interleaved, patient by patient: on a shared machine the load drifts over a run,
        # and timing the store and the pack in two blocks measured the drift as often as the
        # reader (ratios 1.8-2.1 for the same code minutes apart).
        readers = {"store": store, "pack": from_pack, "unpacked": unpacked}
        spent = dict.fromkeys(readers, 0.0)
        for st in readers.values():
            st.load(ids[0])  # page cache, imports
        for _ in range(args.repeats):
            for pid in ids:
                for name, st in readers.items():
                    t = time.perf_counter()
                    st.load(pid)
                    spent[name] += time.perf_counter() - t
        timings = {k: v / (args.repeats * len(ids)) * 1000 for k, v in spent.items()}
        err, masks_same = 0.0, True
        for pid in ids:
            a, b = store.load(pid), from_pack.load(pid)
            err = max(err, float(np.abs(a.ed_image - b.ed_image).max()),
                      float(np.abs(a.es_image - b.es_image).max()))
            if a.ed_mask is not None:
                masks_same &= bool(np.array_equal(a.ed_mask, b.ed_mask)
                                   and np.array_equal(a.es_mask, b.es_mask))
    size = packed.stat().st_size
    print(json.dumps({
        "packed_bytes": size, "packed_mib": round(size / 2**20, 2), "patients": len(ids),
        "pack_seconds": pack_seconds,
        "store_ms_per_patient": round(timings["store"], 2),
        "pack_ms_per_patient": round(timings["pack"], 2),
        "read_ratio": round(timings["pack"] / timings["store"], 2),
        "unpack_seconds": unpack_seconds,
        "unpacked_ms_per_patient": round(timings["unpacked"], 2),
        "unpacked_read_ratio": round(timings["unpacked"] / timings["store"], 2),
        "max_image_error": round(err, 5), "masks_identical": masks_same,
        "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
