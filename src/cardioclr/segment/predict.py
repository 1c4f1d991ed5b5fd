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

import dataclasses
import logging
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cardioclr.atomic import atomic_dir, save_npz, write_json, write_text
from cardioclr.clinical.labels import N_LABELS, STRUCTURES
from cardioclr.data.augment import rotate_about_centre
from cardioclr.data.store import PatientSlices, SliceStore, to_source_grid
from cardioclr.data.views import heart_mask
from cardioclr.errors import CardioclrError, DataError
from cardioclr.layout import WorkLayout
from cardioclr.provenance import save_run_info
from cardioclr.segment.crop import Box, crop, heart_box, uncrop
from cardioclr.segment.crossfit import (
    MASK_SOURCES_FILE,
    crossfit_ready,
    folds_dir,
    mask_sources_table,
    models_for,
    read_assignment,
)
from cardioclr.segment.model import (
    PHASE_VALUE,
    UNKNOWN_PHASE,
    build_network,
    cine_phase_values,
    label_map,
    network_config_from_dict,
    size_divisor,
    slice_context,
)
from cardioclr.segment.orientation import AS_STORED, ORIENTATIONS, Orientation, describe, orient, orient_box
from cardioclr.segment.postprocess import largest_components, postprocess_with_stats, trim_basal_es_rv
from cardioclr.segment.qc import (
    DISAGREEMENT_FLAG,
    QC_COLUMNS,
    QUALITY_COLUMNS,
    QUALITY_FILE,
    low_confidence_threshold,
    qc_figure,
    qc_flags,
    quality_flags,
)
from cardioclr.segment.train import MODEL_FORMAT, limit_cpu_threads, model_dir
from cardioclr.training import cpu_has_native_bf16

log = logging.getLogger(__name__)

#: The QC flags table in ``WORK/segmentation`` (columns :data:`cardioclr.segment.qc.QC_COLUMNS`).
QC_FLAGS_FILE = "qc_flags.csv"


@dataclass(frozen=True)
class PredictConfig:
    """Settings of ``segment predict``. ``model``: a model directory (default: the work dir's).

    ``precision``: ``auto`` = bf16 autocast where it is fast (:func:`use_bf16`), ``32-true`` =
    float32 always. ``basal_es_rv``: apply the ACDC basal end-systolic RV rule
    (:func:`cardioclr.segment.postprocess.trim_basal_es_rv`); turn it off for a cohort whose
    annotation convention keeps the RV on every basal slice at end-systole.
    ``orientation_search``: segment each patient in the orientation its test-time views agree
    on best, for models trained without mirroring (:func:`segment_patient`); off: as stored.
    """

    work: str
    model: str | None = None
    margin_mm: float | None = None
    tta: bool = True
    batch_size: int = 32
    device: str = "auto"
    qc_png: bool = True
    precision: str = "auto"
    basal_es_rv: bool = True
    orientation_search: bool = True


def use_bf16(device: torch.device, precision: str = "auto") -> bool:
    """Whether inference runs under bf16 autocast: ``auto`` on a GPU and on a CPU with bf16
    instructions (:func:`cardioclr.training.cpu_has_native_bf16`: ~1.6x faster there; emulated
    bf16 elsewhere would be slower than float32); never with ``32-true``.

    Measured with the cpu preset's model on the 70 ACDC train patients (benchmarks/README.md):
    bf16 and float32 labels agree to a mean Dice of 0.999 (lowest phase 0.971), their Dice
    against the experts is 0.9160 either way, and bf16 took 26.5 instead of 42.0 s.
    """
    if precision not in ("auto", "32-true"):
        raise CardioclrError(f"unknown inference precision {precision!r}; use auto or 32-true")
    if precision == "32-true":
        return False
    return device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())


@dataclass
class LoadedModel:
    """A network ready for inference and the store grid it was trained on.

    ``window``: least side (store pixels) of the heart-centred window of the localise-then-segment
    pass; None for model files without one (whole slices are segmented). ``context_slices``:
    neighbours on each side the network takes with a slice (:func:`slice_context`);
    ``phase_channel``: whether it also takes the cardiac phase as a channel (:func:`with_phase`).
    """

    network: torch.nn.Module
    divisor: int
    image_size: int
    spacing_mm: float
    path: Path
    info: dict[str, Any]
    window: int | None = None
    context_slices: int = 0
    phase_channel: bool = False
    mirrored_training: bool = True


