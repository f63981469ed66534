"""Step 4 of a run: where its shards come from, while they are dispatched.

A resumed run whose plan is complete (``plan.json``) reads it back (:class:`CompletePlan`).
Otherwise a :class:`~pipeline.run.planner.Planner` lists the source on a background thread
and hands shards to the dispatcher as they are cut and checkpointed; a resumed run continues
from its planning checkpoint. An incremental run plans only the objects new or changed since
earlier runs of the same source (:mod:`pipeline.run.incremental`) and writes the deleted
objects' tombstones. :func:`finish_plan` puts the plan's totals into the run record (the
duplicate URIs a manifest listed and planning left out included).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor

from pipeline.run.context import RunContext
from pipeline.run.incremental import DeltaListing, outdated_runs
from pipeline.run.plan import PlanSummary, read_checkpoint, read_plan_summary
from pipeline.run.planner import Planner
from pipeline.run.progress import ProgressReporter, RunProgress
from pipeline.run.shard_sizing import ShardSizer
from pipeline.store.ledger import Ledger, RunRecord
from pipeline.store.listing import open_listing
from pipeline.store.sources import skipped_summary

logger = logging.getLogger(__name__)

#: Threads reading earlier run records to find the runs of the same source.
RECORD_READ_THREADS = 16


class CompletePlan:
    """A plan written to the end by an earlier session: every shard at once. Offers the
    interface of :class:`~pipeline.run.planner.Planner` the dispatcher uses."""

    listing_done = True
    finished = True
    listing_rate = 0.0

    def __init__(self, summary: PlanSummary) -> None:
        self.summary = summary
        self.objects_listed = summary.num_images
        self.duplicates = summary.duplicates
        self.shards_cut, self.images_cut = summary.num_shards, summary.num_images
        self._taken = False

    def take(self, limit: int | None = None) -> list[int]:
        """Every shard, at the first call (``limit`` does not apply: the plan is on disk)."""
        ids = [] if self._taken else list(range(self.summary.num_shards))
        self._taken = True
        return ids

    def wait(self, timeout: float) -> None:
        """Nothing more will come."""

    @property
    def shards_available(self) -> int:
        return 0 if self._taken else self.summary.num_shards

    def stop(self) -> None:
        """Nothing runs."""


def plan_run(
    context: RunContext,
    record: RunRecord,
    progress: RunProgress,
    reporter: ProgressReporter,
    sizer: ShardSizer,
) -> Planner | CompletePlan:
    """The shards of ``record``'s run: its complete plan, or a started planner.

    Progress follows the planning: objects listed, shards and images planned so far.
    """
    if context.config.resume:
        summary = read_plan_summary(context.storage, context.layout, record.run_id)
        if summary is not None:
            progress.listing_done = True
            _plan_totals(progress, summary.num_shards, summary.num_images, summary.num_images)
            progress.duplicates = summary.duplicates
            return CompletePlan(summary)
    checkpoint = None
    if context.config.resume:
        checkpoint = read_checkpoint(context.storage, context.layout, record.run_id)
        if checkpoint is not None:
            logger.info(
                "run %s: planning resumes after %d shards (%d objects listed)",
                record.run_id,
                checkpoint.shards,
                checkpoint.objects_listed,
            )
    resume_listing = checkpoint.listing if checkpoint else None
    listing = open_listing(context.source, resume_listing, listers=context.config.listers)
    extra = dict
    if context.config.incremental:
        progress.state = "comparing with earlier runs"
        reporter.tick(force=True)
        earlier = _earlier_runs(context.ledger, record.run_id, context.source_uri)
        listing = DeltaListing(
            listing,
            context.tables,
            [run.run_id for run in earlier],
            run_id=record.run_id,
            storage=context.ledger.storage,
            layout=context.layout,
            resume=checkpoint.extra if checkpoint else None,
            outdated_runs=outdated_runs(earlier, record.model),
        )
        extra = listing.counts_state

    def on_shard(shards: int, images: int, listed: int) -> None:
        _plan_totals(progress, shards, images, listed)
        progress.duplicates = planner.duplicates

    planner = Planner(
        listing,
        storage=context.storage,
        layout=context.layout,
        run_id=record.run_id,
        source=context.source_uri,
        sizer=sizer,
        start=checkpoint,
        extra=extra,
        on_shard=on_shard,
        fence=context.lease.fence,
    )
    if checkpoint is not None:
        _plan_totals(progress, checkpoint.shards, checkpoint.images, checkpoint.objects_listed)
        progress.duplicates = checkpoint.duplicates
    progress.listing_done = False
    return planner.start()


def _plan_totals(progress: RunProgress, shards: int, images: int, listed: int) -> None:
    progress.shards_total, progress.images_total = shards, images
    progress.objects_listed = listed


def finish_plan(
    context: RunContext, record: RunRecord, plan: Planner | CompletePlan
) -> PlanSummary | None:
    """Put the complete plan's totals (and an incremental run's counts) into ``record`` and
    write it; ``None`` (and nothing written) when planning did not finish."""
    summary = plan.summary
    if summary is None:
        return None
    listing = getattr(plan, "listing", None)
    if isinstance(listing, DeltaListing):
        listing.discard_chunks()
        record.incremental = True
        for name, value in listing.counts.as_dict().items():
            setattr(record, name, value)
        if not listing.counts.to_process:
            record.message = f"nothing new or changed to process ({listing.counts.summary()})"
    record.num_shards, record.num_images = summary.num_shards, summary.num_images
    record.duplicates = summary.duplicates
    record.skipped_by_extension = dict(summary.skipped)
    listed_none = summary.num_images == 0 and not (record.incremental and record.objects_listed)
    if listed_none and record.skipped_by_extension:
        record.message = (
            f"no file of the source {context.source_uri} has an accepted extension: "
            f"{skipped_note(record)} (a job spec's `extensions`)"
        )
        logger.warning("%s", record.message)
    elif listed_none and not record.incremental:
        logger.warning("the source %s holds no images; check the URI", context.source_uri)
        record.message = f"the source {context.source_uri} holds no images; check the URI"
    elif record.skipped_by_extension:
        logger.info("%s", skipped_note(record))
    context.ledger.write_run(record)
    return summary


def plan_note(record: RunRecord) -> str | None:
    """A few words on what planning found, for the run's one-line summary: what an
    incremental run compared, the duplicate URIs and the files of other extensions left out
    (``None`` when none of them)."""
    notes = (delta_note(record), duplicates_note(record), skipped_note(record))
    return "; ".join(note for note in notes if note) or None


def delta_note(record: RunRecord) -> str | None:
    """A few words on what an incremental run found (``None`` for a full run)."""
    if not record.incremental:
        return None
    if not record.num_images:
        return "nothing new or changed"
    return (
        f"incremental: {record.objects_new} new, {record.objects_changed} changed, "
        f"{record.objects_retried} retried, {record.objects_deleted} deleted"
    )


def duplicates_note(record: RunRecord) -> str | None:
    """``"N duplicate URIs in the source were skipped"`` (``None`` when there were none)."""
    if not record.duplicates:
        return None
    uris = "URI" if record.duplicates == 1 else "URIs"
    verb = "was" if record.duplicates == 1 else "were"
    return f"{record.duplicates:,} duplicate {uris} in the source {verb} skipped"


def skipped_note(record: RunRecord) -> str | None:
    """``"N files skipped by extension (.heic: 3, .xyz: 1); add them with --extensions"``
    (``None`` when the extension filter left nothing out)."""
    if not record.skipped_by_extension:
        return None
    return f"{skipped_summary(record.skipped_by_extension)}; add them with --extensions"


def _earlier_runs(ledger: Ledger, run_id: str, source_uri: str) -> list[RunRecord]:
    """The records of the runs before ``run_id`` that read ``source_uri``, oldest first."""
    started = time.perf_counter()
    ids = [rid for rid in ledger.run_ids() if rid < run_id]

    def same_source(rid: str) -> RunRecord | None:
        try:
            record = ledger.read_run(rid)
        except (FileNotFoundError, ValueError, TypeError):  # a run record half written
            return None
        return record if record.source == source_uri else None

    with ThreadPoolExecutor(RECORD_READ_THREADS) as pool:
        earlier = [record for record in pool.map(same_source, ids) if record is not None]
    logger.info(
        "%d earlier run(s) of %s found in %.1f s",
        len(earlier),
        source_uri,
        time.perf_counter() - started,
    )
    return earlier
