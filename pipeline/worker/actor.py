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
one shard at a time, in arrival order (:class:`ModelTurns`); a later shard fetches and decodes
its first ``lookahead`` images while the one before it finishes, and the model moves on to it
while the earlier one writes its Parquet files. So neither the ramp-up of a shard's input nor
its output write leaves the model idle, and memory stays bounded by one window (and at most
two staged batches) per queued shard.

Per-image failures (missing object, over the byte limit, unreadable, undecodable) become
``images`` rows with status ``error``. A transient read failure (throttling, 5xx, timeout,
dropped connection) is retried per image; if it persists, it raises like failures of the model
or of writing the output, and the driver retries the whole shard (never an ``error`` row: that
would be final).
Each shard's two tables are written as one Parquet file each, named by the attempt token,
straight to the output.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import torch

from pipeline import faults
from pipeline.store.layout import DETECTIONS_TABLE, IMAGES_TABLE, OutputLayout
from pipeline.store.s3 import S3Options
from pipeline.store.schema import STATUS_ERROR, STATUS_OK
from pipeline.store.storage import (
    LocalStorage,
    ObjectTooLargeError,
    S3Storage,
    StorageError,
    TransientStorageError,
    is_transient,
    retry_delay,
)
from pipeline.store.uris import is_s3
from pipeline.worker.decode_modes import (
    DECODE_AUTO,
    DECODE_CPU,
    DECODE_DRAFT,
    DECODE_GPU,
    DECODE_MODES,
)
from pipeline.worker.model_spec import ModelSpec
from pipeline.worker.sink import DetectionsBuffer, class_name_array, images_table, write_parquet
from yolov4.detector import PreparedBatch
from yolov4.errors import ImageDecodeError
from yolov4.gpu_jpeg import decode_jpegs, encoded, gpu_decodable, gpu_jpeg_available
from yolov4.imageio import (
    DEFAULT_MAX_IMAGE_BYTES,
    DEFAULT_MAX_IMAGE_PIXELS,
    decode_image,
    decode_image_reduced,
    draft_min_size,
)

if TYPE_CHECKING:
    from pipeline.store.sources import SourceObject

logger = logging.getLogger(__name__)

#: Longest free-text detail kept in a ``fetch: ...`` / ``decode: ...`` error message.
MAX_REASON_CHARS = 120
ERROR_NOT_FOUND = "not found"
#: Reads of one image that failed transiently (throttled, 5xx, timed out, connection dropped,
#: after the storage layer's own retries) before the shard attempt gives up: never an error
#: row, which would lose the image for good, since a resume skips committed shards.
FETCH_ATTEMPTS = 3
#: Delay before the first per-image retry; doubles each time, capped, with jitter.
FETCH_RETRY_BACKOFF_S = 0.5
FETCH_RETRY_BACKOFF_MAX_S = 4.0
_DOT_SEGMENT = re.compile(r"^s3://[^/]+/(?:.*/)?\.{1,2}(?:/|$)")
_ACCESS_KEY_RE = re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA)[A-Z0-9]{12,}\b")


#: Torch CPU threads of an actor whose model runs on CUDA, unless configured: its host-side
#: tensor work (copies into pinned memory, small post-processing) runs on the decode threads
#: and the model thread, each of which would otherwise start an OpenMP team of all the CPUs.
CUDA_TORCH_THREADS = 1


@dataclass(frozen=True)
class ActorConfig:
    """How an actor runs: batching, I/O concurrency, decoding, limits and device.

    ``lookahead``: images fetched or decoded ahead of the model (bounds memory); default
    ``max(fetch_threads, 2 * batch_size)``. ``decode``: one of :data:`DECODE_MODES`.
    ``compile``: the detector's ``torch.compile`` option.
    """

    batch_size: int = 8
    fetch_threads: int = 16
    decode_threads: int | None = None
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    device: str = "cpu"
    precision: str = "fp32"
    torch_threads: int | None = None
    lookahead: int | None = None
    decode: str = DECODE_AUTO
    compile: bool = False

    def __post_init__(self) -> None:
        if self.decode not in DECODE_MODES:
            raise ValueError(f"decode must be one of {DECODE_MODES}, got {self.decode!r}")
        for name in ("batch_size", "fetch_threads", "max_image_bytes", "max_image_pixels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("decode_threads", "torch_threads", "lookahead"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1 (or None), got {value}")

    @property
    def window(self) -> int:
        return self.lookahead or max(self.fetch_threads, 2 * self.batch_size)


