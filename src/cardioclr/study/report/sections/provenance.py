"""Provenance: code revision(s), versions, hardware, durations per stage, the configuration."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from cardioclr.atomic import read_json
from cardioclr.layout import WORK_DIR
from cardioclr.study.html import Block, Code, Para, Table, TCell
from cardioclr.study.progress import format_seconds
from cardioclr.study.report.collect import StudyData


def cell_revisions(out: Path) -> dict[str, list[str]]:
    """Git revision -> stage directories (relative to ``out``) whose ``versions.json`` has it."""
    found: dict[str, list[str]] = {}
    # The cells' own directories only: a recursive glob would walk the whole slice store.
    patterns = ("finetune/*/versions.json", "baseline/*/versions.json",
                f"{WORK_DIR}/*/versions.json", f"{WORK_DIR}/segmentation/*/versions.json",
                f"{WORK_DIR}/pretrain/*/versions.json")
    for p in sorted({q for pattern in patterns for q in out.glob(pattern)}):
        rel = p.parent.relative_to(out)
        try:
            rev = str(read_json(p).get("git_revision") or "unknown")
        except (OSError, ValueError, AttributeError):
            continue
        found.setdefault(rev, []).append(rel.as_posix())
    return found


def provenance_section(data: StudyData) -> list[Block]:
    """Git revision, versions, hardware, durations per stage and the saved configuration."""
    env = data.environment
    blocks: list[Block] = []
    if env:
        pk = env.get("packages") or {}
        blocks.append(Para(
            f"**cardioclr** {env.get('cardioclr')} at git revision `{env.get('git_revision')}`; "
            f"Python {env.get('python')}; " + ", ".join(f"{k} {v}" for k, v in pk.items() if v)
            + f". **Hardware:** {env.get('platform')}, {env.get('cpu_count')} CPU cores, GPUs: "
            + (", ".join(env.get("cuda_devices") or []) or "none")
            # study_environment.json is rewritten by every (re-)run; the state keeps the first.
            + f". **Study started:** {(data.state or {}).get('started') or env.get('time_utc')}; "
            f"**last run started:** {env.get('time_utc')}. **Command:** `{env.get('command')}`."))
    revisions = cell_revisions(data.out)
    if len(revisions) > 1:
        blocks.append(Table(
            "The cells ran at different code revisions (the checkout changed while the study "
            "ran or between its runs); results may not be comparable", ["Git revision", "Cells"],
            [[TCell(f"`{rev}`"), TCell(", ".join(dirs))] for rev, dirs in revisions.items()],
            css="warn"))
    cells = (data.state or {}).get("cells") or {}
    if cells:
        by_kind: dict[str, list[float]] = {}
        status = Counter(r.get("status") for r in cells.values())
        for r in cells.values():
            if r.get("seconds"):
                by_kind.setdefault(r.get("kind", "?"), []).append(float(r["seconds"]))
        rows = [[TCell(k), TCell(str(len(v))), TCell(format_seconds(sum(v))),
                 TCell(format_seconds(sum(v) / len(v)))] for k, v in by_kind.items()]
        total = sum(sum(v) for v in by_kind.values())
        rows.append([TCell("**total**"), TCell(str(sum(len(v) for v in by_kind.values()))),
                     TCell(f"**{format_seconds(total)}**"), TCell("")])
        blocks.append(Table("Durations per stage (all runs of this study)",
                            ["Stage", "Cells", "Total", "Per cell"], rows,
                            ["Cell status: " + ", ".join(f"{k} {v}" for k, v in status.items())]))
        failed = [(k, r) for k, r in cells.items() if r.get("status") == "failed"]
        if failed:
            blocks.append(Table("Failed cells", ["Cell", "Error"],
                                [[TCell(k), TCell(str(r.get("error") or ""))] for k, r in failed]))
    if data.layout.config.is_file():
        blocks.append(Para("**Configuration** (OUT/study.yaml; every cell also keeps its own "
                           "config.yaml and versions.json):"))
        blocks.append(Code(data.layout.config.read_text(encoding="utf-8"), "show study.yaml"))
    return blocks

