"""``prepare``: raw dataset -> slice store + manifest.csv + splits.json (+ skipped.csv).

Every image is resampled in-plane to a common spacing, centre-cropped or zero-padded to a
square grid, and normalised robustly (1st/99th percentiles of the patient's ED+ES voxels).
The store is built under a temporary name and renamed into place; ``dataset.json`` is written
last, so an interrupted or failed run never leaves a store that looks complete, and a failed
``--overwrite`` (bad patient with ``--strict``, changed patient set, interrupt) leaves the
previous complete work directory untouched.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.ndimage import zoom

from cardioclr.atomic import atomic_dir, read_json, write_json, write_text
from cardioclr.data.cases import Case, Skipped
from cardioclr.data.discover import discover_cases
from cardioclr.data.splits import make_splits
from cardioclr.data.store import STORE_VERSION
from cardioclr.errors import CardioclrError, DataError
from cardioclr.io.volume import (
    Volume,
    grid_difference,
    orientation_problems,
    read_cine,
    read_label_volume,
    read_volume,
)
from cardioclr.provenance import save_run_info

log = logging.getLogger(__name__)

LOW_PERCENTILE, HIGH_PERCENTILE = 1.0, 99.0


@dataclass(frozen=True)
class PrepareConfig:
    """Settings of ``prepare``. Spacing in mm, size in pixels (the store grid is size x size)."""

    data: str
    out: str
    spacing_mm: float = 1.5
    image_size: int = 192
    split: str = "random"
    test_fraction: float = 0.3
    n_folds: int = 5
    seed: int = 0
    strict: bool = False
    unlabelled: bool = False
    workers: int = 2
    overwrite: bool = False


def prepare(cfg: PrepareConfig) -> dict:
    """Run ``prepare``; returns a summary dict (patients, skipped, seconds, classes)."""
    start = time.perf_counter()
    work = Path(cfg.out)
    if (work / "dataset.json").exists() and not cfg.overwrite:
        raise CardioclrError(f"{work} is already prepared (dataset.json exists); pass --overwrite "
                             "to rebuild the store (splits.json is kept)")
    from cardioclr.data.pack import install, is_pack

    if is_pack(cfg.data):  # a packed store: read in place, splits travel with it
        return install(cfg.data, work, cfg.image_size, cfg.spacing_mm)
    cases, skipped = discover_cases(cfg.data, require_label=not cfg.unlabelled)
    for s in skipped:
        log.warning("skipping %s: %s: %s", s.patient_id, s.path, s.reason)
    if cfg.strict and skipped:
        raise DataError(skipped[0].path, skipped[0].reason)
    if not cases:
        raise CardioclrError(f"{cfg.data}: no usable patient; reasons: "
                             + "; ".join(f"{s.path}: {s.reason}" for s in skipped[:5]))
    work.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    # Everything is built and checked inside atomic_dir; an error or interrupt before the end of
    # the block leaves a previous store, manifest, splits and dataset.json exactly as they were.
    with atomic_dir(work / "store") as store_tmp:
        jobs = [(case, str(store_tmp), cfg.spacing_mm, cfg.image_size) for case in cases]
        if cfg.workers > 1 and len(jobs) > 1:
            with ProcessPoolExecutor(max_workers=cfg.workers) as pool:
                results = list(pool.map(_prepare_one_job, jobs, chunksize=4))
        else:
            results = [_prepare_one_job(j) for j in jobs]
        for result in results:
            if isinstance(result, Skipped):
                if cfg.strict:
                    raise DataError(result.path, result.reason)
                log.warning("skipping %s: %s: %s", result.patient_id, result.path, result.reason)
                skipped.append(result)
            else:
                rows.append(result)
        if not rows:
            raise CardioclrError("every patient was skipped; see the reasons above")
        manifest = _manifest_frame(rows)
        splits, splits_are_new = _plan_splits(work, manifest, cfg)  # may refuse: nothing touched
        # Commit point: dataset.json (the completeness marker) goes before the old store does.
        (work / "dataset.json").unlink(missing_ok=True)
    write_text(work / "manifest.csv", manifest.to_csv(index=False))
    _write_skipped(work / "skipped.csv", skipped)
    if splits_are_new:
        write_json(work / "splits.json", splits)
    save_run_info(work / "prepare", cfg)
    summary = {
        "store_version": STORE_VERSION,
        "classes": sorted(manifest.loc[manifest["label"] != "", "label"].unique().tolist()),
        "image_size": cfg.image_size,
        "spacing_mm": cfg.spacing_mm,
        "source": str(Path(cfg.data).resolve()),  # absolute: later stages compare it (--extra)
        "patients": len(manifest),
        "skipped": len(skipped),
        "train": len(splits["train"]),
        "test": len(splits["test"]),
        "seconds": round(time.perf_counter() - start, 2),
    }
    write_json(work / "dataset.json", summary)  # last: marks the store complete
    return summary


def _prepare_one_job(job: tuple[Case, str, float, int]) -> dict | Skipped:
    case, store_dir, spacing, size = job
    try:
        return prepare_case(case, Path(store_dir), spacing, size)
    except DataError as err:
        return Skipped(case.patient_id, err.path, err.problem)


def prepare_case(case: Case, store_dir: Path, spacing_mm: float, size: int) -> dict:
    """Read, check, resample, crop and normalise one patient; write ``store_dir/PID.npz``.

    Returns its manifest row. Raises :class:`DataError` naming the file on bad input.
    """
    ed = read_volume(case.ed_image)
    es = read_volume(case.es_image)
    if ed.shape != es.shape:
        raise DataError(case.es_image, f"ES frame shape {es.shape} differs from ED frame shape "
                        f"{ed.shape} ({case.ed_image})")
    _check_spacing(case.es_image, es.spacing, ed)
    _check_orientation(case.es_image, es, ed)
    masks = [_read_mask(m, img) for m, img in ((case.ed_mask, ed), (case.es_mask, es))]
    has_mask = masks[0] is not None and masks[1] is not None
    low, high = _robust_range(case, ed.array, es.array)
    sz, sy, sx = ed.spacing
    ry, rx = round(ed.shape[1] * sy / spacing_mm), round(ed.shape[2] * sx / spacing_mm)
    offset = ((ry - size) // 2, (rx - size) // 2)

    def image_to_store(a: np.ndarray) -> np.ndarray:
        a = _resample(a, (ry, rx), order=1)
        a = np.clip((a - low) / (high - low), -0.5, 1.5)
        return _crop_pad(a, offset, size).astype(np.float32)

    arrays: dict[str, np.ndarray] = {
        "ed_image": image_to_store(ed.array),
        "es_image": image_to_store(es.array),
        "has_mask": np.array(has_mask),
        "spacing_zyx": np.array([sz, spacing_mm, spacing_mm]),
        "source_affine": ed.affine,
        "source_shape_zyx": np.array(ed.shape),
        "source_spacing_zyx": np.array(ed.spacing),
        "resampled_shape_yx": np.array([ry, rx]),
        "offset_yx": np.array(offset),
    }
    for phase, m in zip(("ed", "es"), masks, strict=True):
        arrays[f"{phase}_mask"] = (_crop_pad(_resample(m.array, (ry, rx), order=0), offset, size)
                                   if has_mask and m is not None
                                   else np.zeros((ed.shape[0], size, size), np.uint8))
    n_cine = 0
    if case.cine is not None:
        cine, cine_spacing = read_cine(case.cine)
        if cine.shape[1:] != ed.shape:
            raise DataError(case.cine, f"cine frames {cine.shape[1:]} differ from ED frame "
                            f"{ed.shape}")
        _check_spacing(case.cine, cine_spacing, ed)
        arrays["cine"] = np.stack([image_to_store(f) for f in cine]).astype(np.float16)
        n_cine = cine.shape[0]
    from cardioclr.atomic import save_npz

    save_npz(store_dir / f"{case.patient_id}.npz", **arrays)
    return {
        "patient_id": case.patient_id,
        "label": case.label or "",
        "subset": case.subset or "",
        "height_cm": case.height_cm,
        "weight_kg": case.weight_kg,
        "bsa_m2": body_surface_area(case.height_cm, case.weight_kg),
        "n_slices": ed.shape[0],
        "slice_spacing_mm": sz,
        "source_pixel_mm": sy,
        "ed_frame": case.ed_frame,
        "es_frame": case.es_frame,
        "has_expert_mask": has_mask,
        "cine_frames": n_cine,
        "source": case.source,
    }


def body_surface_area(height_cm: float | None, weight_kg: float | None) -> float | None:
    """Mosteller body surface area in m^2, or None when height or weight is unknown."""
    if not height_cm or not weight_kg or height_cm <= 0 or weight_kg <= 0:
        return None
    return math.sqrt(height_cm * weight_kg / 3600.0)


def _check_spacing(path: Path, spacing: tuple[float, float, float], ed: Volume) -> None:
    """Every frame of a patient is resampled with the ED spacing: refuse one that differs."""
    if not np.allclose(spacing, ed.spacing, rtol=1e-3, atol=1e-4):
        raise DataError(path, f"voxel spacing {tuple(round(s, 4) for s in spacing)} mm (z, y, x) "
                        f"differs from the ED frame's {tuple(round(s, 4) for s in ed.spacing)} "
                        f"mm ({ed.path})")


def _check_orientation(path: Path, frame: Volume, ed: Volume) -> None:
    """ED and ES slices are paired by index: refuse an ES stack oriented differently from ED.

    A reversed slice order (base-to-apex against apex-to-base, common when ED and ES come from
    separately exported DICOM series) or flipped or swapped in-plane axes would pair each ED
    slice with another position's ES slice without any error. Small shifts of the origin are
    accepted: they do not change the pairing.
    """
    problems = orientation_problems(ed, frame)
    if problems:
        text = " and ".join(problems).replace("the image", "the ED frame")
        raise DataError(path, f"this frame is oriented differently from the ED frame {ed.path}: "
                        f"{text}; ED and ES slices are paired by position, so both must share "
                        "one orientation")


def _read_mask(path: Path | None, image: Volume) -> Volume | None:
    """Read the label map at ``path`` and check it lies on ``image``'s voxel grid.

    Same (z, y, x) shape, and, when both files carry an affine (NIfTI with an sform/qform, or
    DICOM), the same voxel-to-world geometry: a mask of the right shape but flipped or shifted
    would otherwise train and score the network on the wrong pixels without any error.
    Raises :class:`DataError` naming the mask, with the image's path in the message.
    """
    if path is None:
        return None
    mask = read_label_volume(path)
    if mask.shape != image.shape:
        raise DataError(path, f"mask shape {mask.shape} differs from image shape {image.shape} "
                        f"({image.path})")
    difference = grid_difference(image, mask)
    if difference is not None:
        raise DataError(path, f"mask is not on the voxel grid of the image {image.path}: mask is "
                        f"{difference}")
    return mask


def _robust_range(case: Case, *arrays: np.ndarray) -> tuple[float, float]:
    values = np.concatenate([a.ravel() for a in arrays])
    low, high = np.percentile(values, [LOW_PERCENTILE, HIGH_PERCENTILE])
    if not high > low:
        raise DataError(case.ed_image, "image has (almost) constant intensity; cannot normalise")
    return float(low), float(high)


def _resample(a: np.ndarray, shape_yx: tuple[int, int], order: int) -> np.ndarray:
    """Resample (z, H, W) in-plane to (z, *shape_yx); order 0 for labels, 1 for images."""
    if a.shape[1:] == shape_yx:
        return a
    factors = (shape_yx[0] / a.shape[1], shape_yx[1] / a.shape[2])
    mode = "grid-constant" if order == 0 else "nearest"
    # Slice by slice: the same values as a 3D zoom with z factor 1, at half the cost (a 3D
    # linear zoom interpolates along z too, with weights 0/1).
    out = np.stack([zoom(s, factors, order=order, grid_mode=True, mode=mode) for s in a])
    if out.shape[1:] != shape_yx:  # zoom rounds; force the exact shape
        fixed = np.zeros((a.shape[0], *shape_yx), dtype=out.dtype)
        h, w = min(out.shape[1], shape_yx[0]), min(out.shape[2], shape_yx[1])
        fixed[:, :h, :w] = out[:, :h, :w]
        out = fixed
    return out


def _crop_pad(a: np.ndarray, offset: tuple[int, int], size: int) -> np.ndarray:
    """Window [offset, offset + size) of (z, H, W), zero outside the image -> (z, size, size)."""
    z, h, w = a.shape
    oy, ox = offset
    out = np.zeros((z, size, size), dtype=a.dtype)
    y0, y1, x0, x1 = max(oy, 0), min(oy + size, h), max(ox, 0), min(ox + size, w)
    if y1 > y0 and x1 > x0:
        out[:, y0 - oy:y1 - oy, x0 - ox:x1 - ox] = a[:, y0:y1, x0:x1]
    return out


def _manifest_frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows).sort_values("patient_id").reset_index(drop=True)
    classes = sorted(c for c in df["label"].unique() if c)
    index = {c: i for i, c in enumerate(classes)}
    df.insert(2, "label_index", [index.get(c, -1) for c in df["label"]])
    return df


def _write_skipped(path: Path, skipped: list[Skipped]) -> None:
    df = pd.DataFrame([asdict(s) for s in skipped], columns=["patient_id", "path", "reason"])
    write_text(path, df.to_csv(index=False))


def _plan_splits(work: Path, manifest: pd.DataFrame, cfg: PrepareConfig) -> tuple[dict, bool]:
    """Splits for ``manifest`` and whether they are new (to be written).

    splits.json is written once: on a rebuild it is kept, after checking it still fits the
    patients (raises :class:`CardioclrError` otherwise). Writes nothing.
    """
    labelled = manifest[manifest["label"] != ""]
    labels = dict(zip(labelled["patient_id"], labelled["label"], strict=True))
    subsets = {p: (s or None) for p, s in zip(manifest["patient_id"], manifest["subset"],
                                              strict=True)}
    unlabelled = sorted(set(manifest["patient_id"]) - set(labels))
    path = work / "splits.json"
    if path.exists():
        splits = read_json(path)
        known = set(splits["train"]) | set(splits["test"])
        if known != set(labels):
            raise CardioclrError(f"{path} was written for a different set of patients "
                                 f"({len(known)} vs {len(labels)} now); delete it explicitly to "
                                 "re-split (every later result depends on it)")
        asked = {"method": cfg.split, "seed": cfg.seed,
                 "test_fraction": cfg.test_fraction if cfg.split == "random" else None}
        differs = {k: (splits.get(k), v) for k, v in asked.items() if splits.get(k) != v}
        if differs:
            # Kept on purpose (written once), but a silently ignored --split/--seed would make
            # a user believe results use a split they do not.
            log.warning("%s is kept and differs from the requested split (%s); delete it "
                        "explicitly to re-split", path,
                        ", ".join(f"{k}: kept {old!r}, asked {new!r}"
                                  for k, (old, new) in differs.items()))
        return splits, False
    if len(labels) < 2:
        splits = {"method": cfg.split, "seed": cfg.seed, "test_fraction": None, "train": [],
                  "test": [], "folds": []}
    else:
        splits = make_splits(labels, subsets, cfg.split, cfg.test_fraction, cfg.n_folds, cfg.seed)
    splits["unlabelled"] = unlabelled
    return splits, True


def remove_store(work: Path) -> None:
    """Delete a work directory's store and completeness marker (used by --overwrite tests)."""
    (work / "dataset.json").unlink(missing_ok=True)
    shutil.rmtree(work / "store", ignore_errors=True)


def default_workers() -> int:
    """Worker processes for prepare: the machine's cores, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))