@dataclass(frozen=True)
class ShardTask:
    """One attempt at one shard: what to read (in plan order) and where to write."""

    run_id: str
    shard_id: int
    attempt: int
    attempt_token: str
    output_root: str
    objects: tuple[SourceObject, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "objects", tuple(self.objects))


@dataclass(frozen=True)
class ShardResult:
    """What one shard attempt wrote, with counts and timings.

    Timings in seconds: ``seconds`` wall time of the attempt; ``detect_seconds`` in the model
    (preprocessing, forward, decode, NMS, copy to host); ``fetch_seconds`` / ``decode_seconds``
    summed over the I/O and decode threads; ``wait_seconds`` the model side spent waiting for
    decoded images (near zero when I/O keeps up); ``queued_seconds`` waiting for the model to
    finish the shards that arrived before this one (its first images load meanwhile);
    ``write_seconds`` serialising and writing the Parquet files.
    """

    run_id: str
    shard_id: int
    attempt: int
    attempt_token: str
    files: dict[str, str]
    num_images: int
    num_ok: int
    num_errors: int
    num_detections: int
    bytes_read: int
    seconds: float
    detect_seconds: float
    fetch_seconds: float = 0.0
    decode_seconds: float = 0.0
    wait_seconds: float = 0.0
    write_seconds: float = 0.0
    num_batches: int = 0
    bytes_written: int = 0
    queued_seconds: float = 0.0


@dataclass
class _Loaded:
    """One object on its way through fetch and decode.

    After decoding, exactly one of ``image`` (decoded on the host: ``[3, H, W]`` uint8, pinned
    when the model is on CUDA), ``jpeg`` (a JPEG's bytes as an ``[N]`` uint8 tensor, left for
    the GPU to decode with its batch) and ``error`` is set. ``display_size``: ``(width,
    height)`` of the full image when ``image`` was decoded at a reduced scale (draft
    decoding), else ``None``.
    """

    row: int
    data: bytes | None = None
    image: torch.Tensor | None = None
    jpeg: torch.Tensor | None = None
    display_size: tuple[int, int] | None = None
    error: str | None = None
    size: int | None = None
    etag: str | None = None
    nbytes: int = 0
    fetch_s: float = 0.0
    decode_s: float = 0.0


@dataclass
class _Staged:
    """A batch prepared for the model by the stage thread: ``rows`` (plan order) of the images
    in ``prepared``, which is ``None`` when none of the batch decoded; ``decode_s``: GPU
    decoding time."""

    rows: list[int]
    prepared: PreparedBatch | None
    decode_s: float = 0.0


@dataclass
class _ShardState:
    """Per-shard accumulators, touched only by the calling thread; the per-image columns are
    indexed by row (plan order) and filled as each image's outcome is known."""

    num_images: int
    detections: DetectionsBuffer = field(default_factory=DetectionsBuffer)
    status: list[str | None] = field(default_factory=list)
    error: list[str | None] = field(default_factory=list)
    width: list[int | None] = field(default_factory=list)
    height: list[int | None] = field(default_factory=list)
    etag: list[str | None] = field(default_factory=list)
    size: list[int | None] = field(default_factory=list)
    bytes_read: int = 0
    fetch_s: float = 0.0
    decode_s: float = 0.0
    wait_s: float = 0.0
    queued_s: float = 0.0
    detect_s: float = 0.0
    num_batches: int = 0

    def __post_init__(self) -> None:
        for column in (self.status, self.error, self.width, self.height, self.etag, self.size):
            column.extend([None] * self.num_images)

    def set_ok(self, row: int, width: int, height: int) -> None:
        self.status[row], self.error[row] = STATUS_OK, None
        self.width[row], self.height[row] = int(width), int(height)

    def set_error(self, row: int, error: str) -> None:
        self.status[row], self.error[row] = STATUS_ERROR, error
        self.width[row] = self.height[row] = None


