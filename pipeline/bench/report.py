"""What the report derives from the figures: their ratios, and the notes a reader needs."""

from __future__ import annotations

import torch

from pipeline.bench.config import STAGE_DECODE, BenchConfig
from pipeline.bench.models import RANDOM_CANDIDATES_PER_IMAGE
from yolov4.detector import fast_on_cpu

#: Other processes' CPU use during a figure (cores, averaged) above which the report warns
#: that the figures are contended.
BUSY_MACHINE_CORES = 0.25


def add_ratios(report: dict, decode_threads: int) -> None:
    """Input-side headroom per model-only row, end-to-end / model-only per end-to-end row."""
    decode = report.get("decode", {})
    model_rows = {(r["precision"], r["batch_size"]): r for r in report.get("model_only", [])}
    for row in model_rows.values():
        row["decode_headroom"] = {
            name: figures["images_per_s_per_core"] * decode_threads / row["images_per_s"]
            for name, figures in decode.items()
        }
    for row in report.get("e2e", []):
        model_row = model_rows.get((row["precision"], row["batch_size"]))
        row["model_images_per_s"] = model_row["images_per_s"] if model_row else None
        row["e2e_over_model"] = (
            row["images_per_s"] / model_row["images_per_s"] if model_row else None
        )


def report_notes(config: BenchConfig, device: torch.device, report: dict) -> list[str]:
    """What a reader must know to read the figures right."""
    notes = []
    busiest = max_other_cores(report)
    if busiest is not None and busiest > BUSY_MACHINE_CORES:
        notes.append(
            f"other processes used up to {busiest:.1f} cores during the measurements: the "
            "figures are lower than this machine gives, and their ratios unreliable; measure "
            "on a quiet machine"
        )
    if config.random_weights:
        notes.append(
            f"random weights (seed {config.seed}; batch norm calibrated on the benchmark "
            f"images, objectness biased so that about {RANDOM_CANDIDATES_PER_IMAGE} boxes per "
            "image pass the threshold): speed does not depend on the values; the detections "
            "mean nothing"
        )
        if config.run_check:
            notes.append(
                "the fidelity tolerances were stated for trained weights; random ones amplify "
                "rounding differences, so the check says little here"
            )
    if STAGE_DECODE in config.only and "reduced" not in report.get("decode", {}):
        notes.append("reduced-size JPEG decoding is not in this version: not measured")
    if device.type == "cpu":
        notes.append(
            "on CPU the decode threads compete with the model for the same cores: the input "
            "headroom is an upper bound, and end to end pays for the sharing"
        )
        slow = [p for p in config.precisions if not fast_on_cpu(p)]
        if slow:
            notes.append(
                f"{'/'.join(slow)} on this CPU has no native kernels: for checking numerics, "
                "not for speed"
            )
    if STAGE_DECODE in config.only and device.type == "cuda":
        notes.append(
            "input headroom counts CPU decoding; with --decode gpu the GPU decodes the JPEGs"
        )
    return notes


def max_other_cores(report: dict) -> float | None:
    """The most CPU other processes used during any figure of ``report`` (cores)."""
    rows = [*report.get("decode", {}).values(), *report.get("model_only", [])]
    loads = [row["other_cores"] for row in rows + report.get("e2e", [])]
    return max((load for load in loads if load is not None), default=None)
