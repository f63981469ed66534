"""Batches on the detector's device: staged in a thread of their own, then through the model.

Staging a batch decodes its JPEGs left for the GPU, copies its images to the device and resizes
them into the network batch; on CUDA it runs on a stream of its own, so the staging of batch
N+1 overlaps batch N's forward pass on the model's stream.
"""

from __future__ import annotations

import contextlib
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from pipeline.worker.decode_modes import DECODE_GPU

if TYPE_CHECKING:
    from pipeline.worker.decode import ImageDecoder
    from pipeline.worker.loaded_image import LoadedImage
    from pipeline.worker.shard_output import ShardState
    from yolov4.detector import Detector, PreparedBatch


@dataclass
class StagedBatch:
    """A batch prepared for the model: ``rows`` (plan order) of the images in ``prepared``,
    which is ``None`` when none of the batch decoded; ``decode_s``: GPU decoding time."""

    rows: list[int]
    prepared: PreparedBatch | None
    decode_s: float = 0.0


class DeviceBatches:
    """Stages batches for ``detector`` one at a time in a stage thread, and runs the model on
    them in the calling thread. :meth:`close` stops the stage thread.

    Args:
        detector: the model; its ``device`` is where batches are staged.
        decoder: decodes the JPEGs a batch brings for the GPU (``gpu`` decoding).
    """

    def __init__(self, detector: Detector, decoder: ImageDecoder) -> None:
        self.detector = detector
        self.decoder = decoder
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="stage")
        cuda = detector.device.type == "cuda"
        self._stream = torch.cuda.Stream(detector.device) if cuda else None

    def submit(self, state: ShardState, batch: list[LoadedImage]) -> Future:
        """Schedule :meth:`stage` of ``batch`` on the stage thread; a future of its
        :class:`StagedBatch`."""
        return self._pool.submit(self.stage, state, batch)

    def stage(self, state: ShardState, batch: list[LoadedImage]) -> StagedBatch:
        """In the stage thread: decode the batch's JPEGs left for the GPU (recording their rows
        in ``state``), copy the images to the device and resize them into the network batch;
        on CUDA all on the stage stream, with an event the model's stream waits for
        (:meth:`Detector.detect_prepared`)."""
        stream = self._stream
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            started = time.perf_counter()
            batch = self._decode_on_device(state, batch)
            gpu = self.decoder.mode == DECODE_GPU
            decode_s = time.perf_counter() - started if gpu else 0.0
            if not batch:
                return StagedBatch([], None, decode_s)
            sizes = [item.image_size for item in batch]
            images = [item.image for item in batch]
            for item in batch:
                item.image = None
            prepared = self.detector.prepare(images, image_sizes=sizes)
            if stream is not None:
                prepared.ready = torch.cuda.Event()
                prepared.ready.record(stream)
        return StagedBatch([item.row for item in batch], prepared, decode_s)

    def detect(self, state: ShardState, staging: Future) -> None:
        """The model on a staged batch (waiting for its staging); detections into ``state``:
        boxes ``[n, 4]`` float32 ``x_min, y_min, x_max, y_max`` in the image's own pixels."""
        started = time.perf_counter()
        staged: StagedBatch = staging.result()
        state.decode_s += staged.decode_s
        if staged.prepared is None:
            return
        detections = self.detector.detect_prepared(staged.prepared).to("cpu")
        index = detections.image_index.numpy()
        state.detections.add(
            np.asarray(staged.rows, dtype=np.int64)[index],
            detections.boxes.to(torch.float32).numpy(),
            detections.scores.to(torch.float32).numpy(),
            detections.class_ids.numpy(),
        )
        state.detect_s += time.perf_counter() - started
        state.num_batches += 1

    def close(self) -> None:
        """Stop the stage thread, dropping batches not started. Idempotent."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _decode_on_device(self, state: ShardState, batch: list[LoadedImage]) -> list[LoadedImage]:
        """Decode the batch's JPEGs on the GPU and record their rows; the items with an image."""
        jpegs = [item for item in batch if item.jpeg is not None]
        if not jpegs:
            return batch
        self.decoder.decode_on_device(jpegs, self.detector.device)
        for item in jpegs:
            if item.image is not None:
                state.set_ok(item.row, *item.image_size)
            else:
                state.set_error(item.row, item.error or "decode: failed")
        return [item for item in batch if item.image is not None]