class ModelTurns:
    """The model's turns among concurrent shards: one shard at a time, in arrival order.

    A shard takes a ticket when it starts (:meth:`take`), waits for its turn before its first
    batch (:meth:`wait`) and releases the ticket after its last batch or when it fails
    (:meth:`release`), so the next shard's batches start while it writes its output. A ticket
    released before its turn (a shard that failed early) is skipped.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._issued = 0
        self._serving = 0
        self._released: set[int] = set()

    def take(self) -> int:
        with self._changed:
            ticket = self._issued
            self._issued += 1
            return ticket

    def wait(self, ticket: int) -> float:
        """Block until ``ticket``'s turn; returns the seconds waited."""
        started = time.perf_counter()
        with self._changed:
            self._changed.wait_for(lambda: self._serving == ticket)
        return time.perf_counter() - started

    def release(self, ticket: int) -> None:
        """Give up ``ticket``'s turn, or its place in the queue. Idempotent."""
        with self._changed:
            self._released.add(ticket)
            while self._serving in self._released:
                self._released.discard(self._serving)
                self._serving += 1
            self._changed.notify_all()


def available_cpus() -> int:
    """CPUs this process may use: its Ray CPU allocation inside an actor, else its affinity."""
    ray = sys.modules.get("ray")  # only inside a Ray worker or driver is it imported
    if ray is not None and ray.is_initialized():
        try:
            assigned = ray.get_runtime_context().get_assigned_resources().get("CPU")
        except Exception:  # not in a worker, or an older runtime context
            assigned = None
        if assigned:
            return max(1, round(assigned))
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


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
        cuda = config.device.startswith("cuda")
        self.torch_threads = config.torch_threads or (CUDA_TORCH_THREADS if cuda else self.cpus)
        torch.set_num_threads(self.torch_threads)
        started = time.perf_counter()
        self.detector = spec.build_detector(
            weights, device=config.device, precision=config.precision, compile=config.compile
        )
        if config.compile:  # compile now: a failure fails the actor's start, not a shard
            self.detector.warm_up(config.batch_size)
        self._class_names = class_name_array(self.detector.class_names)
        self.decode_mode = resolve_decode_mode(config.decode, config.device)
        self._pin = self.detector.device.type == "cuda"
        self._draft_min_size = draft_min_size(self.detector.input_size)
        self._local = LocalStorage()
        self._s3 = S3Storage(s3_options, max_pool_connections=config.fetch_threads + 1)
        self._fetch_pool = ThreadPoolExecutor(config.fetch_threads, thread_name_prefix="fetch")
        self._decode_pool = ThreadPoolExecutor(
            config.decode_threads or self.cpus, thread_name_prefix="decode"
        )
        # One thread stages the next batch on the device, on a CUDA stream of its own.
        self._stage_pool = ThreadPoolExecutor(1, thread_name_prefix="stage")
        self._stage_stream = torch.cuda.Stream(self.detector.device) if self._pin else None
        self._turns = ModelTurns()
        self._closed = False
        logger.info(
            "loaded %s on %s in %.1fs (torch threads %d, fetch threads %d, decode threads %d, "
            "decoding: %s)",
            spec.name,
            self.detector.device,
            time.perf_counter() - started,
            self.torch_threads,
            config.fetch_threads,
            config.decode_threads or self.cpus,
            self.decode_mode,
        )

    # ----------------------------------------------------------------- public
    def process(self, task: ShardTask) -> ShardResult:
        """Detect on every object of the shard and write its two Parquet files."""
        if self._closed:
            raise RuntimeError("this ShardProcessor is closed")
        faults.before_shard(task.shard_id)
        if not is_s3(task.output_root) and not os.path.isabs(task.output_root):
            raise ValueError(f"output root must be s3:// or an absolute path: {task.output_root}")
        started = time.perf_counter()
        objects = task.objects
        state = _ShardState(num_images=len(objects))
        cancel = threading.Event()
        pending: deque[Future] = deque()
        next_row = 0

        def refill() -> None:
            nonlocal next_row
            while len(pending) < self.config.window and next_row < len(objects):
                pending.append(self._start(next_row, objects[next_row], cancel))
                next_row += 1

        batch: list[_Loaded] = []
        ticket = self._turns.take()
        has_turn = False
        staged: Future | None = None  # the batch being staged, for the model's next call

        def detect(batch: list[_Loaded] | None) -> None:
            """Stage ``batch`` and run the model on the one staged before it (``None``: only
            run the last staged batch)."""
            nonlocal has_turn, staged
            following = self._stage_pool.submit(self._stage, state, batch) if batch else None
            if staged is not None:
                if not has_turn:  # the shards before this one are still on the model
                    state.queued_s += self._turns.wait(ticket)
                    has_turn = True
                self._detect(state, staged)
            staged = following

        try:
            refill()
            while pending:
                waited = time.perf_counter()
                loaded: _Loaded = pending.popleft().result()
                state.wait_s += time.perf_counter() - waited
                refill()  # keep the window full while the model runs
                self._record(state, objects[loaded.row], loaded)
                if loaded.image is not None or loaded.jpeg is not None:
                    batch.append(loaded)
                    if len(batch) == self.config.batch_size:
                        detect(batch)
                        batch = []
            detect(batch)
            detect(None)
        except BaseException:
            cancel.set()  # queued fetches and decodes of this shard turn into no-ops
            for future in (*pending, *([staged] if staged else [])):
                future.cancel()
            raise
        finally:
            self._turns.release(ticket)  # the next shard's batches run while this one writes

        files, bytes_written, write_s = self._write(task, state, objects)
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

    def close(self) -> None:
        """Stop the thread pools and drop the model. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._fetch_pool.shutdown(wait=True, cancel_futures=True)
        self._decode_pool.shutdown(wait=True, cancel_futures=True)
        self._stage_pool.shutdown(wait=True, cancel_futures=True)
        device = self.detector.device
        self.detector = None
        if device.type == "cuda":
            torch.cuda.empty_cache()

    def __enter__(self) -> ShardProcessor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- stages
    def _storage(self, uri: str) -> LocalStorage | S3Storage:
        return self._s3 if is_s3(uri) else self._local

    def _start(self, row: int, obj: Any, cancel: threading.Event) -> Future:
        """Schedule fetch then decode of one object; the future gives its :class:`_Loaded`."""
        out: Future = Future()
        fetched = self._fetch_pool.submit(self._fetch, row, obj, cancel)

        def on_fetched(future: Future) -> None:
            if future.cancelled():
                out.cancel()
                return
            exc = future.exception()
            if exc is not None:
                _settle(out, exception=exc)
                return
            loaded: _Loaded = future.result()
            if loaded.data is None:  # failed, cancelled, or left for the GPU: no host decode
                _settle(out, loaded)
                return
            try:
                self._decode_pool.submit(self._decode, loaded, out, cancel)
            except RuntimeError as err:  # the pool was shut down
                _settle(out, exception=err)

        fetched.add_done_callback(on_fetched)
        return out

    def _fetch(self, row: int, obj: Any, cancel: threading.Event) -> _Loaded:
        uri: str = obj.uri
        size: int | None = getattr(obj, "size", None)
        loaded = _Loaded(row=row, size=size, etag=getattr(obj, "etag", None))
        if cancel.is_set():
            loaded.error = "fetch: cancelled"
            return loaded
        limit = self.config.max_image_bytes
        if size is not None and size > limit:  # known from the listing: skip the download
            loaded.error = _too_large(size, limit)
            return loaded
        started = time.perf_counter()
        storage = self._storage(uri)
        try:
            if loaded.etag is None and storage is self._local:
                info = storage.info(uri)
                loaded.etag, loaded.size = info.etag, info.size
            data = self._read(storage, uri, limit, cancel)
        except TransientStorageError:
            raise  # fails the shard attempt: the driver retries it, or a resume does
        except (FileNotFoundError, NotADirectoryError):
            loaded.error = ERROR_NOT_FOUND
            loaded.size, loaded.etag = size, getattr(obj, "etag", None)
        except ObjectTooLargeError as exc:
            loaded.size = exc.size
            loaded.error = _too_large(exc.size, exc.limit)
        except Exception as exc:
            loaded.error = f"fetch: {_fetch_reason(exc, uri)}"
            loaded.size, loaded.etag = size, getattr(obj, "etag", None)
        else:
            loaded.size = loaded.nbytes = len(data)
            if self.decode_mode == DECODE_GPU and gpu_decodable(data, self.config.max_image_pixels):
                loaded.jpeg = encoded(data)  # for the GPU, with its batch: no decode thread
            else:
                loaded.data = data
        loaded.fetch_s = time.perf_counter() - started
        return loaded

    def _read(self, storage, uri: str, limit: int, cancel: threading.Event) -> bytes:
        """``storage.read_bytes``, retried on transient failures (:data:`FETCH_ATTEMPTS`).

        Permanent failures (missing, too large, access denied) raise at once; a transient one
        that outlasts the retries raises :class:`TransientStorageError` for the whole shard.
        """
        for attempt in range(1, FETCH_ATTEMPTS + 1):
            try:
                return storage.read_bytes(uri, max_bytes=limit)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                reason = _fetch_reason(exc, uri)
                if attempt == FETCH_ATTEMPTS or cancel.is_set():
                    raise TransientStorageError(
                        f"could not read {uri} in {attempt} attempt(s) ({reason}): the store is "
                        "throttling or unreachable; the shard will be retried, and if it runs "
                        "out of attempts, resume the run later (--resume)"
                    ) from None
                delay = retry_delay(attempt, FETCH_RETRY_BACKOFF_S, FETCH_RETRY_BACKOFF_MAX_S)
                logger.warning(
                    "reading %s failed (%s); try %d of %d in %.1f s",
                    uri,
                    reason,
                    attempt + 1,
                    FETCH_ATTEMPTS,
                    delay,
                )
                if cancel.wait(delay):  # the shard gave up meanwhile
                    raise TransientStorageError(f"reading {uri}: cancelled") from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _decode(self, loaded: _Loaded, out: Future, cancel: threading.Event) -> None:
        if out.cancelled():
            return
        try:
            data, loaded.data = loaded.data, None
            if cancel.is_set():
                loaded.error = "decode: cancelled"
            elif len(data) > self.config.max_image_bytes:
                loaded.error = _too_large(len(data), self.config.max_image_bytes)
            else:
                started = time.perf_counter()
                self._decode_on_host(loaded, data, draft=self.decode_mode == DECODE_DRAFT)
                loaded.decode_s = time.perf_counter() - started
        except BaseException as exc:
            _settle(out, exception=exc)
            return
        _settle(out, loaded)

    def _decode_on_host(self, loaded: _Loaded, data: bytes, *, draft: bool) -> None:
        """Decode ``data`` with Pillow into ``loaded.image`` (or ``loaded.error``); ``draft``:
        large JPEGs at a reduced scale keeping at least twice the network input."""
        limits = dict(
            max_pixels=self.config.max_image_pixels, max_bytes=self.config.max_image_bytes
        )
        try:
            if draft:
                decoded = decode_image_reduced(data, min_size=self._draft_min_size, **limits)
                pixels = decoded.pixels
                if decoded.reduced:
                    loaded.display_size = decoded.size
            else:
                pixels = decode_image(data, **limits)
        except ImageDecodeError as exc:
            loaded.error = str(exc)
            return
        except Exception as exc:  # a decoder bug must cost one image, not the shard
            loaded.error = f"decode: {type(exc).__name__}: {_shorten(str(exc))}"
            return
        image = torch.from_numpy(pixels)
        if self._pin:  # the host-to-device copy then runs asynchronously
            image = image.pin_memory()
        loaded.image = image.permute(2, 0, 1)

    def _record(self, state: _ShardState, obj: Any, loaded: _Loaded) -> None:
        row = loaded.row
        state.fetch_s += loaded.fetch_s
        state.decode_s += loaded.decode_s
        state.bytes_read += loaded.nbytes
        state.etag[row] = loaded.etag
        state.size[row] = loaded.size
        if loaded.image is not None:
            state.set_ok(row, *(loaded.display_size or _width_height(loaded.image)))
        elif loaded.jpeg is None:  # a JPEG for the GPU is recorded once decoded
            state.set_error(row, loaded.error or "fetch: unknown failure")
            if loaded.error:
                logger.debug("%s: %s", obj.uri, loaded.error)

    def _decode_on_device(self, state: _ShardState, batch: list[_Loaded]) -> list[_Loaded]:
        """Decode the batch's JPEGs on the GPU in one call and record their rows; files nvJPEG
        fails on are decoded on the host instead. Returns the items that have an image."""
        jpegs = [item for item in batch if item.jpeg is not None]
        if not jpegs:
            return batch
        images = decode_jpegs([item.jpeg for item in jpegs], self.detector.device)
        for item, image in zip(jpegs, images):
            data, item.jpeg = item.jpeg, None
            if image is None:  # nvJPEG failed: Pillow decodes it, or says what is wrong
                self._decode_on_host(item, data.numpy().tobytes(), draft=False)
            else:
                item.image = image
            if item.image is not None:
                state.set_ok(item.row, *_width_height(item.image))
            else:
                state.set_error(item.row, item.error or "decode: failed")
        return [item for item in batch if item.image is not None]

    def _stage(self, state: _ShardState, batch: list[_Loaded]) -> _Staged:
        """In the stage thread: decode the batch's JPEGs left for the GPU, copy the images to
        the device and resize them into the network batch; on CUDA all on the stage stream,
        with an event the model's stream waits for (:meth:`Detector.detect_prepared`)."""
        stream = self._stage_stream
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            started = time.perf_counter()
            batch = self._decode_on_device(state, batch)
            decode_s = time.perf_counter() - started if self.decode_mode == DECODE_GPU else 0.0
            if not batch:
                return _Staged([], None, decode_s)
            sizes = [item.display_size or _width_height(item.image) for item in batch]
            images = [item.image for item in batch]
            for item in batch:
                item.image = None
            prepared = self.detector.prepare(images, image_sizes=sizes)
            if stream is not None:
                prepared.ready = torch.cuda.Event()
                prepared.ready.record(stream)
        return _Staged([item.row for item in batch], prepared, decode_s)

    def _detect(self, state: _ShardState, staging: Future) -> None:
        """The model on a staged batch (waiting for its staging); detections into ``state``."""
        started = time.perf_counter()
        staged: _Staged = staging.result()
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

    def _write(
        self, task: ShardTask, state: _ShardState, objects: tuple
    ) -> tuple[dict[str, str], int, float]:
        started = time.perf_counter()
        uris = pa.array([obj.uri for obj in objects], type=pa.string())
        tables = {
            DETECTIONS_TABLE: state.detections.table(uris, self._class_names, task.run_id),
            IMAGES_TABLE: images_table(
                image_uris=uris,
                status=state.status,
                error=state.error,
                width=state.width,
                height=state.height,
                num_detections=state.detections.counts(len(objects)),
                etag=state.etag,
                size_bytes=state.size,
                run_id=task.run_id,
                shard_id=task.shard_id,
            ),
        }
        layout = OutputLayout(task.output_root)
        storage = self._storage(task.output_root)
        files: dict[str, str] = {}
        written = 0
        for name, table in tables.items():
            uri = layout.data_file(name, task.run_id, task.shard_id, task.attempt_token)
            written += write_parquet(storage, uri, table)
            files[name] = uri
        return files, written, time.perf_counter() - started


