"""The model-only figure: ``Detector.detect_batch`` on decoded, network-sized, resident images."""

from __future__ import annotations

import logging
import statistics

import torch

from pipeline.bench.config import BenchConfig
from pipeline.bench.images import ImageSet, network_inputs
from pipeline.bench.machine import BYTES_PER_MIB
from pipeline.bench.models import BenchModel
from pipeline.bench.timing import OtherLoad, free_device_memory, synchronizer, time_calls
from yolov4.detector import Detector

logger = logging.getLogger(__name__)

FLOPS_PER_TFLOP = 1e12


def measure_model(
    detector: Detector, inputs: list[torch.Tensor], seconds: float, flops_per_image: int
) -> dict:
    """``detect_batch`` on resident network-sized inputs, synchronised, detections to host."""
    device = detector.device
    sync = synchronizer(device)
    found = []

    def call() -> None:
        detections = detector.detect_batch(inputs).to("cpu")
        sync()
        found.append(len(detections.scores))

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    load = OtherLoad()
    durations = time_calls(call, seconds)
    total = sum(durations)
    images_per_s = len(inputs) * len(durations) / total
    timed_found = found[-len(durations) :]
    return {
        "images_per_s": images_per_s,
        "ms_per_batch": 1000 * statistics.median(durations),
        "ms_per_batch_min": 1000 * min(durations),
        "calls": len(durations),
        "seconds": total,
        "tflops": images_per_s * flops_per_image / FLOPS_PER_TFLOP,
        "detections_per_image": sum(timed_found) / (len(inputs) * len(timed_found)),
        "peak_memory_mib": (
            torch.cuda.max_memory_allocated(device) / BYTES_PER_MIB
            if device.type == "cuda"
            else None
        ),
        "other_cores": load.cores(),
    }


def run_model_only(
    model: BenchModel, images: ImageSet, config: BenchConfig, device: torch.device
) -> list[dict]:
    """One row per (precision, batch size)."""
    rows = []
    inputs = network_inputs(images.data, max(config.batches), model.config.input_size, device)
    for precision in config.precisions:
        detector = None
        for batch in config.batches:
            if detector is None or config.compile:  # compiled: one batch shape per detector
                detector = model.build(device, precision, config.compile)
            figures = measure_model(detector, inputs[:batch], config.seconds, model.flops_per_image)
            rows.append({"precision": precision, "batch_size": batch, **figures})
            logger.info(
                "model only %s batch %d: %.1f images/s", precision, batch, figures["images_per_s"]
            )
        del detector
        free_device_memory(device)
    del inputs
    free_device_memory(device)
    return rows
