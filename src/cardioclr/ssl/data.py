"""The images SimCLR learns from: train-split slices (+ unlabelled + extra data), never test.

Which images
    Every short-axis slice of the ED and ES frames, and of every cine frame when the store
    has cine, of (a) the ``train`` split and the ``unlabelled`` patients of the main work
    directory, and (b) the train + unlabelled patients of every extra work directory
    (``--extra``). Labels are never read. The main work directory's ``test`` patients are
    excluded by construction *and* checked (:func:`check_no_test`).

Validation part
    A seeded ``val_fraction`` of the main ``train`` PATIENTS (never test, never slices of a
    training patient) is held out; its contrastive loss drives early stopping.

Memory layout
    All slices are pre-loaded once at the network input size (``views.patient_views``; one
    ``roi_box`` per patient in ``roi`` mode) into two arrays, images float16 (N, S, S) and,
    in ``segmented`` mode, hearts uint8 (N, S, S). Datasets are small (ACDC train at 96 px:
    ~1.4 k ED/ES slices = 26 MB; with 30 cine frames ~0.4 GB). :class:`SliceDataset` only
    indexes these arrays; augmentation happens batched on the training device
    (:mod:`cardioclr.data.augment`).

Masks
    ``segmented`` mode serves the heart mask (for masking after augmentation); ``roi`` uses it
    only to place the crop; ``full`` loads no mask at all. Cine frames have no mask of their
    own: they use the union of the patient's ED and ES hearts (ED is the largest extent, so the
    union covers the heart through the cycle up to segmentation error). In ``segmented`` mode,
    slices whose heart mask is empty (above the base, below the apex) are dropped: they would
    be all-zero images, identical to each other, which carry no contrastive signal.
    ``anatomy`` mode crops like ``roi`` and serves the LV, MYO and RV masks of each slice as
    hearts uint8 (N, 3, S, S), which become input channels after augmentation
    (:func:`cardioclr.data.augment.two_views`: warped with the image, never intensity-changed).
    It uses the ED and ES frames only: cine frames have no structure masks of their own.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from cardioclr.data.masks import load_labels, predicted_mask_path
from cardioclr.data.prepare import PrepareConfig, prepare
from cardioclr.data.store import SliceStore
from cardioclr.data.views import (
    check_mode,
    crop_resize,
    crops_to_heart,
    heart_mask,
    patient_views,
    roi_box,
    structure_masks,
)
from cardioclr.errors import CardioclrError
from cardioclr.ssl.positives import ED_FRAME, ES_FRAME, FIRST_CINE, SliceMeta, frame_meta

log = logging.getLogger(__name__)

MAIN = "main"  # source name of the main work directory in sample lists


@dataclass(frozen=True)
class Source:
    """One work directory contributing images.

    ``mask_source``: ``predicted``/``expert`` for every patient, or ``auto`` (extra data:
    predicted when ``cardioclr segment predict`` wrote a mask for the patient, else expert).
    ``all_patients``: use every stored patient (a raw ``--extra`` folder we prepared ourselves:
    its splits mean nothing); otherwise only ``train`` + ``unlabelled`` (a work directory
    someone may evaluate on keeps its test patients out).
    """

    name: str
    work: Path
    mask_source: str = "predicted"
    all_patients: bool = False

    def patients(self) -> list[str]:
        """The patient IDs this source contributes (sorted)."""
        store = SliceStore(self.work)
        return sorted(store.patient_ids) if self.all_patients else source_patients(store)


@dataclass(frozen=True)
class PatientRef:
    """A patient of a source: ``(source name, patient id)``; IDs may repeat across sources."""

    source: str
    patient_id: str


@dataclass
class SSLArrays:
    """Pre-loaded slices of one part (train or validation).

    ``images``: float16 (N, S, S) store intensities; ``hearts``: uint8 (N, S, S) 0/1 or None
    (``full``/``roi`` modes); ``patients``: the patients loaded; ``per_source``: slice counts;
    ``meta``: where each slice comes from (patient code = index in ``patients``, frame,
    stack position; :mod:`cardioclr.ssl.positives`).
    """

    images: np.ndarray
    hearts: np.ndarray | None
    patients: list[PatientRef]
    per_source: dict[str, int] = field(default_factory=dict)
    meta: SliceMeta = field(default_factory=SliceMeta.empty)

    def __len__(self) -> int:
        return int(self.images.shape[0])


# --------------------------------------------------------------------------------------------
# Which patients
# --------------------------------------------------------------------------------------------


def source_patients(store: SliceStore) -> list[str]:
    """Patients of a work directory usable for pretraining: ``train`` + ``unlabelled``, sorted.

    Test patients are never returned; :func:`check_no_test` re-checks the final list.
    """
    splits = store.splits
    test = set(splits.test)
    ids = sorted(set(splits.train) | set(splits.unlabelled))
    return [p for p in ids if p not in test]


def check_no_test(refs: Sequence[PatientRef], store: SliceStore, source: str = MAIN) -> None:
    """Raise :class:`CardioclrError` if any of ``refs`` from ``source`` is a test patient.

    Not an ``assert``: it must also hold under ``python -O``.
    """
    test = set(store.splits.test)
    leaked = sorted(r.patient_id for r in refs if r.source == source and r.patient_id in test)
    if leaked:
        raise CardioclrError(f"refusing to pretrain on test patients of {store.work}: "
                             f"{', '.join(leaked[:5])}{' ...' if len(leaked) > 5 else ''}")


def split_validation(train_ids: Sequence[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Hold out a seeded ``fraction`` of the training PATIENTS for the early-stopping loss.

    Returns ``(train, val)``, both sorted. At least one patient is held out and one kept;
    fewer than two patients is an error (no held-out loss is possible).
    """
    ids = sorted(train_ids)
    if len(ids) < 2:
        raise CardioclrError(f"need at least 2 training patients to hold out a validation "
                             f"patient for early stopping; found {len(ids)}")
    n_val = min(len(ids) - 1, max(1, int(round(fraction * len(ids)))))
    order = np.random.default_rng(seed).permutation(len(ids))
    val = sorted(ids[i] for i in order[:n_val])
    held = set(val)
    return [p for p in ids if p not in held], val