#: Test-time views of a model trained with mirroring: the flipped tensor dims of the 4
#: combinations of vertical / horizontal mirroring.
MIRROR_VIEWS: tuple[tuple[int, ...], ...] = ((), (2,), (3,), (2, 3))
#: Test-time views of a model trained without mirroring: in-plane rotations (degrees). Mirrored
#: views would show it hearts it never saw; on the 70 ACDC train patients' out-of-fold masks these
#: rotations gained +0.003 mean Dice over no views for such a model and their disagreement was a
#: sharper quality estimate than the mirrored views' of a mirror-trained one, while for a
#: mirror-trained model they were 0.003 worse than its mirrored views (benchmarks/README.md).
ROTATION_VIEWS_DEG: tuple[float, ...] = (0.0, 20.0, -20.0)


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
    window = blob.get("window")
    return LoadedModel(net, size_divisor(cfg), int(blob["image_size"]), float(blob["spacing_mm"]), p,
                       {k: v for k, v in blob.items() if k != "state_dict"},
                       int(window) if window is not None else None, cfg.context_slices,
                       cfg.phase_channel,
                       # Model files written before the key existed come from presets that mirror.
                       bool(blob.get("mirrored_training", True)))


def check_compatible(model: LoadedModel, store: SliceStore) -> None:
    """The model sees pixels of a fixed size in mm: refuse a store with another grid."""
    if model.image_size != store.image_size or not math.isclose(model.spacing_mm, store.spacing_mm,
                                                                rel_tol=1e-6):
        raise CardioclrError(
            f"{model.path}: the model was trained on a {model.image_size} px store at "
            f"{model.spacing_mm} mm but {store.work} has {store.image_size} px at {store.spacing_mm} mm; "
            f"prepare the data with `cardioclr prepare DATA --out WORK --size {model.image_size} "
            f"--spacing {model.spacing_mm}` or train a model on this store")


class Agreement:
    """Pooled agreement of the ensemble members (TTA mirrorings x models) with their consensus.

    ``counts[m, j]``: (member m & consensus, member m, consensus) voxels of structure j, summed
    over every slice given to :func:`infer_slices`.
    """

    def __init__(self) -> None:
        self.counts: np.ndarray | None = None

    def add(self, member_labels: list[torch.Tensor], consensus: torch.Tensor) -> None:
        """Accumulate the counts of one batch: labels (B, H, W) per member and of the consensus."""
        values = list(STRUCTURES.values())
        c = np.zeros((len(member_labels), len(values), 3))
        for m, lab in enumerate(member_labels):
            for j, v in enumerate(values):
                p, r = lab == v, consensus == v
                c[m, j] = (int((p & r).sum()), int(p.sum()), int(r.sum()))
        self.counts = c if self.counts is None else self.counts + c

    def disagreement(self) -> float:
        """1 - mean Dice of each member with the consensus over structures present (0-1).

        0: every mirrored (and every ensemble) prediction agrees voxel for voxel; NaN when
        nothing was segmented or there is a single member.
        """
        if self.counts is None or self.counts.shape[0] < 2:
            return math.nan
        inter, a, b = self.counts[..., 0], self.counts[..., 1], self.counts[..., 2]
        present = (a + b) > 0
        if not present.any():
            return math.nan
        dice = 2 * inter[present] / (a + b)[present]
        return float(1.0 - dice.mean())


#: A test-time view: mirrored tensor dims (a tuple) or a rotation in degrees (a float).
_View = tuple[int, ...] | float


def _views(model: LoadedModel, tta: bool) -> tuple[_View, ...]:
    """The test-time views of ``model`` (:func:`infer_slices`); the identity alone without ``tta``."""
    if not tta:
        return ((),)
    return MIRROR_VIEWS if model.mirrored_training else ROTATION_VIEWS_DEG


