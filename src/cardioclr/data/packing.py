"""Writing a pack (:mod:`cardioclr.data.pack`) from a prepared store: ``cardioclr pack WORK OUT``.

Kept apart from the pack format and reader, which the store itself uses to read a pack in
place: the writer reads a store, the store reads packs, and neither imports the other's module.
"""

from __future__ import annotations

import json
import logging
import os
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from cardioclr.atomic import write_text
from cardioclr.data.pack import (
    _GEOMETRY,
    _IMAGES,
    IMAGE_ENCODING,
    PACK_FORMAT,
    PACK_VERSION,
    WORK_FILES,
    _npz_bytes,
    _sha256,
    encode_image,
    file_sha256,
)
from cardioclr.data.store import STORE_VERSION, SliceStore
from cardioclr.errors import CardioclrError

log = logging.getLogger(__name__)


def pack(work: str | os.PathLike[str], out: str | os.PathLike[str]) -> dict[str, Any]:
    """Pack the prepared work directory ``work`` into the file ``out``; returns a summary.

    Written to ``out.tmp`` and renamed, then ``out.sha256``. Patients without expert masks
    are packed without (``has_mask`` 0), as in the store.
    """
    start = time.perf_counter()
    store = SliceStore(work)
    out = Path(out)
    if out.is_dir():
        raise CardioclrError(f"{out} is a folder; give the pack's file name (e.g. {out / 'acdc.pack'})")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    sums: dict[str, str] = {}
    raw_bytes = 0
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:

        def add(name: str, data: bytes) -> None:
            sums[name] = _sha256(data)
            zf.writestr(name, data)

        for name in WORK_FILES:
            p = store.work / name
            if p.is_file():
                add(name, p.read_bytes())
        for pid in store.patient_ids:
            with np.load(store.path(pid), allow_pickle=False) as z:
                arrays = {k: z[k] for k in _GEOMETRY}
                for k in _IMAGES:
                    arrays[k] = encode_image(z[k])
                if bool(z["has_mask"]):
                    arrays["ed_mask"], arrays["es_mask"] = z["ed_mask"], z["es_mask"]
            data = _npz_bytes(arrays)
            raw_bytes += len(data)
            add(f"store/{pid}.npz", data)
        meta = {"format": PACK_FORMAT, "version": PACK_VERSION, "store_version": STORE_VERSION,
                "image_encoding": IMAGE_ENCODING, "image_size": store.image_size,
                "spacing_mm": store.spacing_mm, "patients": store.patient_ids,
                "source_work": str(store.work.resolve()), "sha256": sums}
        zf.writestr("pack.json", json.dumps(meta, indent=1))
    os.replace(tmp, out)
    digest = file_sha256(out)
    write_text(out.with_name(out.name + ".sha256"), f"{digest}  {out.name}\n")
    summary: dict[str, Any] = {
        "pack": str(out), "patients": len(store.patient_ids), "bytes": out.stat().st_size,
        "uncompressed_bytes": raw_bytes, "sha256": digest, "image_size": store.image_size,
        "spacing_mm": store.spacing_mm, "seconds": round(time.perf_counter() - start, 2)}
    log.info("packed %d patients of %s into %s (%.1f MiB)", summary["patients"], store.work, out,
             summary["bytes"] / 2**20)
    return summary
