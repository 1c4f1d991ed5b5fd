#!/usr/bin/env bash
# Create the project's virtual environment and install cardioclr into it.
#
# On a machine without an NVIDIA GPU this installs the CPU build of PyTorch (torch==2.13.0)
# first, so pip never pulls several GB of CUDA packages; with a GPU (nvidia-smi works) it
# installs the normal build. Set TORCH_INDEX to a PyTorch wheel index (for example the CPU index
# of pytorch.org) when your pip cannot otherwise find a CPU build.
#
# Usage: scripts/bootstrap.sh [VENV_DIR] [EXTRAS]     (defaults: .venv, dev)
set -euo pipefail
venv="${1:-.venv}"
extras="${2:-dev}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
  echo "bootstrap: creating virtual environment $venv"
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip)
"${pip[@]}" install -q --upgrade pip >/dev/null 2>&1 || true

if ! "$venv/bin/python" -c "import torch" >/dev/null 2>&1; then
  # ${a[@]+"${a[@]}"} below: an empty array under `set -u` is an error in bash < 4.4 (macOS).
  index_args=()
  if [ -n "${TORCH_INDEX:-}" ]; then index_args=(--extra-index-url "$TORCH_INDEX"); fi
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "bootstrap: NVIDIA GPU found: installing the standard (CUDA) PyTorch build"
    "${pip[@]}" install -q ${index_args[@]+"${index_args[@]}"} torch
  else
    # PyPI's Linux torch wheel depends on the CUDA libraries (several GB). The CPU build comes
    # from a local wheel (this project's machines) or from PyTorch's CPU index when reachable.
    cpu_index="https://download.pytorch.org/whl/cpu"
    if [ -z "${TORCH_INDEX:-}" ] && [ "$(uname -s)" = Linux ] \
       && "$venv/bin/python" -c "import urllib.request as u; u.urlopen('$cpu_index/torch/', timeout=5)" \
          >/dev/null 2>&1; then
      index_args=(--extra-index-url "$cpu_index")
    fi
    echo "bootstrap: no GPU found: installing the CPU build torch==2.13.0"
    "${pip[@]}" install -q ${index_args[@]+"${index_args[@]}"} "torch==2.13.0"
  fi
fi

if ! "$venv/bin/python" -c "import cardioclr" >/dev/null 2>&1 \
   || [ pyproject.toml -nt "$venv/.cardioclr-installed" ]; then
  echo "bootstrap: installing cardioclr[$extras] and its dependencies"
  "${pip[@]}" install -q -e ".[$extras]"
  touch "$venv/.cardioclr-installed"
fi
"$venv/bin/python" -c "import torch, cardioclr; print(f'bootstrap: cardioclr {cardioclr.__version__}, torch {torch.__version__}, cuda available: {torch.cuda.is_available()}')"
