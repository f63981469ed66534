#!/usr/bin/env bash
# GPU throughput of yolo-batch in one command, in under 5 minutes on one GPU.
#
#   bash benchmarks/gpu.sh [OUTPUT_DIR]          # default ./gpu-bench-out
#
# Needs an NVIDIA GPU, PyTorch with CUDA, and this project's dependencies; not Ray: every
# figure comes from `python -m pipeline.bench` (the same code as `yolo-batch bench`).
# Measures model-only images/s for yolov4 at 416 and 608 (random weights: speed does not depend
# on the values) and yolov4-tiny at 416 (official weights when they can be had, else random)
# over batch sizes and precisions, then end to end (the actor's worker reading, decoding,
# detecting and writing Parquet) on generated 1280x720 JPEGs with GPU and CPU decoding.
# Writes one JSON (every figure and parameter, device name, torch version) and one text table
# per step, and summary.md with all of it, into OUTPUT_DIR.
#
# Environment (defaults in brackets): PYTHON [.venv/bin/python, else python3],
# BENCH_DEVICE [cuda], BENCH_SECONDS [1.2, timed seconds per model-only figure],
# BENCH_E2E_SECONDS [3], BENCH_BATCHES [16,32,64,128], BENCH_PRECISIONS [fp32,fp16,bf16],
# BENCH_E2E_BATCH [64], BENCH_E2E_PRECISION [fp16], BENCH_E2E_DECODE [gpu,cpu],
# BENCH_E2E_IMAGES [256], BENCH_E2E_SHARD [256 images], BENCH_STEP_TIMEOUT [150 s per step],
# BENCH_COMPILE [1: also yolov4 at 608, fp16, batch 128 with --compile (torch.compile); 0: not].
set -uo pipefail
cd "$(dirname "$0")/.."

OUT="${1:-./gpu-bench-out}"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
DEVICE="${BENCH_DEVICE:-cuda}"
SECS="${BENCH_SECONDS:-1.2}"
E2E_SECS="${BENCH_E2E_SECONDS:-3}"
BATCHES="${BENCH_BATCHES:-16,32,64,128}"
PRECISIONS="${BENCH_PRECISIONS:-fp32,fp16,bf16}"
E2E_BATCH="${BENCH_E2E_BATCH:-64}"
E2E_PRECISION="${BENCH_E2E_PRECISION:-fp16}"
E2E_DECODE="${BENCH_E2E_DECODE:-gpu,cpu}"
STEP_TIMEOUT="${BENCH_STEP_TIMEOUT:-150}"
E2E_IMAGES="${BENCH_E2E_IMAGES:-256}"
E2E_SHARD="${BENCH_E2E_SHARD:-256}"
# Model-only inputs cycle over a few decoded images; end to end reads a larger generated set.
MODEL_IMAGES=32

mkdir -p "$OUT"
started=$SECONDS
failed=()

echo "== GPU"
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm \
        --format=csv,noheader | tee "$OUT/gpu.txt"
fi
if ! "$PYTHON" - "$DEVICE" <<'EOF' | tee -a "$OUT/gpu.txt"
import sys

import torch

device = sys.argv[1]
if device.startswith("cuda"):
    if not torch.cuda.is_available():
        sys.exit(f"CUDA is not available to PyTorch {torch.__version__}: this needs a GPU")
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, "
          f"{torch.cuda.get_device_name(torch.device(device))}")
else:
    print(f"torch {torch.__version__} on {device} (not a GPU: a dry run of this script)")
EOF
then
    exit 1
fi

# yolov4-tiny's official weights if they are cached or can be fetched, else random ones.
TINY_WEIGHTS=()
if ! timeout 120 "$PYTHON" -c \
    "from yolov4.pretrained import get_pretrained; get_pretrained('yolov4-tiny').fetch_weights()" \
    >/dev/null 2>&1; then
    echo "yolov4-tiny weights unavailable: random weights for it too"
    TINY_WEIGHTS=(--random-weights)
fi

step() {  # step NAME ARGS...: one `python -m pipeline.bench` run, JSON and table into $OUT
    local name=$1
    shift
    echo
    echo "== $name ($((SECONDS - started)) s so far)"
    if ! timeout "$STEP_TIMEOUT" "$PYTHON" -m pipeline.bench --device "$DEVICE" "$@" \
        --json "$OUT/$name.json" 2>"$OUT/$name.log" | tee "$OUT/$name.txt"; then
        echo "FAILED: $name (see $OUT/$name.log)"
        tail -n 5 "$OUT/$name.log"
        failed+=("$name")
    fi
}

MODEL_ONLY=(--only model --batch-size "$BATCHES" --precision "$PRECISIONS" --seconds "$SECS"
    --images "$MODEL_IMAGES")
step yolov4-tiny-416-model --model yolov4-tiny "${TINY_WEIGHTS[@]}" --size 416 "${MODEL_ONLY[@]}"
step yolov4-416-model --model yolov4 --random-weights --size 416 "${MODEL_ONLY[@]}"
step yolov4-608-model --model yolov4 --random-weights --size 608 "${MODEL_ONLY[@]}"
if [[ "${BENCH_COMPILE:-1}" == 1 ]]; then  # one batch size: each compiles for a minute or so
    step yolov4-608-model-compiled --model yolov4 --random-weights --size 608 --only model \
        --batch-size 128 --precision fp16 --seconds "$SECS" --images "$MODEL_IMAGES" --compile
fi

E2E=(--batch-size "$E2E_BATCH" --precision "$E2E_PRECISION" --decode "$E2E_DECODE"
    --seconds "$E2E_SECS" --images "$E2E_IMAGES" --shard-size "$E2E_SHARD")
