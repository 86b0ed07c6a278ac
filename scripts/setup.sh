#!/usr/bin/env bash
# Creates (or reuses) the virtual environment .venv in the repository and installs robotd into it.
# PyTorch: on a machine without an NVIDIA GPU a CPU build is installed (a local wheel when pip's
# configured find-links has one, else PyTorch's CPU index), never the multi-GB CUDA build.
# Usage: scripts/setup.sh [EXTRAS]   e.g. scripts/setup.sh test   or   scripts/setup.sh test,ur5
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
TORCH_VERSION="${ROBOTD_TORCH_VERSION:-2.13.0}"
CPU_INDEX="${ROBOTD_TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv || { echo "setup: python3 -m venv failed: apt-get install python3-venv" >&2; exit 1; }
fi
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }

if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    pip install "torch==${TORCH_VERSION}"
  elif pip install --no-index --no-deps "torch==${TORCH_VERSION}" 2>/dev/null; then
    pip install "torch==${TORCH_VERSION}"            # the local CPU wheel is in place; this adds its dependencies
  else
    pip install "torch==${TORCH_VERSION}" --index-url "${CPU_INDEX}" --extra-index-url https://pypi.org/simple
  fi
fi
if [ -n "$extras" ]; then
  pip install -e ".[${extras}]"
else
  pip install -e .
fi
