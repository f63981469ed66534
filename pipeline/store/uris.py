"""URIs the pipeline reads and writes: ``s3://bucket/key`` or local paths.

Local paths are made absolute (``file://`` URIs are accepted and stripped), so a result row's
``image_uri`` names the file unambiguously. S3 keys are kept byte for byte: spaces, non-ASCII
characters and ``..`` segments are legal in keys and never turned into local paths.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import unquote

S3_SCHEME = "s3://"
FILE_SCHEME = "file://"


@dataclass(frozen=True)
class S3Location:
    """``s3://bucket/key``: ``key`` may be empty (the bucket root) or a prefix."""

    bucket: str
    key: str

    @property
    def uri(self) -> str:
        return f"{S3_SCHEME}{self.bucket}/{self.key}"


def is_s3(uri: str) -> bool:
    return uri.startswith(S3_SCHEME)


def parse_s3(uri: str) -> S3Location:
    """Split ``s3://bucket/key``; raises ``ValueError`` naming the problem."""
    if not is_s3(uri):
        raise ValueError(f"{uri!r} is not an s3:// URI")
    rest = uri[len(S3_SCHEME) :]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ValueError(f"{uri!r} has no bucket name; expected s3://BUCKET/PREFIX")
    return S3Location(bucket, key)


def normalize(uri: str | os.PathLike) -> str:
    """``s3://`` URIs unchanged; local paths (or ``file://`` URIs) made absolute."""
    text = os.fspath(uri)
    if is_s3(text):
        parse_s3(text)
        return text
    if text.startswith(FILE_SCHEME):
        text = unquote(text[len(FILE_SCHEME) :])
    return os.path.abspath(os.path.expanduser(text))


def join(base: str, *parts: str) -> str:
    """Join path segments under ``base`` (S3 prefix or local directory) with ``/``."""
    out = base.rstrip("/") if is_s3(base) else base
    for part in parts:
        part = part.strip("/")
        if is_s3(out):
            out = f"{out}/{part}" if not out.endswith("/") else f"{out}{part}"
        else:
            out = os.path.join(out, part)
    return out


def is_within(inner: str, outer: str) -> bool:
    """Whether ``inner`` lies inside (or equals) ``outer``; both normalised URIs."""
    if is_s3(inner) != is_s3(outer):
        return False
    if is_s3(inner):
        a, b = parse_s3(inner), parse_s3(outer)
        prefix = b.key.rstrip("/")
        return a.bucket == b.bucket and (
            not prefix or a.key.rstrip("/") == prefix or a.key.startswith(prefix + "/")
        )
    inner_path, outer_path = os.path.realpath(inner), os.path.realpath(outer)
    return inner_path == outer_path or inner_path.startswith(outer_path.rstrip(os.sep) + os.sep)
