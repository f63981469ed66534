"""``yolo-batch migrate OUTPUT``: convert an output of an earlier version (commit markers) into
Delta tables, in place, under the output's lease (:mod:`pipeline.store.migrate`)."""

from __future__ import annotations

import argparse

from pipeline.cli.maintenance_lease import show_progress, under_lease
from pipeline.cli.s3_options import add_s3_arguments, s3_options
from pipeline.errors import EXIT_OK
from pipeline.results.query import no_runs_error
from pipeline.store import migrate
from pipeline.store.storage import storage_for
from pipeline.store.tables import ResultTables
from pipeline.store.uris import normalize

#: The command named in the output's lease while it converts.
LEASE_COMMAND = "migrate"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "migrate",
        help="convert an output of an earlier version to Delta tables, in place",
        description=(
            "Convert the results of an earlier yolo-batch (commit markers) into Delta tables "
            "without rewriting the data files; holds the output's lease meanwhile. Safe to "
            "stop and to run again."
        ),
    )
    parser.add_argument("output", help="the results (s3://bucket/prefix or folder)")
    add_s3_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    output = normalize(args.output)
    s3 = s3_options(args)
    storage = storage_for(output, s3)
    tables = ResultTables(output, s3)
    state = migrate.legacy_state(tables, storage)
    if not state.pending:
        if state.images_table:
            print(f"{output} is already current (Delta tables, no commit markers): nothing to do")
            return EXIT_OK
        raise no_runs_error(output)
    show_progress(migrate.__name__)
    report = under_lease(
        storage,
        output,
        LEASE_COMMAND,
        lambda check: migrate.migrate_output(tables, storage, check=check),
        f"Once it has ended, run `yolo-batch migrate {output}` again to finish.",
    )
    print(summary(output, report))
    return EXIT_OK


def summary(output: str, report: migrate.MigrationReport) -> str:
    """One line: what was converted, what an earlier migrate had converted, what was removed."""
    already = f", {report.shards_already:,} converted before" if report.shards_already else ""
    tombstones_before = (
        f" ({report.runs_tombstones_already} run(s) converted before)"
        if report.runs_tombstones_already
        else ""
    )
    return (
        f"migrated {output}: {report.runs} run(s), {report.shards:,} shard(s) "
        f"({report.data_files:,} data files, not rewritten) added to the Delta logs{already}, "
        f"{report.tombstones:,} tombstone(s){tombstones_before}; removed "
        f"{report.markers_deleted:,} commit marker(s) and {report.tombstone_files_deleted:,} "
        "tombstone file(s)"
    )