step yolov4-tiny-416-e2e --model yolov4-tiny "${TINY_WEIGHTS[@]}" --size 416 "${E2E[@]}"
step yolov4-608-e2e --model yolov4 --random-weights --size 608 --only model,e2e "${E2E[@]}"

echo
echo "== summary ($((SECONDS - started)) s)"
"$PYTHON" - "$OUT" <<'EOF' | tee "$OUT/summary.md"
"""Markdown tables from every step's JSON."""

import json
import sys
from pathlib import Path

out = Path(sys.argv[1])
reports = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json"))}
if not reports:
    sys.exit("no results")
first = next(iter(reports.values()))
machine = first["machine"]
print(f"# yolo-batch GPU benchmark: {machine['device_name']}\n")
print(
    f"{first['created']}; PyTorch {machine['torch']} (CUDA {machine.get('torch_cuda')}, cuDNN "
    f"{machine.get('cudnn')}, TF32 convolutions {machine.get('cudnn_allow_tf32')}), "
    f"torchvision {machine.get('torchvision')}, {machine['cpus']} CPUs ({machine['cpu']}).\n"
)


PRECISION_ORDER = {"fp32": 0, "fp16": 1, "bf16": 2}


def model_name(report):
    m = report["model"]
    weights = f", {m['weights']} weights" if "weights" in m else ""
    return f"{m['name']} {m['input_width']}{weights}"


def rate(value):
    """Images/s with three significant figures or more (CPU dry runs give fractions)."""
    if value is None:
        return "-"
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def sort_key(item):
    report, row = item
    m = report["model"]
    return (m["name"], m["input_width"], PRECISION_ORDER.get(row["precision"], 9),
            row["batch_size"], row.get("decode", ""))


print("## Model only\n")
print("Decoded images resized and resident on the GPU; `detect_batch` = forward + decode + NMS "
      "+ detections to the host, synchronised. FLOP = 2 x multiply-add, convolutions only.\n")
print("| model | GFLOP/img | precision | batch | img/s | ms/batch | TFLOP/s | peak MiB | step |")
print("|---|---:|---|---:|---:|---:|---:|---:|---|")
rows = [(name, r, row) for name, r in reports.items() for row in r.get("model_only", [])]
for name, report, r in sorted(rows, key=lambda item: sort_key(item[1:])):
    memory = "-" if r["peak_memory_mib"] is None else f"{r['peak_memory_mib']:.0f}"
    print(
        f"| {model_name(report)} | {report['model']['gflops_per_image']:.1f} | "
        f"{r['precision']} | {r['batch_size']} | {rate(r['images_per_s'])} | "
        f"{r['ms_per_batch']:.2f} | {r['tflops']:.2f} | {memory} | {name} |"
    )

print("\n## End to end\n")
print("The actor's worker (`ShardProcessor`, no Ray) on the generated JPEGs: read, decode, "
      "detect, write Parquet; images / wall time of the timed shards.\n")
print("| model | precision | batch | decode | e2e img/s | model-only img/s | e2e / model "
      "| model busy | decode threads |")
print("|---|---|---:|---|---:|---:|---:|---:|---:|")
rows = [(report, row) for report in reports.values() for row in report.get("e2e", [])]
for report, r in sorted(rows, key=sort_key):
    ratio = r["e2e_over_model"]
    print(
        f"| {model_name(report)} | {r['precision']} | {r['batch_size']} | "
        f"{r['decode']} ({r.get('decode_resolved', r['decode'])}) | "
        f"{rate(r['images_per_s'])} | {rate(r['model_images_per_s'])} | "
        f"{f'{ratio:.2f}' if ratio else '-'} | {100 * r['model_busy_fraction']:.0f} % | "
        f"{r['decode_threads']} |"
    )

decode = [(name, r) for name, r in reports.items() if "decode" in r]
if decode:
    print("\n## CPU decoding, one core\n")
    print("| images | decoder | img/s per core | ms/img |")
    print("|---|---|---:|---:|")
    for name, report in decode:
        images = report["images"]
        for label, d in report["decode"].items():
            print(
                f"| {images['count']} x {images['mean_width']:.0f}x{images['mean_height']:.0f}, "
                f"{images['mean_bytes'] / 1000:.0f} kB ({name}) | {label} | "
                f"{d['images_per_s_per_core']:.1f} | {d['ms_per_image']:.2f} |"
            )

checks = [(n, report, c) for n, report in reports.items() for c in report.get("check", [])]
if checks:
    print("\n## Fidelity of the fast paths (half precisions vs fp32, GPU decoding vs Pillow)\n")
    print("| model | precision | max score diff | min IoU | tolerance | result | step |")
    print("|---|---|---:|---:|---|---|---|")
    for name, report, c in checks:
        print(
            f"| {model_name(report)} | {'GPU decoding' if c.get('decode') == 'gpu' else c['precision']} | {c['max_score_diff']:.4f} | "
            f"{c['min_iou']:.4f} | {c['score_tolerance']} / {c['min_iou_tolerance']} | "
            f"{'PASS' if c['passed'] else 'FAIL'} | {name} |"
        )
notes = sorted({note for report in reports.values() for note in report.get("notes", [])})
if notes:
    print("\n" + "\n".join(f"- {note}" for note in notes))
EOF

echo
echo "$((SECONDS - started)) s; results in $OUT"
if ((${#failed[@]})); then
    echo "failed steps: ${failed[*]}"
    exit 1
fi
