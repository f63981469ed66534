"""The fault-injecting proxy in front of the real SeaweedFS server.

With no faults, it is transparent: GET, PUT, HEAD, listing, conditional PUT and a chunked
presigned PUT behave (and carry bytes) exactly as without it. With each fault kind on every
request, a raw boto3 client with retries off sees the error that kind stands for; rules
restricted to methods or keys hit only those; draws are reproducible from the seed.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import time
import urllib.parse
import uuid
from concurrent.futures import ThreadPoolExecutor

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ReadTimeoutError,
    ResponseStreamingError,
)

from infra.local.fault_proxy import (
    FAULT_KINDS,
    READ_METHODS,
    WRITE_METHODS,
    FaultProxy,
    FaultRule,
    mixed_faults,
)

#: Client read timeout in these tests; ``slow`` / ``stall`` stay silent longer than this.
CLIENT_READ_TIMEOUT_S = 0.5
SLOW_S = 2.0
#: Bytes of the test object: several TCP segments, so half a body is a real partial read.
OBJECT_BYTES = 300_000
#: Latency of the concurrency test, and how many GETs it sends at once.
LATENCY_S = 0.2
CONCURRENT_GETS = 8
#: The concurrent GETs must all finish within this many latencies (serialised: 8).
CONCURRENT_BOUND = 4
CONCURRENT_TIMEOUT_S = 10.0
#: Requests drawn in the rate test, and how far the injected share may stray from the rate.
RATE_REQUESTS = 400
RATE_TOLERANCE = 0.06


@pytest.fixture
def proxy(s3_server):
    with FaultProxy(s3_server.endpoint_url, seed=7, slow_s=SLOW_S) as running:
        yield running


def raw_client(s3_server, endpoint_url: str, read_timeout: float = CLIENT_READ_TIMEOUT_S):
    """A boto3 client with botocore's retries off: one attempt per call."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=s3_server.access_key,
        aws_secret_access_key=s3_server.secret_key,
        region_name="us-east-1",
        config=Config(
            retries={"total_max_attempts": 1, "mode": "standard"},
            connect_timeout=2,
            read_timeout=read_timeout,
            s3={"addressing_style": "path"},
        ),
    )


@pytest.fixture
def key_prefix() -> str:
    return f"fault-proxy-{uuid.uuid4().hex[:8]}/"


def payload() -> bytes:
    return os.urandom(OBJECT_BYTES)


