"""The figures of a run report, aggregated in DuckDB over the committed results.

Each figure is one ``GROUP BY`` query (or a bounded ``LIMIT``), so the rows that reach Python
are bounded by the number of classes shown, histogram bins, error reasons shown, shards (for
throughput) and sample images — never by the number of images or detections.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import duckdb

from pipeline.results.evaluate import MATCH_AUTO, EvalResult, evaluate
from pipeline.results.query import connect
from pipeline.results.report.gallery import Sample, load_samples
from pipeline.store.committed import open_tables
from pipeline.store.layout import IMAGES_TABLE, OutputLayout
from pipeline.store.ledger import Ledger
from pipeline.store.s3 import S3Options
from pipeline.store.storage import storage_for
from pipeline.store.tables import ResultTables, shard_of_file
from pipeline.store.uris import normalize
from yolov4.errors import YoloError

logger = logging.getLogger(__name__)

MAX_CLASSES_SHOWN = 30
"""Classes beyond the most frequent ones are summed into one "other classes" bar."""

SCORE_BINS = 20
"""Score histogram bins over [0, 1]."""

MAX_DETECTIONS_BIN = 20
"""The detections-per-image histogram has bins 0..19 and one for this many or more."""

MAX_ERROR_REASONS = 25
"""Error reasons shown in the table (most frequent first); the rest are summed."""

ERROR_EXAMPLES = 3
"""Example URIs shown per error reason."""

THROUGHPUT_BUCKETS = 30
"""Time buckets of the throughput chart between the run's start and its last commit."""

MIN_BUCKET_S = 1.0
"""Shortest throughput bucket: commit times are whole seconds on S3."""

DEFAULT_SAMPLES = 12

THROUGHPUT_SOURCE = (
    "the log of the images table: each shard's images count at the time its file was committed, "
    "bucketed from the run's start (a run whose files were compacted has no chart)"
)


@dataclass(frozen=True)
class ClassCount:
    class_id: int
    class_name: str
    count: int


@dataclass(frozen=True)
class ErrorReason:
    reason: str
    count: int
    examples: list[str]


@dataclass(frozen=True)
class ThroughputBucket:
    """Images committed in ``[start_s, end_s)`` seconds after the run's start."""

    start_s: float
    end_s: float
    images: int

    @property
    def images_per_second(self) -> float:
        return self.images / max(self.end_s - self.start_s, 1e-9)


@dataclass
class ReportData:
    """Everything a report shows; built by :func:`collect`."""

    output: str
    run: dict[str, Any]
    images_total: int
    images_ok: int
    images_error: int
    detections_total: int
    classes: list[ClassCount]
    other_classes: ClassCount | None
    score_bins: list[int]
    detections_per_image_bins: list[int]
    errors: list[ErrorReason]
    errors_not_shown: int
    throughput: list[ThroughputBucket]
    samples: list[Sample] = field(default_factory=list)
    throughput_source: str = THROUGHPUT_SOURCE
    #: The run's detections evaluated against ground truth (``--ground-truth``), else None.
    accuracy: EvalResult | None = None

    @property
    def duration_s(self) -> float | None:
        started, finished = self.run.get("started_at"), self.run.get("finished_at")
        if started is None or finished is None:
            return None
        return (_epoch(finished) or 0.0) - (_epoch(started) or 0.0)


def collect(
    output: str,
    run_id: str | None = None,
    *,
    samples: int = DEFAULT_SAMPLES,
    s3_options: S3Options | None = None,
    ground_truth: str | None = None,
    match: str = MATCH_AUTO,
) -> ReportData:
    """Aggregate the report's figures for ``run_id`` (default: the latest run) of ``output``;
    with ``ground_truth`` (a COCO instances JSON), the run's accuracy against it
    (:func:`pipeline.results.evaluate.evaluate`, images matched as ``match`` says)."""
    if samples < 0:
        raise ValueError(f"the number of samples must be 0 or more, got {samples}")
    output = normalize(output)
    # The runs before the tables: a store that fails (credentials, endpoint) fails at once.
    run_ids = Ledger(storage_for(output, s3_options), OutputLayout(output)).run_ids()
    tables = open_tables(output, s3_options)
    con = connect(output, s3_options, tables=tables, run_ids=run_ids)
    try:
        run = _run_row(con, output, run_id)
        run_id = run["run_id"]
        literal = _sql_string(run_id)  # a view cannot take parameters
        con.execute(
            f"CREATE TEMP VIEW run_images AS SELECT * FROM all_images WHERE run_id = {literal}"
        )
        con.execute(
            "CREATE TEMP VIEW run_detections AS "
            f"SELECT * FROM all_detections WHERE run_id = {literal}"
        )
        total, ok, errors = con.execute(
            "SELECT count(*), count(*) FILTER (status = 'ok'), count(*) FILTER (status = 'error') "
            "FROM run_images"
        ).fetchone()
        (detections,) = con.execute("SELECT count(*) FROM run_detections").fetchone()
        classes, other = _classes(con)
        error_rows, errors_not_shown = _errors(con)
        data = ReportData(
            output=output,
            run=run,
            images_total=int(total),
            images_ok=int(ok),
            images_error=int(errors),
            detections_total=int(detections),
            classes=classes,
            other_classes=other,
            score_bins=_score_bins(con),
            detections_per_image_bins=_detections_per_image_bins(con),
            errors=error_rows,
            errors_not_shown=errors_not_shown,
            throughput=_throughput(tables, run),
        )
        data.samples = load_samples(con, samples, s3_options)
    finally:
        con.close()
    if ground_truth is not None:
        data.accuracy = evaluate(
            output, ground_truth, match=match, s3_options=s3_options, run_id=run["run_id"]
        )
    return data


