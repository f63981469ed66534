"""The run ledger: run records, commit markers and failure markers under the output.

- ``run.json`` describes a run (configuration, model fingerprint, times, counts, outcome).
- A shard is committed once its data files are written: its commit marker
  ``commits/shard-NNNNNN.TOKEN.json`` names the attempt token, so readers find the shard's
  files from a listing alone; the marker's body holds the shard's :class:`ShardCounts`.
- ``failed/shard-NNNNNN.json`` records a shard that ran out of attempts; a later commit of the
  same shard (on resume) removes it.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline.store.layout import DETECTIONS_TABLE, IMAGES_TABLE, OutputLayout, shard_name
from pipeline.store.storage import Storage
from pipeline.store.uris import join

logger = logging.getLogger(__name__)

RUN_RUNNING = "running"
RUN_SUCCEEDED = "succeeded"
RUN_FAILED_SHARDS = "failed_shards"
RUN_INTERRUPTED = "interrupted"
RUN_ERROR = "error"

_COMMIT_NAME = re.compile(r"shard-(\d+)\.([A-Za-z0-9_-]+)\.json$")
_FAILED_NAME = re.compile(r"shard-(\d+)\.json$")
_ATTEMPT = re.compile(r"^a(\d+)-")
_RUN_ID = re.compile(r"^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{6}$")


def new_run_id(now: float | None = None) -> str:
    """A sortable, unique run id: ``YYYYMMDDTHHMMSSZ-xxxxxx``."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    return f"{stamp}-{secrets.token_hex(3)}"


def is_run_id(text: str) -> bool:
    return bool(_RUN_ID.match(text))


def _attempt_order(marker: CommitMarker) -> tuple[int, str]:
    """Sort key of a marker: its attempt number (``a12-…`` after ``a2-…``), then token."""
    match = _ATTEMPT.match(marker.attempt_token)
    return (int(match.group(1)) if match else -1, marker.attempt_token)


def new_attempt_token(attempt: int) -> str:
    """A file-name-safe token unique to one attempt at one shard."""
    return f"a{attempt}-{secrets.token_hex(4)}"


#: :class:`ShardCounts` fields and the commit marker keys that hold them (the on-disk names).
MARKER_COUNT_KEYS = {
    "images": "num_images",
    "ok": "num_ok",
    "errors": "num_errors",
    "detections": "num_detections",
}


@dataclass(frozen=True)
class ShardCounts:
    """What a committed shard (or a sum of them) holds: images read, of which ok and error,
    and detections. Stored in a commit marker's body as :data:`MARKER_COUNT_KEYS`."""

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

    def to_marker(self) -> dict[str, int]:
        """The counts as a commit marker's body holds them."""
        return {key: getattr(self, name) for name, key in MARKER_COUNT_KEYS.items()}

    @classmethod
    def from_marker(cls, body: dict[str, Any]) -> ShardCounts:
        """The counts of a commit marker's body; a key it lacks counts 0."""
        return cls(**{name: body.get(key, 0) for name, key in MARKER_COUNT_KEYS.items()})


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


@dataclass(frozen=True)
class CommitMarker:
    """A committed shard as a listing names it; its counts are in the body
    (:meth:`Ledger.read_commit_counts`)."""

    shard_id: int
    attempt_token: str


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

    # --------------------------------------------------------------- commits
    def commit(
        self,
        run_id: str,
        shard_id: int,
        attempt_token: str,
        counts: ShardCounts,
        *,
        attempt: int | None = None,
    ) -> None:
        """Write the shard's commit marker (after its data files), clearing a failure mark.

        ``attempt``: the number of the attempt whose files ``attempt_token`` names, recorded
        in the marker when given."""
        name = f"{shard_name(shard_id)}.{attempt_token}.json"
        fields = {"shard_id": shard_id, "attempt_token": attempt_token, **counts.to_marker()}
        if attempt is not None:
            fields["attempt"] = attempt
        body = json.dumps(fields)
        self.storage.write_bytes(join(self.layout.commits_dir(run_id), name), body.encode())
        try:
            self.storage.delete(self.layout.failed_marker(run_id, shard_id))
        except OSError as exc:  # committed all the same: a stale mark is only cosmetic
            logger.warning("shard %d committed; its old failure mark stays: %s", shard_id, exc)

    def commits(self, run_id: str) -> dict[int, CommitMarker]:
        """Committed shards by id, from the listing alone (counts not loaded).

        A shard carries two markers only when a commit's write succeeded but its reply was
        lost, and the driver ran the shard again: the later attempt's marker wins (by attempt
        number, then token), a warning is logged, and that attempt's files alone are read.
        """
        found: dict[int, CommitMarker] = {}
        for info in self.storage.list(_folder(self.layout.commits_dir(run_id))):
            match = _COMMIT_NAME.search(info.uri)
            if not match:
                continue
            shard_id = int(match.group(1))
            marker = CommitMarker(shard_id, match.group(2))
            if shard_id in found:
                logger.warning("shard %d of run %s has two commit markers", shard_id, run_id)
                marker = max(found[shard_id], marker, key=_attempt_order)
            found[shard_id] = marker
        return found

    def read_commit_counts(self, run_id: str, marker: CommitMarker) -> ShardCounts:
        """The counts in ``marker``'s body."""
        name = f"{shard_name(marker.shard_id)}.{marker.attempt_token}.json"
        body = json.loads(self.storage.read_bytes(join(self.layout.commits_dir(run_id), name)))
        return ShardCounts.from_marker(body)

    def data_files(self, run_id: str, marker: CommitMarker) -> dict[str, str]:
        """The committed shard's data file URIs by table."""
        return {
            table: self.layout.data_file(table, run_id, marker.shard_id, marker.attempt_token)
            for table in (DETECTIONS_TABLE, IMAGES_TABLE)
        }

    # --------------------------------------------------------------- failures
    def mark_failed(self, run_id: str, shard_id: int, reason: str, attempts: int) -> None:
        body = json.dumps({"shard_id": shard_id, "attempts": attempts, "reason": reason})
        self.storage.write_bytes(self.layout.failed_marker(run_id, shard_id), body.encode())

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
