"""boto3 clients configured the standard AWS way.

Credentials, region and endpoint come from the usual chain (environment, profile, instance or
workload identity; ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3`` for MinIO, SeaweedFS and other
S3-compatible stores). :class:`S3Options` carries only non-secret settings, so it can travel to
Ray actors and into run records; credentials never leave each process's own chain.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import boto3
from botocore.config import Config

#: botocore's "standard" retry mode retries throttling (503 SlowDown), 5xx and connection
#: errors with exponential backoff and jitter; "adaptive" adds client-side rate limiting.
DEFAULT_RETRY_MODE = "adaptive"
DEFAULT_MAX_ATTEMPTS = 8
CONNECT_TIMEOUT_S = 10
READ_TIMEOUT_S = 60
DEFAULT_REGION = "us-east-1"
ENDPOINT_ENV_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")


@dataclass(frozen=True)
class S3Options:
    """Non-secret client settings: an explicit endpoint (else the environment's) and region."""

    endpoint_url: str | None = None
    region: str | None = None
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    retry_mode: str = DEFAULT_RETRY_MODE

    def resolved_endpoint(self) -> str | None:
        if self.endpoint_url:
            return self.endpoint_url
        return next((os.environ[v] for v in ENDPOINT_ENV_VARS if os.environ.get(v)), None)


def make_client(options: S3Options | None = None, *, max_pool_connections: int = 10):
    """A boto3 S3 client; size ``max_pool_connections`` to the threads that share it.

    Custom endpoints use path-style addressing, which every S3-compatible store supports.
    """
    options = options or S3Options()
    endpoint = options.resolved_endpoint()
    config = Config(
        retries={"max_attempts": options.max_attempts, "mode": options.retry_mode},
        max_pool_connections=max_pool_connections,
        connect_timeout=CONNECT_TIMEOUT_S,
        read_timeout=READ_TIMEOUT_S,
        s3={"addressing_style": "path"} if endpoint else None,
    )
    session = boto3.session.Session()
    region = options.region or session.region_name or DEFAULT_REGION
    return session.client("s3", endpoint_url=endpoint, region_name=region, config=config)
