"""The decode figure: single-threaded JPEG decoding rate, in images/s per core."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from typing import Any

from pipeline.bench.timing import OtherLoad
from yolov4 import imageio

#: Images decoded at least per decode figure.
MIN_DECODED_IMAGES = 8


def decoders(input_size: tuple[int, int]) -> dict[str, Callable[[bytes], Any]]:
    """The decoders to measure: ``full`` (:func:`decode_image`), and ``reduced`` when this
    :mod:`yolov4.imageio` has ``decode_image_reduced`` (JPEG draft decoding to at least
    ``draft_min_size`` of the network input ``(width, height)``, as the actor decodes)."""
    found = {"full": imageio.decode_image}
    reduced = getattr(imageio, "decode_image_reduced", None)
    if reduced is not None:
        min_size = getattr(imageio, "draft_min_size", tuple)(input_size)
        found["reduced"] = lambda data: reduced(data, min_size=min_size)
    return found


def measure_decode(data: Sequence[bytes], decode: Callable[[bytes], Any], seconds: float) -> dict:
    """Single-threaded decode rate over ``data`` (cycling), after one warm-up image."""
    decode(data[0])
    load = OtherLoad()
    decoded, started = 0, time.perf_counter()
    for item in itertools.cycle(data):
        decode(item)
        decoded += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds and decoded >= min(MIN_DECODED_IMAGES, len(data)):
            break
    return {
        "images": decoded,
        "seconds": elapsed,
        "images_per_s_per_core": decoded / elapsed,
        "ms_per_image": 1000 * elapsed / decoded,
        "other_cores": load.cores(),
    }
