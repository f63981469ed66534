"""Planning a run: enumerate the source once, cut it into fixed-size shards, persist them.

Each shard's objects are written as a small Parquet file under the run; ``plan.json`` is
written last and marks the plan complete. A resume reads the plan back, so it processes
exactly the same shards even if the source changed meanwhile. The driver holds one shard's
objects at a time while planning: memory grows with the shard size, not the object count.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.store.layout import OutputLayout
from pipeline.store.schema import PARQUET_COMPRESSION, PLAN_SCHEMA
from pipeline.store.storage import Storage

logger = logging.getLogger(__name__)

#: Concurrent shard-plan writes (S3 PUTs are latency-bound).
PLAN_WRITE_THREADS = 8
#: Shard files written but not yet confirmed, at most (bounds memory while planning).
PLAN_WRITES_IN_FLIGHT = 32
DEFAULT_SHARD_SIZE = 1000


@dataclass(frozen=True)
class PlannedObject:
    """One object of a shard: URI, size in bytes and version tag when known."""

    uri: str
    size: int | None
    etag: str | None


@dataclass(frozen=True)
class PlanSummary:
    run_id: str
    source: str
    shard_size: int
    num_shards: int
    num_images: int


def write_plan(
    objects: Iterable,
    *,
    storage: Storage,
    layout: OutputLayout,
    run_id: str,
    source: str,
    shard_size: int = DEFAULT_SHARD_SIZE,
    on_shard: Callable[[int, int], None] | None = None,
) -> PlanSummary:
    """Cut ``objects`` (anything with ``uri``, ``size``, ``etag``) into shards and persist them.

    ``on_shard(shards_so_far, images_so_far)`` is called after each shard is queued, for
    progress. Returns the summary, which is also written as ``plan.json``.
    """
    if shard_size < 1:
        raise ValueError(f"shard size must be at least 1, got {shard_size}")
    num_shards = num_images = 0
    pending: set[Future] = set()
    with ThreadPoolExecutor(PLAN_WRITE_THREADS, thread_name_prefix="plan") as pool:
        batch: list = []

        def flush() -> None:
            nonlocal num_shards, batch
            data = _shard_bytes(batch)
            uri = layout.plan_shard(run_id, num_shards)
            pending.add(pool.submit(storage.write_bytes, uri, data))
            num_shards += 1
            batch = []
            if len(pending) >= PLAN_WRITES_IN_FLIGHT:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    pending.discard(future)
                    future.result()
            if on_shard:
                on_shard(num_shards, num_images)

        for obj in objects:
            batch.append(obj)
            num_images += 1
            if len(batch) == shard_size:
                flush()
        if batch:
            flush()
        for future in pending:
            future.result()
    summary = PlanSummary(run_id, source, shard_size, num_shards, num_images)
    storage.write_bytes(layout.plan_summary(run_id), json.dumps(asdict(summary)).encode())
    logger.info("planned %d images in %d shards of up to %d", num_images, num_shards, shard_size)
    return summary


def _shard_bytes(objects: list) -> bytes:
    table = pa.table(
        {
            "uri": pa.array([o.uri for o in objects], pa.string()),
            "size": pa.array([o.size for o in objects], pa.int64()),
            "etag": pa.array([o.etag for o in objects], pa.string()),
        },
        schema=PLAN_SCHEMA,
    )
    sink = io.BytesIO()
    pq.write_table(table, sink, compression=PARQUET_COMPRESSION)
    return sink.getvalue()


def read_plan_summary(storage: Storage, layout: OutputLayout, run_id: str) -> PlanSummary | None:
    """The run's plan summary, or ``None`` if planning never finished."""
    try:
        data = storage.read_bytes(layout.plan_summary(run_id))
    except FileNotFoundError:
        return None
    return PlanSummary(**json.loads(data))


def read_shard(
    storage: Storage, layout: OutputLayout, run_id: str, shard_id: int
) -> tuple[PlannedObject, ...]:
    """The objects of one planned shard, in plan order."""
    table = pq.read_table(io.BytesIO(storage.read_bytes(layout.plan_shard(run_id, shard_id))))
    columns = table.to_pydict()
    return tuple(
        PlannedObject(uri, size, etag)
        for uri, size, etag in zip(columns["uri"], columns["size"], columns["etag"], strict=True)
    )
