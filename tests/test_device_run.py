"""scripts/device_run.sh --dry-run end to end on a tiny pack (the GPU slot's command, on a CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cardioclr.data.packing import pack

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_dry_run_writes_the_slot_outputs_and_a_json_last_line(tiny_work: Path, tmp_path: Path):
    packed = tmp_path / "tiny.pack"
    pack(tiny_work, packed)
    config = tmp_path / "dry.yaml"
    # The repository's dry-run settings, on the tiny pack's grid (64 px at 3 mm).
    config.write_text((REPO / "configs" / "paper_fast_dry.yaml").read_text()
                      + "prepare: {image_size: 64, spacing_mm: 3.0}\n")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "PACK": str(packed), "OUT": str(out),
           "STUDY_DIR": str(tmp_path / "study"), "DRY_CONFIG": str(config),
           "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "device_run.sh"), "--dry-run"],
                          capture_output=True, text=True, env=env, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:] + (out / "device_run.log").read_text()[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["packed_bytes"] == packed.stat().st_size and summary["ok"]
    assert {"install", "verify-pack", "pretrain-throughput", "finetune-throughput",
            "study"} <= set(summary["stages"])
    assert summary["cells"].get("failed", 0) == 0 and summary["cells"]["done"] > 10
    for name in ("report.md", "results.csv", "pretrain_throughput.json",
                 "finetune_throughput.json", "logs.tar.gz", "summary.json", "device_run.log"):
        assert (out / name).is_file(), name
    assert len(list(out.iterdir())) <= 8  # what the device tool brings back
    assert "Deviations of preset paper-fast" in (out / "report.md").read_text()
    assert "pipeline_efficiency" in json.loads((out / "pretrain_throughput.json").read_text())
