"""The report as ``yolo-batch bench`` prints it (plain-text tables) and writes it (JSON)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def format_table(report: dict[str, Any]) -> str:
    """The report as the plain-text tables ``yolo-batch bench`` prints."""
    lines = _header_lines(report)
    if "decode" in report:
        lines += ["", f"{'decode, one core':<36}{'images/s/core':>14}{'ms/image':>10}"]
        for label, figures in report["decode"].items():
            what = "full (decode_image)" if label == "full" else "reduced (decode_image_reduced)"
            lines.append(
                f"  {what:<34}{figures['images_per_s_per_core']:>14.1f}"
                f"{figures['ms_per_image']:>10.2f}"
            )
    if "model_only" in report:
        lines += _model_lines(report)
    if "e2e" in report:
        lines += _e2e_lines(report)
    for row in report.get("check", []):
        verdict = "PASS" if row["passed"] else f"FAIL ({row['mismatch_count']} mismatches)"
        lines += [
            "",
            f"fidelity {_fast_path(row)} vs {row['reference']} on {row['on']} "
            f"({row['images']} images, "
            f"{row['reference_detections']} reference detections): max score diff "
            f"{row['max_score_diff']:.4f} (tolerance {row['score_tolerance']}), min IoU "
            f"{row['min_iou']:.4f} (tolerance {row['min_iou_tolerance']}): {verdict}",
        ]
        lines += [f"  {problem}" for problem in row["mismatches"]]
    if report.get("notes"):
        lines += [""] + [f"note: {note}" for note in report["notes"]]
    return "\n".join(lines)


def _header_lines(report: dict[str, Any]) -> list[str]:
    model, machine = report["model"], report["machine"]
    weights = {"pretrained": "official weights", "file": "weights file", "random": "random weights"}
    lines = [
        f"yolo-batch bench: {model['name']} at {model['input_width']}x{model['input_height']}, "
        f"{model['gflops_per_image']:.2f} GFLOP/image"
        + (f", {weights[model['weights']]}" if "weights" in model else ""),
        f"device {machine['device']} ({machine['device_name']}), PyTorch {machine['torch']}, "
        f"{report['torch_threads']} torch threads, {report['decode_threads']} decode threads",
    ]
    if "images" in report:
        images = report["images"]
        lines.append(
            f"images: {images['count']} {images['description']}; mean "
            f"{images['mean_width']:.0f}x{images['mean_height']:.0f}, "
            f"{images['mean_bytes'] / 1000:.0f} kB"
        )
    return lines


def _model_lines(report: dict[str, Any]) -> list[str]:
    decode = list(report.get("decode", {}))
    headroom = f"input headroom ({' / '.join(decode)} decode)" if decode else ""
    lines = [
        "",
        "model only: decoded images resized and on the device; detect_batch (forward, decode, "
        "NMS, to host)",
        f"  {'precision':<10}{'batch':>6}{'images/s':>11}{'ms/batch':>10}{'TFLOP/s':>9}"
        f"{'peak MiB':>10}  {headroom}",
    ]
    for row in report["model_only"]:
        memory = row["peak_memory_mib"]
        ratios = " / ".join(f"{row['decode_headroom'][name]:.2f}x" for name in decode)
        lines.append(
            f"  {row['precision']:<10}{row['batch_size']:>6}{row['images_per_s']:>11.1f}"
            f"{row['ms_per_batch']:>10.2f}{row['tflops']:>9.3f}"
            f"{(f'{memory:.0f}' if memory is not None else '-'):>10}  {ratios}"
        )
    return lines


def _e2e_lines(report: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "end to end: ShardProcessor in this process (read, decode, detect, write Parquet); "
        "decode a>b: asked for a, the actor chose b",
        f"  {'precision':<10}{'batch':>6}{'decode':>10}{'shard':>7}{'images/s':>11}"
        f"{'e2e/model':>11}{'model busy':>12}{'waited s':>10}",
    ]
    for row in report["e2e"]:
        ratio = row["e2e_over_model"]
        decode = row["decode"]
        if row["decode_resolved"] != decode:
            decode = f"{decode}>{row['decode_resolved']}"
        lines.append(
            f"  {row['precision']:<10}{row['batch_size']:>6}{decode:>10}"
            f"{row['shard_size']:>7}{row['images_per_s']:>11.1f}"
            f"{(f'{ratio:.2f}x' if ratio is not None else '-'):>11}"
            f"{100 * row['model_busy_fraction']:>11.0f}%{row['waited_seconds']:>10.2f}"
        )
    return lines


def _fast_path(check: dict) -> str:
    """What a fidelity row measured: ``fp16``, ``bf16`` or ``GPU decoding``."""
    return "GPU decoding" if check.get("decode") == "gpu" else check["precision"]


def write_json(report: dict[str, Any], path: Path) -> None:
    """Write the report, every figure unrounded, to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
