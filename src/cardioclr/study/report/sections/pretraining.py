"""SimCLR pretraining runs: the scalar numbers of each run's metrics.json."""

from __future__ import annotations

from cardioclr.artifacts import number
from cardioclr.study.html import Block, Para, Table, TCell
from cardioclr.study.report.collect import StudyData
from cardioclr.study.report.format import cell_str


def pretraining_section(data: StudyData) -> list[Block]:
    """One row per SimCLR pretraining: the scalar numbers its metrics.json reports."""
    if not data.pretrain:
        return [Para("No SimCLR pretraining metrics were found.")]
    keys: list[str] = []
    for _, m in data.pretrain:
        keys += [k for k, v in m.items() if k not in keys and number(v) is not None
                 and not isinstance(v, bool)]
    keys = keys[:8]
    rows = [[TCell(name), *[TCell(cell_str(m.get(k))) for k in keys]] for name, m in data.pretrain]
    return [Table("SimCLR pretraining runs", ["Encoder-input", *keys], rows)]
