"""Batches on the detector's device: staged in a thread of their own, then through the model.

Staging resizes each image into its row of the network batch on the device. An image decoded
on the host is staged alone as soon as its shard takes it (:meth:`DeviceBatches.admit`), so its
full-size pixels are dropped, and their bytes given back to the actor's memory budget, while
the rest of its batch is still loading: a batch never holds a batch's worth of full-size
photos. Staging a batch then decodes its JPEGs left for the GPU, resizes those, and joins the
rows, in plan order. On CUDA all of it runs on a stream of its own, so the staging of batch
N+1 overlaps batch N's forward pass on the model's stream.
"""

from __future__ import annotations

import contextlib
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from pipeline.worker.memory_budget import ROW
from yolov4.detector import PreparedBatch
from yolov4.preprocess import ImageTransforms

if TYPE_CHECKING:
    from pipeline.worker.decode import ImageDecoder
    from pipeline.worker.loaded_image import LoadedImage
    from pipeline.worker.memory_budget import Hold
    from pipeline.worker.shard_output import ShardState
    from yolov4.detector import Detector

#: Channels of a network input row.
_CHANNELS = 3


@dataclass
class BatchEntry:
    """One image of a batch being gathered: its :class:`LoadedImage` and, for an image decoded
    on the host, the future of its own staged row (``staging``: a one-image
    :class:`PreparedBatch`)."""

    item: LoadedImage
    staging: Future | None = None

    @property
    def row(self) -> int:
        """The image's row in its shard's plan."""
        return self.item.row


@dataclass
class StagedBatch:
    """A batch prepared for the model: ``rows`` (plan order) of the images in ``prepared``,
    which is ``None`` when none of the batch decoded; ``decode_s``: GPU decoding time;
    ``holds``: the memory budget its rows hold until the model has run on it."""

    rows: list[int]
    prepared: PreparedBatch | None
    decode_s: float = 0.0
    holds: list[Hold] = field(default_factory=list)


