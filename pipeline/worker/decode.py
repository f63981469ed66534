"""Decoding fetched bytes into images, on the host (Pillow, full size or draft) or on the GPU.

The decoding modes are :mod:`pipeline.worker.decode_modes`; :func:`resolve_decode_mode` says
what a configured mode means on a device. Images come out as ``[3, H, W]`` uint8 tensors (RGB);
an image that cannot be decoded, or is over the byte or pixel limit, gets an ``error`` instead,
and costs only its own row.
"""

from __future__ import annotations

import threading
import time

import torch

from pipeline.worker.decode_memory import decode_peak_bytes
from pipeline.worker.decode_modes import DECODE_AUTO, DECODE_CPU, DECODE_DRAFT, DECODE_GPU
from pipeline.worker.loaded_image import LoadedImage
from pipeline.worker.reasons import shorten, too_large
from yolov4.errors import ImageDecodeError
from yolov4.gpu_jpeg import decode_jpegs, encoded, gpu_decodable, gpu_jpeg_available
from yolov4.imageio import decode_image, decode_image_reduced


def resolve_decode_mode(mode: str, device: str) -> str:
    """The decoding :data:`DECODE_MODES` entry ``mode`` means on ``device``.

    ``auto`` is ``gpu`` where nvJPEG works on the device, else ``cpu``. ``gpu`` where it does
    not raises ``ValueError`` naming what is missing.
    """
    if mode == DECODE_AUTO:
        return DECODE_GPU if gpu_jpeg_available(device) else DECODE_CPU
    if mode == DECODE_GPU and not gpu_jpeg_available(device):
        raise ValueError(
            f"decode 'gpu' needs a CUDA device with torchvision's nvJPEG decoder, and {device!r} "
            "has none here; use decode 'draft' or 'cpu' (or install torchvision built for this "
            "PyTorch)"
        )
    return mode


class ImageDecoder:
    """Decodes :class:`LoadedImage` bytes in one resolved mode; safe across threads.

    Args:
        mode: a resolved decoding mode (``cpu``, ``draft`` or ``gpu``; not ``auto``).
        max_image_bytes, max_image_pixels: larger images get an ``error``.
        draft_min_size: in ``draft`` mode, the least width and height a reduced decode keeps.
        pin: decode into pinned host memory, so that the copy to a CUDA device is asynchronous.
    """

    def __init__(
        self,
        mode: str,
        *,
        max_image_bytes: int,
        max_image_pixels: int,
        draft_min_size: int,
        pin: bool,
    ) -> None:
        if mode == DECODE_AUTO:
            raise ValueError("resolve the decoding mode first (resolve_decode_mode)")
        self.mode = mode
        self.max_image_bytes = max_image_bytes
        self.max_image_pixels = max_image_pixels
        self.draft_min_size = draft_min_size
        self.pin = pin

    def leave_for_device(self, loaded: LoadedImage) -> None:
        """In ``gpu`` mode, move a JPEG the GPU can decode from ``loaded.data`` to
        ``loaded.jpeg``, to be decoded with its batch (:meth:`decode_on_device`) instead of on
        a decode thread. Reads only the file's header."""
        data = loaded.data
        if (
            self.mode == DECODE_GPU
            and data is not None
            and gpu_decodable(data, self.max_image_pixels)
        ):
            loaded.jpeg, loaded.data = encoded(data), None

    def reserve_bytes(self, data: bytes) -> int:
        """Bytes the host decode of ``data`` takes at its peak, from its header alone
        (:func:`~pipeline.worker.decode_memory.decode_peak_bytes`): what the decode asks of
        the actor's memory budget before it starts."""
        if len(data) > self.max_image_bytes:
            return 0  # refused before decoding
        draft = self.draft_min_size if self.mode == DECODE_DRAFT else None
        return decode_peak_bytes(data, max_pixels=self.max_image_pixels, draft_min_size=draft)

    def decode(self, loaded: LoadedImage, cancel: threading.Event) -> None:
        """On a decode thread: ``loaded.data`` into ``loaded.image`` (or ``loaded.error``),
        timed in ``loaded.decode_s``; ``data`` is dropped either way."""
        data, loaded.data = loaded.data, None
        if cancel.is_set():
            loaded.error = "decode: cancelled"
        elif len(data) > self.max_image_bytes:
            loaded.error = too_large(len(data), self.max_image_bytes)
        else:
            started = time.perf_counter()
            self.decode_on_host(loaded, data, draft=self.mode == DECODE_DRAFT)
            loaded.decode_s = time.perf_counter() - started

    def decode_on_host(self, loaded: LoadedImage, data: bytes, *, draft: bool) -> None:
        """Decode ``data`` with Pillow into ``loaded.image`` (or ``loaded.error``); ``draft``:
        large JPEGs at a reduced scale keeping at least twice the network input."""
        limits = dict(max_pixels=self.max_image_pixels, max_bytes=self.max_image_bytes)
        try:
            if draft:
                decoded = decode_image_reduced(data, min_size=self.draft_min_size, **limits)
                pixels = decoded.pixels
                if decoded.reduced:
                    loaded.display_size = decoded.size
            else:
                pixels = decode_image(data, **limits)
        except ImageDecodeError as exc:
            loaded.error = str(exc)
            return
        except MemoryError:
            # The actor's memory ran short, not a property of the image: the shard attempt
            # fails and is retried, never a permanent error row.
            raise
        except Exception as exc:  # a decoder bug must cost one image, not the shard
            loaded.error = f"decode: {type(exc).__name__}: {shorten(str(exc))}"
            return
        image = torch.from_numpy(pixels)
        if self.pin:  # the host-to-device copy then runs asynchronously
            image = image.pin_memory()
        loaded.image = image.permute(2, 0, 1)

    def decode_on_device(self, jpegs: list[LoadedImage], device: torch.device) -> None:
        """Decode the ``jpeg`` of each of ``jpegs`` on ``device`` in one call, into its
        ``image`` (on ``device``) or its ``error``; files nvJPEG fails on are decoded on the
        host instead."""
        if not jpegs:
            return
        images = decode_jpegs([item.jpeg for item in jpegs], device)
        for item, image in zip(jpegs, images):
            data, item.jpeg = item.jpeg, None
            if image is None:  # nvJPEG failed: Pillow decodes it, or says what is wrong
                self.decode_on_host(item, data.numpy().tobytes(), draft=False)
            else:
                item.image = image
