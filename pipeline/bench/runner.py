"""One benchmark run: every figure ``BenchConfig`` asks for, gathered into the report."""

from __future__ import annotations

import datetime
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from pipeline.bench.config import STAGE_DECODE, STAGE_E2E, STAGE_MODEL, BenchConfig, check_device
from pipeline.bench.decode_speed import decoders, measure_decode
from pipeline.bench.end_to_end import run_e2e
from pipeline.bench.fidelity import fidelity_check
from pipeline.bench.images import calibration_batch, prepare_images
from pipeline.bench.machine import machine_info
from pipeline.bench.model_only import run_model_only
from pipeline.bench.models import architecture, load_model
from pipeline.bench.report import add_ratios, report_notes
from pipeline.worker import available_cpus
from yolov4.flops import model_flops

#: The report's format; its JSON carries it as ``schema``.
SCHEMA = "yolo-batch-bench/1"


def run_bench(config: BenchConfig) -> dict[str, Any]:
    """Measure what ``config`` asks for; returns the report (JSON-ready, unrounded)."""
    started = time.perf_counter()
    device = check_device(config.device)
    threads = config.threads or available_cpus()
    decode_threads = config.decode_threads or available_cpus()
    torch.set_num_threads(threads)
    name, arch = architecture(config)
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(device),
        "parameters": config.parameters(),
        "torch_threads": threads,
        "decode_threads": decode_threads,
        "model": {
            "name": name,
            "arch": arch.arch,
            "input_width": arch.input_size[0],
            "input_height": arch.input_size[1],
            "flops_per_image": model_flops(arch),
            "gflops_per_image": model_flops(arch) / 1e9,
        },
    }
    with tempfile.TemporaryDirectory(prefix="yolo-batch-bench-") as tmp:
        workdir = Path(tmp)
        images = prepare_images(config, workdir)
        report["images"] = images.summary()
        if STAGE_DECODE in config.only:
            report["decode"] = {
                label: measure_decode(images.data, decode, config.seconds)
                for label, decode in decoders(arch.input_size).items()
            }
        if STAGE_MODEL in config.only or STAGE_E2E in config.only or config.run_check:
            model = load_model(config, lambda: calibration_batch(images, arch.input_size), device)
            report["model"] = model.summary()
            if STAGE_MODEL in config.only:
                report["model_only"] = run_model_only(model, images, config, device)
            if STAGE_E2E in config.only:
                report["e2e"] = run_e2e(model, images, config, device, workdir)
            if config.run_check:
                report["check"] = fidelity_check(model, images, config.precisions, device)
    add_ratios(report, decode_threads)
    report["notes"] = report_notes(config, device, report)
    report["elapsed_s"] = time.perf_counter() - started
    return report
