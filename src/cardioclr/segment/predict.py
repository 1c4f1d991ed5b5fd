"""``cardioclr segment predict WORK``: segment every stored patient and write QC.

Per patient (every patient of the store, labelled or not, so later stages can use the masks):

* ``WORK/segmentation/masks/PID.npz``: ``ed_mask``, ``es_mask`` uint8 (z, S, S) post-processed
  labels on the store grid; ``cine_masks`` uint8 (t, z, S, S) when the store has a cine; with
  ``--margin-mm M`` also ``ed_heart``/``es_heart`` bool (z, S, S): the heart mask dilated by M mm
  (:func:`cardioclr.data.views.heart_mask`). Written last, so its presence means complete.
* ``WORK/segmentation/nifti/PID/PID_frameEE_pred.nii.gz`` (and ES): labels on the source grid
  (:func:`cardioclr.data.store.to_source_grid`), NIfTI axes (x, y, z), the source affine.
* ``WORK/segmentation/qc/PID.png`` and rows in ``WORK/segmentation/qc_flags.csv``.

A patient that fails is logged, listed in ``qc_flags.csv`` as ``predict_failed`` and skipped;
its outputs from an earlier run are removed so no stale mask is mistaken for a current one.

``qc_flags.csv`` always describes the masks on disk: a run deletes the previous file (and
``predict_summary.json``) before it overwrites the first mask, and writes the new one atomically
once every patient is done, so an interrupted run leaves no flags file rather than one about
older masks. Rows of patients a run does not segment (``patient_ids``: a subset) are carried
over from the previous file, since their masks are unchanged.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cardioclr.atomic import atomic_dir, save_npz, write_json, write_text
from cardioclr.data.store import PatientSlices, SliceStore, to_source_grid
from cardioclr.data.views import heart_mask
from cardioclr.errors import CardioclrError, DataError
from cardioclr.layout import WorkLayout
from cardioclr.provenance import save_run_info
from cardioclr.segment.model import build_network, network_config_from_dict, size_divisor
from cardioclr.segment.postprocess import postprocess_with_stats
from cardioclr.segment.qc import QC_COLUMNS, qc_figure, qc_flags
from cardioclr.segment.train import MODEL_FORMAT, limit_cpu_threads, model_dir

log = logging.getLogger(__name__)

#: The QC flags table in ``WORK/segmentation`` (columns :data:`cardioclr.segment.qc.QC_COLUMNS`).
QC_FLAGS_FILE = "qc_flags.csv"


@dataclass(frozen=True)
class PredictConfig:
    """Settings of ``segment predict``. ``model``: a model directory (default: the work dir's)."""

    work: str
    model: str | None = None
    margin_mm: float | None = None
    tta: bool = True
    batch_size: int = 32
    device: str = "auto"
    qc_png: bool = True


@dataclass
class LoadedModel:
    """A network ready for inference and the store grid it was trained on."""

    network: torch.nn.Module
    divisor: int
    image_size: int
    spacing_mm: float
    path: Path
    info: dict[str, Any]


def load_model(model_path: str | os.PathLike[str], device: torch.device) -> LoadedModel:
    """Load ``model.pt`` (a directory holding it, or the file) with ``weights_only=True``."""
    p = Path(model_path)
    if p.is_dir():
        p = p / "model.pt"
    if not p.is_file():
        raise CardioclrError(f"{p}: no trained segmentation model; run `cardioclr segment train WORK` "
                             "first")
    try:
        blob = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: say which one
        raise DataError(p, f"not a readable segmentation model ({err})") from err
    if not isinstance(blob, dict) or blob.get("format") != MODEL_FORMAT:
        raise DataError(p, f"not a cardioclr segmentation model of format {MODEL_FORMAT}")
    cfg = network_config_from_dict(blob["network"])
    net = build_network(cfg)
    net.load_state_dict(blob["state_dict"])
    net.to(device).eval()
    return LoadedModel(net, size_divisor(cfg), int(blob["image_size"]), float(blob["spacing_mm"]), p,
                       {k: v for k, v in blob.items() if k != "state_dict"})


def check_compatible(model: LoadedModel, store: SliceStore) -> None:
    """The model sees pixels of a fixed size in mm: refuse a store with another grid."""
    if model.image_size != store.image_size or not math.isclose(model.spacing_mm, store.spacing_mm,
                                                                rel_tol=1e-6):
        raise CardioclrError(
            f"{model.path}: the model was trained on a {model.image_size} px store at "
            f"{model.spacing_mm} mm but {store.work} has {store.image_size} px at {store.spacing_mm} mm; "
            f"prepare the data with `cardioclr prepare DATA --out WORK --size {model.image_size} "
            f"--spacing {model.spacing_mm}` or train a model on this store")


@torch.inference_mode()
def infer_slices(model: LoadedModel, images: np.ndarray, device: torch.device, tta: bool = True,
                 batch_size: int = 32) -> np.ndarray:
    """Arg-max labels uint8 (N, H, W) of slices float (N, H, W) (no post-processing).

    With ``tta`` the softmax is averaged over the 4 combinations of vertical/horizontal mirroring.
    """
    n, h, w = images.shape
    ph, pw = (-h) % model.divisor, (-w) % model.divisor
    out = np.zeros((n, h, w), np.uint8)
    flips = [(), (2,), (3,), (2, 3)] if tta else [()]
    use_amp = device.type == "cuda"
    for i in range(0, n, batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size], dtype=np.float32))
        x = torch.nn.functional.pad(x[:, None], (0, pw, 0, ph)).to(device)
        prob = torch.zeros(x.shape[0], 4, x.shape[2], x.shape[3], device=device)
        for dims in flips:
            xi = torch.flip(x, dims) if dims else x
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                logits = model.network(xi)
            p = torch.softmax(logits.float(), dim=1)
            prob += torch.flip(p, dims) if dims else p
        out[i:i + x.shape[0]] = prob[:, :, :h, :w].argmax(dim=1).to(torch.uint8).cpu().numpy()
    return out


