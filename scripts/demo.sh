#!/usr/bin/env bash
# Set up the environment and run the embedded default job: a real pipeline run (local Ray,
# yolov4-tiny on the CPU) over the bundled sample photos served by a local S3-compatible
# server on 127.0.0.1, then status and SQL queries over the results. Nothing stays running.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/yolo-batch weights fetch yolov4-tiny
.venv/bin/python -m infra.local.demo "$@"