class DeviceBatches:
    """Stages images and batches for ``detector`` in a stage thread, and runs the model on
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
        #: Bytes of one image's row of a network batch in host memory (none on a GPU).
        self.row_bytes = 0 if cuda else row_bytes(detector)

    def admit(self, item: LoadedImage) -> BatchEntry:
        """``item`` joins the batch being gathered; an image decoded on the host is staged
        now, in the stage thread (:meth:`stage_image`)."""
        if item.image is None:  # a JPEG left for the GPU: decoded with its batch
            return BatchEntry(item)
        return BatchEntry(item, self._pool.submit(self.stage_image, item))

    def stage_image(self, item: LoadedImage) -> PreparedBatch:
        """In the stage thread: resize ``item``'s image into its own network row, drop the
        image and hold only the row's bytes of the memory budget."""
        with self._on_stream():
            size = item.image_size
            image, item.image = item.image, None
            prepared = self.detector.prepare([image], image_sizes=[size])
            del image
        if item.hold is not None:
            item.hold.keep(self.row_bytes, ROW)
        return prepared

    def submit(self, state: ShardState, batch: list[BatchEntry]) -> Future:
        """Schedule :meth:`stage` of ``batch`` on the stage thread (after the rows of its
        images, which were submitted before it); a future of its :class:`StagedBatch`."""
        return self._pool.submit(self.stage, state, batch)

    def stage(self, state: ShardState, batch: list[BatchEntry]) -> StagedBatch:
        """In the stage thread: decode the batch's JPEGs left for the GPU (recording their rows
        in ``state``), resize them into rows on the device and join every row into the network
        batch, in plan order; on CUDA all on the stage stream, with an event the model's stream
        waits for (:meth:`Detector.detect_prepared`). On failure the batch's memory is given
        back."""
        holds = [entry.item.hold for entry in batch if entry.item.hold is not None]
        try:
            with self._on_stream():
                for_device = [entry.item for entry in batch if entry.staging is None]
                parts, decode_s = self._device_rows(state, for_device)
                parts += [(e.row, e.staging.result()) for e in batch if e.staging is not None]
                if not parts:
                    return StagedBatch([], None, decode_s, holds)
                parts.sort(key=lambda part: part[0])
                prepared = _join([part for _, part in parts])
                if self._stream is not None:
                    prepared.ready = torch.cuda.Event()
                    prepared.ready.record(self._stream)
        except BaseException:
            for hold in holds:
                hold.release()
            raise
        return StagedBatch([row for row, _ in parts], prepared, decode_s, holds)

    def detect(self, state: ShardState, staging: Future) -> None:
        """The model on a staged batch (waiting for its staging); detections into ``state``:
        boxes ``[n, 4]`` float32 ``x_min, y_min, x_max, y_max`` in the image's own pixels.
        The batch's rows give their memory back afterwards, whatever happened."""
        started = time.perf_counter()
        staged: StagedBatch = staging.result()
        try:
            self._detect(state, staged)
        finally:
            for hold in staged.holds:
                hold.release()
        if staged.prepared is not None:
            state.detect_s += time.perf_counter() - started
            state.num_batches += 1

    def close(self) -> None:
        """Stop the stage thread, dropping work not started. Idempotent."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _detect(self, state: ShardState, staged: StagedBatch) -> None:
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

    def _on_stream(self) -> contextlib.AbstractContextManager:
        """The stage stream on CUDA (work queued there overlaps the model's), else nothing."""
        stream = self._stream
        return torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()

    def _device_rows(
        self, state: ShardState, items: list[LoadedImage]
    ) -> tuple[list[tuple[int, PreparedBatch]], float]:
        """Decode the JPEGs of ``items`` on the GPU (recording their rows in ``state``) and
        resize those decoded, together: ``(row, one-image batch)`` each, and the seconds the
        decoding took."""
        jpegs = [item for item in items if item.jpeg is not None]
        if not jpegs:
            return [], 0.0
        started = time.perf_counter()
        self.decoder.decode_on_device(jpegs, self.detector.device)
        decode_s = time.perf_counter() - started
        decoded = []
        for item in jpegs:
            if item.image is not None:
                state.set_ok(item.row, *item.image_size)
                decoded.append(item)
            else:
                state.set_error(item.row, item.error or "decode: failed")
        if not decoded:
            return [], decode_s
        sizes = [item.image_size for item in decoded]
        images = [item.image for item in decoded]
        for item in decoded:
            item.image = None
        together = self.detector.prepare(images, image_sizes=sizes)
        return [(item.row, _one(together, i)) for i, item in enumerate(decoded)], decode_s


def row_bytes(detector: Detector) -> int:
    """Bytes of one image's row of ``detector``'s network batch: ``3 x net_h x net_w`` in the
    model's dtype."""
    width, height = detector.input_size
    return _CHANNELS * width * height * torch.empty((), dtype=detector.dtype).element_size()


def _one(prepared: PreparedBatch, index: int) -> PreparedBatch:
    """Image ``index`` of ``prepared`` as a one-image batch (views, no copy)."""
    transforms = prepared.transforms
    return PreparedBatch(
        prepared.batch[index : index + 1],
        ImageTransforms(
            transforms.image_sizes[index : index + 1],
            transforms.offset[index : index + 1],
            transforms.scale[index : index + 1],
        ),
    )


def _join(parts: list[PreparedBatch]) -> PreparedBatch:
    """One batch of ``parts``' images, in order."""
    if len(parts) == 1:
        return parts[0]
    transforms = [part.transforms for part in parts]
    return PreparedBatch(
        torch.cat([part.batch for part in parts]),
        ImageTransforms(
            torch.cat([t.image_sizes for t in transforms]),
            torch.cat([t.offset for t in transforms]),
            torch.cat([t.scale for t in transforms]),
        ),
    )
