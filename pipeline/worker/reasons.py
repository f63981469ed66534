"""The ``error`` texts of an image's row: short, free of credentials, saying the likely cause.

``not found``, ``too large: ...``, ``fetch: <reason>`` and ``decode: <reason>``; the reasons come
from exceptions of the storage layer or the decoder, with the object's URI and any access key id
taken out and the free text cut to :data:`MAX_REASON_CHARS`.
"""

from __future__ import annotations

import re

from pipeline.store.storage import StorageError

#: Longest free-text detail kept in a ``fetch: ...`` / ``decode: ...`` error message.
MAX_REASON_CHARS = 120
ERROR_NOT_FOUND = "not found"
_DOT_SEGMENT = re.compile(r"^s3://[^/]+/(?:.*/)?\.{1,2}(?:/|$)")
_ACCESS_KEY_RE = re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA)[A-Z0-9]{12,}\b")


def too_large(size: int, limit: int) -> str:
    """The error of an object of ``size`` bytes over the byte ``limit``."""
    return f"too large: {size} bytes, over the limit of {limit}"


def fetch_reason(exc: BaseException, uri: str) -> str:
    """A short, credential-free reason for a failed read (without the ``fetch: `` prefix)."""
    if isinstance(exc, IsADirectoryError):
        return "is a directory"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, StorageError):
        text = str(exc)
        for pattern in (f"{uri}: ", f" to {uri}", f" of {uri}", uri):
            text = text.replace(pattern, "")
        text = text.split("; ")[0] or type(exc).__name__
        if _DOT_SEGMENT.search(uri):
            # AWS accepts such keys; many S3-compatible stores refuse them with a bare
            # InvalidRequest that says nothing of the cause.
            text = f"key has '.' or '..' segments, which this store refuses ({text})"
        return shorten(text)
    if isinstance(exc, OSError) and exc.strerror:
        return shorten(exc.strerror.lower())
    text = str(exc).replace(uri, "")
    return f"{type(exc).__name__}: {shorten(text)}" if text.strip() else type(exc).__name__


def shorten(text: str) -> str:
    """``text`` on one line, access key ids masked, cut to :data:`MAX_REASON_CHARS`."""
    text = _ACCESS_KEY_RE.sub("<key>", " ".join(text.split()))
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 3] + "..."