def _run_row(con: duckdb.DuckDBPyConnection, output: str, run_id: str | None) -> dict[str, Any]:
    if run_id is None:
        cursor = con.execute("SELECT * FROM runs ORDER BY run_id DESC LIMIT 1")
    else:
        cursor = con.execute("SELECT * FROM runs WHERE run_id = $run_id", {"run_id": run_id})
    row = cursor.fetchone()
    if row is None:
        if run_id is None:
            raise YoloError(f"no runs under {output}; start one with yolo-batch run")
        raise YoloError(f"no run {run_id} under {output}; yolo-batch status {output} names it")
    return dict(zip([d[0] for d in cursor.description], row))


def _classes(con: duckdb.DuckDBPyConnection) -> tuple[list[ClassCount], ClassCount | None]:
    rows = con.execute(
        """
        SELECT class_id, any_value(class_name), count(*) AS n FROM run_detections
        GROUP BY class_id ORDER BY n DESC, class_id
        """
    ).fetchall()  # one row per class: bounded by the model's class count
    classes = [ClassCount(int(i), str(name), int(n)) for i, name, n in rows]
    shown, rest = classes[:MAX_CLASSES_SHOWN], classes[MAX_CLASSES_SHOWN:]
    if not rest:
        return shown, None
    other = ClassCount(-1, f"{len(rest)} other classes", sum(c.count for c in rest))
    return shown, other


def _score_bins(con: duckdb.DuckDBPyConnection) -> list[int]:
    rows = con.execute(
        f"""
        SELECT least(greatest(floor(score * {SCORE_BINS}), 0), {SCORE_BINS - 1})::INT AS bin,
               count(*)
        FROM run_detections WHERE isfinite(score) GROUP BY bin
        """
    ).fetchall()
    bins = [0] * SCORE_BINS
    for index, count in rows:
        bins[index] = int(count)
    return bins


def _detections_per_image_bins(con: duckdb.DuckDBPyConnection) -> list[int]:
    rows = con.execute(
        f"""
        SELECT least(num_detections, {MAX_DETECTIONS_BIN})::INT AS bin, count(*)
        FROM run_images WHERE status = 'ok' GROUP BY bin
        """
    ).fetchall()
    bins = [0] * (MAX_DETECTIONS_BIN + 1)
    for index, count in rows:
        bins[max(index, 0)] += int(count)
    return bins


def _errors(con: duckdb.DuckDBPyConnection) -> tuple[list[ErrorReason], int]:
    counts = con.execute(
        f"""
        SELECT coalesce(error, '(no reason recorded)') AS reason, count(*) AS n
        FROM run_images WHERE status <> 'ok' GROUP BY reason ORDER BY n DESC, reason
        LIMIT {MAX_ERROR_REASONS}
        """
    ).fetchall()
    (total,) = con.execute("SELECT count(*) FROM run_images WHERE status <> 'ok'").fetchone()
    reasons = [r for r, _ in counts]
    examples: dict[str, list[str]] = {r: [] for r in reasons}
    if reasons:
        rows = con.execute(
            f"""
            SELECT reason, image_uri FROM (
                SELECT coalesce(error, '(no reason recorded)') AS reason, image_uri
                FROM run_images WHERE status <> 'ok'
            ) WHERE list_contains($reasons, reason)
            QUALIFY row_number() OVER (PARTITION BY reason ORDER BY image_uri) <= {ERROR_EXAMPLES}
            ORDER BY reason, image_uri
            """,
            {"reasons": reasons},
        ).fetchall()
        for reason, uri in rows:
            examples[reason].append(uri)
    shown = [ErrorReason(r, int(n), examples[r]) for r, n in counts]
    return shown, int(total) - sum(e.count for e in shown)


def _throughput(tables: ResultTables, run: dict[str, Any]) -> list[ThroughputBucket]:
    """Images committed per time bucket, from the log's commit times and row counts."""
    committed = commit_times(tables.root, run["run_id"], tables=tables)
    if not committed:
        return []
    times = {shard_id: when for shard_id, (when, _) in committed.items()}
    started = _epoch(run.get("started_at"))
    origin = min([*times.values(), *([started] if started is not None else [])])
    end = max(times.values())
    width = max((end - origin) / THROUGHPUT_BUCKETS, MIN_BUCKET_S)
    count = max(1, min(THROUGHPUT_BUCKETS, int((end - origin) / width) + 1))
    images = [0] * count
    for when, rows in committed.values():
        images[min(int((when - origin) / width), count - 1)] += rows
    return [ThroughputBucket(i * width, (i + 1) * width, n) for i, n in enumerate(images)]


def commit_times(
    output: str,
    run_id: str,
    s3_options: S3Options | None = None,
    *,
    tables: ResultTables | None = None,
) -> dict[int, tuple[float, int]]:
    """Each committed shard's commit time (epoch seconds) and images, from the ``images``
    log alone; empty when the run's files were compacted (they no longer map to shards).
    ``tables``: ``output``'s tables when they are open already (their log is not read again)."""
    if tables is None:
        tables = open_tables(output, s3_options)
    files = tables.run_files(IMAGES_TABLE, run_id)
    if files.num_rows == 0:
        return {}
    out = {}
    for path, millis, rows in zip(
        files.column("path").to_pylist(),
        files.column("modification_time").to_pylist(),
        files.column("num_records").to_pylist(),
    ):
        shard_id = shard_of_file(path)
        if shard_id is None:
            return {}
        out[shard_id] = (millis / 1000.0, int(rows or 0))
    return out


def _sql_string(value: str) -> str:
    """``value`` as a SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def _epoch(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.timestamp()
    return float(value)
