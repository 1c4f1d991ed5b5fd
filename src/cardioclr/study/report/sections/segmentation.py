"""Segmentation quality: Dice / HD95 per structure and phase, clinical-index agreement, QC."""

from __future__ import annotations

from collections import Counter

import pandas as pd

from cardioclr.artifacts import number
from cardioclr.layout import WorkLayout
from cardioclr.segment.summary import segmentation_notes
from cardioclr.study.html import Block, Gallery, Para, Table, TCell
from cardioclr.study.report.collect import StudyData, read_json_or_none
from cardioclr.study.report.format import cell_str, fmt

STRUCTURE_ORDER = ("LV", "MYO", "RV")


def segmentation_section(data: StudyData) -> list[Block]:
    """Dice / HD95 per structure and phase, clinical-index agreement, QC flags."""
    seg = data.segmentation
    work = WorkLayout(data.work)
    if not seg:
        return [Para("No segmentation metrics (work/segmentation/metrics.json) were found.")]
    blocks: list[Block] = []
    dice, hd = seg.get("dice") or {}, seg.get("hd95") or {}
    structures = sorted({s for ph in dice.values() if isinstance(ph, dict) for s in ph},
                        key=lambda s: STRUCTURE_ORDER.index(s) if s in STRUCTURE_ORDER else 9)
    if structures:
        rows = []
        for ph in dice:
            rows.append([TCell(ph), *[TCell(fmt(number(dice[ph].get(s)))) for s in structures],
                         *[TCell(fmt(number((hd.get(ph) or {}).get(s)), 1)) for s in structures]])
        grid = seg.get("grid")
        blocks.append(Table(
            f"Segmentation on the test split ({seg.get('n_test', '?')} patients): Dice and HD95 "
            f"(mm); mean Dice {fmt(number(seg.get('mean_dice')))}, mean HD95 "
            f"{fmt(number(seg.get('mean_hd95')), 1)} mm",
            ["Phase", *[f"Dice {s}" for s in structures], *[f"HD95 {s} (mm)" for s in structures]],
            rows, [f"Computed on the {grid}." if grid else ""]))
    # How the masks were made, how good they are and what they were used for.
    blocks += [Para(n) for n in segmentation_notes(seg, data.cfg.mask_source if data.cfg else "predicted")]
    agree = seg.get("indices_agreement") or {}
    if agree:
        rows = []
        for k, a in agree.items():
            if not isinstance(a, dict):
                continue
            rows.append([TCell(k), TCell(str(a.get("n", ""))), TCell(fmt(number(a.get("pearson_r")))),
                         TCell(f"{fmt(number(a.get('bias')), 2)} ± {fmt(number(a.get('sd')), 2)}")])
        blocks.append(Table("Clinical indices from predicted vs expert masks (test patients)",
                            ["Index", "n", "Pearson r", "Bias ± SD (predicted − expert)"], rows))
    if work.qc_flags.is_file():
        try:
            flags = pd.read_csv(work.qc_flags, dtype={"patient_id": str})
        except (OSError, ValueError, pd.errors.EmptyDataError):
            flags = pd.DataFrame(columns=["patient_id"])
        flagged = flagged_rows(flags)
        ids = sorted(set(flagged["patient_id"])) if "patient_id" in flagged.columns else []
        summary = read_json_or_none(work.predict_summary, data.warnings) or {}
        total = summary.get("patients") or data.dataset.get("patients") or "?"
        kinds = Counter(flagged["flag"]) if "flag" in flagged.columns else Counter()
        blocks.append(Para(f"**QC flags:** {len(ids)} of {total} segmented patients flagged, "
                           f"{len(flagged)} flags" + (" (" + ", ".join(f"{k}: {v}" for k, v in
                                                                     kinds.most_common()) + ")"
                                                      if kinds else "") + " — qc_flags.csv."))
        if len(flagged):
            cols = list(flagged.columns)[:6]
            rows = [[TCell(cell_str(v)) for v in r] for r in flagged[cols].head(20).itertuples(index=False)]
            more = ([f"{len(flagged) - 20} more flags in work/segmentation/qc_flags.csv"]
                    if len(flagged) > 20 else [])
            blocks.append(Table("QC flags (first 20)", cols, rows, more))
        qc_dir = work.qc_images
        qc_imgs = sorted(qc_dir.glob("*.png")) if qc_dir.is_dir() else []
        if qc_imgs:
            flagged_set = set(ids)
            pick = ([p for p in qc_imgs if p.stem in flagged_set][:2]
                    + [p for p in qc_imgs if p.stem not in flagged_set][:2]) or qc_imgs[:4]
            blocks.append(Gallery("Segmentation QC images (predicted contours solid, expert dashed)", [
                (f"qc_{p.stem}.png", p.read_bytes(), p.stem + (" (flagged)" if p.stem in flagged_set else ""))
                for p in pick]))
    else:
        blocks.append(Para("No QC flags file (work/segmentation/qc_flags.csv) was found."))
    return blocks


def flagged_rows(flags: pd.DataFrame) -> pd.DataFrame:
    """Rows of qc_flags.csv that carry a flag: one row per flag (``patient_id, phase, flag,
    detail``); a boolean ``flagged`` column is honoured too."""
    if flags.empty:
        return flags
    if "flagged" in flags.columns:
        return flags[flags["flagged"].astype(str).str.lower().isin(("true", "1", "yes"))]
    for col in ("flag", "flags", "reason"):
        if col in flags.columns:
            return flags[flags[col].fillna("").astype(str).str.strip() != ""]
    return flags
