"""The device a detector runs on: parsed and checked once, before any work, so that a device
this machine or this PyTorch build lacks is one clear sentence rather than a PyTorch assertion
deep inside the first forward pass."""

from __future__ import annotations

import torch

from yolov4.errors import YoloError

#: The device types the detector runs on (its CUDA streams, pinned memory and nvJPEG paths are
#: CUDA's; other accelerators are not supported).
SUPPORTED_DEVICE_TYPES = ("cpu", "cuda")
#: How the devices are spelled, for messages.
DEVICE_SPELLINGS = "cpu, cuda or cuda:N"


class DeviceError(YoloError, ValueError):
    """A device that is not one, is not supported, or is not available here."""


def check_device(device: str | torch.device, *, option: str = "device") -> torch.device:
    """The torch device for ``device``, with ``cuda`` resolved to ``cuda:0``.

    Raises:
        DeviceError: ``device`` is not a device, not a supported type (``mps``, ``xpu``…), CUDA
            on a PyTorch build or machine without it, or a CUDA index beyond the GPUs visible
            here. The message names ``option`` (``--device`` for the command line) and what to
            use instead.
    """
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise DeviceError(
            f"{option} {device!r} is not a device; use {DEVICE_SPELLINGS} "
            f"(this machine has {', '.join(available_devices())})"
        ) from None
    if parsed.type not in SUPPORTED_DEVICE_TYPES:
        raise DeviceError(
            f"{option} {device!r}: {parsed.type} devices are not supported; use "
            f"{' or '.join(available_devices())}"
        )
    if parsed.type == "cpu":
        return parsed
    missing = cuda_missing()
    if missing:
        raise DeviceError(
            f"{option} {device}: {missing}; use {option} cpu, or run on a machine with an "
            "NVIDIA GPU and a CUDA build of PyTorch"
        )
    count = torch.cuda.device_count()
    index = parsed.index or 0
    if index >= count:
        raise DeviceError(
            f"{option} {device}: this machine has {count} CUDA device"
            f"{'' if count == 1 else 's'}; use {' or '.join(available_devices())}"
        )
    return torch.device("cuda", index)


def available_devices() -> list[str]:
    """The devices a detector can use here: ``cpu``, then ``cuda:0``… for each visible GPU."""
    count = torch.cuda.device_count() if cuda_missing() is None else 0
    return ["cpu", *(f"cuda:{i}" for i in range(count))]


def cuda_missing() -> str | None:
    """Why CUDA cannot be used in this process, in a few words (``None`` when it can):
    ``CUDA is not available here (PyTorch 2.x, a CPU-only build)``."""
    if torch.cuda.is_available():
        return None
    build = "a CPU-only build" if torch.version.cuda is None else "no GPU visible"
    return f"CUDA is not available here (PyTorch {torch.__version__}, {build})"
