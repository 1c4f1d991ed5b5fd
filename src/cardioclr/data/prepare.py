"""``prepare``: raw dataset -> slice store + manifest.csv + splits.json (+ skipped.csv).

Every image is resampled in-plane to a common spacing, centre-cropped or zero-padded to a
square grid, and normalised robustly (1st/99th percentiles of the patient's ED+ES voxels).
The store is built under a temporary name and renamed into place; ``dataset.json`` is written
last, so an interrupted or failed run never leaves a store that looks complete, and a failed
``--overwrite`` (bad patient with ``--strict``, changed patient set, interrupt) leaves the
previous complete work directory untouched. Temporary folders left by a killed run are removed
when the next run starts; worker processes die with the run that started them and never write
after it.

Bad input: each patient is read and prepared inside the per-patient error boundary
(:mod:`cardioclr.data.boundary`): whatever goes wrong becomes a line of ``skipped.csv`` naming
the file and the problem, unless ``--strict``. The checks are those of ``cardioclr verify``
(:func:`read_checked_case`).

Expert masks: a patient needs both ED and ES masks for segmentation training and evaluation
(``has_expert_mask``). When only one phase has a mask, that mask is still read and checked
against its image, kept in the store (``has_ed_mask`` / ``has_es_mask`` in the manifest and the
``.npz``), and a warning says the patient counts as unmasked.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
from scipy.ndimage import zoom

from cardioclr.atomic import (
    atomic_dir,
    read_json,
    remove_stale_temporaries,
    save_npz,
    write_json,
    write_text,
)
from cardioclr.clinical.indices import mosteller_bsa
from cardioclr.data.boundary import patient_boundary, reading
from cardioclr.data.cases import Case, Skipped
from cardioclr.data.discover import discover_cases
from cardioclr.data.splits import make_splits
from cardioclr.data.store import STORE_VERSION
from cardioclr.data.workers import exit_if_orphaned, worker_pool
from cardioclr.errors import CardioclrError, DataError
from cardioclr.io.types import Volume
from cardioclr.io.volume import (
    grid_difference,
    orientation_problems,
    read_cine,
    read_label_volume,
    read_volume,
)
from cardioclr.provenance import save_run_info

log = logging.getLogger(__name__)

LOW_PERCENTILE, HIGH_PERCENTILE = 1.0, 99.0
T = TypeVar("T")


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
    #: A pack as ``data``: decode its patients into ``out/store`` once instead of reading the
    #: pack in every stage (see :mod:`cardioclr.data.pack`).
    unpack: bool = False
    #: Diagnoses a label may name (None: the ACDC groups for ACDC folders, any for manifests).
    classes: tuple[str, ...] | None = None


def check_out_dir(work: Path) -> None:
    """Refuse an output path that exists and is not a folder (or cannot become one)."""
    for p in (work, *work.parents):
        if p.exists():
            if not p.is_dir():
                what = "--out" if p == work else f"--out's parent {p}"
                raise CardioclrError(f"{work}: {what} is an existing file, not a folder; choose "
                                     "a folder (it is created if missing)")
            break


def prepare(cfg: PrepareConfig) -> dict[str, Any]:
    """Run ``prepare``; returns a summary dict (patients, skipped, seconds, classes)."""
    start = time.perf_counter()
    work = Path(cfg.out)
    check_out_dir(work)
    if (work / "dataset.json").exists() and not cfg.overwrite:
        raise CardioclrError(f"{work} is already prepared (dataset.json exists); pass --overwrite "
                             "to rebuild the store (splits.json is kept)")
    from cardioclr.data.pack import install, is_pack

    if is_pack(cfg.data):  # a packed store: read in place or unpacked; splits travel with it
        return install(cfg.data, work, cfg.image_size, cfg.spacing_mm, unpack=cfg.unpack)
    cases, skipped = discover_cases(cfg.data, require_label=not cfg.unlabelled,
                                    classes=cfg.classes)
    for s in skipped:
        _log_skipped(s)
    if cfg.strict and skipped:
        raise DataError(skipped[0].path, skipped[0].reason)
    if not cases:
        raise CardioclrError(f"{cfg.data}: no usable patient; reasons: "
                             + "; ".join(f"{s.path}: {s.reason}" for s in skipped[:5]))
    work.mkdir(parents=True, exist_ok=True)
    for stale in remove_stale_temporaries(work, "store"):
        log.info("removed %s left by an interrupted earlier run", stale)
    rows: list[dict[str, Any]] = []
    # Everything is built and checked inside atomic_dir; an error or interrupt before the end of
    # the block leaves a previous store, manifest, splits and dataset.json exactly as they were.
    with atomic_dir(work / "store") as store_tmp:
        jobs = [(case, str(store_tmp), cfg.spacing_mm, cfg.image_size) for case in cases]
        if cfg.workers > 1 and len(jobs) > 1:
            with worker_pool(cfg.workers) as pool:
                results = list(pool.map(_prepare_one_job, jobs, chunksize=4))
        else:
            results = [_prepare_one_job(j) for j in jobs]
        for result in results:
            if isinstance(result, Skipped):
                if cfg.strict:
                    raise DataError(result.path, result.reason)
                _log_skipped(result)
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


def _log_skipped(s: Skipped) -> None:
    log.warning("skipping %s: %s: %s", s.patient_id, s.path, s.reason)
    if s.detail:
        log.debug("traceback behind skipping %s:\n%s", s.patient_id, s.detail)


def _prepare_one_job(job: tuple[Case, str, float, int]) -> dict[str, Any] | Skipped:
    case, store_dir, spacing, size = job
    return patient_boundary(case.patient_id, case.source or str(case.ed_image),
                            lambda: prepare_case(case, Path(store_dir), spacing, size))


@dataclass
class CheckedCase:
    """A patient's volumes once every check passed (masks None when absent)."""

    ed: Volume
    es: Volume
    ed_mask: Volume | None
    es_mask: Volume | None
    cine: np.ndarray | None = None  # float32 (t, z, y, x) on the ED grid