# --------------------------------------------------------------------------------------------
# Loading slices
# --------------------------------------------------------------------------------------------


def _labels(work: Path, pid: str, mask_source: str, store: SliceStore) -> tuple[np.ndarray, np.ndarray]:
    """ED/ES labels (z, S, S); ``auto`` = predicted if present, else expert, else a clear error."""
    if mask_source != "auto":
        return load_labels(work, pid, mask_source)
    if predicted_mask_path(work, pid).is_file():
        return load_labels(work, pid, "predicted")
    ps = store.load(pid)
    if ps.ed_mask is None or ps.es_mask is None:
        raise CardioclrError(
            f"{work}: patient {pid} has neither a predicted nor an expert heart mask, which the "
            f"segmented/roi input modes need; run `cardioclr segment predict {work}` first")
    return ps.ed_mask, ps.es_mask


def load_patient(store: SliceStore, pid: str, mode: str, image_size: int, mask_source: str,
                 use_cine: bool = True, mask_margin_mm: float = 0.0, roi_margin_mm: float = 10.0,
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    """All slices of one patient at the network input size.

    Returns ``(images, hearts)``: images float16 (n, S', S') with S' = ``image_size``, ordered
    ED slices, ES slices, then cine frames (those identical to ED/ES dropped); hearts uint8
    (n, S', S') in ``segmented`` mode, (n, 3, S', S') LV/MYO/RV masks in ``anatomy`` mode (ED
    and ES slices only), else None. ``mask_margin_mm`` dilates the heart mask in
    segmented mode; ``roi_margin_mm`` is the margin around the heart box in roi mode.
    """
    images, hearts, _ = load_patient_slices(store, pid, mode, image_size, mask_source, use_cine,
                                            mask_margin_mm, roi_margin_mm)
    return images, hearts


def load_patient_slices(store: SliceStore, pid: str, mode: str, image_size: int, mask_source: str,
                        use_cine: bool = True, mask_margin_mm: float = 0.0,
                        roi_margin_mm: float = 10.0, patient_code: int = 0,
                        ) -> tuple[np.ndarray, np.ndarray | None, SliceMeta]:
    """:func:`load_patient` plus each slice's :class:`SliceMeta` (patient = ``patient_code``)."""
    check_mode(mode)
    ps = store.load(pid, with_cine=use_cine and mode != "anatomy")
    frames = [ps.ed_image, ps.es_image]
    codes = [ED_FRAME, ES_FRAME]
    if ps.cine is not None:
        # Prepared ED/ES frames usually are cine frames too: skip exact duplicates so they are
        # not weighted twice (cine is stored as float16 of the same resampled array).
        ed16, es16 = ps.ed_image.astype(np.float16), ps.es_image.astype(np.float16)
        for t, f in enumerate(ps.cine):
            if not (np.array_equal(f, ed16) or np.array_equal(f, es16)):
                frames.append(f.astype(np.float32))
                codes.append(FIRST_CINE + t)
    meta = SliceMeta.concat([frame_meta(patient_code, c, len(f)) for c, f in zip(codes, frames,
                                                                                 strict=True)])
    if mode == "full":
        imgs = [patient_views(f, np.zeros(f.shape, bool), mode, image_size)[0] for f in frames]
        return np.concatenate(imgs).astype(np.float16), None, meta

    ed_lab, es_lab = _labels(store.work, pid, mask_source, store)
    margin = mask_margin_mm if mode == "segmented" else 0.0
    ed_h = heart_mask(ed_lab, margin, store.spacing_mm)
    es_h = heart_mask(es_lab, margin, store.spacing_mm)
    if ed_h.shape != ps.ed_image.shape or es_h.shape != ps.es_image.shape:
        raise CardioclrError(f"{store.work}: masks of patient {pid} have shape {ed_h.shape}, "
                             f"images {ps.ed_image.shape}; re-run the segmentation")
    union = ed_h | es_h  # the mask of cine frames (see module docstring)
    hearts_in = [ed_h, es_h] + [union] * (len(frames) - 2)
    box = None
    if crops_to_heart(mode):
        margin_px = int(round(roi_margin_mm / store.spacing_mm))
        box = roi_box(np.stack([ed_h, es_h]), margin_px, store.image_size)
    imgs, hearts = [], []
    for f, h in zip(frames, hearts_in, strict=True):
        img, hrt = patient_views(f, h, mode, image_size, box)
        imgs.append(img)
        hearts.append(hrt)
    images = np.concatenate(imgs).astype(np.float16)
    if mode == "roi":
        return images, None, meta
    if mode == "anatomy":
        assert box is not None  # crops_to_heart above
        masks = structure_masks(np.concatenate([ed_lab, es_lab]))
        structures = np.stack([crop_resize(masks[:, j].astype(np.float32), box, image_size, is_mask=True)
                               for j in range(masks.shape[1])], axis=1)
        return images, (structures > 0.5).astype(np.uint8), meta
    heart_arr = np.concatenate(hearts).astype(np.uint8)
    keep = np.asarray(heart_arr.reshape(len(heart_arr), -1).any(axis=1))
    return images[keep], heart_arr[keep], meta.select(keep)


def load_arrays(sources: Sequence[Source], refs: Sequence[PatientRef], mode: str, image_size: int,
                use_cine: bool = True, mask_margin_mm: float = 0.0, roi_margin_mm: float = 10.0,
                ) -> SSLArrays:
    """Load the slices of ``refs`` (patients of ``sources``) into one :class:`SSLArrays`."""
    start = time.perf_counter()
    by_name = {s.name: s for s in sources}
    stores = {s.name: SliceStore(s.work) for s in sources}
    images: list[np.ndarray] = []
    hearts: list[np.ndarray] = []
    metas: list[SliceMeta] = []
    per_source: dict[str, int] = {}
    for code, ref in enumerate(refs):
        src = by_name[ref.source]
        img, hrt, meta = load_patient_slices(stores[ref.source], ref.patient_id, mode, image_size,
                                             src.mask_source, use_cine, mask_margin_mm,
                                             roi_margin_mm, patient_code=code)
        images.append(img)
        metas.append(meta)
        if hrt is not None:
            hearts.append(hrt)
        per_source[ref.source] = per_source.get(ref.source, 0) + len(img)
    empty = np.zeros((0, image_size, image_size), np.float16)
    out = SSLArrays(
        images=np.concatenate(images) if images else empty,
        hearts=_stack_hearts(hearts, mode, image_size),
        patients=list(refs),
        per_source=per_source,
        meta=SliceMeta.concat(metas),
    )
    log.info("loaded %d slices of %d patients (%s mode, %d px) in %.1f s", len(out), len(refs), mode,
             image_size, time.perf_counter() - start)
    return out


def _stack_hearts(hearts: list[np.ndarray], mode: str, image_size: int) -> np.ndarray | None:
    """The loaded masks as one array ((N, S, S) segmented, (N, 3, S, S) anatomy), or None."""
    if mode not in ("segmented", "anatomy"):
        return None
    if hearts:
        return np.concatenate(hearts)
    shape = (0, image_size, image_size) if mode == "segmented" else (0, 3, image_size, image_size)
    return np.zeros(shape, np.uint8)


# --------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------


class SliceDataset(Dataset[dict[str, torch.Tensor]]):
    """2D slices served from memory: item ``{"image": (S, S) float16, "heart": (S, S) uint8}``.

    ``heart`` is present only when hearts were loaded (``segmented`` mode). Batches are built
    by :meth:`__getitems__` with one tensor index per key — no per-item Python work — and
    passed through by :func:`collate_slices`. Both views of SimCLR are made from the same
    slice on the device (:func:`cardioclr.data.augment.two_views`), so each slice is
    transferred once.

    ``with_index``: items also carry ``"index"`` (int64, the slice's row), from which
    anatomy-aware pretraining draws each slice's positive partner
    (:mod:`cardioclr.ssl.positives`).
    """

    def __init__(self, images: np.ndarray, hearts: np.ndarray | None = None,
                 with_index: bool = False) -> None:
        # (N, S, S) heart masks, or (N, 3, S, S) structure masks in anatomy mode.
        if hearts is not None and (len(hearts) != len(images) or hearts.shape[-2:] != images.shape[-2:]):
            raise ValueError(f"hearts {hearts.shape} and images {images.shape} differ in shape")
        self.images = torch.from_numpy(np.ascontiguousarray(images))
        self.hearts = None if hearts is None else torch.from_numpy(np.ascontiguousarray(hearts))
        self.with_index = with_index

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = {"image": self.images[i]}
        if self.hearts is not None:
            item["heart"] = self.hearts[i]
        if self.with_index:
            item["index"] = torch.tensor(i, dtype=torch.long)
        return item

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        """A whole batch at once: ``{"image": (B, S, S), "heart": (B, S, S)}``."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        batch = {"image": self.images[idx]}
        if self.hearts is not None:
            batch["heart"] = self.hearts[idx]
        if self.with_index:
            batch["index"] = idx
        return batch


def collate_slices(batch: dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]
                   ) -> dict[str, torch.Tensor]:
    """Collate for :class:`SliceDataset`: a batch from ``__getitems__`` passes through as is."""
    if isinstance(batch, dict):
        return batch
    collated: dict[str, torch.Tensor] = default_collate(batch)
    return collated


# --------------------------------------------------------------------------------------------
# Extra datasets
# --------------------------------------------------------------------------------------------


def resolve_extras(datas: Sequence[str | os.PathLike[str]], out: Path, main: SliceStore,
                   workers: int = 2, rank: int = 0, wait_seconds: float = 3600.0) -> list[Source]:
    """``--extra`` datasets as :class:`Source` objects named ``extra:<folder name>``.

    Each is either a prepared WORK dir (used in place) or a raw dataset folder, prepared
    (``unlabelled=True``, on the main store's grid) into ``OUT/extra/<name>`` once. With several
    processes (``rank`` > 0) only rank 0 prepares; the others wait for its ``dataset.json``.
    Refuses the main work directory itself, the raw data it was prepared from (or a folder
    containing or inside it), and a work directory prepared from that same raw data (its own
    split may put main test patients in its train part): test patients would leak into
    pretraining.
    """
    sources: list[Source] = []
    used: set[str] = set()
    for data in datas:
        path = Path(data).resolve()
        if not path.exists():
            raise CardioclrError(f"--extra {data}: no such file or folder")
        if path == main.work.resolve():
            raise CardioclrError(f"--extra {data} is the main work directory; its train patients "
                                 "are used already and its test patients must not be")
        main_source = _source_of(main)
        if main_source is not None and _overlaps(path, main_source):
            raise CardioclrError(f"--extra {data} is (or contains, or lies inside) the dataset "
                                 f"{main.work} was prepared from; its test patients must not be "
                                 "used for pretraining")
        # Two extras with the same folder name get -2, -3 (names key counts and OUT/extra/).
        name, k = path.name, 2
        while name in used:
            name, k = f"{path.name}-{k}", k + 1
        used.add(name)
        prepared_here = not (path / "dataset.json").is_file()
        if not prepared_here:
            work = path
        else:
            work = out / "extra" / name
            if not (work / "dataset.json").is_file():
                if rank == 0:
                    log.info("preparing extra dataset %s into %s", path, work)
                    prepare(PrepareConfig(data=str(path), out=str(work), spacing_mm=main.spacing_mm,
                                          image_size=main.image_size, unlabelled=True,
                                          workers=max(1, workers)))
                else:
                    _wait_for(work / "dataset.json", wait_seconds)
        store = SliceStore(work)
        extra_source = _source_of(store)
        if (not prepared_here and main_source is not None and extra_source is not None
                and _overlaps(extra_source, main_source)):
            # Another preparation of the same raw data has its own split: its train patients
            # may be main test patients.
            raise CardioclrError(f"--extra {data} was prepared from {extra_source}, the data of "
                                 f"{main.work} ({main_source}); its patients may be main test "
                                 "patients and must not be used for pretraining")
        if abs(store.spacing_mm - main.spacing_mm) > 1e-6:
            log.warning("extra dataset %s has %.2f mm pixels, the main store %.2f mm: anatomy "
                        "appears at a different scale", work, store.spacing_mm, main.spacing_mm)
        sources.append(Source(name=f"extra:{name}", work=work, mask_source="auto",
                              all_patients=prepared_here))
    return sources


def _source_of(store: SliceStore) -> Path | None:
    """The resolved raw-data folder a work directory was prepared from (None when unrecorded)."""
    source = str(store.info.get("source") or "")
    return Path(source).resolve() if source else None


def _overlaps(a: Path, b: Path) -> bool:
    """True when resolved paths ``a`` and ``b`` are equal or one lies inside the other."""
    return a == b or a.is_relative_to(b) or b.is_relative_to(a)


def _wait_for(path: Path, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not path.is_file():
        if time.monotonic() > deadline:
            raise CardioclrError(f"timed out waiting for rank 0 to write {path}")
        time.sleep(2.0)
