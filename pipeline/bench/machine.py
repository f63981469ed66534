"""The machine a benchmark ran on: device, library versions and CPU facts for the report."""

from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from pipeline.worker import available_cpus

BYTES_PER_MIB = 1 << 20


def machine_info(device: torch.device) -> dict[str, Any]:
    """Device name, library versions and CPU facts for the report."""
    info: dict[str, Any] = {
        "device": str(device),
        "device_name": _cpu_model(),
        "cpu": _cpu_model(),
        "cpus": available_cpus(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "torchvision": _version("torchvision"),
        "pillow": _version("pillow"),
        "libjpeg_turbo": _libjpeg_turbo(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            device_name=torch.cuda.get_device_name(device),
            device_memory_mib=round(props.total_memory / BYTES_PER_MIB),
            multiprocessors=props.multi_processor_count,
            compute_capability=f"{props.major}.{props.minor}",
            cudnn=torch.backends.cudnn.version(),
            cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
            matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
        )
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = (part.strip() for part in line.partition(":"))
            if key == "model name":
                return value
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _libjpeg_turbo() -> bool | None:
    try:
        from PIL import features

        return bool(features.check_feature("libjpeg_turbo"))
    except (ImportError, ValueError):
        return None
