"""One phantom patient end to end (labels checked against its group's criteria, images,
NIfTI files in the ACDC layout) and the cohort writer :func:`write_synthetic_cohort`.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np

from cardioclr.atomic import atomic_dir
from cardioclr.clinical.criteria import diagnose
from cardioclr.clinical.labels import DIAGNOSES
from cardioclr.data.synthetic.anatomy import (
    PatientSpec,
    boundary_radii,
)
from cardioclr.data.synthetic.measure import (
    phantom_indices,
)
from cardioclr.data.synthetic.raster import (
    PixelBox,
    labels_in_box,
    make_box,
    phase_labels,
)
from cardioclr.data.synthetic.render import (
    acquire,
    fat_table,
    paint_background,
    paint_heart,
    sample_scanner,
    sample_tissue,
)
from cardioclr.data.synthetic.sampling import (
    heart_extent,
    sample_patient,
)
from cardioclr.errors import DataError

README_MARKER = "cardioclr synthetic cohort"
GENERATOR_VERSION = "1"


def _phase(t: int, es_index: int, n_frames: int) -> float:
    """Contraction phase (0 ED .. 1 ES) of 0-based cine frame ``t``: systole then filling."""
    if t <= es_index:
        return 0.5 * (1.0 - math.cos(math.pi * t / max(es_index, 1)))
    fill = (t - es_index) / max(0.6 * (n_frames - es_index), 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * min(fill, 1.0)))


def _affine(shape: Sequence[int], spacing: Sequence[float]) -> np.ndarray:
    """Voxel -> mm affine, ACDC axis signs (-x, -y, +z), centred on the volume."""
    aff = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    aff[:3, 3] = -aff[:3, :3] @ ((np.asarray(shape[:3], float) - 1.0) / 2.0)
    return aff


def _save(path: Path, arr: np.ndarray, spacing: Sequence[float],
          frame_ms: float | None = None) -> None:
    img = nib.Nifti1Image(arr, _affine(arr.shape, spacing))
    img.header.set_data_dtype(arr.dtype)
    if frame_ms is not None:
        img.header.set_zooms(tuple(spacing[:3]) + (frame_ms,))
        img.header.set_xyzt_units("mm", "msec")
    else:
        img.header.set_xyzt_units("mm")
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    nib.save(img, path)


def _rasterize_checked(spec: PatientSpec
                       ) -> tuple[np.ndarray, np.ndarray, PixelBox, dict[str, float]] | None:
    """(ED labels, ES labels, heart box, indices), or None when the masks miss the group's criteria."""
    box = make_box(spec, heart_extent(spec.heart) + 6.0)
    ed_lab = phase_labels(spec, box, 0.0)
    es_lab = phase_labels(spec, box, 1.0)
    for lab in (ed_lab, es_lab):
        # labels live only in the box; every structure must be present at both phases
        if np.count_nonzero(np.bincount(lab[box.sl].ravel(), minlength=4)[1:]) != 3:
            return None
    ind = phantom_indices(ed_lab, es_lab, spec.spacing, spec.height_cm, spec.weight_kg)
    if diagnose(ind) != spec.group:
        return None
    return ed_lab, es_lab, box, ind