def test_without_faults_everything_passes_through_byte_exact(
    proxy, s3_server, s3_bucket, key_prefix
):
    client = raw_client(s3_server, proxy.endpoint_url)
    direct = s3_server.client()
    data = payload()
    key = key_prefix + "dir with space/ünï 猫.bin"
    put = client.put_object(Bucket=s3_bucket, Key=key, Body=data)
    assert direct.get_object(Bucket=s3_bucket, Key=key)["Body"].read() == data
    got = client.get_object(Bucket=s3_bucket, Key=key)
    assert got["Body"].read() == data
    assert got["ETag"] == put["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'
    head = client.head_object(Bucket=s3_bucket, Key=key)
    assert head["ContentLength"] == len(data)
    ranged = client.get_object(Bucket=s3_bucket, Key=key, Range="bytes=10-19")
    assert ranged["Body"].read() == data[10:20]
    listed = client.list_objects_v2(Bucket=s3_bucket, Prefix=key_prefix)
    assert [o["Key"] for o in listed["Contents"]] == [key]

    # Conditional PUT: created once, then refused (412) as by the server itself.
    fresh = key_prefix + "once.json"
    client.put_object(Bucket=s3_bucket, Key=fresh, Body=b"first", IfNoneMatch="*")
    with pytest.raises(ClientError) as refused:
        client.put_object(Bucket=s3_bucket, Key=fresh, Body=b"second", IfNoneMatch="*")
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert direct.get_object(Bucket=s3_bucket, Key=fresh)["Body"].read() == b"first"

    client.delete_object(Bucket=s3_bucket, Key=fresh)
    with pytest.raises(ClientError) as missing:
        client.head_object(Bucket=s3_bucket, Key=fresh)
    assert missing.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404

    stats = proxy.stats()
    assert stats.injected() == 0
    assert stats.requests["GET"] == 3 and stats.requests["PUT"] == 3


def test_a_chunked_upload_is_forwarded_chunked(proxy, s3_server, s3_bucket, key_prefix):
    """``Transfer-Encoding: chunked`` (a presigned PUT, so the body is not signed)."""
    signer = raw_client(s3_server, proxy.endpoint_url)
    key = key_prefix + "chunked.bin"
    url = signer.generate_presigned_url(
        "put_object", Params={"Bucket": s3_bucket, "Key": key}, ExpiresIn=60
    )
    parts = urllib.parse.urlsplit(url)
    data = payload()
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request(
            "PUT",
            f"{parts.path}?{parts.query}",
            body=(data[i : i + 65536] for i in range(0, len(data), 65536)),
            encode_chunked=True,
        )
        response = conn.getresponse()
        assert response.status == 200, response.read()
    finally:
        conn.close()
    assert s3_server.client().get_object(Bucket=s3_bucket, Key=key)["Body"].read() == data


# (kind, operation) -> the exception a client with retries off sees.
EXPECTED_ERRORS = {
    ("slowdown", "get"): (ClientError, "SlowDown"),
    ("slowdown", "put"): (ClientError, "SlowDown"),
    ("internal", "get"): (ClientError, "InternalError"),
    ("internal", "put"): (ClientError, "InternalError"),
    ("reset", "get"): (ResponseStreamingError, "reset by peer"),  # half the body, then RST
    ("reset", "put"): (ConnectionClosedError, "closed before"),
    ("slow", "get"): (ReadTimeoutError, "Read timeout"),
    ("slow", "put"): (ReadTimeoutError, "Read timeout"),
    ("stall", "get"): (ReadTimeoutError, "Read timeout"),  # inside Body.read()
    ("stall", "put"): (ReadTimeoutError, "Read timeout"),
}


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_each_fault_kind_reaches_the_client_as_its_error(
    proxy, s3_server, s3_bucket, key_prefix, kind
):
    client = raw_client(s3_server, proxy.endpoint_url)
    key = key_prefix + "object.bin"
    data = payload()
    client.put_object(Bucket=s3_bucket, Key=key, Body=data)
    proxy.set_faults(FaultRule(kind, 1.0))

    for operation in ("get", "put"):
        error, phrase = EXPECTED_ERRORS[(kind, operation)]
        with pytest.raises(error) as caught:
            if operation == "get":
                client.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
            else:
                client.put_object(Bucket=s3_bucket, Key=key, Body=data)
        assert phrase in str(caught.value), (kind, operation, caught.value)
        if isinstance(caught.value, ClientError):
            expected = 503 if kind == "slowdown" else 500
            assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == expected

    stats = proxy.stats()
    assert stats.injected(kind, {"GET"}) == 1 and stats.injected(kind, {"PUT"}) == 1
    assert stats.injected() == 2
    proxy.set_faults()  # healed: the object is intact (a reset PUT still reached the store)
    assert client.get_object(Bucket=s3_bucket, Key=key)["Body"].read() == data


def test_rules_restricted_to_methods_and_keys(proxy, s3_server, s3_bucket, key_prefix):
    client = raw_client(s3_server, proxy.endpoint_url)
    hit, spared = key_prefix + "shard-1/a.bin", key_prefix + "shard-2/b.bin"
    for key in (hit, spared):
        client.put_object(Bucket=s3_bucket, Key=key, Body=b"x")
    proxy.set_faults(FaultRule("slowdown", 1.0, methods=READ_METHODS, keys=("shard-1/",)))
    with pytest.raises(ClientError):
        client.get_object(Bucket=s3_bucket, Key=hit)
    assert client.get_object(Bucket=s3_bucket, Key=spared)["Body"].read() == b"x"
    client.put_object(Bucket=s3_bucket, Key=hit, Body=b"y")  # writes are not matched

    proxy.set_faults(FaultRule("internal", 1.0, methods=WRITE_METHODS))
    assert client.get_object(Bucket=s3_bucket, Key=hit)["Body"].read() == b"y"
    with pytest.raises(ClientError):
        client.put_object(Bucket=s3_bucket, Key=spared, Body=b"z")
    stats = proxy.stats()
    assert stats.faults == {("slowdown", "GET"): 1, ("internal", "PUT"): 1}


def test_rates_are_honoured_and_reproducible_from_the_seed(s3_server):
    def draws(seed: int) -> list[str | None]:
        proxy = FaultProxy(s3_server.endpoint_url, seed=seed)
        proxy.set_faults(mixed_faults(0.3, ("slowdown", "internal", "reset")))
        return [proxy._draw("GET", "/b/k") for _ in range(RATE_REQUESTS)]

    first = draws(3)
    assert first == draws(3)
    assert first != draws(4)
    share = sum(kind is not None for kind in first) / RATE_REQUESTS
    assert abs(share - 0.3) < RATE_TOLERANCE, share
    assert {kind for kind in first if kind} == {"slowdown", "internal", "reset"}


def test_bad_rules_are_refused():
    with pytest.raises(ValueError, match="unknown fault kind"):
        FaultRule("teapot", 0.5)
    with pytest.raises(ValueError, match="between 0.0 and 1.0"):
        FaultRule("reset", 1.5)


def test_first_forces_the_first_matching_requests(s3_server):
    proxy = FaultProxy(s3_server.endpoint_url, seed=0)
    proxy.set_faults(FaultRule("reset", 0.0, methods=READ_METHODS, first=2))
    assert proxy._draw("PUT", "/b/k") is None
    assert [proxy._draw("GET", "/b/k") for _ in range(4)] == ["reset", "reset", None, None]
    assert proxy.stats().faults == {("reset", "GET"): 2}


def test_latency_holds_every_response_and_changes_nothing_else(s3_server, s3_bucket, key_prefix):
    latency_s = 0.2
    data = payload()
    with FaultProxy(s3_server.endpoint_url, latency_s=latency_s) as slow:
        client = raw_client(s3_server, slow.endpoint_url)
        key = key_prefix + "latency.bin"
        for call in (
            lambda: client.put_object(Bucket=s3_bucket, Key=key, Body=data),
            lambda: client.get_object(Bucket=s3_bucket, Key=key)["Body"].read(),
        ):
            started = time.monotonic()
            result = call()
            assert time.monotonic() - started >= latency_s  # a lower bound: sleeps only add
        assert result == data
        assert slow.stats().injected() == 0
    with pytest.raises(ValueError, match="latency_s"):
        FaultProxy(s3_server.endpoint_url, latency_s=-1.0)


def test_latency_is_waited_concurrently_not_in_turn(s3_server, s3_bucket, key_prefix):
    """Set after the start, the latency holds each GET at least that long; GETs sent together
    wait it out together (one thread per connection), so 8 take far less than 8 latencies."""
    keys = [f"{key_prefix}concurrent-{i}.bin" for i in range(CONCURRENT_GETS)]
    direct = s3_server.client()
    for key in keys:
        direct.put_object(Bucket=s3_bucket, Key=key, Body=key.encode())
    with FaultProxy(s3_server.endpoint_url) as proxy:
        # A read timeout far past the latency: a slow round on a busy machine fails the bound,
        # never with a timeout.
        client = raw_client(s3_server, proxy.endpoint_url, read_timeout=CONCURRENT_TIMEOUT_S)

        def get(key: str) -> bytes:
            return client.get_object(Bucket=s3_bucket, Key=key)["Body"].read()

        assert get(keys[0]) == keys[0].encode()  # connection and credentials warmed up
        proxy.set_latency(LATENCY_S)
        started = time.monotonic()
        get(keys[0])
        assert time.monotonic() - started >= LATENCY_S

        with ThreadPoolExecutor(CONCURRENT_GETS) as pool:
            started = time.monotonic()
            bodies = list(pool.map(get, keys))
            elapsed = time.monotonic() - started
        assert bodies == [key.encode() for key in keys]
        assert elapsed >= LATENCY_S
        assert elapsed < CONCURRENT_BOUND * LATENCY_S, elapsed
        assert proxy.stats().requests["GET"] == 2 + CONCURRENT_GETS
        with pytest.raises(ValueError, match="latency_s"):
            proxy.set_latency(-0.1)
