"""The worker side of a run: one model per process, shards in, Parquet files out.

:class:`ShardProcessor` does the work and knows nothing of Ray (this module imports without it,
so the actor's work can be benchmarked on a machine with only PyTorch);
:class:`pipeline.worker.remote.DetectorActor` wraps it as a Ray actor.

For each shard the processor streams the shard's objects through four overlapping stages::

    fetch (thread pool, fetch_threads)  ->  decode (thread pool, decode_threads)
        -> batches of batch_size decoded images, in plan order
        -> stage (one thread: GPU decoding, copy to the device, resize; on CUDA on a stream of
           its own)  ->  model (forward, decode, NMS; the calling thread)

At most ``lookahead`` images are fetched or decoded ahead of the model, so memory stays flat
however large the shard, while the next images load during each forward pass; and one batch
is staged on the device while the model runs the one before it, so on a GPU the copies, JPEG
decoding and resizing of batch N+1 run beside batch N's forward pass.

Shards overlap too: :meth:`ShardProcessor.process` may run in several threads at once (the Ray
actor takes as many concurrent calls as the driver keeps shards queued on it). The model serves
one shard at a time, in arrival order (:class:`~pipeline.worker.model_turns.ModelTurns`); a
later shard fetches and decodes its first ``lookahead`` images while the one before it
finishes, and the model moves on to it while the earlier one writes its Parquet files. So
neither the ramp-up of a shard's input nor its output write leaves the model idle.

Memory is bounded in bytes: the images an actor holds decoded, and the batch rows it holds in
host memory, stay within its memory budget (:mod:`~pipeline.worker.memory_budget`, sized by
``image_memory`` or from the actor's memory, :mod:`~pipeline.worker.actor_memory`), whatever
the photos' size, the batch size or the look-ahead. Each decode waits for its bytes, in the
order the model will take the images; each image is resized into its network row as soon as
its shard takes it, so a batch never holds full-size photos; the shard on the model keeps half
the budget for itself, so shards prefetching behind it can never starve it.

Per-image failures (missing object, over the byte limit, unreadable, undecodable) become
``images`` rows with status ``error``. A transient read failure (throttling, 5xx, timeout,
dropped connection) is retried per image (:mod:`~pipeline.worker.fetch`); if it persists, it
raises like failures of the model or of writing the output, and the driver retries the whole
shard (never an ``error`` row: that would be final).

The parts, one job each: :mod:`~pipeline.worker.fetch` and :mod:`~pipeline.worker.decode`
behind :mod:`~pipeline.worker.loading` (the thread pools and the lookahead window),
:mod:`~pipeline.worker.device_batches` (staging and the model),
:mod:`~pipeline.worker.model_turns` and :mod:`~pipeline.worker.shard_output` (a shard's rows
and its Parquet files).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import Future

import torch

from pipeline import faults
from pipeline.store.s3 import S3Options
from pipeline.store.schema import STATUS_ERROR
from pipeline.store.uris import is_s3
from pipeline.worker.actor_memory import (
    actor_memory_bytes,
    derived_image_memory,
    process_rss_bytes,
)
from pipeline.worker.decode import ImageDecoder, resolve_decode_mode
from pipeline.worker.device_batches import BatchEntry, DeviceBatches
from pipeline.worker.fetch import Fetcher
from pipeline.worker.loaded_image import LoadedImage
from pipeline.worker.loading import ImageLoader, LoadWindow
from pipeline.worker.memory_budget import MemoryBudget
from pipeline.worker.model_spec import ModelSpec
from pipeline.worker.model_turns import ModelTurns
from pipeline.worker.resources import available_cpus, torch_threads_for
from pipeline.worker.shard_output import ShardState, ShardWriter
from pipeline.worker.sink import class_name_array
from pipeline.worker.storages import ActorStorages
from pipeline.worker.tasks import ActorConfig, ShardResult, ShardTask
from yolov4.imageio import draft_min_size

logger = logging.getLogger(__name__)


class ShardProcessor:
    """Runs shards through one detector; reusable across shards.

    :meth:`process` may be called from several threads at once: the shards share the fetch
    and decode pools and take the model in turns (:class:`ModelTurns`), so one shard's input
    loads and another's output writes while the model works. Not :meth:`close` meanwhile.

    Args:
        spec, weights: the model, built once here on ``config.device``.
        config: batching, concurrency, limits.
        s3_options: non-secret S3 client settings (credentials come from the environment).
        cpus: CPUs to size the decode pool and torch threads by; default :func:`available_cpus`.
    """

    def __init__(
        self,
        spec: ModelSpec,
        weights: bytes,
        config: ActorConfig,
        s3_options: S3Options | None = None,
        *,
        cpus: int | None = None,
    ) -> None:
        self.spec = spec
        self.config = config
        self.cpus = cpus or available_cpus()
        self.torch_threads = torch_threads_for(config.device, self.cpus, config.torch_threads)
        torch.set_num_threads(self.torch_threads)
        started = time.perf_counter()
        self.detector = spec.build_detector(
            weights, device=config.device, precision=config.precision, compile=config.compile
        )
        if config.compile:  # compile now: a failure fails the actor's start, not a shard
            self.detector.warm_up(config.batch_size)
        self.decode_mode = resolve_decode_mode(config.decode, config.device)
        decoder = ImageDecoder(
            self.decode_mode,
            max_image_bytes=config.max_image_bytes,
            max_image_pixels=config.max_image_pixels,
            draft_min_size=draft_min_size(self.detector.input_size),
            pin=self.detector.device.type == "cuda",
        )
        storages = ActorStorages(s3_options, max_pool_connections=config.fetch_threads + 1)
        decode_threads = config.decode_threads or self.cpus
        self._batches = DeviceBatches(self.detector, decoder)
        self._loader = ImageLoader(
            Fetcher(storages, config.max_image_bytes),
            decoder,
            fetch_threads=config.fetch_threads,
            decode_threads=decode_threads,
            row_bytes=self._batches.row_bytes,
        )
        self._writer = ShardWriter(storages, class_name_array(self.detector.class_names))
        self._turns = ModelTurns()
        #: The bytes this actor's decoded images and host-side batch rows may hold.
        self.memory_budget = MemoryBudget(config.image_memory or self._derived_image_memory())
        self._arrival = threading.Lock()  # shards take model turns and budget accounts in one order
        self._closed = False
        logger.info(
            "loaded %s on %s in %.1fs (torch threads %d, fetch threads %d, decode threads %d, "
            "decoding: %s, memory for images %.0f MiB)",
            spec.name,
            self.detector.device,
            time.perf_counter() - started,
            self.torch_threads,
            config.fetch_threads,
            decode_threads,
            self.decode_mode,
            self.memory_budget.capacity / 2**20,
        )

    def process(self, task: ShardTask) -> ShardResult:
        """Detect on every object of the shard and write its two Parquet files."""
        if self._closed:
            raise RuntimeError("this ShardProcessor is closed")
        faults.before_shard(task.shard_id)
        if not is_s3(task.output_root) and not os.path.isabs(task.output_root):
            raise ValueError(f"output root must be s3:// or an absolute path: {task.output_root}")
        started = time.perf_counter()
        objects = task.objects
        state = ShardState(num_images=len(objects))
        with self._arrival:
            feed = _ModelFeed(self._batches, self._turns, state, self.config.batch_size)
            account = self.memory_budget.open()
        window = LoadWindow(
            self._loader,
            objects,
            self.config.window,
            timeout_s=self.config.image_timeout_s,
            final_attempt=task.final_attempt,
            account=account,
        )
        try:
            for loaded in window:
                state.record(loaded, objects[loaded.row].uri)
                if loaded.image is not None or loaded.jpeg is not None:
                    feed.push(loaded)
            feed.finish()
        except BaseException:
            window.cancel()  # queued fetches and decodes of this shard turn into no-ops
            feed.cancel()
            raise
        finally:
            state.wait_s = window.wait_s
            feed.release()  # the next shard's batches run while this one writes
            account.close()  # and what this one still held of the memory budget is free

        files, bytes_written, write_s = self._writer.write(task, state)
        seconds = time.perf_counter() - started
        num_errors = state.status.count(STATUS_ERROR)
        result = ShardResult(
            run_id=task.run_id,
            shard_id=task.shard_id,
            attempt=task.attempt,
            attempt_token=task.attempt_token,
            files=files,
            num_images=len(objects),
            num_ok=len(objects) - num_errors,
            num_errors=num_errors,
            num_detections=len(state.detections),
            bytes_read=state.bytes_read,
            seconds=seconds,
            detect_seconds=state.detect_s,
            fetch_seconds=state.fetch_s,
            decode_seconds=state.decode_s,
            wait_seconds=state.wait_s,
            write_seconds=write_s,
            num_batches=state.num_batches,
            bytes_written=bytes_written,
            queued_seconds=state.queued_s,
        )
        logger.info(
            "shard %d (attempt %d): %d images, %d errors, %d detections in %.2fs "
            "(%.1f images/s; detect %.2fs, waited %.2fs, queued %.2fs, write %.2fs)",
            task.shard_id,
            task.attempt,
            result.num_images,
            result.num_errors,
            result.num_detections,
            seconds,
            result.num_images / seconds if seconds > 0 else 0.0,
            state.detect_s,
            state.wait_s,
            state.queued_s,
            write_s,
        )
        return result

    def _derived_image_memory(self) -> int:
        """The memory budget from the actor's memory (its Ray ``memory``, else its share of
        the machine) less this process's footprint with the model loaded."""
        actor_memory = actor_memory_bytes(self.config.device, self.cpus)
        return derived_image_memory(actor_memory, process_rss_bytes())

    def close(self) -> None:
        """Stop the thread pools and drop the model. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._loader.close()
        self._batches.close()
        device = self.detector.device
        self.detector = self._batches.detector = None
        if device.type == "cuda":
            torch.cuda.empty_cache()

    def __enter__(self) -> ShardProcessor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _ModelFeed:
    """One shard's images gathered into batches on their way through the model, in the
    shard's own thread.

    Each image is staged into its network row as it is pushed (:meth:`DeviceBatches.admit`);
    each full batch is staged (:meth:`DeviceBatches.submit`) while the model runs the batch
    staged before it, so at most two of the shard's batches are on the device at once. The
    shard takes its ticket for the model (:class:`ModelTurns`) when the feed is made, waits
    for its turn before its first model call, and must :meth:`release` the ticket at the end,
    failed or not.
    """

    def __init__(
        self, batches: DeviceBatches, turns: ModelTurns, state: ShardState, batch_size: int
    ) -> None:
        self._batches = batches
        self._turns = turns
        self._state = state
        self._batch_size = batch_size
        self._ticket = turns.take()
        self._has_turn = False
        self._gathering: list[BatchEntry] = []
        self._staged: Future | None = None  # the batch being staged, for the model's next call

    def push(self, item: LoadedImage) -> None:
        """Add ``item`` (decoded, or a JPEG for the GPU) to the batch being gathered; a full
        batch is staged, and the model runs on the one staged before it."""
        self._gathering.append(self._batches.admit(item))
        if len(self._gathering) == self._batch_size:
            self._stage_gathered()

    def finish(self) -> None:
        """Run the model on what is left: the staged batch and the one being gathered."""
        if self._gathering:
            self._stage_gathered()
        self._advance(None)

    def cancel(self) -> None:
        """Give up on the batch being staged and the rows being staged, if any."""
        if self._staged is not None:
            self._staged.cancel()
        for entry in self._gathering:
            if entry.staging is not None:
                entry.staging.cancel()

    def _stage_gathered(self) -> None:
        batch, self._gathering = self._gathering, []
        self._advance(self._batches.submit(self._state, batch))

    def release(self) -> None:
        """Give the model to the next shard (or this shard's place in the queue). Idempotent."""
        self._turns.release(self._ticket)

    def _advance(self, following: Future | None) -> None:
        """Run the model on the staged batch, if any; ``following`` is staged next."""
        if self._staged is not None:
            if not self._has_turn:  # the shards before this one are still on the model
                self._state.queued_s += self._turns.wait(self._ticket)
                self._has_turn = True
            self._batches.detect(self._state, self._staged)
        self._staged = following
