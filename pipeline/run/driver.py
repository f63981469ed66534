"""The driver: plan the shards, run them on Ray actors, retry failures, commit, report.

Lifecycle of :func:`run`, one module per step; each step gets the run's
:class:`~pipeline.run.context.RunContext` (settings, source, output storage and layout,
ledger, lease):

1. **Preflight** (:mod:`pipeline.run.preflight`): the source can be read, the output written,
   and the output is not inside the source.
2. **Lease** (:mod:`pipeline.run.lease`): one run at a time per output; a second run (or a
   resume) exits naming the holder. Renewed in the background, released at the end.
3. **Run identity** (:mod:`pipeline.run.records`): a new run id, or on ``resume`` the given /
   latest run, whose model, inference settings and source must match this invocation's.
4. **Plan** (:mod:`pipeline.run.planning`, :mod:`pipeline.run.planner`), unless the resumed
   run's plan is complete: the source is listed on a background thread (an S3 prefix by
   several concurrent streams, :mod:`pipeline.store.listing`) and cut into shards sized for
   the actor count (:mod:`pipeline.run.shard_sizing`), each offered to dispatch once it is
   written and checkpointed, while the listing goes on; a resumed run continues the listing
   from its checkpoint. An incremental run plans only the objects new or changed since
   earlier runs of the same source (:mod:`pipeline.run.incremental`); when there are none it
   ends without starting Ray.
5. **Actors** (:mod:`pipeline.run.fleet`): Ray joined or started
   (:mod:`pipeline.run.ray_cluster`), one :class:`~pipeline.worker.remote.DetectorActor` per
   slot with the settings and Ray options :mod:`pipeline.run.actors` derives from the run's
   configuration, the model's weights shipped once through the Ray object store. An actor
   that dies is replaced; one that cannot start is given up on.
6. **Dispatch** (:mod:`pipeline.run.dispatch`): each actor keeps ``shards_per_actor`` shards
   queued (``ray.wait``), and runs them concurrently so the next one's input loads while the
   model finishes the one before and the model never waits on a Parquet write
   (:class:`~pipeline.worker.model_turns.ModelTurns`); the driver tracks its own actors (not
   ``ray.util.ActorPool``, which keeps picking a dead actor). A shard whose task raised is
   retried on any live actor after a backoff, up to ``max_attempts``; a dead actor is replaced
   and its shards requeued (a preempted node's shard does not use up an attempt). A shard out
   of attempts is marked failed; the rest go on.
7. **Commit** (:mod:`pipeline.run.commits`, :mod:`pipeline.store.tables`): finished shards'
   files are added to the ``detections`` and ``images`` Delta logs in batches, idempotently;
   readers see only committed shards. A resumed run first completes a batch that a killed
   driver left half committed.
8. **Tidy** (:mod:`pipeline.store.maintenance`): files of failed or abandoned attempts are
   deleted, and a succeeded run's small files are compacted when that pays.
9. **Finish** (:mod:`pipeline.run.records`): the run record and ``_status.json``
   (:mod:`pipeline.run.progress`) get the outcome; exit code
   :data:`~pipeline.errors.EXIT_OK`, :data:`~pipeline.errors.EXIT_FAILED_SHARDS`, or on
   Ctrl-C or SIGTERM (which the command line turns into :class:`~pipeline.errors.Terminated`)
   :data:`~pipeline.errors.EXIT_INTERRUPTED` or :data:`~pipeline.errors.EXIT_TERMINATED`:
   finished shards committed, in-flight ones uncommitted, the record ``interrupted``, the
   lease released, resumable.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from pipeline.errors import (
    EXIT_FAILED_SHARDS,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TERMINATED,
    RunError,
    Terminated,
)
from pipeline.run.actors import expected_actor_count
from pipeline.run.config import RunConfig
from pipeline.run.context import RunContext
from pipeline.run.dispatch import Dispatcher
from pipeline.run.planning import finish_plan, plan_note, plan_run
from pipeline.run.preflight import preflight
from pipeline.run.progress import ProgressReporter, RunProgress
from pipeline.run.records import finish_run, open_run
from pipeline.run.shard_sizing import ShardSizer
from pipeline.store.ledger import RUN_ERROR, RUN_FAILED_SHARDS, RUN_INTERRUPTED, RUN_SUCCEEDED
from pipeline.store.maintenance import compact_run
from pipeline.worker.model_spec import resolve_model

logger = logging.getLogger(__name__)


@dataclass
class RunOutcome:
    """How a run ended: its id, the command's exit code and the final progress counters."""

    run_id: str
    exit_code: int
    progress: RunProgress
    #: Shards committed by this invocation (not by earlier sessions of a resumed run).
    processed_shards: list[int] = field(default_factory=list)
    #: A few words on what planning found: an incremental run's delta, duplicate URIs left
    #: out of the plan (``None`` when neither).
    note: str | None = None


