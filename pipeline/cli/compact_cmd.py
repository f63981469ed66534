"""``yolo-batch compact OUTPUT``: compact, vacuum and checkpoint the results tables under the
output's lease (:func:`pipeline.store.maintenance.maintain_output`)."""

from __future__ import annotations

import argparse

from pipeline.cli.maintenance_lease import show_progress, under_lease
from pipeline.cli.s3_options import add_s3_arguments, s3_options
from pipeline.errors import EXIT_OK
from pipeline.results.query import no_runs_error
from pipeline.store import maintenance
from pipeline.store.committed import open_tables
from pipeline.store.layout import (
    DETECTIONS_TABLE,
    IMAGES_TABLE,
    TOMBSTONES_TABLE,
    OutputLayout,
)
from pipeline.store.ledger import Ledger
from pipeline.store.storage import storage_for
from pipeline.store.uris import normalize

#: The command named in the output's lease while it works.
LEASE_COMMAND = "compact"
TABLES = (DETECTIONS_TABLE, IMAGES_TABLE, TOMBSTONES_TABLE)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compact",
        help="compact small files, vacuum unreferenced ones, checkpoint the tables",
        description=(
            "Rewrite each run's many small per-shard files into a few large ones, delete data "
            "files no table references (replaced by compaction, or of failed attempts) once "
            "older than the retention, and checkpoint the logs. Holds the output's lease: "
            "refused while a job writes the output."
        ),
    )
    parser.add_argument("output", help="the results (s3://bucket/prefix or folder)")
    parser.add_argument(
        "--retention-hours",
        type=_hours,
        default=maintenance.VACUUM_RETENTION_HOURS,
        metavar="HOURS",
        help=(
            "unreferenced files younger than this are kept, for readers of older snapshots "
            f"(default {maintenance.VACUUM_RETENTION_HOURS}: seven days; 0 deletes them all)"
        ),
    )
    add_s3_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    output = normalize(args.output)
    s3 = s3_options(args)
    storage = storage_for(output, s3)
    # The runs first: a store that fails (credentials, endpoint, bucket) fails here at once.
    run_ids = Ledger(storage, OutputLayout(output)).run_ids()
    tables = open_tables(output, s3)  # refuses an output of an earlier version
    if not tables.exists():
        if not run_ids:
            raise no_runs_error(output)
        print(f"{output} has no results tables yet: nothing to compact")
        return EXIT_OK
    show_progress(maintenance.__name__)
    report = under_lease(
        storage,
        output,
        LEASE_COMMAND,
        lambda check: maintenance.maintain_output(
            tables, storage, run_ids, retention_hours=args.retention_hours, check=check
        ),
        "What was done is committed; run `yolo-batch compact` again once it has ended.",
    )
    print(summary(output, report))
    return EXIT_OK


def summary(output: str, report: maintenance.MaintenanceReport) -> str:
    """One line: files compacted, vacuumed, and each table's version and file count."""
    compacted = ", ".join(
        f"{name} {report.files_removed_by_compaction[name]:,} files into "
        f"{report.files_added_by_compaction.get(name, 0):,}"
        for name in TABLES
        if report.files_removed_by_compaction.get(name)
    )
    vacuumed = sum(report.files_vacuumed.values())
    tables = ", ".join(
        f"{name} v{report.versions[name]} ({report.files[name]:,} files)"
        for name in TABLES
        if name in report.versions
    )
    reconciled = (
        f"; {report.claims_reconciled} half-committed shard(s) completed"
        if report.claims_reconciled
        else ""
    )
    return (
        f"compacted {output}: {report.runs_compacted} run(s) compacted"
        f"{' (' + compacted + ')' if compacted else ''}; {vacuumed:,} unreferenced file(s) "
        f"vacuumed{reconciled}; tables: {tables}"
    )


def _hours(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(
            f"expected a whole number of hours (0 or more), got {text!r}"
        )
    return value
