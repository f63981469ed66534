"""Step 4 of a run: its plan of shards, and the plan's size in the run record and progress.

A resumed run whose plan is complete reads it back. Otherwise the plan is written from the
source's listing (:func:`~pipeline.run.plan.write_plan`); an incremental run plans only the
objects new or changed since earlier runs of the same source
(:mod:`~pipeline.run.incremental`) and writes the deleted objects' tombstones.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor

import duckdb

from pipeline import faults
from pipeline.run.context import RunContext
from pipeline.run.incremental import Delta
from pipeline.run.plan import PlanSummary, read_plan_summary, write_plan
from pipeline.run.progress import ProgressReporter, RunProgress
from pipeline.store.committed import register_tables
from pipeline.store.layout import IMAGES_TABLE
from pipeline.store.ledger import Ledger, RunRecord
from pipeline.store.tables import PARTITION_COLUMN, ResultTables

logger = logging.getLogger(__name__)

#: Threads reading earlier run records to find the runs of the same source.
RECORD_READ_THREADS = 16


def plan_run(
    context: RunContext, record: RunRecord, progress: RunProgress, reporter: ProgressReporter
) -> PlanSummary:
    """The plan of ``record``'s run, read back or written; its shard and image totals go into
    ``progress`` and the written ``record`` (with a warning when a full run found no image).

    Raises :class:`~pipeline.run.lease.LeaseLostError` once the lease is lost.
    """
    plan = None
    if context.config.resume:
        plan = read_plan_summary(context.storage, context.layout, record.run_id)
    if plan is None:
        plan = _write_plan(context, record, progress, reporter)
    context.lease.check()
    record.num_shards, record.num_images = plan.num_shards, plan.num_images
    if plan.num_images == 0 and not record.incremental:
        logger.warning("the source %s holds no images; check the URI", context.source_uri)
        record.message = f"the source {context.source_uri} holds no images; check the URI"
    progress.shards_total, progress.images_total = plan.num_shards, plan.num_images
    context.ledger.write_run(record)
    return plan


def delta_note(record: RunRecord) -> str | None:
    """A few words on what an incremental run found, for its one-line summary (``None`` for
    a full run)."""
    if not record.incremental:
        return None
    if not record.num_images:
        return "nothing new or changed"
    return (
        f"incremental: {record.objects_new} new, {record.objects_changed} changed, "
        f"{record.objects_retried} retried, {record.objects_deleted} deleted"
    )


def _write_plan(
    context: RunContext, record: RunRecord, progress: RunProgress, reporter: ProgressReporter
) -> PlanSummary:
    progress.state = "planning"

    def on_shard(shards: int, images: int) -> None:
        progress.shards_total, progress.images_total = shards, images
        reporter.tick()
        context.lease.check()
        faults.after_plan_shard()

    plan_args = dict(
        storage=context.storage,
        layout=context.layout,
        run_id=record.run_id,
        source=context.source_uri,
        shard_size=context.config.shard_size,
        on_shard=on_shard,
    )
    if not context.config.incremental:
        return write_plan(context.source.iter_objects(), **plan_args)
    progress.state = "comparing with earlier runs"
    reporter.tick(force=True)
    return _plan_incremental(context, record, plan_args)


def _plan_incremental(context: RunContext, record: RunRecord, plan_args: dict) -> PlanSummary:
    """Plan only the objects that are new or changed since earlier runs of the same source,
    and write the deleted objects' tombstones; the counts go into ``record``."""
    ledger = context.ledger
    earlier = _earlier_runs(ledger, record.run_id, context.source_uri)
    tables = context.tables
    tables.create()
    # The delta reads the earlier runs' committed files itself (their partitions only); of the
    # result views it needs tombstones only.
    connection = duckdb.connect()
    register_tables(connection, tables)
    started = time.perf_counter()
    earlier_files = _earlier_files(tables, earlier)
    with Delta(
        connection,
        context.source.iter_objects(),
        earlier,
        earlier_files=earlier_files,
        storage=ledger.storage,
    ) as delta:
        counts = delta.counts
        logger.info(
            "compared %d listed objects with %d earlier run(s) in %.1f s: %s",
            counts.objects_listed,
            len(earlier),
            time.perf_counter() - started,
            counts.summary(),
        )
        record.incremental = True
        for name, value in counts.as_dict().items():
            setattr(record, name, value)
        if not counts.to_process:
            record.message = f"nothing new or changed to process ({counts.summary()})"
        ledger.write_run(record)
        delta.write_tombstones(tables, record.run_id)
        return write_plan(delta.objects(), **plan_args)


def _earlier_files(tables: ResultTables, run_ids: list[str]) -> list[str]:
    """URIs of the committed ``images`` files of ``run_ids`` (their partitions, from the log)."""
    table = tables.table(IMAGES_TABLE)
    if table is None or not run_ids:
        return []
    return table.file_uris(partition_filters=[(PARTITION_COLUMN, "in", list(run_ids))])


def _earlier_runs(ledger: Ledger, run_id: str, source_uri: str) -> list[str]:
    """Ids of the runs before ``run_id`` that read ``source_uri``."""
    ids = [rid for rid in ledger.run_ids() if rid < run_id]

    def same_source(rid: str) -> bool:
        try:
            return ledger.read_run(rid).source == source_uri
        except (FileNotFoundError, ValueError, TypeError):  # a run record half written
            return False

    with ThreadPoolExecutor(RECORD_READ_THREADS) as pool:
        keep = list(pool.map(same_source, ids))
    return [rid for rid, ok in zip(ids, keep, strict=True) if ok]
