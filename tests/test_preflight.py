"""Preflight: a run that cannot read its source or write its output stops before any work,
with one line that names the cause and the fix, and writes nothing.

Against the real S3-compatible server: a missing source or output bucket, an output inside
the source prefix, an endpoint where nothing listens, and (through the fault proxy, answering
``403 AccessDenied`` as a store does for a credential without that permission) a source that
can be listed but not read, and an output that cannot be written.
"""

from __future__ import annotations

import pytest

from infra.local.fault_proxy import DENY, READ_METHODS, WRITE_METHODS, FaultProxy, FaultRule
from infra.local.object_store import free_ports
from tests.reliability import Outcome, record
from tests.test_pipeline_e2e import (
    QUICK_TIMEOUT_S,
    assert_one_line_error,
    cli_env,
    run_args,
)


@pytest.fixture
def photos(s3_server, s3_prefix, sample_images) -> str:
    """``s3_prefix + "in/"`` holding the two sample photos."""
    bucket, _, prefix = s3_prefix.removeprefix("s3://").partition("/")
    client = s3_server.client()
    for photo in sample_images:
        client.put_object(Bucket=bucket, Key=f"{prefix}in/{photo.name}", Body=photo.read_bytes())
    return f"{s3_prefix}in/"


def keys_under(s3_server, uri: str) -> list[str]:
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    listing = s3_server.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
    return [item["Key"] for item in listing.get("Contents", ())]


def refused(cli, s3_server, tiny_weights_path, case, source, output, *phrases, endpoint=None):
    env = cli_env(tiny_weights_path.parent, s3=s3_server)
    extra = ["--endpoint-url", endpoint] if endpoint else []
    result = cli.run(run_args(source, output, *extra), env, QUICK_TIMEOUT_S)
    line = assert_one_line_error(result, *phrases)
    if output.startswith("s3://") and "no-such-bucket" not in output:
        assert keys_under(s3_server, output) == [], "a refused run wrote to its output"
    record(
        Outcome(
            area="preflight",
            case=case,
            trials=1,
            images=0,
            rows_lost=0,
            rows_duplicated=0,
            result="refused before any work, nothing written; the message names: "
            + ", ".join(f"'{p}'" for p in phrases),
        )
    )
    return line


def test_missing_source_bucket(cli, s3_server, s3_prefix, tiny_weights_path):
    refused(
        cli,
        s3_server,
        tiny_weights_path,
        "source bucket does not exist",
        "s3://no-such-bucket-for-yolo-batch/photos/",
        f"{s3_prefix}out/",
        "cannot read the source",
        "does not exist",
    )


def test_missing_output_bucket(cli, s3_server, photos, tiny_weights_path):
    refused(
        cli,
        s3_server,
        tiny_weights_path,
        "output bucket does not exist",
        photos,
        "s3://no-such-bucket-for-yolo-batch/out/",
        "cannot write to the output",
        "does not exist",
    )


def test_output_inside_the_source_prefix(cli, s3_server, photos, tiny_weights_path):
    refused(
        cli,
        s3_server,
        tiny_weights_path,
        "output inside the source prefix",
        photos,
        f"{photos}results/",
        "inside the source",
    )


def test_endpoint_where_nothing_listens(cli, s3_server, s3_prefix, photos, tiny_weights_path):
    (port,) = free_ports(1)
    refused(
        cli,
        s3_server,
        tiny_weights_path,
        "endpoint where nothing listens",
        photos,
        f"{s3_prefix}out/",
        "cannot read the source",
        "check the endpoint",
        endpoint=f"http://127.0.0.1:{port}",
    )


@pytest.fixture
def proxy(s3_server):
    with FaultProxy(s3_server.endpoint_url, seed=3) as running:
        yield running


def test_source_listed_but_not_readable(
    cli, s3_server, s3_prefix, photos, proxy, tiny_weights_path
):
    # GETs of object keys under the source are denied; listing the bucket is not.
    key_part = photos.removeprefix("s3://").partition("/")[2]
    proxy.set_faults(FaultRule(DENY, 1.0, methods=READ_METHODS, keys=(key_part + "bus",)))
    refused(
        cli,
        s3_server,
        tiny_weights_path,
        "source can be listed but not read (403 on GET)",
        photos,
        f"{s3_prefix}out/",
        "can list the source",
        "s3:GetObject",
        endpoint=proxy.endpoint_url,
    )
    assert proxy.stats().injected(DENY) >= 1


def test_output_not_writable(cli, s3_server, s3_prefix, photos, proxy, tiny_weights_path):
    output = f"{s3_prefix}out/"
    key_part = output.removeprefix("s3://").partition("/")[2]
    proxy.set_faults(FaultRule(DENY, 1.0, methods=WRITE_METHODS, keys=(key_part,)))
    refused(
        cli,
        s3_server,
        tiny_weights_path,
        "output cannot be written (403 on PUT)",
        photos,
        output,
        "cannot write to the output",
        "access denied",
        endpoint=proxy.endpoint_url,
    )
    assert proxy.stats().injected(DENY) >= 1
