"""The run ledger: run records and failure marks under the output.

- ``run.json`` describes a run (configuration, model fingerprint, times, counts, outcome).
- ``failed/shard-NNNNNN.json`` records a shard that ran out of attempts; a later commit of the
  same shard (on resume) removes it.

Which shards are committed is not here: the results tables' Delta logs decide it
(:mod:`pipeline.store.tables`).

Run records stay JSON documents rather than a Delta table: a run rewrites its record as it goes
(start, resume, outcome), there is one per run (not per shard), and ``runs`` reads them in
parallel, so the log would add a commit per update and nothing a reader needs.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline.store.layout import OutputLayout
from pipeline.store.storage import Storage

logger = logging.getLogger(__name__)

RUN_RUNNING = "running"
RUN_SUCCEEDED = "succeeded"
RUN_FAILED_SHARDS = "failed_shards"
RUN_INTERRUPTED = "interrupted"
RUN_ERROR = "error"

_FAILED_NAME = re.compile(r"shard-(\d+)\.json$")
_RUN_ID = re.compile(r"^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{6}$")


def new_run_id(now: float | None = None) -> str:
    """A sortable, unique run id: ``YYYYMMDDTHHMMSSZ-xxxxxx``."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    return f"{stamp}-{secrets.token_hex(3)}"


def is_run_id(text: str) -> bool:
    return bool(_RUN_ID.match(text))


def new_attempt_token(attempt: int) -> str:
    """A file-name-safe token unique to one attempt at one shard."""
    return f"a{attempt}-{secrets.token_hex(4)}"


@dataclass(frozen=True)
class ShardCounts:
    """What a committed shard (or a sum of them) holds: images read, of which ok and error,
    and detections."""

    images: int = 0
    ok: int = 0
    errors: int = 0
    detections: int = 0

    def __add__(self, other: ShardCounts) -> ShardCounts:
        return ShardCounts(
            self.images + other.images,
            self.ok + other.ok,
            self.errors + other.errors,
            self.detections + other.detections,
        )


@dataclass
class RunRecord:
    """Everything known about a run; serialised as ``run.json``. No credentials, ever."""

    run_id: str
    source: str
    output: str
    model: dict[str, Any]
    config: dict[str, Any]
    status: str = RUN_RUNNING
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    resumed: int = 0
    num_shards: int | None = None
    num_images: int | None = None
    shards_committed: int = 0
    shards_failed: int = 0
    images_ok: int = 0
    images_error: int = 0
    detections: int = 0
    images_per_second: float | None = None
    message: str | None = None
    #: Entries of the source left out of the plan because their URI was listed before (a
    #: manifest listing a URI twice; the first entry is the one planned). 0 in records of
    #: runs before it was counted.
    duplicates: int = 0
    #: Files of the source left out for their extension (the run's extensions setting), by
    #: extension: ``{".heic": 3, "(none)": 1}``. Empty in records of runs before it was counted.
    skipped_by_extension: dict[str, int] = field(default_factory=dict)
    #: Incremental runs only (``--incremental``): the listing compared with earlier runs of the
    #: same source (see :mod:`pipeline.run.incremental`); ``None`` for a full run.
    incremental: bool = False
    objects_listed: int | None = None
    objects_new: int | None = None
    objects_changed: int | None = None
    objects_retried: int | None = None
    objects_unchanged: int | None = None
    objects_deleted: int | None = None

    def set_counts(self, counts: ShardCounts) -> None:
        """Record the committed shards' image and detection counts."""
        self.images_ok, self.images_error, self.detections = (
            counts.ok,
            counts.errors,
            counts.detections,
        )

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> RunRecord:
        raw = json.loads(data)
        known = {k: v for k, v in raw.items() if k in cls.__dataclass_fields__}
        return cls(**known)


class Ledger:
    """Reads and writes one output's run records and markers."""

    def __init__(self, storage: Storage, layout: OutputLayout) -> None:
        self.storage = storage
        self.layout = layout

    # ------------------------------------------------------------------ runs
    def write_run(self, record: RunRecord) -> None:
        self.storage.write_bytes(self.layout.run_record(record.run_id), record.to_json())

    def read_run(self, run_id: str) -> RunRecord:
        try:
            return RunRecord.from_json(self.storage.read_bytes(self.layout.run_record(run_id)))
        except FileNotFoundError:
            raise FileNotFoundError(
                2, f"no run {run_id} under {self.layout.root}", self.layout.run_record(run_id)
            ) from None

    def run_ids(self) -> list[str]:
        """Ids of every run with a record, oldest first."""
        return [name for name in self.storage.list_folders(self.layout.runs_dir) if is_run_id(name)]

    def latest_run_id(self) -> str | None:
        ids = self.run_ids()
        return ids[-1] if ids else None

    # --------------------------------------------------------------- failures
    def mark_failed(self, run_id: str, shard_id: int, reason: str, attempts: int) -> None:
        body = json.dumps({"shard_id": shard_id, "attempts": attempts, "reason": reason})
        self.storage.write_bytes(self.layout.failed_marker(run_id, shard_id), body.encode())

    def clear_failed(self, run_id: str, shard_id: int) -> None:
        """Remove shard ``shard_id``'s failure mark, if any (it has been committed since)."""
        try:
            self.storage.delete(self.layout.failed_marker(run_id, shard_id))
        except OSError as exc:  # committed all the same: a stale mark is only cosmetic
            logger.warning("shard %d committed; its old failure mark stays: %s", shard_id, exc)

    def failures(self, run_id: str) -> dict[int, dict[str, Any]]:
        """Shards marked failed, with their last reason."""
        out = {}
        for info in self.storage.list(_folder(self.layout.failed_dir(run_id))):
            match = _FAILED_NAME.search(info.uri)
            if match:
                try:
                    out[int(match.group(1))] = json.loads(self.storage.read_bytes(info.uri))
                except FileNotFoundError:  # cleared meanwhile by a commit
                    continue
        return out


def _folder(uri: str) -> str:
    """A folder URI ending in ``/`` so an S3 prefix listing cannot match siblings."""
    return uri if uri.endswith("/") else uri + "/"
