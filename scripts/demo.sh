#!/usr/bin/env bash
# Set up the environment and run the embedded default job: yolov4-tiny on the two bundled
# sample photos, printing the detections and writing annotated copies to demo-out/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/yolo-batch weights fetch yolov4-tiny
.venv/bin/yolo-batch detect --samples --model yolov4-tiny --out demo-out "$@"
echo "annotated images written to $(pwd)/demo-out"
