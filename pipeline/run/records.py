"""A run's identity and its record (``run.json``): opened at the start, finished at the end.

A new run gets a new id (or the one given); a resumed run is the given or latest run of the
output, and must be resumed with the model, inference settings and source it started with.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict

from pipeline.errors import RunError
from pipeline.run.config import RunConfig
from pipeline.run.context import RunContext
from pipeline.run.progress import RunProgress
from pipeline.store.ledger import RUN_RUNNING, Ledger, RunRecord, new_run_id
from pipeline.store.storage import StorageError
from pipeline.worker.model_spec import ModelSpec

logger = logging.getLogger(__name__)


def open_run(context: RunContext, spec: ModelSpec) -> RunRecord:
    """Write and return the record of a new run, or of the resumed run (marked running again).

    Raises :class:`RunError` when there is nothing to resume, or the resumed run used another
    model, other inference settings or another source.
    """
    config = context.config
    context.tables.create()
    if not config.resume:
        record = RunRecord(
            run_id=config.run_id or new_run_id(),
            source=context.source_uri,
            output=context.output_uri,
            model=spec.fingerprint(),
            config=config_record(config),
            started_at=time.time(),
        )
        context.ledger.write_run(record)
        return record
    record = _resumable_run(context, config.run_id or context.ledger.latest_run_id())
    _check_same_run(record, spec, context.source_uri)
    record.status = RUN_RUNNING
    record.resumed += 1
    record.started_at = time.time()
    record.finished_at = None
    record.message = None
    context.ledger.write_run(record)
    return record


def finish_run(
    ledger: Ledger, record: RunRecord, progress: RunProgress, status: str, message: str | None
) -> None:
    """Give ``progress`` and ``record`` the outcome ``status`` and write the record; a record
    that cannot be written is logged, never raised (the run's outcome stands)."""
    progress.state = status
    record.status = status
    record.finished_at = time.time()
    record.shards_committed = progress.shards_committed
    record.shards_failed = progress.shards_failed
    record.set_counts(progress.committed)
    record.images_per_second = round(progress.images_per_second, 3)
    record.message = message
    try:
        ledger.write_run(record)
    except (StorageError, OSError) as exc:
        logger.error("could not write the run record: %s", exc)


def config_record(config: RunConfig) -> dict:
    """The configuration as stored in the run record (no credentials exist in it)."""
    out = asdict(config)
    out.pop("resume", None)
    return out


def _resumable_run(context: RunContext, run_id: str | None) -> RunRecord:
    if run_id is None:
        raise RunError(f"nothing to resume: no runs under {context.output_uri}")
    try:
        return context.ledger.read_run(run_id)
    except FileNotFoundError:
        raise RunError(
            f"no run {run_id} under {context.output_uri}; `yolo-batch status "
            f"{context.output_uri}` shows the latest run, or resume without a run id"
        ) from None


def _check_same_run(record: RunRecord, spec: ModelSpec, source_uri: str) -> None:
    """Raise :class:`RunError` unless ``record``'s run used ``spec``'s model and settings
    and read ``source_uri``."""
    changes = settings_changes(record.model, spec.fingerprint())
    if changes:
        raise RunError(
            f"run {record.run_id} cannot be resumed with different settings "
            f"({'; '.join(changes)}); resume with the run's model and thresholds, or start a "
            "new run without --resume"
        )
    if record.source != source_uri:
        raise RunError(
            f"run {record.run_id} read {record.source}, not {source_uri}; resume with the same "
            "--source"
        )


def settings_changes(before: dict, now: dict) -> list[str]:
    """``"name: old -> new"`` for every model setting that differs between two model
    fingerprints (a run record's ``model``; :meth:`ModelSpec.fingerprint`): what makes the
    results of two runs differ, for a resume and for an incremental run alike.

    A setting missing from ``before`` (a record written before the setting was recorded) is
    not compared.
    """
    # A stored fingerprint went through JSON (tuples became lists, e.g. --classes): compare
    # like with like, or a run with a class filter would always differ.
    now = json.loads(json.dumps(now))
    flat_before = {**{k: v for k, v in before.items() if k != "options"}, **before["options"]}
    flat_now = {**{k: v for k, v in now.items() if k != "options"}, **now["options"]}
    return [
        f"{key}: {flat_before.get(key)!r} -> {flat_now.get(key)!r}"
        for key in sorted(flat_before.keys() & flat_now.keys())
        if flat_before.get(key) != flat_now.get(key)
    ]