def _view(t: torch.Tensor, view: _View, inverse: bool = False) -> torch.Tensor:
    """``t`` (B, C, H, W) seen in ``view``, or (``inverse``) brought back from it."""
    if isinstance(view, tuple):
        return torch.flip(t, view) if view else t  # a mirroring is its own inverse
    if not view:
        return t
    # Border padding: the corners a rotation brings in repeat the window's edge (background).
    return rotate_about_centre(t, -view if inverse else view, padding_mode="border")


@torch.inference_mode()
def infer_slices(model: LoadedModel | Sequence[LoadedModel], images: np.ndarray, device: torch.device,
                 tta: bool = True, batch_size: int = 32, agreement: Agreement | None = None,
                 bf16: bool | None = None) -> np.ndarray:
    """Arg-max labels uint8 (N, H, W) of slices float (N, C, H, W) (no post-processing).

    C: the models' :func:`~cardioclr.segment.model.input_channels` (volumes become such slices
    with :func:`volume_slices`); (N, H, W) is taken as C = 1.

    With ``tta`` the softmax is averaged over each model's test-time views: the 4 combinations of
    vertical/horizontal mirroring (:data:`MIRROR_VIEWS`) for a model trained with mirroring, the
    rotations :data:`ROTATION_VIEWS_DEG` for one trained without; with several models (a
    cross-fitted ensemble) over every model too. ``agreement`` collects
    how far each of these members is from the averaged result (a per-patient quality estimate).
    ``bf16``: run the networks under bf16 autocast (softmax and averaging stay float32); None =
    :func:`use_bf16` of ``device``.
    """
    models = [model] if isinstance(model, LoadedModel) else list(model)
    divisor = max(m.divisor for m in models)
    if images.ndim == 3:
        images = images[:, None]
    n, _, h, w = images.shape
    ph, pw = (-h) % divisor, (-w) % divisor
    out = np.zeros((n, h, w), np.uint8)
    use_amp = use_bf16(device) if bf16 is None else bf16
    for i in range(0, n, batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size], dtype=np.float32))
        x = torch.nn.functional.pad(x, (0, pw, 0, ph)).to(device)
        prob = torch.zeros(x.shape[0], N_LABELS, x.shape[2], x.shape[3], device=device)
        members: list[torch.Tensor] = []
        for m in models:
            for view in _views(m, tta):
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                    logits = m.network(_view(x, view))
                p = _view(torch.softmax(logits.float(), dim=1), view, inverse=True)
                prob += p
                if agreement is not None:
                    members.append(label_map(p[:, :, :h, :w]))
        consensus = label_map(prob[:, :, :h, :w])
        if agreement is not None:
            agreement.add(members, consensus)
        out[i:i + x.shape[0]] = consensus.to(torch.uint8).cpu().numpy()
    return out


def volume_slices(models: Sequence[LoadedModel], *volumes: np.ndarray,
                  phases: Sequence[float] | None = None) -> np.ndarray:
    """The network inputs of whole volumes float (z, H, W), in order: (sum z, C, H, W).

    Context slices come from the same volume only (an ED slice never sees an ES neighbour).
    ``phases``: the phase value of each volume (:data:`~cardioclr.segment.model.PHASE_VALUE`,
    :func:`~cardioclr.segment.model.cine_phase_values`), appended as the last channel when the
    models take it (required then). Every model of an ensemble must take the same input.
    """
    inputs = {(m.context_slices, m.phase_channel) for m in models}
    if len(inputs) > 1:
        raise CardioclrError(f"{models[0].path.parent.parent}: the ensemble's models take different "
                             f"inputs ((context slices, phase channel): {sorted(inputs)}); train them "
                             "with the same settings")
    k, phase_channel = inputs.pop()
    parts = [slice_context(v.astype(np.float32, copy=False), k) for v in volumes]
    if phase_channel:
        if phases is None or len(phases) != len(volumes):
            raise ValueError("the models take a phase channel: give one phase value per volume")
        parts = [np.concatenate([p, np.full((p.shape[0], 1, *p.shape[2:]), v, np.float32)], axis=1)
                 for p, v in zip(parts, phases, strict=True)]
    return np.concatenate(parts)


