"""Outputs written before the results became Delta tables: found, refused, and read for
``yolo-batch migrate``.

Such an output made a shard visible with a commit marker,
``_runs/RUN_ID/commits/shard-NNNNNN.TOKEN.json``, naming the attempt whose two files
(``detections/run_id=RUN_ID/shard-NNNNNN-TOKEN.parquet`` and the same under ``images/``) hold
the shard's rows, and kept tombstones as ``_deleted/RUN_ID/part-NNNNNN.parquet``. It has no
``images/_delta_log/``.

Readers and runs refuse such an output (:func:`refuse_legacy`), and one whose conversion has
started but not finished: ``yolo-batch migrate`` writes ``_migrating.json`` before it commits
anything and deletes it last (:mod:`pipeline.store.migrate`), so a reader never takes a
half-converted output for a whole one, whatever the state of its tables.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from pipeline.errors import OutputError
from pipeline.store.layout import IMAGES_TABLE, OutputLayout, deleted_dir
from pipeline.store.ledger import Ledger
from pipeline.store.storage import Storage

logger = logging.getLogger(__name__)

_COMMIT_NAME = re.compile(r"shard-(\d+)\.([A-Za-z0-9_-]+)\.json$")
_ATTEMPT = re.compile(r"^a(\d+)-")


@dataclass(frozen=True)
class LegacyCommit:
    """A shard committed by a marker: the attempt token that names its files."""

    shard_id: int
    attempt_token: str


def legacy_commits(storage: Storage, layout: OutputLayout, run_id: str) -> dict[int, LegacyCommit]:
    """``run_id``'s commit markers by shard. A shard with two markers (a commit whose reply
    was lost, then run again) keeps the later attempt's, as readers of that version did."""
    found: dict[int, LegacyCommit] = {}
    for info in storage.list(layout.commits_dir(run_id).rstrip("/") + "/"):
        match = _COMMIT_NAME.search(info.uri)
        if not match:
            continue
        commit = LegacyCommit(int(match[1]), match[2])
        if commit.shard_id in found:
            commit = max(found[commit.shard_id], commit, key=_attempt_order)
        found[commit.shard_id] = commit
    return found


def legacy_tombstone_files(storage: Storage, output: str) -> list[str]:
    """URIs of the tombstone files under ``_deleted/``."""
    return [
        info.uri
        for info in storage.list(deleted_dir(output) + "/")
        if info.uri.endswith(".parquet") and "/." not in info.uri
    ]


def is_legacy_output(ledger: Ledger, *, images_table_exists: bool) -> bool:
    """Whether the output holds results committed by markers and no Delta log yet."""
    if images_table_exists:
        return False
    return any(
        legacy_commits_exist(ledger.storage, ledger.layout, run_id) for run_id in ledger.run_ids()
    )


def legacy_commits_exist(storage: Storage, layout: OutputLayout, run_id: str) -> bool:
    folder = layout.commits_dir(run_id).rstrip("/") + "/"
    return any(_COMMIT_NAME.search(info.uri) for info in storage.list(folder))


def migration_unfinished(storage: Storage, layout: OutputLayout) -> bool:
    """Whether ``yolo-batch migrate`` is converting the output, or stopped before it finished
    (one existence check)."""
    return storage.exists(layout.migration)


def refuse_legacy(ledger: Ledger, *, images_table_exists: bool) -> None:
    """Raise :class:`~pipeline.errors.OutputError` for an output of an earlier version, or one
    whose conversion has not finished. Costs one existence check when the images table
    exists, and a listing of each run's commit markers when it does not."""
    root = ledger.layout.root
    if migration_unfinished(ledger.storage, ledger.layout):
        raise OutputError(
            f"{root} is being converted from an earlier yolo-batch, or its conversion stopped "
            f"before it finished ({ledger.layout.migration} exists): wait for it to end, or run "
            f"`yolo-batch migrate {root}` again to finish it"
        )
    if is_legacy_output(ledger, images_table_exists=images_table_exists):
        raise OutputError(
            f"{root} was written by an earlier yolo-batch (commit markers, no Delta log under "
            f"{IMAGES_TABLE}/): convert it in place with `yolo-batch migrate {root}`"
        )


def _attempt_order(commit: LegacyCommit) -> tuple[int, str]:
    match = _ATTEMPT.match(commit.attempt_token)
    return (int(match[1]) if match else -1, commit.attempt_token)
