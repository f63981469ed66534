"""The values an actor works with: how it runs (:class:`ActorConfig`), one attempt at one shard
(:class:`ShardTask`) and what that attempt wrote (:class:`ShardResult`).

Plain frozen dataclasses: they cross the Ray boundary by pickling and import without torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.worker.decode_modes import DECODE_AUTO, DECODE_MODES
from yolov4.imageio import DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_IMAGE_PIXELS

if TYPE_CHECKING:
    from pipeline.store.sources import SourceObject
    from pipeline.store.tables import DataFile


#: Images per forward pass unless a run or a benchmark says otherwise.
DEFAULT_BATCH_SIZE = 8
#: Concurrent object reads per actor: enough to hide S3's first-byte latency behind a batch.
DEFAULT_FETCH_THREADS = 16
#: Seconds an image's fetch and decode may take together unless configured: far beyond a slow
#: read of a large object (botocore's own retries under throttling included), so only a read
#: that hangs meets it (:mod:`~pipeline.worker.deadlines`).
DEFAULT_IMAGE_TIMEOUT_S = 300.0


class ActorUnhealthyError(RuntimeError):
    """The actor cannot work any more (e.g. its read threads are stuck on reads that never
    return, or its device is in a sticky error state): the driver replaces it. The message
    says what is wrong."""


@dataclass(frozen=True)
class ActorConfig:
    """How an actor runs: batching, I/O concurrency, decoding, limits and device.

    ``lookahead``: images fetched or decoded ahead of the model (bounds memory); default
    ``max(fetch_threads, 2 * batch_size)``. ``decode``: one of :data:`DECODE_MODES`.
    ``compile``: the detector's ``torch.compile`` option. ``image_timeout_s``: the longest an
    image's fetch and decode may take (:mod:`~pipeline.worker.deadlines`). ``image_memory``:
    bytes the actor's decoded images (and batch rows in host memory) may hold
    (:mod:`~pipeline.worker.memory_budget`); ``None``: derived from the actor's memory
    (:mod:`~pipeline.worker.actor_memory`).
    """

    batch_size: int = DEFAULT_BATCH_SIZE
    fetch_threads: int = DEFAULT_FETCH_THREADS
    decode_threads: int | None = None
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    device: str = "cpu"
    precision: str = "fp32"
    torch_threads: int | None = None
    lookahead: int | None = None
    decode: str = DECODE_AUTO
    compile: bool = False
    image_timeout_s: float = DEFAULT_IMAGE_TIMEOUT_S
    image_memory: int | None = None

    def __post_init__(self) -> None:
        if self.decode not in DECODE_MODES:
            raise ValueError(f"decode must be one of {DECODE_MODES}, got {self.decode!r}")
        for name in ("batch_size", "fetch_threads", "max_image_bytes", "max_image_pixels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.image_timeout_s > 0:
            raise ValueError(f"image_timeout_s must be positive, got {self.image_timeout_s}")
        for name in ("decode_threads", "torch_threads", "lookahead", "image_memory"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1 (or None), got {value}")

    @property
    def window(self) -> int:
        return self.lookahead or max(self.fetch_threads, 2 * self.batch_size)


@dataclass(frozen=True)
class ShardTask:
    """One attempt at one shard: what to read (in plan order) and where to write.

    ``final_attempt``: the shard's last attempt; an image that outlasts its deadline then
    becomes an ``error`` row instead of failing the attempt (:mod:`~pipeline.worker.deadlines`).
    """

    run_id: str
    shard_id: int
    attempt: int
    attempt_token: str
    output_root: str
    objects: tuple[SourceObject, ...]
    final_attempt: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "objects", tuple(self.objects))


@dataclass(frozen=True)
class ShardResult:
    """What one shard attempt wrote, with counts and timings.

    ``files``: the attempt's data files by table, with the sizes and statistics that the
    driver records in the tables' logs when it commits the shard.

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
    files: dict[str, DataFile]
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