@dataclass(frozen=True)
class PatientResult:
    """What :func:`segment_patient` found: post-processed labels and how it got them.

    ``labels``: ``{"ED", "ES"[, "cine"]}`` uint8 (z, S, S) / (t, z, S, S) on the store grid, in
    the stored orientation; ``removed``: per phase the fraction of each structure dropped by
    post-processing; ``box``: the window the labels were predicted in (None: whole slices), in
    the stored orientation; ``localised``: False when the first pass found no heart (whole-slice
    fallback); ``disagreement``: see :class:`Agreement`; ``basal_es_rv_slices``: ES slices whose
    RV the basal rule removed (0 when it is off); ``orientation``: the orientation the slices
    were segmented in (:mod:`cardioclr.segment.orientation`; ``AS_STORED`` unless searched).
    """

    labels: dict[str, np.ndarray]
    removed: dict[str, dict[str, float]]
    box: Box | None
    localised: bool
    disagreement: float
    basal_es_rv_slices: int = 0
    orientation: Orientation = AS_STORED


def locate_heart(model: LoadedModel, ed_slices: np.ndarray, device: torch.device,
                 batch_size: int = 32, bf16: bool | None = None) -> Box | None:
    """The window to segment in: whole-slice labels of one model, no TTA, largest components.

    ``ed_slices``: the end-diastolic volume, float (z, S, S). ED only: the heart is at its
    largest at end-diastole on the same slices, so ES adds nothing to the window; this first
    pass on whole slices was half of the prediction time with both phases (0.39 of 0.78 s per
    ACDC patient on 2 cores; benchmarks/README.md). None when no heart is found.
    """
    raw = infer_slices(model, volume_slices([model], ed_slices, phases=[PHASE_VALUE["ED"]]), device,
                       tta=False, batch_size=batch_size, bf16=bf16)
    assert model.window is not None
    return heart_box(largest_components(raw)[0], model.window, model.divisor)


def orientation_specific(models: Sequence[LoadedModel]) -> bool:
    """Whether the models saw hearts in one orientation only (none trained with mirroring)."""
    return not any(m.mirrored_training for m in models)


def _segment_ed_es(models: list[LoadedModel], ed: np.ndarray, es: np.ndarray, device: torch.device,
                   tta: bool, batch_size: int, bf16: bool | None,
                   basal_es_rv: bool) -> PatientResult:
    """ED and ES volumes float (z, S, S) segmented as given: localise, segment, post-process."""
    z = int(ed.shape[0])
    stack = volume_slices(models, ed, es, phases=[PHASE_VALUE["ED"], PHASE_VALUE["ES"]])  # (2z, C, S, S)
    size_hw = (int(stack.shape[2]), int(stack.shape[3]))
    box: Box | None = None
    localised = True
    if models[0].window is not None:
        box = locate_heart(models[0], ed.astype(np.float32), device, batch_size, bf16)
        if box is None:
            localised = False  # nothing found: segment whole slices rather than guess a window
    agreement = Agreement()
    if box is not None:
        raw = in_window(infer_slices(models, crop(stack, box), device, tta, batch_size, agreement, bf16),
                        box, size_hw)
    else:
        raw = infer_slices(models, stack, device, tta, batch_size, agreement, bf16)
    labels: dict[str, np.ndarray] = {}
    removed: dict[str, dict[str, float]] = {}
    for phase, part in (("ED", raw[:z]), ("ES", raw[z:])):
        labels[phase], removed[phase] = postprocess_with_stats(part)
    trimmed = 0
    if basal_es_rv:
        labels["ES"], trimmed = trim_basal_es_rv(labels["ED"], labels["ES"])
    if box is not None:
        labels = {phase: uncrop(lab, box, size_hw) for phase, lab in labels.items()}
    return PatientResult(labels, removed, box, localised, agreement.disagreement(), trimmed)


def _search_order(first: Orientation) -> tuple[Orientation, ...]:
    """Every orientation, ``first`` first."""
    return (first, *(o for o in ORIENTATIONS if o != first))