def run(config: RunConfig, *, reporter_stream=None, bar: bool | None = None) -> RunOutcome:
    """Run (or resume) a detection job as ``config`` describes; see the module docstring.

    ``reporter_stream``: where progress is rendered (default stderr); ``bar``: a live bar
    (default: when that stream is a terminal). Raises :class:`RunError` when the run cannot
    start or go on; a Ctrl-C returns an outcome with :data:`EXIT_INTERRUPTED`, a
    :class:`~pipeline.errors.Terminated` one with :data:`EXIT_TERMINATED`.
    """
    config.validate()
    context = RunContext.open(config)
    preflight(context)
    context.lease.acquire()
    try:
        return _run_holding_lease(context, reporter_stream=reporter_stream, bar=bar)
    finally:
        context.lease.release()


def _run_holding_lease(context: RunContext, *, reporter_stream, bar: bool | None) -> RunOutcome:
    """Steps 3 to 9 of the lifecycle, with the output's lease held."""
    config = context.config
    spec, weights = resolve_model(
        model=config.model.name,
        cfg=config.model.cfg,
        weights=config.model.weights,
        names=config.model.names,
        options=config.detector,
        s3_options=config.s3,
    )
    record = open_run(context, spec)
    context.lease.set_run_id(record.run_id)
    progress = RunProgress(record.run_id)
    reporter = ProgressReporter(
        progress,
        storage=context.storage,
        status_uri=context.layout.status,
        stream=reporter_stream,
        bar=bar,
    )
    processed: list[int] = []
    try:
        sizer = ShardSizer(config.shard_size, config.batch_size, expected_actor_count(config))
        plan = plan_run(context, record, progress, reporter, sizer)
        dispatcher = Dispatcher(
            context,
            spec=spec,
            weights=weights,
            run_id=record.run_id,
            plan=plan,
            progress=progress,
            reporter=reporter,
            sizer=sizer,
        )
        processed = dispatcher.run()
        finish_plan(context, record, plan)
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, Terminated)
        how = "terminated (SIGTERM)" if terminated else "interrupted"
        message = f"{how}; resume with --resume"
        finish_run(context.ledger, record, progress, RUN_INTERRUPTED, message)
        reporter.close()
        return RunOutcome(
            record.run_id, EXIT_TERMINATED if terminated else EXIT_INTERRUPTED, progress
        )
    except BaseException as exc:
        finish_run(context.ledger, record, progress, RUN_ERROR, f"{type(exc).__name__}: {exc}")
        reporter.close()
        raise
    failed = progress.shards_failed
    _tidy(context, record.run_id, succeeded=not failed)
    message = record.message
    if failed:
        message = (
            f"{failed} shard(s) failed; rerun with --resume {record.run_id} to retry only those"
        )
    finish_run(
        context.ledger, record, progress, RUN_FAILED_SHARDS if failed else RUN_SUCCEEDED, message
    )
    reporter.close()
    code = EXIT_FAILED_SHARDS if failed else EXIT_OK
    return RunOutcome(record.run_id, code, progress, processed, note=plan_note(record))


def _tidy(context: RunContext, run_id: str, *, succeeded: bool) -> None:
    """Delete the run's unreferenced attempt files; compact a succeeded run's small files.
    Failures are logged: the results are committed either way."""
    try:
        removed = context.tables.remove_orphans(run_id, context.storage)
        if removed:
            logger.info("run %s: removed %d files of failed or abandoned attempts", run_id, removed)
        if succeeded:
            compact_run(context.tables, run_id)
    except Exception as exc:  # noqa: BLE001 - tidying is optional; `yolo-batch compact` redoes it
        logger.warning("run %s: could not tidy the results tables: %s", run_id, exc)


__all__ = [
    "EXIT_FAILED_SHARDS",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_TERMINATED",
    "RunError",
    "RunOutcome",
    "run",
]
