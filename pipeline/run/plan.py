"""A run's plan as stored: shard files, the planning checkpoint, and the summary.

Each shard's objects are a small Parquet file under the run (``plan/shard-NNNNNN.parquet``).
While the listing goes on, ``plan-checkpoint.json`` records how far planning got: the shards
written so far, the listing's position after their objects, and the objects listed but not yet
in a shard; a resumed run continues from it (:mod:`pipeline.run.planner`). ``plan.json``,
written last, marks the plan complete: a resume then processes exactly the same shards even if
the source changed meanwhile.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.store.layout import OutputLayout
from pipeline.store.schema import PARQUET_COMPRESSION, PLAN_SCHEMA
from pipeline.store.storage import Storage

#: Version of ``plan-checkpoint.json``; another version is not resumed from.
CHECKPOINT_VERSION = 1


@dataclass(frozen=True)
class PlannedObject:
    """One object of a shard: URI, size in bytes and version tag when known."""

    uri: str
    size: int | None
    etag: str | None


@dataclass(frozen=True)
class PlanSummary:
    """A complete plan: ``num_shards`` shards holding ``num_images`` objects, the largest
    ``shard_size`` of them; ``duplicates``: entries of the source left out because their URI
    was listed before (0 in plans written before it was counted); ``skipped``: files left out
    for their extension, by extension (empty in plans written before they were counted)."""

    run_id: str
    source: str
    shard_size: int
    num_shards: int
    num_images: int
    duplicates: int = 0
    skipped: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class PlanCheckpoint:
    """How far planning got: shards ``0 .. shards-1`` (``images`` objects, the largest of
    ``largest_shard``) are written; ``listing`` is the listing's checkpoint after them, and
    ``carry`` the objects listed before that point but not yet in a shard (``[uri, size,
    etag]`` each). ``objects_listed``: objects the listing had passed (for progress), of
    which ``duplicates`` were left out as their URI was listed before (a resumed listing
    counts them again as it passes them); ``extra``: what the planner's caller keeps with it
    (an incremental run's counts)."""

    shards: int = 0
    images: int = 0
    largest_shard: int = 0
    objects_listed: int = 0
    duplicates: int = 0
    listing: dict | None = None
    carry: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    version: int = CHECKPOINT_VERSION


def write_checkpoint(
    storage: Storage, layout: OutputLayout, run_id: str, checkpoint: PlanCheckpoint
) -> None:
    body = json.dumps(asdict(checkpoint), separators=(",", ":")).encode()
    storage.write_bytes(layout.plan_checkpoint(run_id), body)


def read_checkpoint(storage: Storage, layout: OutputLayout, run_id: str) -> PlanCheckpoint | None:
    """The run's planning checkpoint, or ``None`` when planning never wrote one (or one of
    another version, which is then planned again from the start)."""
    try:
        data = json.loads(storage.read_bytes(layout.plan_checkpoint(run_id)))
    except FileNotFoundError:
        return None
    if data.get("version") != CHECKPOINT_VERSION:
        return None
    return PlanCheckpoint(**data)


def write_plan_summary(storage: Storage, layout: OutputLayout, summary: PlanSummary) -> None:
    storage.write_bytes(layout.plan_summary(summary.run_id), json.dumps(asdict(summary)).encode())


def shard_bytes(objects: list) -> bytes:
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
