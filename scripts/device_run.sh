#!/usr/bin/env bash
# The paper's ACDC grid in one short GPU slot: one command, run from the project root.
#
#   bash scripts/device_run.sh            on the GPU machine (no network): installs the carried
#                                         wheels (.whl/), verifies the carried pack
#                                         (.data/acdc224.pack), runs the throughput benchmarks
#                                         and the `paper-fast` study, and writes report.md,
#                                         results.csv, the throughput JSONs, logs.tar.gz,
#                                         summary.json and device_run.log under $OUT; 9-min guard
#   bash scripts/device_run.sh --dry-run  the same steps on a CPU with tiny settings
#                                         (configs/paper_fast_dry.yaml), <= 10 min; builds the
#                                         pack from ../shared/data/acdc when it is missing
#
# The last line of stdout is one JSON object: packed_bytes, seconds, stages {name: seconds},
# dry_run, ok, device, out, ... (docs/gpu_slot.md explains the slot and how to prepare it).
# Environment: OUT (default runs/device_out or runs/device_dry), PACK, PYTHON, BUDGET_S,
# STUDY_DIR (default runs/device_study[_dry]), DRY_CONFIG (default configs/paper_fast_dry.yaml).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
DRY=0
case "${1:-}" in
  --dry-run) DRY=1 ;;
  "") ;;
  *) echo "usage: bash scripts/device_run.sh [--dry-run]" >&2; exit 2 ;;
esac

START=$(date +%s)
if [[ $DRY == 1 ]]; then
  BUDGET=${BUDGET_S:-600}
  OUT=${OUT:-$ROOT/runs/device_dry}
  PY=${PYTHON:-$(test -x "$ROOT/.venv/bin/python" && echo "$ROOT/.venv/bin/python" || echo python3)}
else
  BUDGET=${BUDGET_S:-540}
  OUT=${OUT:-$ROOT/runs/device_out}
  PY=${PYTHON:-python3}
fi
PACK=${PACK:-$ROOT/.data/acdc224.pack}
STUDY=${STUDY_DIR:-$ROOT/runs/device_study$([[ $DRY == 1 ]] && echo _dry)}
WHEELS=$ROOT/.whl
SITE=${SITE:-/tmp/cardioclr_site}
mkdir -p "$OUT"
LOG=$OUT/device_run.log
: >"$LOG"
export PYTHONUNBUFFERED=1
declare -A STAGE_S=()
STAGES=()
FAILED=()

log() { echo "[device_run $(date -u +%H:%M:%S)] $*" | tee -a "$LOG" >&2; }
left() { echo $((BUDGET - ($(date +%s) - START))); }
# run NAME LIMIT_S CMD...: one stage, output to the log, at most LIMIT_S seconds (and what is left).
run() {
  local name=$1 limit=$2; shift 2
  local rest; rest=$(left)
  ((limit > rest)) && limit=$rest
  if ((limit < 5)); then log "$name: skipped, the time guard has ${rest} s left"; FAILED+=("$name:no-time"); return 124; fi
  log "$name: start (limit ${limit} s)"
  local t0; t0=$(date +%s)
  timeout --signal=INT --kill-after=20 "$limit" "$@" >>"$LOG" 2>&1
  local rc=$?
  STAGE_S[$name]=$(($(date +%s) - t0)); STAGES+=("$name")
  log "$name: exit $rc after ${STAGE_S[$name]} s"
  ((rc != 0)) && FAILED+=("$name:$rc")
  return $rc
}