def segment_patient(model: LoadedModel | Sequence[LoadedModel], ps: PatientSlices, device: torch.device,
                    tta: bool = True, batch_size: int = 32, bf16: bool | None = None,
                    basal_es_rv: bool = True, cine_phases: np.ndarray | None = None,
                    orientation_search: bool = True,
                    first_orientation: Orientation = AS_STORED) -> PatientResult:
    """Localise the heart, segment the window around it, post-process; see :class:`PatientResult`.

    With a model file that records no window, whole slices are segmented. With several
    models (a cross-fitted ensemble) the first one localises and all of them segment.
    ``bf16``: see :func:`infer_slices`. Post-processing runs on the window (everything outside
    it is background, so the result is the same as on the whole slice, in less time).
    ``basal_es_rv``: then apply :func:`cardioclr.segment.postprocess.trim_basal_es_rv` to ES.
    ``cine_phases``: phase-channel value of each cine frame (t,) for models that take the phase
    (:func:`~cardioclr.segment.model.cine_phase_values`); None = unknown (:data:`UNKNOWN_PHASE`).

    Orientation search (``orientation_search`` with ``tta``, for models trained without
    mirroring, :func:`orientation_specific`): ED/ES are segmented in ``first_orientation``; when
    its views disagree more than the quality flag's threshold
    (:data:`~cardioclr.segment.qc.DISAGREEMENT_FLAG`), in every other orientation too, and the
    one whose views agree best is kept (the cine follows it). Measured on the 100 ACDC patients
    with out-of-fold models of the cpu preset's augmentation (9.5-minute fold models;
    benchmarks/README.md): whatever orientation a patient is stored in, the one chosen gives the
    Dice of the true one (0.9025 against 0.9027; 0.51 in the worst orientation). It is not always
    the true one: an up-down mirrored heart keeps the RV on the left and the model segments it
    almost as well. Pass the previous patient's orientation as ``first_orientation``: a cohort
    shown in one orientation then costs one pass per patient.
    """
    models = [model] if isinstance(model, LoadedModel) else list(model)
    searching = orientation_search and tta and orientation_specific(models)
    tried: dict[Orientation, PatientResult] = {}
    for o in _search_order(first_orientation) if searching else (AS_STORED,):
        tried[o] = _segment_ed_es(models, orient(ps.ed_image, o), orient(ps.es_image, o), device, tta,
                                  batch_size, bf16, basal_es_rv)
        if len(tried) == 1 and tried[o].disagreement <= DISAGREEMENT_FLAG:  # NaN (nothing found): search
            break
    chosen = min(tried, key=lambda o: (math.inf if math.isnan(tried[o].disagreement)
                                       else tried[o].disagreement))
    res = tried[chosen]
    labels = {phase: orient(lab, chosen, inverse=True) for phase, lab in res.labels.items()}
    if ps.cine is not None:
        labels["cine"] = orient(_segment_cine(models, orient(ps.cine, chosen), res.box, device, tta,
                                              batch_size, bf16, cine_phases), chosen, inverse=True)
    side = int(ps.ed_image.shape[-1])
    box = orient_box(res.box, chosen, side, inverse=True) if res.box is not None else None
    return dataclasses.replace(res, labels=labels, box=box, orientation=chosen)


def _segment_cine(models: list[LoadedModel], cine: np.ndarray, box: Box | None, device: torch.device,
                  tta: bool, batch_size: int, bf16: bool | None,
                  cine_phases: np.ndarray | None) -> np.ndarray:
    """Post-processed labels uint8 (t, z, S, S) of every cine frame (t, z, S, S), in ``box``."""
    t, z = int(cine.shape[0]), int(cine.shape[1])
    size_hw = (int(cine.shape[2]), int(cine.shape[3]))
    frame_phases = cine_phases if cine_phases is not None else np.full(t, UNKNOWN_PHASE, np.float32)
    frames = volume_slices(models, *cine, phases=list(frame_phases))  # (t z, C, S, S)
    if box is not None:
        flat = in_window(infer_slices(models, crop(frames, box), device, tta, batch_size, bf16=bf16),
                         box, size_hw)
    else:
        flat = infer_slices(models, frames, device, tta, batch_size, bf16=bf16)
    cine_labels = np.stack([postprocess_with_stats(f)[0] for f in flat.reshape(t, z, *flat.shape[1:])])
    return uncrop(cine_labels, box, size_hw) if box is not None else cine_labels


def store_cine_phases(store: SliceStore, pid: str, ps: PatientSlices) -> np.ndarray | None:
    """Phase-channel values of the patient's cine frames from the manifest's 1-based ED/ES frame
    numbers (:func:`~cardioclr.segment.model.cine_phase_values`); None without a cine."""
    if ps.cine is None:
        return None
    ed, es = (manifest_frame(store, pid, phase) for phase in ("ED", "ES"))
    return cine_phase_values(int(ps.cine.shape[0]), None if ed is None else ed - 1,
                             None if es is None else es - 1)


