"""The dataset: source, patients per class and split, skipped patients."""

from __future__ import annotations

from collections import Counter

import pandas as pd

from cardioclr.atomic import read_json
from cardioclr.layout import WorkLayout
from cardioclr.study.html import Block, Para, Table, TCell
from cardioclr.study.report.collect import StudyData
from cardioclr.study.report.format import cell_str


def dataset_section(data: StudyData) -> list[Block]:
    """Patients, classes, split sizes and skipped patients."""
    ds = data.dataset
    if not ds:
        return [Para("No prepared dataset (work/dataset.json) was found.")]
    blocks: list[Block] = []
    synthetic = data.is_synthetic
    source = "built-in synthetic cohort (phantoms in the ACDC layout)" if synthetic else str(ds.get("source"))
    blocks.append(Para(f"**Source:** {source}. **Patients:** {ds.get('patients')} prepared, "
                       f"{ds.get('skipped', 0)} skipped. **Store grid:** {ds.get('image_size')} px at "
                       f"{ds.get('spacing_mm')} mm. **Split:** train {ds.get('train')}, test "
                       f"{ds.get('test')}."))
    work = WorkLayout(data.work)
    manifest_p, splits_p = work.manifest, work.splits
    if manifest_p.is_file() and splits_p.is_file():
        try:
            man = pd.read_csv(manifest_p, dtype={"patient_id": str, "label": str})
            splits = read_json(splits_p)
            label = dict(zip(man["patient_id"], man["label"].fillna(""), strict=True))
            counts = {s: Counter(label.get(p, "") for p in splits.get(s, [])) for s in ("train", "test")}
            classes = data.classes or sorted({c for cnt in counts.values() for c in cnt if c})
            rows = [[TCell(c), TCell(str(counts["train"][c])), TCell(str(counts["test"][c])),
                     TCell(str(counts["train"][c] + counts["test"][c]))] for c in classes]
            # "**total**": bold text; TCell(bold=True) means "best of the row" (highlighted).
            rows.append([TCell("**total**"), TCell(str(sum(counts["train"].values()))),
                         TCell(str(sum(counts["test"].values()))),
                         TCell(str(sum(counts["train"].values()) + sum(counts["test"].values())))])
            folds = splits.get("folds") or []
            blocks.append(Table("Patients per class and split", ["Class", "Train", "Test", "All"], rows,
                                [f"Split: {splits.get('method')} (seed {splits.get('seed')}), by patient; "
                                 f"{len(folds)} cross-validation folds within train."]))
        except (OSError, ValueError, KeyError) as err:
            data.warnings.append(f"dataset summary: {err}")
    skipped_p = work.skipped
    if skipped_p.is_file():
        try:
            sk = pd.read_csv(skipped_p, dtype=str)
        except (OSError, ValueError, pd.errors.EmptyDataError):
            sk = pd.DataFrame()
        if len(sk):
            rows = [[TCell(cell_str(v)) for v in r] for r in sk.head(30).itertuples(index=False)]
            blocks.append(Table(f"Skipped patients ({len(sk)})", list(sk.columns), rows))
        else:
            blocks.append(Para("No patient was skipped."))
    return blocks

