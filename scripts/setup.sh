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
# pyrealsense2 (extras realsense, test) loads libusb-1.0 at import: Debian's libusb-1.0-0. Without it the
# realsense extra cannot work (setup fails); the test suite skips the RealSense tests, saying why.
if [[ ",${extras}," =~ ,(realsense|test), ]] && ! ldconfig -p 2>/dev/null | grep -q 'libusb-1\.0\.so\.0'; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get install -y -q libusb-1.0-0 >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q libusb-1.0-0 >/dev/null; } \
      || libusb_missing="apt-get install libusb-1.0-0 failed"
  else
    libusb_missing="no libusb-1.0: run 'sudo apt-get install libusb-1.0-0'"
  fi
  if [ -n "${libusb_missing:-}" ]; then
    if [[ ",${extras}," =~ ,realsense, ]]; then
      echo "setup: pyrealsense2 needs libusb-1.0 ($libusb_missing); install it, then rerun" >&2; exit 1
    fi
    echo "setup: $libusb_missing: the RealSense tests will be skipped" >&2
  fi
fi
# The test suite renders robotd inspect's HTML report in headless Chromium (Debian's chromium).
if [[ ",${extras}," =~ ,test, ]] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get install -y -q chromium >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; } \
      || echo "setup: apt-get install chromium failed: the HTML report test will be skipped" >&2
  else
    echo "setup: no chromium: the HTML report test will be skipped (sudo apt-get install chromium)" >&2
  fi
fi
if [ -n "$extras" ]; then
  pip install -e ".[${extras}]"
else
  pip install -e .
fi