def _settle(
    future: Future, result: _Loaded | None = None, *, exception: BaseException | None = None
) -> None:
    """Complete ``future`` unless it was cancelled meanwhile (the shard gave up on it)."""
    try:
        if exception is not None:
            future.set_exception(exception)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass


# --------------------------------------------------------------------------- messages


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


def _width_height(image: torch.Tensor) -> tuple[int, int]:
    """``(width, height)`` of a ``[3, H, W]`` image."""
    return int(image.shape[2]), int(image.shape[1])


def _too_large(size: int, limit: int) -> str:
    return f"too large: {size} bytes, over the limit of {limit}"


def _fetch_reason(exc: BaseException, uri: str) -> str:
    """A short, credential-free reason for a failed read (without the ``fetch: `` prefix)."""
    if isinstance(exc, IsADirectoryError):
        return "is a directory"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, StorageError):
        text = str(exc)
        for pattern in (f"{uri}: ", f" to {uri}", f" of {uri}", uri):
            text = text.replace(pattern, "")
        text = text.split("; ")[0] or type(exc).__name__
        if _DOT_SEGMENT.search(uri):
            # AWS accepts such keys; many S3-compatible stores refuse them with a bare
            # InvalidRequest that says nothing of the cause.
            text = f"key has '.' or '..' segments, which this store refuses ({text})"
        return _shorten(text)
    if isinstance(exc, OSError) and exc.strerror:
        return _shorten(exc.strerror.lower())
    text = str(exc).replace(uri, "")
    return f"{type(exc).__name__}: {_shorten(text)}" if text.strip() else type(exc).__name__


def _shorten(text: str) -> str:
    text = _ACCESS_KEY_RE.sub("<key>", " ".join(text.split()))
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 3] + "..."