# 1. install: the carried wheels (MONAI, nibabel, pydicom) and the project, without network.
shopt -s nullglob
WHL=("$WHEELS"/*.whl)
shopt -u nullglob
if [[ $DRY == 1 ]]; then
  if ((${#WHL[@]})); then
    # Same wheels, checked for an offline install without touching this environment.
    run install 120 "$PY" -m pip install --dry-run --no-index --no-deps --ignore-installed \
        --target "$SITE" "${WHL[@]}"
  else
    # A fresh clone (CI) carries no wheels; this CPU environment has the packages installed.
    log "install: skipped (no wheels in $WHEELS; docs/gpu_slot.md says how to fetch them)"
    STAGE_S[install]=0; STAGES+=("install")
  fi
elif ((${#WHL[@]} == 0)); then
  log "install: no wheels in $WHEELS: MONAI, nibabel and pydicom must already be installed"
  FAILED+=("install:no-wheels")
else
  run install 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --upgrade --target "$SITE" "${WHL[@]}"
  export PYTHONPATH=$SITE
fi
# The project runs from its source tree (no build step, no build backend needed offline).
export PYTHONPATH=$ROOT/src${PYTHONPATH:+:$PYTHONPATH}
run imports 60 "$PY" -c "import monai, nibabel, pydicom, torch, lightning, sklearn, pandas, cardioclr.cli; \
print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'monai', monai.__version__)"
CLI=("$PY" -m cardioclr.cli)

# 2. the carried dataset: 100 ACDC patients at 224 px / 1.5 mm (cardioclr pack).
if [[ ! -f $PACK && $DRY == 1 ]]; then
  log "no pack at $PACK: building it from ../shared/data/acdc (as the lead does before a slot)"
  if [[ ! -f $ROOT/.data/acdc224_work/dataset.json ]]; then
    run prepare-acdc 300 "${CLI[@]}" prepare "$ROOT/../shared/data/acdc" \
        --out "$ROOT/.data/acdc224_work" --size 224 --spacing 1.5 --workers 2
  fi
  run pack 300 "${CLI[@]}" pack "$ROOT/.data/acdc224_work" "$PACK"
  # Building the pack is the lead's preparation before a slot, not part of it: the guard
  # (and "seconds") start again here; the build time is reported as pack_build_seconds.
  PACK_BUILD_S=$(($(date +%s) - START))
  START=$(date +%s)
fi
PACKED_BYTES=$(stat -c %s "$PACK" 2>/dev/null || echo null)
run verify-pack 60 "${CLI[@]}" pack --verify "$PACK"

# 3. throughput: SimCLR pretraining (MFU) and fine-tuning, on the packed data.
if [[ $DRY == 1 ]]; then
  PRE_ARGS=(--device cpu --encoders smallcnn --image-size 32 --batch 16 --steps 2 --threads 2)
  FT_ARGS=(--device cpu --encoders smallcnn --image-size 32 --batch 8 --steps 2 --threads 2)
else
  PRE_ARGS=(--device cuda --encoders vgg16,densenet121 --image-size 224 --batch 128 --steps 30)
  FT_ARGS=(--device cuda --encoders vgg16,densenet121 --image-size 224 --batch 64 --steps 30)
fi
run pretrain-throughput 150 bash -c '"$@" > "'"$OUT"'/pretrain_throughput.out"' _ \
    "$PY" benchmarks/pretrain_throughput.py --data "$PACK" --patients 0 "${PRE_ARGS[@]}"
tail -n 1 "$OUT/pretrain_throughput.out" > "$OUT/pretrain_throughput.json" 2>/dev/null
run finetune-throughput 90 bash -c '"$@" > "'"$OUT"'/finetune_throughput.out"' _ \
    "$PY" benchmarks/finetune_throughput.py "${FT_ARGS[@]}"
tail -n 1 "$OUT/finetune_throughput.out" > "$OUT/finetune_throughput.json" 2>/dev/null
rm -f "$OUT"/*_throughput.out

# 4. the study (fresh each time), then its report even when the guard stopped it.
rm -rf "$STUDY"
STUDY_ARGS=(study --data "$PACK" --preset paper-fast --out "$STUDY")
[[ $DRY == 1 ]] && STUDY_ARGS+=(--config "${DRY_CONFIG:-$ROOT/configs/paper_fast_dry.yaml}")
STUDY_LIMIT=$(($(left) - 45))
run study "$STUDY_LIMIT" "${CLI[@]}" "${STUDY_ARGS[@]}"
STUDY_RC=$?
if ((STUDY_RC != 0)) && [[ -f $STUDY/study.yaml ]]; then
  run report 40 "${CLI[@]}" report "$STUDY"
fi

# 5. what comes back (at most 8 files directly under $OUT).
cp -f "$STUDY/report.md" "$STUDY/results.csv" "$OUT/" 2>/dev/null
tar -czf "$OUT/logs.tar.gz" -C "$STUDY" logs study_state.json study.yaml 2>/dev/null
"$PY" - "$OUT" "$STUDY" "$PACKED_BYTES" "$START" "$DRY" "${PACK_BUILD_S:-0}" "${#FAILED[@]}" "${FAILED[@]}" \
    -- "${STAGES[@]}" -- $(for s in "${STAGES[@]}"; do echo "${STAGE_S[$s]}"; done) <<'EOF' | tee -a "$LOG"
import json, os, platform, sys, time
out, study, packed, start, dry, pack_build, n_failed = sys.argv[1:8]
rest = sys.argv[8:]
failed, rest = rest[:int(n_failed)], rest[int(n_failed):]
sep = rest.index("--")
names = rest[sep + 1:]
sep2 = names.index("--")
names, secs = names[:sep2], names[sep2 + 1:]
device = "cpu"
try:
    import torch
    if torch.cuda.is_available():
        device = torch.cuda.get_device_name(0)
except Exception:  # noqa: BLE001 - the summary must be written whatever happened
    pass
state = {}
try:
    with open(os.path.join(study, "study_state.json")) as fh:
        cells = json.load(fh).get("cells", {})
    for rec in cells.values():
        state[rec.get("status", "?")] = state.get(rec.get("status", "?"), 0) + 1
except (OSError, ValueError):
    pass
summary = {
    "packed_bytes": None if packed == "null" else int(packed),
    "seconds": round(time.time() - int(start), 1),
    "stages": {n: int(s) for n, s in zip(names, secs)},
    "failed": failed,
    "ok": not failed,
    "dry_run": dry == "1",
    "pack_build_seconds": int(pack_build),
    "device": device,
    "host": platform.node(),
    "cells": state,
    "report": os.path.isfile(os.path.join(out, "report.md")),
    "out": out,
}
with open(os.path.join(out, "summary.json"), "w") as fh:
    json.dump(summary, fh, indent=1)
print(json.dumps(summary))
EOF
[[ ${#FAILED[@]} == 0 ]]
