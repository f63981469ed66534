"""What a run output holds that readers may see: the data files its commit markers name, and
the tombstones of objects incremental runs found deleted.

Only files named by commit markers are read, so partial or retried shards never show. Parquet
is read as Arrow datasets (local files directly; S3 through ``pyarrow.fs`` with the process's
AWS credentials), which DuckDB and the exporters consume.
"""

from __future__ import annotations

import boto3
import duckdb
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from pipeline.store.layout import DETECTIONS_TABLE, IMAGES_TABLE, OutputLayout, deleted_dir
from pipeline.store.ledger import Ledger
from pipeline.store.s3 import DEFAULT_REGION, S3Options
from pipeline.store.schema import TOMBSTONE_SCHEMA
from pipeline.store.storage import storage_for
from pipeline.store.uris import is_s3, normalize


def committed_files(output: str, s3_options: S3Options | None = None) -> dict[str, list[str]]:
    """URIs of every committed data file under ``output``, by table."""
    output = normalize(output)
    ledger = Ledger(storage_for(output, s3_options), OutputLayout(output))
    files: dict[str, list[str]] = {DETECTIONS_TABLE: [], IMAGES_TABLE: []}
    for run_id in ledger.run_ids():
        for marker in sorted(ledger.commits(run_id).values(), key=lambda m: m.shard_id):
            for table, uri in ledger.data_files(run_id, marker).items():
                files[table].append(uri)
    return files


def tombstone_files(output: str, s3_options: S3Options | None = None) -> list[str]:
    """URIs of every tombstone file under ``output`` (one listing of ``_deleted/``)."""
    output = normalize(output)
    storage = storage_for(output, s3_options)
    return [
        info.uri
        for info in storage.list(deleted_dir(output) + "/")
        if info.uri.endswith(".parquet") and "/." not in info.uri
    ]


def register_tombstones(
    con: duckdb.DuckDBPyConnection,
    output: str,
    s3_options: S3Options | None = None,
    *,
    filesystem: pafs.FileSystem | None = None,
) -> None:
    """Register the view ``tombstones`` (``image_uri``, ``run_id``) of ``output`` on ``con``.

    On its own it costs one listing of ``_deleted/``, not the look at every committed file
    that :func:`pipeline.results.query.connect` makes: the incremental delta needs nothing more.
    """
    output = normalize(output)
    paths = [fs_path(uri) for uri in tombstone_files(output, s3_options)]
    if paths and filesystem is None:
        filesystem = arrow_filesystem(output, s3_options)
    tombstones = (
        ds.dataset(paths, schema=TOMBSTONE_SCHEMA, format="parquet", filesystem=filesystem)
        if paths
        else TOMBSTONE_SCHEMA.empty_table()
    )
    con.register("tombstones_arrow", tombstones)
    con.execute("CREATE VIEW tombstones AS SELECT * FROM tombstones_arrow")


def arrow_filesystem(output: str, s3_options: S3Options | None) -> pafs.FileSystem:
    """The pyarrow filesystem that reads ``output``'s files: local, or S3 with the process's
    AWS credentials and ``s3_options``' endpoint and region."""
    if not is_s3(output):
        return pafs.LocalFileSystem()
    options = s3_options or S3Options()
    session = boto3.session.Session()
    credentials = session.get_credentials()
    frozen = credentials.get_frozen_credentials() if credentials else None
    kwargs = {"region": options.region or session.region_name or DEFAULT_REGION}
    if frozen:
        kwargs.update(
            access_key=frozen.access_key,
            secret_key=frozen.secret_key,
            session_token=frozen.token,
        )
    endpoint = options.resolved_endpoint()
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        kwargs.update(endpoint_override=host.rstrip("/"), scheme=scheme or "https")
    return pafs.S3FileSystem(**kwargs)


def fs_path(uri: str) -> str:
    """``uri`` as a path of :func:`arrow_filesystem` (``bucket/key`` for S3)."""
    return uri[len("s3://") :] if is_s3(uri) else uri