def in_window(labels: np.ndarray, box: Box, shape_hw: tuple[int, int]) -> np.ndarray:
    """Window labels (..., size, size) with the pixels that lie outside the slice set to 0.

    A window may reach past the slice border (:mod:`cardioclr.segment.crop`); whatever the
    network predicted on that zero padding is not part of the image, so it must not take part
    in post-processing (it could be a structure's largest component) before :func:`uncrop`.
    """
    inside = crop(np.ones(shape_hw, dtype=bool), box)
    return np.where(inside, labels, 0).astype(labels.dtype, copy=False)


def manifest_frame(store: SliceStore, pid: str, phase: str) -> int | None:
    """The manifest's 1-based frame number of ``phase`` (``ED``/``ES``); None when unknown."""
    col = f"{phase.lower()}_frame"
    v = store.manifest.at[pid, col] if col in store.manifest.columns else None
    return None if v is None or pd.isna(v) else int(v)


def frame_tag(store: SliceStore, pid: str, phase: str) -> str:
    """``frameEE`` from the manifest's ED/ES frame number, or ``ED``/``ES`` when unknown."""
    frame = manifest_frame(store, pid, phase)
    return phase if frame is None else f"frame{frame:02d}"


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


def _remove_outputs(seg: Path, pid: str) -> None:  # noqa: D103
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