def segment_patient(model: LoadedModel, ps: PatientSlices, device: torch.device, tta: bool = True,
                    batch_size: int = 32) -> tuple[dict[str, np.ndarray], dict[str, dict[str, float]]]:
    """Post-processed labels ``{"ED", "ES"[, "cine"]}`` of one patient, and removed fractions.

    ED/ES: uint8 (z, S, S); cine: uint8 (t, z, S, S) (every frame post-processed in 3D).
    """
    z = ps.n_slices
    stack = np.concatenate([ps.ed_image, ps.es_image]).astype(np.float32)
    raw = infer_slices(model, stack, device, tta, batch_size)
    labels: dict[str, np.ndarray] = {}
    removed: dict[str, dict[str, float]] = {}
    for phase, part in (("ED", raw[:z]), ("ES", raw[z:])):
        labels[phase], removed[phase] = postprocess_with_stats(part)
    if ps.cine is not None:
        t = ps.cine.shape[0]
        flat = infer_slices(model, ps.cine.reshape(t * z, *ps.cine.shape[2:]).astype(np.float32),
                            device, tta, batch_size).reshape(ps.cine.shape)
        labels["cine"] = np.stack([postprocess_with_stats(f)[0] for f in flat])
    return labels, removed


def frame_tag(store: SliceStore, pid: str, phase: str) -> str:
    """``frameEE`` from the manifest's ED/ES frame number, or ``ED``/``ES`` when unknown."""
    col = f"{phase.lower()}_frame"
    v = store.manifest.at[pid, col] if col in store.manifest.columns else None
    if v is None or pd.isna(v):
        return phase
    return f"frame{int(v):02d}"


def write_source_nifti(folder: Path, store: SliceStore, ps: PatientSlices,
                       labels: dict[str, np.ndarray]) -> None:
    """ED/ES labels mapped back to the source grid, with the source affine and voxel size, into
    ``folder``.

    The header's voxel size (pixdim) is set from the source spacing, not derived from the
    affine: ACDC files carry an sform of diag(-1, -1, 1) and their true spacing in pixdim only,
    so an affine-derived pixdim would claim 1 x 1 x 1 mm voxels.
    """
    import nibabel as nib

    sz, sy, sx = ps.geometry.source_spacing_zyx
    for phase in ("ED", "ES"):
        src = to_source_grid(labels[phase], ps.geometry)  # (z, H, W)
        img = nib.Nifti1Image(np.ascontiguousarray(src.transpose(2, 1, 0)), ps.geometry.source_affine)
        img.set_data_dtype(np.uint8)
        img.header.set_zooms((sx, sy, sz))
        img.header.set_xyzt_units("mm", "sec")
        nib.save(img, str(folder / f"{ps.patient_id}_{frame_tag(store, ps.patient_id, phase)}_pred.nii.gz"))


def _remove_outputs(seg: Path, pid: str) -> None:
    (seg / "masks" / f"{pid}.npz").unlink(missing_ok=True)
    (seg / "qc" / f"{pid}.png").unlink(missing_ok=True)
    shutil.rmtree(seg / "nifti" / pid, ignore_errors=True)