def read_checked_case(case: Case, problems: list[DataError] | None = None) -> CheckedCase | None:
    """Read every file of ``case`` and run every check of its content (the checks of
    ``cardioclr verify`` and ``prepare``).

    With ``problems`` None the first problem raises :class:`DataError` naming the file (prepare).
    With a list, every problem found is appended and checking goes on with whatever does not
    depend on the failed file (verify); returns None when a problem was found.
    """
    found: list[DataError] = []

    def step(path: Path | str, fn: Callable[[], T]) -> T | None:
        try:
            with reading(path):
                return fn()
        except DataError as err:
            if problems is None:
                raise
            found.append(err)
            return None

    ed = step(case.ed_image, lambda: _read_frame(case.ed_image, "ED"))
    es = step(case.es_image, lambda: _read_frame(case.es_image, "ES"))
    if es is not None and ed is not None:
        step(case.es_image, lambda: _check_pair(case, ed, es))
    ed_mask = es_mask = None
    if case.ed_mask is not None and ed is not None:
        ed_mask = step(case.ed_mask, lambda: _read_mask(case.ed_mask, ed))
    if case.es_mask is not None and es is not None:
        es_mask = step(case.es_mask, lambda: _read_mask(case.es_mask, es))
    cine = None
    cine_path = case.cine
    if cine_path is not None and ed is not None:
        cine = step(cine_path, lambda: _read_cine_like(cine_path, ed))
    if problems is not None:
        problems.extend(found)
    if found or ed is None or es is None:
        return None
    return CheckedCase(ed, es, ed_mask, es_mask, cine)


def _read_cine_like(path: Path, ed: Volume) -> np.ndarray:
    """The 4D cine (t, z, y, x), refused unless its frames share the ED frame's grid."""
    cine, cine_spacing = read_cine(path)
    if cine.shape[1:] != ed.shape:
        raise DataError(path, f"cine frames {cine.shape[1:]} differ from ED frame {ed.shape}")
    _check_spacing(path, cine_spacing, ed)
    return cine


