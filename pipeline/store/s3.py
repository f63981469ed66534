"""boto3 clients configured the standard AWS way.

Credentials, region and endpoint come from the usual chain (environment, profile, instance or
workload identity; ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3`` for MinIO, SeaweedFS and other
S3-compatible stores). :class:`S3Options` carries only non-secret settings, so it can travel to
Ray actors and into run records; credentials never leave each process's own chain. Its
``profile`` names a profile of the AWS config and shared credentials files: every client and
the Delta tables' readers and writers take their credentials from the session
:func:`make_session` builds for it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import boto3
import botocore.exceptions
import botocore.session
from botocore.config import Config

#: botocore's "standard" retry mode retries throttling (503 SlowDown), 5xx and connection
#: errors with exponential backoff and jitter. Not "adaptive": its client-side rate limiter
#: slows every request of the client (to ~0.5 requests/s in tests/test_reliability_storage.py)
#: when a few hot keys are throttled, stalling a whole actor. Both modes draw on a per-client
#: retry quota that sustained failures can empty, after which botocore stops retrying:
#: :mod:`pipeline.store.storage` and the actors retry on top of it.
DEFAULT_RETRY_MODE = "standard"
#: Attempts per request (the first included), unless set explicitly or by the AWS
#: configuration (``AWS_MAX_ATTEMPTS`` / ``AWS_RETRY_MODE``, or ``max_attempts`` /
#: ``retry_mode`` in the AWS config file), which botocore documents and we respect.
DEFAULT_MAX_ATTEMPTS = 8
CONNECT_TIMEOUT_S = 10
READ_TIMEOUT_S = 60
DEFAULT_REGION = "us-east-1"
ENDPOINT_ENV_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
#: botocore's documented variables for its retry settings (config file keys alike).
AWS_ENV_VARS = {"max_attempts": "AWS_MAX_ATTEMPTS", "retry_mode": "AWS_RETRY_MODE"}


@dataclass(frozen=True)
class S3Options:
    """Non-secret client settings: the AWS profile, endpoint and region (else the
    environment's), timeouts, and botocore's retries.

    ``max_attempts`` (attempts per request, the first included) and ``retry_mode``: ``None``
    defers to the AWS configuration (``AWS_MAX_ATTEMPTS``, ``AWS_RETRY_MODE``, the config
    file), else :data:`DEFAULT_MAX_ATTEMPTS` / :data:`DEFAULT_RETRY_MODE`.
    ``read_timeout_s``: longest wait for the next bytes of a response (headers or body).
    """

    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    max_attempts: int | None = None
    retry_mode: str | None = None
    connect_timeout_s: float = CONNECT_TIMEOUT_S
    read_timeout_s: float = READ_TIMEOUT_S

    def __post_init__(self) -> None:
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError(
                f"S3 attempts per request (--s3-max-attempts) must be at least 1, got "
                f"{self.max_attempts}"
            )
        for name, flag in (("connect_timeout_s", "connect"), ("read_timeout_s", "read")):
            if getattr(self, name) <= 0:
                raise ValueError(
                    f"the S3 {flag} timeout must be more than 0 seconds, got {getattr(self, name)}"
                )

    def resolved_endpoint(self) -> str | None:
        if self.endpoint_url:
            return self.endpoint_url
        return next((os.environ[v] for v in ENDPOINT_ENV_VARS if os.environ.get(v)), None)

    def retries(self, session: botocore.session.Session | None = None) -> dict:
        """botocore's ``retries`` config: explicit settings, else the AWS configuration's,
        else our defaults."""
        session = session or botocore.session.get_session()
        attempts = self.max_attempts or _aws_setting(session, "max_attempts")
        mode = self.retry_mode or _aws_setting(session, "retry_mode")
        return {
            "total_max_attempts": int(attempts or DEFAULT_MAX_ATTEMPTS),
            "mode": mode or DEFAULT_RETRY_MODE,
        }


def _aws_setting(session: botocore.session.Session, name: str) -> str | None:
    """A setting the user made in the AWS environment variables or config file, else None
    (botocore's own lookup would answer its built-in default, indistinguishable from a choice).
    """
    value = os.environ.get(AWS_ENV_VARS[name])
    if value:
        return value
    try:
        return session.get_scoped_config().get(name)
    except botocore.exceptions.ProfileNotFound:
        return None


def make_session(
    options: S3Options | None = None, *, core: botocore.session.Session | None = None
) -> boto3.session.Session:
    """A boto3 session on the standard AWS chain, of profile ``options.profile`` when set (else
    ``AWS_PROFILE``'s, else the default chain). ``core``: the botocore session to build on.
    Raises ``ValueError`` naming the profile when the AWS config files do not define it."""
    options = options or S3Options()
    core = core or botocore.session.get_session()
    try:
        session = boto3.session.Session(botocore_session=core, profile_name=options.profile)
        session.get_credentials()  # a profile named only by AWS_PROFILE is looked up here
    except botocore.exceptions.ProfileNotFound:
        name = options.profile or os.environ.get("AWS_PROFILE")
        raise ValueError(
            f"the AWS profile {name!r} (--profile / AWS_PROFILE) is not defined in the AWS "
            f"config file ({_aws_file(core, 'config_file')}) or credentials file "
            f"({_aws_file(core, 'credentials_file')}); check the name, or point "
            "AWS_CONFIG_FILE / AWS_SHARED_CREDENTIALS_FILE at the files that define it"
        ) from None
    return session


def _aws_file(core: botocore.session.Session, name: str) -> str:
    return os.path.expanduser(core.get_config_variable(name) or "?")


def make_client(options: S3Options | None = None, *, max_pool_connections: int = 10):
    """A boto3 S3 client; size ``max_pool_connections`` to the threads that share it.

    Custom endpoints use path-style addressing, which every S3-compatible store supports.
    """
    options = options or S3Options()
    endpoint = options.resolved_endpoint()
    core = botocore.session.get_session()
    session = make_session(options, core=core)
    config = Config(
        retries=options.retries(core),
        max_pool_connections=max_pool_connections,
        connect_timeout=options.connect_timeout_s,
        read_timeout=options.read_timeout_s,
        s3={"addressing_style": "path"} if endpoint else None,
    )
    region = options.region or session.region_name or DEFAULT_REGION
    return session.client("s3", endpoint_url=endpoint, region_name=region, config=config)