def load_models(cfg: PredictConfig, store: SliceStore, device: torch.device
                ) -> tuple[list[LoadedModel], list[list[str]] | None]:
    """The model(s) of a prediction run and, for a cross-fitted ensemble, its folds.

    ``cfg.model`` names one model, or the ``segmentation/folds`` directory of another work
    directory (its fold models then segment every patient together: new patients are in no
    fold). Without it: the cross-fitted fold models when ``segment train --folds K`` finished
    (:mod:`cardioclr.segment.crossfit`), else ``WORK/segmentation/model``.
    """
    folds_root = None
    if cfg.model is None and crossfit_ready(cfg.work):
        folds_root = folds_dir(cfg.work)
    elif cfg.model is not None and (Path(cfg.model) / "assignment.json").is_file():
        folds_root = Path(cfg.model)
    if folds_root is not None:
        folds = read_assignment(folds_root.parent.parent)
        if folds is None:
            raise CardioclrError(f"{folds_root}: no assignment.json; retrain with `cardioclr segment "
                                 "train --folds K --overwrite`")
        models = [load_model(folds_root / f"fold_{k}" / "model", device) for k in range(len(folds))]
    else:
        folds = None
        models = [load_model(cfg.model or model_dir(cfg.work), device)]
    for m in models:
        check_compatible(m, store)
    return models, folds


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
    models, folds = load_models(cfg, store, device)
    bf16 = use_bf16(device, cfg.precision)
    flag_above = low_confidence_threshold(mirrored_views=not orientation_specific(models))
    save_run_info(seg / "predict", cfg)
    pids = list(patient_ids) if patient_ids is not None else store.patient_ids
    # From here on masks change: the old flags (and summary) stop describing them. Keep the rows
    # of patients this run leaves alone, then remove the files so an interrupt leaves none.
    carried = _carried_flags(seg / QC_FLAGS_FILE, keep=set(store.patient_ids) - set(pids))
    carried_quality = _carried_rows(seg / QUALITY_FILE, QUALITY_COLUMNS, set(store.patient_ids) - set(pids))
    carried_sources = _carried_rows(seg / MASK_SOURCES_FILE, ("patient_id", "source", "models"),
                                    set(store.patient_ids) - set(pids))
    for name in (QC_FLAGS_FILE, QUALITY_FILE, MASK_SOURCES_FILE, "predict_summary.json"):
        (seg / name).unlink(missing_ok=True)
    flags: list[dict[str, str]] = []
    quality: list[dict[str, Any]] = []
    sources: list[dict[str, str]] = []
    failed: dict[str, str] = {}
    first_orientation = AS_STORED  # a cohort is usually shown in one orientation: try the last one first
    for n, pid in enumerate(pids, 1):
        try:
            if folds is None:
                use, source, names = models, "single_model", str(models[0].path.parent.name)
            else:
                ks = models_for(pid, folds)
                use = [models[k] for k in ks]
                source = "out_of_fold" if len(ks) == 1 else "ensemble"
                names = ";".join(f"fold_{k}" for k in ks)
            ps = store.load(pid, with_cine=True)
            res = segment_patient(use, ps, device, cfg.tta, cfg.batch_size, bf16, cfg.basal_es_rv,
                                  cine_phases=store_cine_phases(store, pid, ps),
                                  orientation_search=cfg.orientation_search,
                                  first_orientation=first_orientation)
            first_orientation = res.orientation
            labels = res.labels
            phases = {k: labels[k] for k in ("ED", "ES")}
            rows = qc_flags(phases, res.removed, ps.spacing_zyx)
            rows += quality_flags(res.disagreement, res.localised, flag_above)
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
            box = res.box
            quality.append({"patient_id": pid, "disagreement": res.disagreement,
                            "localised": res.localised,
                            "basal_es_rv_slices": res.basal_es_rv_slices,
                            "orientation": describe(res.orientation),
                            "window": f"{box.y0},{box.x0},{box.size}" if box is not None else ""})
            sources.append({"patient_id": pid, "source": source, "models": names})
        except Exception as err:  # one bad patient must not stop the cohort
            log.error("segmentation of %s failed: %s", pid, err, exc_info=log.isEnabledFor(logging.DEBUG))
            _remove_outputs(seg, pid)
            failed[pid] = str(err)
            flags.append({"patient_id": pid, "phase": "", "flag": "predict_failed", "detail": str(err)})
        if n % 10 == 0 or n == len(pids):
            log.info("segmented %d/%d patients", n, len(pids))
    table = pd.DataFrame(flags, columns=list(QC_COLUMNS))
    for name, new, old in ((QUALITY_FILE, pd.DataFrame(quality, columns=list(QUALITY_COLUMNS)),
                            carried_quality),
                           (MASK_SOURCES_FILE, mask_sources_table(sources), carried_sources)):
        both = pd.concat([old, new], ignore_index=True) if len(old) else new
        write_text(seg / name, both.sort_values("patient_id", kind="stable").to_csv(
            index=False, float_format="%.5f"))
    everything = (pd.concat([carried, table], ignore_index=True)
                  .sort_values("patient_id", kind="stable") if len(carried) else table)
    write_text(seg / QC_FLAGS_FILE, everything.to_csv(index=False))  # atomic, after every patient
    summary = {
        "patients": len(pids),
        "segmented": len(pids) - len(failed),
        "failed": failed,
        "flagged_patients": int(table["patient_id"].nunique()) if len(table) else 0,
        "flags": len(table),
        "low_confidence_patients": int((table["flag"] == "low_confidence").sum()) if len(table) else 0,
        "low_confidence_threshold": flag_above,
        "not_localised_patients": int((table["flag"] == "heart_not_localised").sum()) if len(table) else 0,
        "model": str(models[0].path) if folds is None else str(folds_dir(cfg.work)),
        "models": len(models),
        "precision": "bf16-autocast" if bf16 else "float32",
        "basal_es_rv": cfg.basal_es_rv,
        "basal_es_rv_patients": sum(1 for q in quality if q["basal_es_rv_slices"]),
        "reoriented_patients": sum(1 for q in quality if q["orientation"] != describe(AS_STORED)),
        "seconds": round(time.perf_counter() - start, 1),
    }
    write_json(seg / "predict_summary.json", summary)
    return summary


def _carried_rows(path: Path, columns: Sequence[str], keep: set[str]) -> pd.DataFrame:
    """Rows of a previous per-patient table whose patient is in ``keep`` (see _carried_flags)."""
    if not keep or not path.is_file():
        return pd.DataFrame(columns=list(columns))
    try:
        old = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.EmptyDataError):
        return pd.DataFrame(columns=list(columns))
    if list(old.columns) != list(columns):
        return pd.DataFrame(columns=list(columns))
    return old[old["patient_id"].isin(keep)].reset_index(drop=True)
