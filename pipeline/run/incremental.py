"""Incremental runs: process only the objects that are new or changed since earlier runs.

The delta is computed out of core, so a listing of tens of millions of objects never becomes
tens of millions of Python objects:

1. The listing streams into a temporary Parquet file in record batches of
   :data:`LISTING_BATCH_ROWS` (with its position, to keep the source's order).
2. DuckDB (memory capped at :data:`DUCKDB_MEMORY_LIMIT`, spilling to the same temporary
   folder) reads the earlier runs' committed ``images`` files itself (local files directly, S3
   files first copied into the temporary folder, each streamed to disk: a scan of Arrow
   datasets through DuckDB is not bounded by its memory cap; ``run_id`` from each file's path,
   since compacted files do not hold it: :func:`pipeline.store.committed.parquet_view`),
   reduces the rows to the latest state per URI (a hash aggregate, not a sort), drops URIs
   whose latest event is a deletion, and joins it with the listing.
3. The objects to process stream out in record batches of :data:`RESULT_BATCH_ROWS`, in
   listing order, into the plan writer, which holds one shard at a time.

What counts as earlier state: committed ``images`` rows of earlier runs of the *same source*
(a run over another source says nothing about this one). Which earlier runs used other model
settings is decided once per run, from the run records (:func:`outdated_runs`), not per image:
the delta only carries, per URI, whether its latest row's run is one of them. Per listed
object:

- ``new``: no earlier row; ``changed``: its ETag differs from the latest row's (always
  processed again), or the latest row is an ``ok`` row of a run with other model settings
  (another model, weights, class names, input size, thresholds, NMS, resize mode, class filter
  or detection cap: :meth:`~pipeline.worker.model_spec.ModelSpec.fingerprint`, which a resume
  must match too), so the views show this run's settings' detections for every image;
- ``retried``: same ETag, but the latest row is an error that may not recur (``not found``,
  ``fetch: ...``, ``too large: ...``, a cancelled decode); a ``decode: ...`` error of the same
  bytes is permanent and not retried;
- ``unchanged``: everything else.

Objects of the earlier state missing from the listing are ``deleted``: counted in the run
record and written as tombstones, rows (``image_uri``, ``run_id``) of the Delta table
``OUTPUT/tombstones`` (:meth:`pipeline.store.tables.ResultTables.replace_tombstones`).
The ``images`` and ``detections`` views show the latest result per image and leave out an
image whose latest event is a tombstone; an image that comes back is ``new`` again. A source
without ETags (a manifest of bare URIs) only finds new URIs.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.run.plan import PlannedObject
from pipeline.run.records import settings_changes
from pipeline.store.committed import local_files, parquet_view, register_tables, table_files
from pipeline.store.layout import IMAGES_TABLE, TOMBSTONES_TABLE, OutputLayout
from pipeline.store.ledger import RunRecord
from pipeline.store.listing import Listing
from pipeline.store.schema import PARQUET_COMPRESSION, TOMBSTONE_SCHEMA
from pipeline.store.sources import SkippedFiles
from pipeline.store.storage import Storage
from pipeline.store.tables import ResultTables

logger = logging.getLogger(__name__)

#: Objects of the listing's first chunk compared with the earlier state: the first shards
#: are planned seconds after the state is read. Each chunk after it is CHUNK_GROWTH times
#: larger, up to MAX_CHUNK_OBJECTS, as each comparison scans the whole earlier state; a resume
#: lists at most one chunk again.
FIRST_CHUNK_OBJECTS = 1_000
CHUNK_GROWTH = 4
MAX_CHUNK_OBJECTS = 2_000_000
#: Listed objects buffered before they are written to the temporary listing file.
LISTING_BATCH_ROWS = 50_000
#: Objects per batch read back from the delta query.
RESULT_BATCH_ROWS = 10_000
#: DuckDB's memory cap for the delta; beyond it, DuckDB spills to the temporary folder, so the
#: driver's memory stays bounded however many images are committed (docs/performance.md,
#: "Incremental planning", has a measured run).
DUCKDB_MEMORY_LIMIT = "256MB"
#: Columns of the committed ``images`` rows the delta needs.
EARLIER_COLUMNS = ["image_uri", "run_id", "etag", "status", "error"]
EARLIER_SCHEMA = pa.schema([(name, pa.string()) for name in EARLIER_COLUMNS])
#: DuckDB threads for the delta (the driver shares its machine with Ray).
DUCKDB_THREADS = 2
#: Error rows that the same bytes would produce again: not retried unless the ETag changes.
PERMANENT_ERROR_SQL = "(p.error LIKE 'decode: %' AND p.error <> 'decode: cancelled')"

LISTING_SCHEMA = pa.schema(
    [("seq", pa.int64()), ("uri", pa.string()), ("size", pa.int64()), ("etag", pa.string())]
)
KINDS = ("new", "changed", "retried", "unchanged")


@dataclass
class DeltaCounts:
    """What an incremental run found: objects listed, and how they compare with before."""

    objects_listed: int = 0
    objects_new: int = 0
    objects_changed: int = 0
    objects_retried: int = 0
    objects_unchanged: int = 0
    objects_deleted: int = 0

    @property
    def to_process(self) -> int:
        return self.objects_new + self.objects_changed + self.objects_retried

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"{self.objects_new:,} new, {self.objects_changed:,} changed, "
            f"{self.objects_retried:,} retried, {self.objects_unchanged:,} unchanged, "
            f"{self.objects_deleted:,} deleted"
        )


class Delta:
    """The delta of a listing against earlier state, chunk by chunk; a context manager owning
    a temporary folder and a DuckDB connection.

    The earlier state (latest row per URI of ``earlier_runs``, less URIs a later tombstone
    deleted) is built once, as a DuckDB table. Each :meth:`classify` call then compares one
    chunk of the listing with it and streams that chunk's objects to process; :meth:`finish`
    counts the deleted objects over every chunk, and :meth:`write_tombstones` writes them.
    With ``objects`` given, the constructor does all of it for one chunk of everything.

    ``earlier_files``: the committed ``images`` files of ``earlier_runs`` (local paths or
    ``s3://`` URIs read through ``storage``); without them, the connection's ``all_images``
    view is read (an Arrow scan: fine for tests, unbounded in memory at scale).

    ``outdated_runs``: those of ``earlier_runs`` that used other model settings
    (:func:`outdated_runs`); their ``ok`` rows count as ``changed``.

    ``connection`` must have the view ``tombstones`` (``image_uri``, ``run_id``) registered,
    and ``all_images`` too when no ``earlier_files`` are given
    (:func:`pipeline.store.committed.register_tables` registers both).
    """

    def __init__(
        self,
        connection: duckdb.DuckDBPyConnection,
        objects: Iterable | None,
        earlier_runs: Iterable[str],
        *,
        earlier_files: list[str] | None = None,
        storage: Storage | None = None,
        workdir: str | None = None,
        outdated_runs: Iterable[str] = (),
    ) -> None:
        self._tmp = tempfile.mkdtemp(prefix="yolo-batch-delta-", dir=workdir)
        self.con = connection
        self.counts = DeltaCounts()
        #: Local Parquet files of the chunks listed so far (``seq``, ``uri``, ``size``, ``etag``).
        self.chunks: list[str] = []
        self._result: Iterator[PlannedObject] = iter(())
        try:
            self._configure()
            self._earlier_view = "all_images"
            if earlier_files is not None:
                self._earlier_view = "earlier_images"
                self._register_earlier(earlier_files, storage)
            self.con.register("earlier_runs", pa.table({"run_id": list(earlier_runs)}))
            self.con.register(
                "outdated_runs", pa.table({"run_id": pa.array(list(outdated_runs), pa.string())})
            )
            self._prepare()
            if objects is not None:
                self._result = self.classify(objects)
                self.finish()
        except BaseException:
            self.close()
            raise

    def _configure(self) -> None:
        spill = os.path.join(self._tmp, "spill")
        os.makedirs(spill, exist_ok=True)
        self.con.execute(f"SET memory_limit = '{DUCKDB_MEMORY_LIMIT}'")
        self.con.execute(f"SET threads = {DUCKDB_THREADS}")
        self.con.execute(f"SET temp_directory = '{_sql_text(spill)}'")
        self.con.execute("SET preserve_insertion_order = false")

    def _register_earlier(self, files: list[str], storage: Storage | None) -> None:
        """The view ``earlier_images`` over ``files``, read by DuckDB itself (S3 files, and
        local paths DuckDB would read as globs, copied into the temporary folder first)."""
        local = local_files(files, storage, os.path.join(self._tmp, "earlier"))
        parquet_view(self.con, "earlier_images", local, EARLIER_SCHEMA, EARLIER_COLUMNS)

    def _prepare(self) -> None:
        # Latest row per URI of the earlier runs (a struct keeps NULL etags and errors).
        self.con.execute(
            """
            CREATE TEMP TABLE earlier AS
            SELECT image_uri, max(run_id) AS run_id,
                   arg_max({'etag': etag, 'status': status, 'error': error}, run_id) AS row
            FROM __EARLIER__
            WHERE run_id IN (SELECT run_id FROM earlier_runs)
            GROUP BY image_uri
            """.replace("__EARLIER__", self._earlier_view)
        )
        # Less URIs whose latest event is a deletion (a later run's tombstone): a table, as
        # every chunk is compared with it. ``outdated``: the latest row's run used other model
        # settings (a join with the few runs, not a per-image comparison).
        self.con.execute(
            """
            CREATE TEMP TABLE previous AS
            SELECT e.image_uri, e.row.etag AS etag, e.row.status AS status,
                   e.row.error AS error,
                   e.run_id IN (SELECT run_id FROM outdated_runs) AS outdated
            FROM earlier e
            LEFT JOIN (
                SELECT image_uri, max(run_id) AS run_id FROM tombstones
                WHERE run_id IN (SELECT run_id FROM earlier_runs) GROUP BY image_uri
            ) t USING (image_uri)
            WHERE t.run_id IS NULL OR t.run_id < e.run_id
            """
        )
        self.con.execute("DROP TABLE earlier")

    def classify(self, objects: Iterable) -> Iterator[PlannedObject]:
        """Compare one chunk of the listing (``uri``, ``size``, ``etag`` each) with the
        earlier state: its counts are added to :attr:`counts` before this returns, and the
        returned iterator streams its objects to process, in listing order."""
        chunk = len(self.chunks)
        path = os.path.join(self._tmp, f"listing-{chunk:06d}.parquet")
        listed = _write_listing(objects, path, start=self.counts.objects_listed)
        self.add_listed(path, listed)
        table = f"chunk_{chunk}"
        self.con.execute(
            f"""
            CREATE TEMP TABLE {table} AS
            SELECT l.seq, l.uri, l.size, l.etag,
                CASE
                    WHEN p.image_uri IS NULL THEN 'new'
                    WHEN p.etag IS DISTINCT FROM l.etag THEN 'changed'
                    WHEN p.status = 'error' AND NOT {PERMANENT_ERROR_SQL} THEN 'retried'
                    WHEN p.outdated AND p.status <> 'error' THEN 'changed'
                    ELSE 'unchanged'
                END AS kind
            FROM read_parquet('{_sql_text(path)}') l
            LEFT JOIN previous p ON l.uri = p.image_uri
            """
        )
        rows = self.con.execute(f"SELECT kind, count(*) FROM {table} GROUP BY kind").fetchall()
        for kind, n in rows:
            name = f"objects_{kind}"
            setattr(self.counts, name, getattr(self.counts, name) + n)
        return self._chunk_objects(table)

    def _chunk_objects(self, table: str) -> Iterator[PlannedObject]:
        try:
            reader = self._batches(
                f"SELECT uri, size, etag FROM {table} WHERE kind <> 'unchanged' ORDER BY seq"
            )
            for batch in reader:
                columns = batch.to_pydict()
                for uri, size, etag in zip(columns["uri"], columns["size"], columns["etag"]):
                    yield PlannedObject(uri, size, etag)
        finally:
            with contextlib.suppress(duckdb.Error):
                self.con.execute(f"DROP TABLE IF EXISTS {table}")

    @property
    def workdir(self) -> str:
        """The temporary folder this delta owns (removed by :meth:`close`)."""
        return self._tmp

    def add_listed(self, path: str, listed: int | None = None) -> None:
        """Count the chunk file ``path`` as listed (for :meth:`finish`); ``listed``: its
        objects, when they are to be added to :attr:`counts`."""
        self.chunks.append(path)
        if listed is not None:
            self.counts.objects_listed += listed

    def _listing_sql(self) -> str:
        if not self.chunks:
            return "(SELECT NULL::VARCHAR AS uri WHERE false)"
        paths = ", ".join(f"'{_sql_text(p)}'" for p in self.chunks)
        return f"read_parquet([{paths}])"

    def finish(self) -> int:
        """Count the earlier objects missing from every chunk listed: the deleted ones."""
        ((deleted,),) = self.con.execute(
            f"SELECT count(*) FROM previous p ANTI JOIN {self._listing_sql()} l "
            "ON p.image_uri = l.uri"
        ).fetchall()
        self.counts.objects_deleted = deleted
        return deleted

    def objects(self) -> Iterator[PlannedObject]:
        """The objects to process of the constructor's ``objects``, in listing order."""
        yield from self._result

    def write_tombstones(self, tables: ResultTables, run_id: str) -> int:
        """Make the deleted objects ``run_id``'s tombstones (replacing those of an earlier
        attempt at the same plan); streamed, never held whole. Returns how many."""
        if (
            not self.counts.objects_deleted
            and not tables.run_files(TOMBSTONES_TABLE, run_id).num_rows
        ):
            return 0

        def rows() -> pa.RecordBatchReader:  # a fresh stream for every attempt
            batches = self._batches(
                f"SELECT p.image_uri, '{_sql_text(run_id)}' AS run_id "
                f"FROM previous p ANTI JOIN {self._listing_sql()} l ON p.image_uri = l.uri"
            )
            return pa.RecordBatchReader.from_batches(
                TOMBSTONE_SCHEMA, (batch.cast(TOMBSTONE_SCHEMA) for batch in batches)
            )

        tables.retrying("writing the tombstones", lambda: tables.replace_tombstones(run_id, rows()))
        return self.counts.objects_deleted

    def _batches(self, sql: str) -> pa.RecordBatchReader:
        """``sql``'s result as a stream of record batches (never one whole table)."""
        relation = self.con.sql(sql)
        # DuckDB 2 renamed fetch_record_batch() to to_arrow_reader().
        fetch = getattr(relation, "to_arrow_reader", None) or relation.fetch_record_batch
        return fetch(RESULT_BATCH_ROWS)

    def close(self) -> None:
        with contextlib.suppress(duckdb.Error):
            self.con.close()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> Delta:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class DeltaListing(Listing):
    """The objects of ``listing`` that are new or changed since ``earlier_runs`` (committed
    runs of the same source; ``outdated_runs``: those of them with other model settings), as a
    :class:`~pipeline.store.listing.Listing` the planner cuts into shards while the listing
    goes on. :attr:`counts` holds what the comparison found.

    The listing is compared in chunks (:data:`FIRST_CHUNK_OBJECTS`, growing up to
    :data:`MAX_CHUNK_OBJECTS`: the first shards are planned seconds after the earlier state is
    read, later chunks amortise each comparison's scan of it). Each chunk's listed objects are
    also kept in the run's folder (``_runs/RUN/listing/chunk-NNNNNN.parquet``), so that the
    deleted objects can be found at the end even when the listing was resumed; they are
    deleted once the plan is complete (:meth:`discard_chunks`). The pass is
    resumable at chunk ends (:attr:`on_boundary`); :meth:`counts_state` goes into the plan
    checkpoint. At the end, the deleted objects become ``run_id``'s tombstones.
    """

    resumable_anywhere = False

    def __init__(
        self,
        listing: Listing,
        tables: ResultTables,
        earlier_runs: list[str],
        *,
        run_id: str,
        storage: Storage,
        layout: OutputLayout,
        resume: dict | None = None,
        outdated_runs: Iterable[str] = (),
    ) -> None:
        self.listing = listing
        self.tables = tables
        self.earlier_runs = earlier_runs
        self.outdated_runs = list(outdated_runs)
        self.run_id = run_id
        self.storage = storage
        self.layout = layout
        self.counts = DeltaCounts()
        self.chunks_done = 0
        self.done = False
        if resume:
            self.done = bool(resume.get("done"))
            self.chunks_done = int(resume.get("chunks", 0))
            self.counts = DeltaCounts(**resume["counts"])

    def __iter__(self) -> Iterator[PlannedObject]:
        if self.done:
            return
        tables = self.tables
        tables.create()
        # The delta reads the earlier runs' committed files itself (their partitions only);
        # of the result views it needs tombstones only.
        connection = duckdb.connect()
        register_tables(connection, tables)
        started = time.perf_counter()
        with Delta(
            connection,
            None,
            self.earlier_runs,
            earlier_files=table_files(tables, IMAGES_TABLE, self.earlier_runs),
            storage=self.storage,
            outdated_runs=self.outdated_runs,
        ) as delta:
            logger.info(
                "read the state of %d earlier run(s) in %.1f s",
                len(self.earlier_runs),
                time.perf_counter() - started,
            )
            self._restore_chunks(delta)
            delta.counts = self.counts
            objects = iter(self.listing)
            size = min(FIRST_CHUNK_OBJECTS * CHUNK_GROWTH**self.chunks_done, MAX_CHUNK_OBJECTS)
            compared = time.perf_counter()
            while True:
                before = self.counts.objects_listed
                todo = delta.classify(itertools.islice(objects, size))
                if self.counts.objects_listed == before:
                    delta.chunks.pop()
                    break
                self._keep_chunk(delta.chunks[-1], self.chunks_done)
                yield from self._counted(todo)
                self.chunks_done += 1
                if self.on_boundary is not None:
                    self.on_boundary()
                size = min(size * CHUNK_GROWTH, MAX_CHUNK_OBJECTS)
            delta.finish()
            logger.info(
                "listed and compared %s objects with %d earlier run(s) in %.1f s (%d chunks): %s",
                f"{self.counts.objects_listed:,}",
                len(self.earlier_runs),
                time.perf_counter() - compared,
                self.chunks_done,
                self.counts.summary(),
            )
            delta.write_tombstones(tables, self.run_id)
        self.done = True
        if self.on_boundary is not None:
            self.on_boundary()

    def _counted(self, objects: Iterator[PlannedObject]) -> Iterator[PlannedObject]:
        for obj in objects:
            self.objects_seen += 1
            yield obj

    def _keep_chunk(self, path: str, chunk: int) -> None:
        with open(path, "rb") as fh:
            self.storage.write_bytes(self.layout.listing_chunk(self.run_id, chunk), fh.read())

    def _restore_chunks(self, delta: Delta) -> None:
        """The chunks an earlier session of this run listed, for the deleted objects."""
        if not self.chunks_done:
            return
        uris = [self.layout.listing_chunk(self.run_id, c) for c in range(self.chunks_done)]
        folder = os.path.join(delta.workdir, "resumed")
        for path in local_files(uris, self.storage, folder):
            delta.add_listed(path)
        logger.info("the listing resumes after %d compared chunks", self.chunks_done)

    def discard_chunks(self) -> None:
        """Delete the listing chunks kept in the run's folder: once the plan is complete, no
        resume needs them (a failure is logged; they are small next to the results)."""
        for chunk in range(self.chunks_done):
            try:
                self.storage.delete(self.layout.listing_chunk(self.run_id, chunk))
            except FileNotFoundError:
                pass
            except OSError as exc:
                logger.warning("could not delete listing chunk %d: %s", chunk, exc)
                return

    def checkpoint(self) -> dict:
        return self.listing.checkpoint()

    def counts_state(self) -> dict:
        """What a plan checkpoint keeps of the comparison."""
        return {"done": self.done, "chunks": self.chunks_done, "counts": self.counts.as_dict()}

    @property
    def objects_listed(self) -> int:
        return self.listing.objects_listed

    @property
    def duplicates(self) -> int:
        """Entries the source listed again, left out before the comparison."""
        return self.listing.duplicates

    @property
    def skipped(self) -> SkippedFiles:
        """Files of the source left out for their extension, before the comparison."""
        return self.listing.skipped

    @property
    def requests(self) -> int:
        return self.listing.requests

    def close(self) -> None:
        self.listing.close()


def outdated_runs(earlier: Iterable[RunRecord], model: dict) -> list[str]:
    """Ids of the ``earlier`` runs whose model settings differ from ``model`` (this run's
    record's ``model``: :meth:`~pipeline.worker.model_spec.ModelSpec.fingerprint`), oldest
    first; logged once, with what differs in the latest of them. Their images are processed
    again."""
    out: list[str] = []
    last_changes: list[str] = []
    for record in earlier:
        try:
            changes = settings_changes(record.model, model)
        except (KeyError, TypeError, AttributeError):  # a record without a fingerprint
            changes = ["model settings not recorded"]
        if changes:
            out.append(record.run_id)
            last_changes = changes
    if out:
        logger.info(
            "%d earlier run(s) used other model settings (run %s: %s): their images are "
            "processed again",
            len(out),
            out[-1],
            "; ".join(last_changes),
        )
    return out


def _write_listing(objects: Iterable, path: str, *, start: int = 0) -> int:
    """Stream ``objects`` (``uri``, ``size``, ``etag``) into a Parquet file, numbered from
    ``start`` in column ``seq``; returns the count."""
    count = 0
    uris: list[str] = []
    sizes: list[int | None] = []
    etags: list[str | None] = []
    with pq.ParquetWriter(path, LISTING_SCHEMA, compression=PARQUET_COMPRESSION) as writer:

        def flush() -> None:
            first = start + count - len(uris)
            writer.write_batch(
                pa.record_batch(
                    [
                        pa.array(range(first, start + count), pa.int64()),
                        pa.array(uris, pa.string()),
                        pa.array(sizes, pa.int64()),
                        pa.array(etags, pa.string()),
                    ],
                    schema=LISTING_SCHEMA,
                )
            )
            uris.clear()
            sizes.clear()
            etags.clear()

        for obj in objects:
            uris.append(obj.uri)
            sizes.append(obj.size)
            etags.append(obj.etag)
            count += 1
            if len(uris) >= LISTING_BATCH_ROWS:
                flush()
        if uris:
            flush()
    return count


def _sql_text(text: str) -> str:
    return text.replace("'", "''")


__all__ = ["Delta", "DeltaCounts", "DeltaListing", "outdated_runs"]