def generate_patient(seed: int, number: int, group: str, subset: str = "training",
                     matrix: int | None = None, cine: bool = False) -> dict[str, object]:
    """Draw and render one phantom patient; deterministic in (seed, number, group, matrix).

    Returns a dict with ``spec`` (:class:`PatientSpec`), ``ed``/``es`` images (x, y, z),
    ``ed_gt``/``es_gt`` uint8 labels, ``indices`` (:func:`phantom_indices` of the labels),
    ``attempts`` (draws needed until the masks met the group's criteria) and, with ``cine``,
    ``cine`` (x, y, z, t) holding every frame, the ED and ES ones equal to ``ed``/``es``.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, number, DIAGNOSES.index(group)]))
    pid = f"patient{number:03d}"
    attempts, out = 0, None
    while out is None:
        if attempts == 50:  # the ranges in _sample_targets are meant to make this unreachable
            raise RuntimeError(f"{pid}: no {group} phantom met its criteria in 50 tries")
        attempts += 1
        spec = sample_patient(rng, pid, subset, group, matrix)
        out = _rasterize_checked(spec)
    ed_lab, es_lab, box, indices = out
    # Everything below uses its own generators so that the cine flag (which draws more noise)
    # cannot change the ED/ES volumes.
    anat_rng, ed_rng, es_rng, cine_rng = rng.spawn(4)
    tis = sample_tissue(anat_rng)
    bg = paint_background(anat_rng, spec, tis)
    fat = fat_table(anat_rng, spec.heart)
    sc = sample_scanner(anat_rng, spec)

    def frame(alpha: float, lab_full: np.ndarray | None, frng: np.random.Generator
              ) -> np.ndarray:
        lab_box = (labels_in_box(box, boundary_radii(spec.heart, alpha)) if lab_full is None
                   else lab_full[box.sl])
        clean = bg.copy()
        paint_heart(clean, spec, box, alpha, lab_box, tis, fat)
        return acquire(clean, sc, spec.dtype, frng)

    ed_img = frame(0.0, ed_lab, ed_rng)
    es_img = frame(1.0, es_lab, es_rng)
    result: dict[str, object] = {
        "spec": spec, "ed": ed_img, "ed_gt": ed_lab, "es": es_img, "es_gt": es_lab,
        "indices": indices, "attempts": attempts}
    if cine:
        es_index = spec.es_frame - 1
        frames = []
        for t in range(spec.n_frames):
            if t == 0:
                frames.append(ed_img)
            elif t == es_index:
                frames.append(es_img)
            else:
                frames.append(frame(_phase(t, es_index, spec.n_frames), None, cine_rng))
        result["cine"] = np.stack(frames, axis=-1)
    return result


def _write_patient(root: Path, res: dict[str, object]) -> None:
    spec: PatientSpec = res["spec"]  # type: ignore[assignment]
    d = root / spec.subset / spec.pid
    d.mkdir(parents=True)
    (d / "Info.cfg").write_text(
        f"ED: 1\nES: {spec.es_frame}\nGroup: {spec.group}\nHeight: {spec.height_cm:.1f}\n"
        f"NbFrame: {spec.n_frames}\nWeight: {spec.weight_kg:.1f}\n", encoding="utf-8")
    for frame, key in ((1, "ed"), (spec.es_frame, "es")):
        _save(d / f"{spec.pid}_frame{frame:02d}.nii.gz", res[key], spec.spacing)  # type: ignore[arg-type]
        _save(d / f"{spec.pid}_frame{frame:02d}_gt.nii.gz", res[f"{key}_gt"], spec.spacing)  # type: ignore[arg-type]
    if "cine" in res:
        # ~1 s cardiac cycle spread over the frames
        _save(d / f"{spec.pid}_4d.nii.gz", res["cine"], spec.spacing,  # type: ignore[arg-type]
              frame_ms=round(1000.0 / spec.n_frames, 3))


def assign_cohort(n_patients: int, seed: int, test_fraction: float
                  ) -> list[tuple[int, str, str]]:
    """(patient number, subset, group) for every patient, classes balanced in each subset.

    Groups cycle over :data:`DIAGNOSES` (counts differ by at most one); ``round(n * fraction)``
    patients go to ``testing`` spread over the groups as evenly as possible. Training patients
    are numbered first (1..n_train), testing after, like ACDC (001-100 / 101-150); the group
    order inside each subset is shuffled so a number does not reveal its group.
    """
    if n_patients < 1:
        raise ValueError("n_patients must be at least 1")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError("test_fraction must be in [0, 1)")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5E7]))
    groups = list(rng.permutation(DIAGNOSES))
    counts = {g: n_patients // 5 + (i < n_patients % 5) for i, g in enumerate(groups)}
    n_test = int(round(n_patients * test_fraction))
    # Testing patients go to the groups with the most patients first, round-robin.
    order = sorted(groups, key=lambda g: -counts[g])
    test = dict.fromkeys(groups, 0)
    for i in range(n_test):
        test[order[i % 5]] += 1
    train_list = [g for g in groups for _ in range(counts[g] - test[g])]
    test_list = [g for g in groups for _ in range(test[g])]
    train_list = [str(g) for g in rng.permutation(train_list)] if train_list else []
    test_list = [str(g) for g in rng.permutation(test_list)] if test_list else []
    out = [(i + 1, "training", g) for i, g in enumerate(train_list)]
    out += [(len(train_list) + i + 1, "testing", g) for i, g in enumerate(test_list)]
    return out


_CSV_FIELDS = ("patient", "subset", "group", "height_cm", "weight_kg", "bsa", "lv_edv",
               "lv_esv", "lv_ef", "rv_edv", "rv_esv", "rv_ef", "lv_mass", "lv_edv_index",
               "rv_edv_index", "lv_mass_index", "max_wall_mm", "thin_ratio", "thin_thickening")


def _readme(n: int, seed: int, test_fraction: float, cine: bool, matrix: int | None,
            rows: list[dict[str, object]]) -> str:
    lines = [
        f"{README_MARKER} (generator version {GENERATOR_VERSION})",
        "",
        "SYNTHETIC DATA - NOT PATIENT DATA. Every image and mask here is a computer-generated",
        "phantom of a short-axis cine SSFP cardiac MRI study; no real person was scanned.",
        "",
        f"Written by `cardioclr synth` with --patients {n} --seed {seed} "
        f"--test-fraction {test_fraction}" + (" --cine" if cine else "")
        + (f" --size {matrix}" if matrix else "") + ".",
        "The same arguments reproduce byte-identical files.",
        "",
        "Layout (as the ACDC challenge, Bernard et al., IEEE TMI 2018):",
        "  training/patientNNN/, testing/patientNNN/ (numbered after training)",
        "  Info.cfg: ED, ES, Group (NOR, DCM, HCM, MINF, RV), Height (cm), NbFrame, Weight (kg)",
        "  patientNNN_frameMM.nii.gz     image at frame MM (ED and ES), (x, y, z), base at z = 0",
        "  patientNNN_frameMM_gt.nii.gz  labels uint8: 0 background, 1 RV cavity,",
        "                                2 LV myocardium, 3 LV cavity (papillary muscles included)",
        "  patientNNN_4d.nii.gz          (with --cine) every frame, (x, y, z, t)",
        "  synthetic_cohort.csv          per patient: group and indices measured on the masks",
        "",
        "Groups follow the ACDC criteria, verified on each patient's masks (BSA: Mosteller;",
        "mass: myocardial volume x 1.05 g/mL; volumes: voxel count x voxel volume):",
        "  NOR  normal volumes, LVEF >= 50 %, max wall <= 12 mm",
        "  DCM  LV EDV > 100 mL/m2 and LVEF < 40 %",
        "  HCM  LV mass > 110 g/m2, max wall > 15 mm, LVEF > 55 %",
        "  MINF LVEF < 40 % with a thin (<= 0.6 x median) akinetic sector",
        "  RV   RV EDV > 110 mL/m2 or RVEF < 40 %",
        "",
        "Mean measured indices per group:",
        f"  {'group':6s} {'n':>3s} {'LVEF%':>6s} {'LVEDVi':>7s} {'LVMi':>6s} {'RVEDVi':>7s} "
        f"{'RVEF%':>6s} {'wall mm':>8s}",
    ]
    for g in DIAGNOSES:
        sel = [r for r in rows if r["group"] == g]
        if not sel:
            continue

        def m(key: str, sel: list[dict[str, object]] = sel) -> float:
            return float(np.mean([float(r[key]) for r in sel]))  # type: ignore[arg-type]

        lines.append(f"  {g:6s} {len(sel):3d} {m('lv_ef'):6.1f} {m('lv_edv_index'):7.1f} "
                     f"{m('lv_mass_index'):6.1f} {m('rv_edv_index'):7.1f} {m('rv_ef'):6.1f} "
                     f"{m('max_wall_mm'):8.1f}")
    return "\n".join(lines) + "\n"


def _is_replaceable(out: Path) -> bool:
    """An output folder may be replaced when absent, empty or an earlier synthetic cohort."""
    if not out.exists():
        return True
    if not out.is_dir():
        return False
    if not any(out.iterdir()):
        return True
    readme = out / "README.txt"
    try:
        return readme.read_text(encoding="utf-8").startswith(README_MARKER)
    except OSError:
        return False


def write_synthetic_cohort(out_dir: str | os.PathLike[str], n_patients: int, seed: int = 0,
                           test_fraction: float = 0.2, cine: bool = False,
                           matrix: int | None = None,
                           progress: Callable[[int, int], None] | None = None) -> list[str]:
    """Write an ACDC-layout synthetic cohort to ``out_dir``; returns the patient ids.

    ``n_patients`` phantoms, groups balanced, ``test_fraction`` of them under ``testing/``.
    ``matrix``: fixed square in-plane matrix (pixels) instead of ACDC-like varying ones (the
    pixel spacing then follows from a 300-400 mm field of view). ``cine`` adds the 4D file with
    all ``NbFrame`` frames (about 10x slower). The folder is built under a temporary name and
    renamed when complete; an existing ``out_dir`` is replaced only if it is empty or an earlier
    synthetic cohort (:class:`DataError` otherwise). Deterministic: same arguments, same bytes.
    """
    out = Path(out_dir)
    if not _is_replaceable(out):
        raise DataError(out, "exists and is not a cardioclr synthetic cohort; refusing to "
                        "replace it (choose another folder or delete it)")
    if matrix is not None and not 64 <= matrix <= 512:
        raise ValueError("matrix must be between 64 and 512 pixels")
    plan = assign_cohort(n_patients, seed, test_fraction)
    rows: list[dict[str, object]] = []
    with atomic_dir(out) as tmp:
        # gzip (zlib releases the GIL) runs in a thread while the next patient is drawn.
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending: list[Future[None]] = []
            for i, (number, subset, group) in enumerate(plan):
                res = generate_patient(seed, number, group, subset, matrix=matrix, cine=cine)
                pending.append(pool.submit(_write_patient, tmp, res))
                if len(pending) > 2:  # bound the memory held by queued patients
                    pending.pop(0).result()
                spec: PatientSpec = res["spec"]  # type: ignore[assignment]
                ind: dict[str, float] = res["indices"]  # type: ignore[assignment]
                rows.append({"patient": spec.pid, "subset": subset, "group": group,
                             "height_cm": spec.height_cm, "weight_kg": spec.weight_kg,
                             **{k: round(ind[k], 4) for k in _CSV_FIELDS[5:]}})
                if progress is not None:
                    progress(i + 1, len(plan))
            for fut in pending:
                fut.result()
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=_CSV_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        (tmp / "synthetic_cohort.csv").write_text(buf.getvalue(), encoding="utf-8")
        (tmp / "README.txt").write_text(_readme(n_patients, seed, test_fraction, cine, matrix,
                                                rows), encoding="utf-8")
    return [str(r["patient"]) for r in rows]