def _carried_flags(path: Path, keep: set[str]) -> pd.DataFrame:
    """Rows of the previous ``qc_flags.csv`` whose patient is in ``keep`` (not re-segmented).

    An absent or unreadable file carries nothing (logged): the new file then lists this run's
    patients only, which is still true of every row it has.
    """
    if not keep or not path.is_file():
        return pd.DataFrame(columns=list(QC_COLUMNS))
    try:
        old = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.EmptyDataError) as err:
        log.warning("%s is unreadable (%s); flags of patients not segmented now are dropped", path, err)
        return pd.DataFrame(columns=list(QC_COLUMNS))
    if list(old.columns) != list(QC_COLUMNS):
        log.warning("%s has columns %s, not %s; not carried over", path, list(old.columns),
                    list(QC_COLUMNS))
        return pd.DataFrame(columns=list(QC_COLUMNS))
    return old[old["patient_id"].isin(keep)].reset_index(drop=True)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cpu``, ``cuda``, ``cuda:1``, ... as named.

    Raises :class:`CardioclrError` for a CUDA device on a machine without one (torch would only
    fail later, on the first tensor moved there).
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise CardioclrError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CardioclrError(f"device {name!r} asked for, but no CUDA GPU is available; use "
                             "--accelerator cpu (or auto)")
    return device


def predict(cfg: PredictConfig, patient_ids: list[str] | None = None) -> dict[str, Any]:
    """Segment the patients (default: all in the store); returns a summary dict.

    The summary's ``flags``/``flagged_patients`` count this run's patients; ``qc_flags.csv``
    also keeps the rows carried over for the store's other patients (see the module docstring).
    """
    from monai.data import set_track_meta

    set_track_meta(False)
    start = time.perf_counter()
    store = SliceStore(cfg.work)
    seg = WorkLayout(cfg.work).segmentation
    device = resolve_device(cfg.device)
    limit_cpu_threads(uses_gpu=device.type == "cuda")
    model = load_model(cfg.model or model_dir(cfg.work), device)
    check_compatible(model, store)
    save_run_info(seg / "predict", cfg)
    pids = list(patient_ids) if patient_ids is not None else store.patient_ids
    # From here on masks change: the old flags (and summary) stop describing them. Keep the rows
    # of patients this run leaves alone, then remove the files so an interrupt leaves none.
    carried = _carried_flags(seg / QC_FLAGS_FILE, keep=set(store.patient_ids) - set(pids))
    (seg / QC_FLAGS_FILE).unlink(missing_ok=True)
    (seg / "predict_summary.json").unlink(missing_ok=True)
    flags: list[dict[str, str]] = []
    failed: dict[str, str] = {}
    for n, pid in enumerate(pids, 1):
        try:
            ps = store.load(pid, with_cine=True)
            labels, removed = segment_patient(model, ps, device, cfg.tta, cfg.batch_size)
            phases = {k: labels[k] for k in ("ED", "ES")}
            rows = qc_flags(phases, removed, ps.spacing_zyx)
            with atomic_dir(seg / "nifti" / pid) as tmp:
                write_source_nifti(tmp, store, ps, labels)
            if cfg.qc_png:
                expert = ({"ED": ps.ed_mask, "ES": ps.es_mask}
                          if ps.ed_mask is not None and ps.es_mask is not None else None)
                qc_figure(seg / "qc" / f"{pid}.png", pid, {"ED": ps.ed_image, "ES": ps.es_image},
                          phases, expert, rows)
            arrays = {"ed_mask": labels["ED"], "es_mask": labels["ES"],
                      "spacing_zyx": np.asarray(ps.spacing_zyx)}
            if "cine" in labels:
                arrays["cine_masks"] = labels["cine"]
            if cfg.margin_mm is not None:
                arrays["ed_heart"] = heart_mask(labels["ED"], cfg.margin_mm, store.spacing_mm)
                arrays["es_heart"] = heart_mask(labels["ES"], cfg.margin_mm, store.spacing_mm)
                arrays["margin_mm"] = np.asarray(cfg.margin_mm)
            save_npz(seg / "masks" / f"{pid}.npz", **arrays)  # last: marks the patient complete
            flags.extend({"patient_id": pid, **r} for r in rows)
        except Exception as err:  # one bad patient must not stop the cohort
            log.error("segmentation of %s failed: %s", pid, err, exc_info=log.isEnabledFor(logging.DEBUG))
            _remove_outputs(seg, pid)
            failed[pid] = str(err)
            flags.append({"patient_id": pid, "phase": "", "flag": "predict_failed", "detail": str(err)})
        if n % 10 == 0 or n == len(pids):
            log.info("segmented %d/%d patients", n, len(pids))
    table = pd.DataFrame(flags, columns=list(QC_COLUMNS))
    everything = (pd.concat([carried, table], ignore_index=True)
                  .sort_values("patient_id", kind="stable") if len(carried) else table)
    write_text(seg / QC_FLAGS_FILE, everything.to_csv(index=False))  # atomic, after every patient
    summary = {
        "patients": len(pids),
        "segmented": len(pids) - len(failed),
        "failed": failed,
        "flagged_patients": int(table["patient_id"].nunique()) if len(table) else 0,
        "flags": len(table),
        "model": str(model.path),
        "seconds": round(time.perf_counter() - start, 1),
    }
    write_json(seg / "predict_summary.json", summary)
    return summary