def _read_frame(path: Path, phase: str) -> Volume:
    """An ED or ES image, refused when it holds no image (constant, e.g. all zeros)."""
    vol = read_volume(path)
    if vol.array.size and float(vol.array.min()) == float(vol.array.max()):
        raise DataError(path, f"{phase} frame has constant intensity (every voxel "
                        f"{float(vol.array.min()):g}): "
                        "no image to prepare")
    return vol


def _check_pair(case: Case, ed: Volume, es: Volume) -> None:
    if ed.shape != es.shape:
        raise DataError(case.es_image, f"ES frame shape {es.shape} differs from ED frame shape "
                        f"{ed.shape} ({case.ed_image})")
    _check_spacing(case.es_image, es.spacing, ed)
    _check_orientation(case.es_image, es, ed)


def prepare_case(case: Case, store_dir: Path, spacing_mm: float, size: int) -> dict[str, Any]:
    """Read, check, resample, crop and normalise one patient; write ``store_dir/PID.npz``.

    Returns its manifest row. Raises :class:`DataError` naming the file on bad input.
    """
    checked = read_checked_case(case)
    assert checked is not None  # problems=None: a problem raises instead
    ed, es = checked.ed, checked.es
    masks = [checked.ed_mask, checked.es_mask]
    has_mask = masks[0] is not None and masks[1] is not None
    if (masks[0] is None) != (masks[1] is None):
        present, absent = ("ED", "ES") if masks[0] is not None else ("ES", "ED")
        log.warning("%s: %s mask present but %s mask missing; the %s mask is kept in the store "
                    "but the patient counts as without expert masks (segmentation needs both "
                    "phases)", case.patient_id, present, absent, present)
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
                                   if m is not None
                                   else np.zeros((ed.shape[0], size, size), np.uint8))
        arrays[f"has_{phase}_mask"] = np.array(m is not None)
    n_cine = 0
    cine = checked.cine
    if cine is not None:
        arrays["cine"] = np.stack([image_to_store(f) for f in cine]).astype(np.float16)
        n_cine = cine.shape[0]
    exit_if_orphaned()  # a worker whose prepare was killed must not write into its store
    save_npz(store_dir / f"{case.patient_id}.npz", **arrays)
    return {
        "patient_id": case.patient_id,
        "label": case.label or "",
        "subset": case.subset or "",
        "height_cm": case.height_cm,
        "weight_kg": case.weight_kg,
        "bsa_m2": mosteller_bsa(case.height_cm, case.weight_kg),
        "n_slices": ed.shape[0],
        "slice_spacing_mm": sz,
        "source_pixel_mm": sy,
        "ed_frame": case.ed_frame,
        "es_frame": case.es_frame,
        "has_expert_mask": has_mask,
        "has_ed_mask": masks[0] is not None,
        "has_es_mask": masks[1] is not None,
        "cine_frames": n_cine,
        "source": case.source,
    }


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
    # An all-background mask is kept: the patient's images still serve classification and
    # pretraining, and segmentation training leaves such patients out and lists them in its
    # done.json (``excluded_patients``).
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


def _manifest_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(rows).sort_values("patient_id").reset_index(drop=True)
    classes = sorted(c for c in df["label"].unique() if c)
    index = {c: i for i, c in enumerate(classes)}
    df.insert(2, "label_index", [index.get(c, -1) for c in df["label"]])
    return df


def _write_skipped(path: Path, skipped: list[Skipped]) -> None:
    df = pd.DataFrame([asdict(s) for s in skipped], columns=["patient_id", "path", "reason"])
    write_text(path, df.to_csv(index=False))


def _plan_splits(work: Path, manifest: pd.DataFrame, cfg: PrepareConfig) -> tuple[dict[str, Any], bool]:
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
