#!/usr/bin/env bash
# Create .venv with exactly the versions of requirements/lock.txt, and yolo-batch in it
# (editable). Safe to re-run: the environment is synced to the lock each time.
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-python3}"
LOCK=requirements/lock.txt
# The one pinned requirement line of requirements/torch.txt, e.g. "torch==2.13.0".
TORCH_PIN="$(grep -E '^torch==' requirements/torch.txt)"
UV_PIN="$(grep -oE '^uv==[^ ;]+' "$LOCK")"

if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
# torch first, with pip and without its dependencies (the lock has them): pip takes the CPU
# build where the machine's index offers one, and an unpinned torch could pull a multi-GB CUDA
# build onto a machine without a GPU. Then uv, at the lock's version, installs the rest.
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps \
    "$TORCH_PIN" "$UV_PIN"
# sync: install every locked package at its pinned version, checked against the lock's hashes,
# and remove anything else. torch is kept: it is named here (the one line without a hash) and
# the installed build satisfies the pin.
.venv/bin/uv pip sync --quiet --python .venv/bin/python --verify-hashes \
    "$LOCK" <(echo "$TORCH_PIN")
# The project itself, built with the locked setuptools rather than whatever is newest.
.venv/bin/uv pip install --quiet --python .venv/bin/python --no-deps --no-build-isolation -e .
